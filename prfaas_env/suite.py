"""Scenario suites: named sets of scenario files split into a train set and a held-out set.

A suite is a folder with two sub-folders, ``train/`` and ``held_out/``, each holding scenario
files (``*.yaml``, the format of docs/simulator.md). Shipped suites live in
``prfaas_env/configs/suite/NAME/`` (the default suite is ``default``, described in
docs/suite.md); any other folder of that shape can be given by its path. A scenario's name is
its file name without ``.yaml``, unique within the suite.

The two sets differ in workload and topology, not only in seeds: a router tuned or trained on
``train`` is judged on ``held_out`` for how it generalises.

This module sits below the environment layer: it reads scenarios (topology, workload, SLOs)
and leaves each file's ``env:`` and ``policies:`` sections to the layers that use them (the
scenario's file path is kept for that).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prfaas_env.errors import ConfigError, load_yaml_mapping
from prfaas_env.sim.scenario import Scenario, parse_scenario

SUITE_DIR = Path(__file__).resolve().parent / "configs" / "suite"
DEFAULT_SUITE = "default"
SPLITS = ("train", "held_out")


@dataclass(frozen=True)
class SuiteScenario:
    """One scenario of a suite: its name, set (``train`` or ``held_out``), file, the parsed
    scenario and its ``description`` (the file's ``description:`` entry, or "")."""

    name: str
    split: str
    path: Path
    scenario: Scenario
    description: str = ""


@dataclass(frozen=True)
class Suite:
    """A loaded suite: its name, folder and scenarios per set (sorted by name)."""

    name: str
    path: Path
    train: tuple[SuiteScenario, ...]
    held_out: tuple[SuiteScenario, ...]

    @property
    def scenarios(self) -> tuple[SuiteScenario, ...]:
        """Every scenario, train set first."""
        return self.train + self.held_out

    def get(self, name: str) -> SuiteScenario:
        """The scenario called ``name``; the error lists the suite's scenarios."""
        for s in self.scenarios:
            if s.name == name:
                return s
        names = ", ".join(s.name for s in self.scenarios)
        raise ConfigError(f"suite {self.name!r} has no scenario {name!r}; it has: {names}")


def suite_names() -> list[str]:
    """Names of the shipped suites."""
    if not SUITE_DIR.is_dir():
        return []
    return sorted(p.name for p in SUITE_DIR.iterdir() if p.is_dir() and not p.name.startswith("."))


def resolve_suite(spec: str | Path) -> Path:
    """The folder of suite ``spec``: a shipped suite's name or a path to a suite folder.

    Raises:
        ConfigError: neither a shipped suite nor a folder; the message lists the shipped suites.
    """
    text = str(spec)
    if text in suite_names():
        return SUITE_DIR / text
    p = Path(text).expanduser()
    if p.is_dir():
        return p
    shipped = ", ".join(suite_names()) or "(none)"
    what = "file, not a suite folder" if p.exists() else "shipped suite or folder"
    raise ConfigError(
        f"suite {text!r}: no such {what}; shipped suites: {shipped} (or give a folder holding "
        f"{' and '.join(s + '/' for s in SPLITS)} with scenario files)"
    )


def _check_folders(folder: Path) -> None:
    for split in SPLITS:
        if not (folder / split).is_dir():
            present = sorted(p.name + "/" for p in folder.iterdir() if p.is_dir()) or ["none"]
            raise ConfigError(
                f"suite {folder}: missing folder {split}/ (a suite holds "
                f"{' and '.join(s + '/' for s in SPLITS)}; folders found: {', '.join(present)})"
            )


def _load_split(folder: Path, split: str) -> tuple[SuiteScenario, ...]:
    sub = folder / split
    files = sorted(sub.glob("*.yaml"))
    if not files:
        others = sorted(p.name for p in sub.iterdir()) or ["nothing"]
        raise ConfigError(
            f"suite {folder}: {split}/ holds no scenario files (*.yaml); found: {', '.join(others)}"
        )
    out = []
    for f in files:
        data = load_yaml_mapping(f)  # errors name the file and the line
        scenario = parse_scenario(data, str(f), f.resolve().parent)  # ... and the key
        desc = data.get("description", "")
        if not isinstance(desc, str):
            raise ConfigError(f"{f}: description: expected text, got {type(desc).__name__}")
        out.append(SuiteScenario(f.stem, split, f, scenario, " ".join(desc.split())))
    return tuple(out)


def load_suite(spec: str | Path = DEFAULT_SUITE) -> Suite:
    """Load suite ``spec`` (a shipped suite's name or a suite folder) and parse every scenario.

    Raises:
        ConfigError: unknown suite (the message lists the shipped ones), a folder without
            ``train/`` or ``held_out/`` or without scenario files in one, a scenario file that
            does not parse (the message names the file and the key), or two scenarios with the
            same name.
    """
    folder = resolve_suite(spec)
    _check_folders(folder)
    train = _load_split(folder, "train")
    held = _load_split(folder, "held_out")
    seen: dict[str, Path] = {}
    for s in train + held:
        if s.name in seen:
            raise ConfigError(
                f"suite {folder}: two scenarios are called {s.name!r} ({seen[s.name]} and "
                f"{s.path}); names must be unique across train/ and held_out/"
            )
        seen[s.name] = s.path
    name = str(spec) if str(spec) in suite_names() else folder.name
    return Suite(name, folder, train, held)
