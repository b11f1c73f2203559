"""Error types and validation helpers shared by every configuration reader.

Every message names where the bad value came from (file, key, line or argument) and what is
allowed, so a user can fix the input without reading the code.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or mapping holds a missing, unknown or out-of-range value."""


class NotApplicableError(ConfigError):
    """A method does not apply to this scenario (e.g. a model of another topology shape)."""


class UnknownNameError(KeyError):
    """A GPU, model or config name is not in the catalog; the message lists the known names."""

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        self.kind = kind
        self.name = name
        self.known = sorted(known)
        plural = kind[:-1] + "ies" if kind.endswith("y") else kind + "s"
        super().__init__(f"unknown {kind} {name!r}; known {plural}: {', '.join(self.known)}")

    def __str__(self) -> str:  # KeyError would quote the whole message otherwise
        return str(self.args[0])


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file whose top level must be a mapping.

    Raises:
        ConfigError: the file is missing, is not valid YAML (with its line), or is not a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
        raise ConfigError(f"{where}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping, got {type(data).__name__}")
    return data


def check_keys(
    mapping: Mapping[str, Any], where: str, required: Iterable[str], optional: Iterable[str] = ()
) -> None:
    """Raise ConfigError naming ``where`` if a required key is missing or an unknown key is set."""
    required = list(required)
    allowed = set(required) | set(optional)
    missing = [k for k in required if k not in mapping]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {', '.join(missing)}")
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def number(
    mapping: Mapping[str, Any],
    key: str,
    where: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    integer: bool = False,
    default: Any = ...,
) -> Any:
    """Read a numeric value and check its range; the error names ``where.key`` and the range."""
    if key not in mapping or mapping[key] is None:
        if default is ...:
            raise ConfigError(f"{where}.{key}: missing (a number is required)")
        return default
    value = mapping[key]
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}.{key}: expected {kind}, got {value!r}")
    if integer and (not float(value).is_integer()):
        raise ConfigError(f"{where}.{key}: expected an integer, got {value!r}")
    if value != value:  # NaN
        raise ConfigError(f"{where}.{key}: NaN is not allowed")
    low_ok = True
    if minimum is not None:
        low_ok = value > minimum if exclusive_minimum else value >= minimum
    high_ok = maximum is None or value <= maximum
    if not (low_ok and high_ok):
        lo = "" if minimum is None else (f"> {minimum}" if exclusive_minimum else f">= {minimum}")
        hi = "" if maximum is None else f"<= {maximum}"
        rng = " and ".join(s for s in (lo, hi) if s)
        raise ConfigError(f"{where}.{key}: {value!r} is out of range; allowed: {rng}")
    return int(value) if integer else float(value)


def parse_catalog_file(
    path: str | Path, top_key: str, parse_entry: Callable[[str, Any, str], T]
) -> dict[str, T]:
    """Parse a catalog YAML file ``{top_key: {name: fields, ...}}`` entry by entry.

    ``parse_entry(name, fields, where)`` builds one entry; ``where`` names the file and key for
    its error messages.
    """
    data = load_yaml_mapping(path)
    check_keys(data, str(path), [top_key])
    entries = data[top_key]
    if not isinstance(entries, Mapping) or not entries:
        raise ConfigError(f"{path}: '{top_key}' must be a non-empty mapping of name -> fields")
    return {
        str(n): parse_entry(str(n), raw, f"{path}: {top_key}.{n}") for n, raw in entries.items()
    }


class Registry(Generic[T]):
    """Named catalog entries (shipped plus user-registered), looked up case-insensitively.

    Args:
        kind: what an entry is, for error messages (``"GPU"``, ``"model"``).
        top_key: the YAML file's top-level key.
        parse_entry: builds one entry from ``(name, fields, where)``.
        aliases: other names an entry answers to.
    """

    def __init__(
        self,
        kind: str,
        top_key: str,
        parse_entry: Callable[[str, Any, str], T],
        aliases: Callable[[T], Iterable[str]] = lambda _: (),
    ) -> None:
        self.kind, self.top_key, self.parse_entry, self.aliases = (
            kind,
            top_key,
            parse_entry,
            aliases,
        )
        self.entries: dict[str, T] = {}

    def parse_file(self, path: str | Path) -> dict[str, T]:
        """Parse a catalog file without registering it."""
        return parse_catalog_file(path, self.top_key, self.parse_entry)

    def add(self, entries: Mapping[str, T]) -> list[str]:
        """Register parsed entries (a name already known is replaced); returns their names.

        Names are kept lower-case, so that lookups are case-insensitive for user entries too.
        """
        self.entries.update({k.lower(): v for k, v in entries.items()})
        return list(entries)

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self.entries)

    def get(self, name: str) -> T:
        """The entry called ``name`` (or with that alias); UnknownNameError lists the names."""
        key = str(name).lower()
        if key in self.entries:
            return self.entries[key]
        for entry in self.entries.values():
            if key in (a.lower() for a in self.aliases(entry)):
                return entry
        raise UnknownNameError(self.kind, str(name), self.entries)


def replaceable_out(out: Path, force: bool, marker: str, kind: str, hint: str = "") -> bool:
    """Check that an output folder ``out`` (the ``--out`` argument) may be written: it is
    absent or empty, or ``force`` asks to replace it and it is a ``kind`` folder (one holding
    the file ``marker``), never any other folder. Returns True when it must be emptied first;
    raises ConfigError naming ``--out`` otherwise (``hint``: other ways out, e.g. ``"continue it
    with --resume, or "``)."""
    if not (out.exists() and any(out.iterdir())):
        return False
    if not force:
        raise ConfigError(
            f"--out {out}: exists and is not empty; {hint}choose another --out (or --force "
            "to replace it)"
        )
    if not (out / marker).is_file():
        raise ConfigError(
            f"--out {out}: --force only replaces a {kind} folder (one with {marker}), and "
            "this is not one"
        )
    return True


def load_folder_json(
    root: Path, name: str, what: str, made_by: str, error: type[ConfigError] = ConfigError
) -> dict[str, Any]:
    """The JSON object in file ``name`` of folder ``root`` (a ``what`` folder written by
    ``made_by``); ``error`` names the folder or file and the problem otherwise."""
    path = root / name
    if not root.is_dir():
        raise error(f"{root}: no such {what} folder ({made_by} writes one)")
    if not path.is_file():
        raise error(f"{root}: not a {what} folder: {name} is missing")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{path}: invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object")
    return data


def first_difference(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Index of the first entry where ``a`` and ``b`` differ (the shorter length when one is
    a prefix of the other)."""
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )
