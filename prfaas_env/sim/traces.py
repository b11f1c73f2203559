"""Request-trace readers: Mooncake JSONL and Azure LLM inference CSV, plain or gzip-compressed.

A trace is a list of requests, each with an arrival time, a prompt length and an output length
(tokens), and for formats that carry it, the prefix-block hashes of its prompt. Readers return a
:class:`Trace` holding these as NumPy arrays, sorted by arrival, with times in seconds relative
to the first request.

Two Mooncake traces ship with the package (see ``prfaas_env/traces/PROVENANCE.md``) and load
by name::

    trace = load_trace("mooncake-conversation")
    first_40_min = trace.window(0, 2400)

Bad input raises :class:`~prfaas_env.errors.ConfigError` with ``path:line: what is wrong``;
``on_error="skip"`` drops malformed lines instead, counts them in :attr:`Trace.skipped` and
warns once with a :class:`TraceWarning`.
"""

from __future__ import annotations

import gzip
import json
import math
import sys
import warnings
import zlib
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import datetime
from importlib import resources
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from prfaas_env.errors import ConfigError

__all__ = [
    "BLOCK_TOKENS",
    "Trace",
    "TraceWarning",
    "load_azure_csv",
    "load_mooncake_jsonl",
    "load_trace",
    "shipped_traces",
]

BLOCK_TOKENS = 512
"""Tokens per prefix block in the Mooncake traces."""

ON_ERROR_CHOICES = ("raise", "skip")
UNSORTED_CHOICES = ("raise", "sort")
FORMATS = ("azure", "mooncake")

# Shipped name -> (file under prfaas_env/traces/data, format).
_SHIPPED: dict[str, tuple[str, str]] = {
    "mooncake-conversation": ("mooncake_conversation.jsonl.gz", "mooncake"),
    "mooncake-synthetic": ("mooncake_synthetic.jsonl.gz", "mooncake"),
}
# File-name suffix (lower case) -> format, for load_trace(format=None).
_SUFFIX_FORMATS = {
    ".jsonl": "mooncake",
    ".jsonl.gz": "mooncake",
    ".csv": "azure",
    ".csv.gz": "azure",
}

_MOONCAKE_FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")
_AZURE_HEADER = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_GZIP_MAGIC = b"\x1f\x8b"
_UTF8_BOM = b"\xef\xbb\xbf"


class TraceWarning(UserWarning):
    """A trace was loaded with some malformed lines skipped (``on_error="skip"``)."""


class _LineError(Exception):
    """One line of a trace file is malformed; the message says what is wrong."""


@dataclass(frozen=True)
class Trace:
    """Requests of a trace as arrays (struct of arrays), sorted by arrival.

    Attributes:
        name: label for reports; :meth:`window` appends the time range it kept.
        arrival_s: float64 ``[n]``, arrival time in seconds, non-decreasing. Loaders make it
            relative to the trace's first request (so ``arrival_s[0] == 0.0``); :meth:`window`
            makes it relative to the window start.
        input_tokens: int64 ``[n]``, prompt length in tokens, ``>= 1``.
        output_tokens: int64 ``[n]``, generated length in tokens, ``>= 1``.
        block_offsets: int64 ``[n + 1]``, CSR row offsets into ``block_ids``
            (``block_offsets[0] == 0``, ``block_offsets[-1] == len(block_ids)``).
        block_ids: int64 ``[m]``, prefix-block hashes; request ``i`` has
            ``block_ids[block_offsets[i]:block_offsets[i + 1]]``. Two requests whose first ``k``
            ids match share a ``k * block_tokens``-token prompt prefix. Every row is empty when
            the format has no prefix information (Azure).
        block_tokens: tokens per prefix block (512 for Mooncake).
        skipped: malformed lines dropped while loading (only with ``on_error="skip"``).
        source: the file path, or the shipped name, the trace was loaded from
            (``load_trace(trace.source)`` reloads it).

    Construction checks the shapes and invariants above and raises ConfigError if they fail.
    """

    name: str
    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    block_offsets: np.ndarray
    block_ids: np.ndarray
    block_tokens: int
    skipped: int = 0
    source: str = ""

    def __post_init__(self) -> None:
        for field, dtype in (
            ("arrival_s", np.float64),
            ("input_tokens", np.int64),
            ("output_tokens", np.int64),
            ("block_offsets", np.int64),
            ("block_ids", np.int64),
        ):
            arr = np.asarray(getattr(self, field), dtype=dtype)
            if arr.ndim != 1:
                raise ConfigError(f"trace {self.name!r}: {field} must be 1-D, got {arr.shape}")
            object.__setattr__(self, field, arr)
        n = self.arrival_s.size
        where = f"trace {self.name!r}"
        if self.input_tokens.size != n or self.output_tokens.size != n:
            raise ConfigError(
                f"{where}: arrival_s, input_tokens and output_tokens must have equal lengths, got "
                f"{n}, {self.input_tokens.size}, {self.output_tokens.size}"
            )
        off = self.block_offsets
        if off.size != n + 1 or off[0] != 0 or off[-1] != self.block_ids.size:
            raise ConfigError(
                f"{where}: block_offsets must have n + 1 = {n + 1} entries from 0 to "
                f"len(block_ids) = {self.block_ids.size}"
            )
        if np.any(np.diff(off) < 0):
            raise ConfigError(f"{where}: block_offsets must be non-decreasing")
        if not np.all(np.isfinite(self.arrival_s)) or np.any(self.arrival_s < 0):
            raise ConfigError(f"{where}: arrival_s must be finite and >= 0")
        if np.any(np.diff(self.arrival_s) < 0):
            raise ConfigError(f"{where}: arrival_s must be non-decreasing")
        if np.any(self.input_tokens < 1) or np.any(self.output_tokens < 1):
            raise ConfigError(f"{where}: input_tokens and output_tokens must be >= 1")
        bt = self.block_tokens
        if isinstance(bt, bool) or not isinstance(bt, (int, np.integer)) or bt < 1:
            raise ConfigError(f"{where}: block_tokens must be a positive integer, got {bt!r}")
        object.__setattr__(self, "block_tokens", int(bt))

    def __len__(self) -> int:
        return int(self.arrival_s.size)

    @property
    def duration_s(self) -> float:
        """Arrival time of the last request in seconds (0.0 for an empty or one-request trace)."""
        return float(self.arrival_s[-1]) if self.arrival_s.size > 1 else 0.0

    @property
    def has_prefix_info(self) -> bool:
        """Whether any request carries prefix-block hashes."""
        return self.block_ids.size > 0

    def blocks(self, i: int) -> np.ndarray:
        """Prefix-block ids of request ``i`` (a view; empty without prefix information)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"request index {i} out of range for a trace of {n} requests")
        i %= n
        return self.block_ids[self.block_offsets[i] : self.block_offsets[i + 1]]

    def window(self, start_s: float, end_s: float | None = None) -> Trace:
        """Requests arriving in ``[start_s, end_s)`` seconds, with ``start_s`` subtracted.

        The returned trace starts at time 0 at ``start_s``, so a gap before the first kept
        request is preserved. ``end_s=None`` keeps everything from ``start_s`` on.

        Raises:
            ConfigError: ``start_s`` is negative or not finite, ``end_s <= start_s``, or no
                request arrives in the window.
        """
        start = float(start_s)
        if not math.isfinite(start) or start < 0:
            raise ConfigError(f"trace {self.name!r}: window start_s must be >= 0, got {start_s!r}")
        end = math.inf if end_s is None else float(end_s)
        if math.isnan(end) or end <= start:
            raise ConfigError(
                f"trace {self.name!r}: window end_s must be > start_s = {start:g}, got {end_s!r}"
            )
        lo = int(np.searchsorted(self.arrival_s, start, side="left"))
        hi = int(np.searchsorted(self.arrival_s, end, side="left"))
        label = f"[{_fmt_s(start)}s,{'end' if end_s is None else _fmt_s(end) + 's'})"
        if hi <= lo:
            span = f"0s to {_fmt_s(self.duration_s)}s" if len(self) else "no requests"
            raise ConfigError(
                f"trace {self.name!r}: no requests arrive in window {label}; arrivals span {span}"
            )
        off = self.block_offsets
        return Trace(
            name=f"{self.name}{label}",
            arrival_s=self.arrival_s[lo:hi] - start,
            input_tokens=self.input_tokens[lo:hi],
            output_tokens=self.output_tokens[lo:hi],
            block_offsets=off[lo : hi + 1] - off[lo],
            block_ids=self.block_ids[off[lo] : off[hi]],
            block_tokens=self.block_tokens,
            skipped=self.skipped,
            source=self.source,
        )


def _fmt_s(x: float) -> str:
    """Seconds for a label: up to millisecond precision, without trailing zeros."""
    return f"{x:.3f}".rstrip("0").rstrip(".")


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_choice(arg: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{arg} must be one of {', '.join(allowed)}; got {value!r}")


def _stem(path: Path) -> str:
    """File name without ``.gz`` and its format suffix, as the default trace name."""
    name = path.name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    return Path(name).stem or name


def _iter_lines(path: Path, stack: ExitStack) -> Iterator[tuple[int, bytes]]:
    """Open ``path`` (gzip detected from its first bytes) and yield ``(1-based line, bytes)``.

    A UTF-8 byte-order mark at the start of the file is removed. Read and decompression errors
    become ConfigError naming the file and the line reached.
    """
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    if not path.is_file():
        raise ConfigError(f"{path}: not a file")
    try:
        raw = stack.enter_context(path.open("rb"))
        is_gzip = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        fh = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb")) if is_gzip else raw
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    lineno = 0
    try:
        for lineno, line in enumerate(fh, start=1):
            if lineno == 1 and line.startswith(_UTF8_BOM):
                line = line[len(_UTF8_BOM) :]
            yield lineno, line
    except (OSError, EOFError, zlib.error) as exc:
        raise ConfigError(
            f"{path}:{lineno + 1}: cannot read (corrupt or truncated): {exc}"
        ) from exc


def _outside_stacklevel() -> int:
    """``stacklevel`` for a warning raised in the caller, pointing at the first outside frame."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back
        level += 1
    return level


def _decode(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _LineError(f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def _positive_int(value: Any, field: str) -> int:
    """A JSON integer ``>= 1`` (bools and floats are rejected)."""
    if type(value) is not int or value < 1 or value > _INT64_MAX:
        raise _LineError(f"{field} must be a positive integer, got {_short(value)}")
    return value


class _Rows:
    """Valid rows collected while reading a file, plus the skip and ordering bookkeeping."""

    def __init__(self, path: Path, on_error: str, unsorted: str, with_blocks: bool) -> None:
        self.path = path
        self.on_error = on_error
        self.unsorted = unsorted
        self.times: list[float] = []
        self.inputs: list[int] = []
        self.outputs: list[int] = []
        self.blocks: list[list[int]] | None = [] if with_blocks else None
        self.prev: tuple[float, int, Any] | None = None  # (time, line, raw) of the previous row
        self.skipped = 0
        self.first_skip = ""

    def bad_line(self, lineno: int, reason: str) -> None:
        """Raise for a malformed line, or count it when skipping."""
        if self.on_error == "raise":
            raise ConfigError(f"{self.path}:{lineno}: {reason}")
        if not self.skipped:
            self.first_skip = f"line {lineno}: {reason}"
        self.skipped += 1

    def add(
        self, lineno: int, t: float, raw_t: Any, n_in: int, n_out: int, ids: list[int] | None
    ) -> None:
        """Append a valid row; ``t`` is its time in the reader's unit, ``raw_t`` as written."""
        if self.unsorted == "raise" and self.prev is not None and t < self.prev[0]:
            raise ConfigError(
                f"{self.path}:{lineno}: timestamp {raw_t} is earlier than {self.prev[2]} on line "
                f"{self.prev[1]}; timestamps must be non-decreasing (pass unsorted='sort' to "
                f"sort by arrival)"
            )
        self.prev = (t, lineno, raw_t)
        self.times.append(t)
        self.inputs.append(n_in)
        self.outputs.append(n_out)
        if self.blocks is not None:
            self.blocks.append(ids if ids is not None else [])

    def build(self, name: str, per_second: float, block_tokens: int) -> Trace:
        """Arrays for the collected rows; ``per_second`` is the time unit's ticks per second."""
        n = len(self.times)
        if n == 0:
            if self.skipped:
                raise ConfigError(
                    f"{self.path}: no valid requests ({self.skipped} malformed line(s) skipped; "
                    f"first {self.first_skip})"
                )
            raise ConfigError(f"{self.path}: no requests (the file is empty)")
        times = np.asarray(self.times, dtype=np.float64)
        inputs = np.asarray(self.inputs, dtype=np.int64)
        outputs = np.asarray(self.outputs, dtype=np.int64)
        blocks = self.blocks
        if self.unsorted == "sort" and np.any(np.diff(times) < 0):
            order = np.argsort(times, kind="stable")
            times, inputs, outputs = times[order], inputs[order], outputs[order]
            if blocks is not None:
                blocks = [blocks[k] for k in order]
        counts = np.zeros(n, dtype=np.int64)
        if blocks is not None:
            counts[:] = [len(b) for b in blocks]
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        total = int(offsets[-1])
        ids = (
            np.fromiter(chain.from_iterable(blocks), dtype=np.int64, count=total)
            if blocks is not None and total
            else np.zeros(0, dtype=np.int64)
        )
        if self.skipped:
            warnings.warn(
                f"{self.path}: skipped {self.skipped} malformed line(s) (first {self.first_skip})",
                TraceWarning,
                stacklevel=_outside_stacklevel(),
            )
        return Trace(
            name=name,
            arrival_s=(times - times[0]) / per_second,
            input_tokens=inputs,
            output_tokens=outputs,
            block_offsets=offsets,
            block_ids=ids,
            block_tokens=block_tokens,
            skipped=self.skipped,
            source=str(self.path),
        )


def _parse_mooncake_line(line: bytes, block_tokens: int) -> tuple[Any, float, int, int, list[int]]:
    """``(timestamp as written, timestamp in ms, input_length, output_length, hash_ids)``."""
    text = _decode(line)
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _LineError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise _LineError(f"expected a JSON object, got {type(row).__name__}")
    missing = [k for k in _MOONCAKE_FIELDS if k not in row]
    if missing:
        raise _LineError(
            f"missing field(s) {', '.join(missing)}; required: {', '.join(_MOONCAKE_FIELDS)}"
        )
    ts = row["timestamp"]
    t = math.nan
    if type(ts) in (int, float):
        try:
            t = float(ts)
        except OverflowError:
            pass
    if not (math.isfinite(t) and t >= 0):
        raise _LineError(f"timestamp must be a finite number >= 0 (milliseconds), got {_short(ts)}")
    n_in = _positive_int(row["input_length"], "input_length")
    n_out = _positive_int(row["output_length"], "output_length")
    ids = row["hash_ids"]
    if not isinstance(ids, list):
        raise _LineError(f"hash_ids must be a list of integers, got {type(ids).__name__}")
    if not all(type(h) is int for h in ids):
        k, bad = next((k, h) for k, h in enumerate(ids) if type(h) is not int)
        raise _LineError(f"hash_ids[{k}] must be an integer, got {_short(bad)}")
    if ids and (min(ids) < _INT64_MIN or max(ids) > _INT64_MAX):
        raise _LineError("hash_ids must fit in a signed 64-bit integer")
    need = -(-n_in // block_tokens)
    if len(ids) != need:
        raise _LineError(
            f"hash_ids has {len(ids)} entries but input_length {n_in} needs "
            f"ceil({n_in}/{block_tokens}) = {need}"
        )
    return ts, t, n_in, n_out, ids


def load_mooncake_jsonl(
    path: str | Path,
    *,
    block_tokens: int = BLOCK_TOKENS,
    on_error: str = "raise",
    unsorted: str = "raise",
    name: str | None = None,
) -> Trace:
    """Read a Mooncake trace: one JSON object per line, plain or gzip-compressed.

    Each line is ``{"timestamp": ms, "input_length": tokens, "output_length": tokens,
    "hash_ids": [int, ...]}``: the arrival time in milliseconds since the trace start (a
    non-negative number), the prompt and output lengths in tokens, and one hash per
    ``block_tokens``-token prompt block, so ``len(hash_ids) == ceil(input_length /
    block_tokens)``. Other fields are ignored; blank lines are skipped.

    An ``output_length`` of 0 is treated as malformed like any other length below 1: the
    simulator needs at least one decode step per request. Traces that contain such rows load
    with ``on_error="skip"``, which drops them.

    Args:
        path: the ``.jsonl`` file, optionally gzip-compressed (detected from its content).
        block_tokens: tokens per prefix block (512 for the published Mooncake traces).
        on_error: ``"raise"`` stops at the first malformed line; ``"skip"`` drops malformed
            lines, counts them in :attr:`Trace.skipped` and emits one :class:`TraceWarning`.
        unsorted: ``"raise"`` rejects a timestamp earlier than the previous row's; ``"sort"``
            sorts the rows by time (stable, so rows with equal times keep their file order).
        name: trace name; defaults to the file name without its suffixes.

    Returns:
        The trace, with arrivals in seconds relative to its first request.

    Raises:
        ConfigError: the file is missing or unreadable, has no valid rows, a line is malformed
            (with ``on_error="raise"``) or out of order (with ``unsorted="raise"``). Line errors
            read ``path:line: what is wrong``.
    """
    _check_choice("on_error", on_error, ON_ERROR_CHOICES)
    _check_choice("unsorted", unsorted, UNSORTED_CHOICES)
    if isinstance(block_tokens, bool) or not isinstance(block_tokens, int) or block_tokens < 1:
        raise ConfigError(f"block_tokens must be a positive integer, got {block_tokens!r}")
    p = Path(path)
    rows = _Rows(p, on_error, unsorted, with_blocks=True)
    with ExitStack() as stack:
        for lineno, line in _iter_lines(p, stack):
            if not line.strip():
                continue
            try:
                raw_t, t, n_in, n_out, ids = _parse_mooncake_line(line, block_tokens)
            except _LineError as exc:
                rows.bad_line(lineno, str(exc))
                continue
            rows.add(lineno, t, raw_t, n_in, n_out, ids)
    return rows.build(name if name is not None else _stem(p), 1000.0, block_tokens)


def _split_csv(line: str) -> list[str]:
    """Fields of one CSV line, with surrounding whitespace and double quotes removed."""
    return [f.strip().strip('"').strip() for f in line.rstrip("\r\n").split(",")]


def _parse_azure_time(text: str) -> tuple[datetime, float]:
    """``YYYY-MM-DD HH:MM:SS[.fraction]`` as (whole-second datetime, fraction in seconds).

    The fraction may have any number of digits (the Azure traces use 7, one more than
    :mod:`datetime` accepts), so it is split off and parsed separately.
    """
    whole, dot, frac = text.partition(".")
    if dot and not (frac.isascii() and frac.isdigit()):
        raise ValueError(text)
    stamp = datetime.fromisoformat(whole)
    if stamp.tzinfo is not None or stamp.microsecond or len(whole) != 19:
        raise ValueError(text)
    return stamp, (int(frac) / 10 ** len(frac) if dot else 0.0)


def _azure_int(text: str, field: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < 1 or value > _INT64_MAX:
        raise _LineError(f"{field} must be a positive integer, got {text!r}")
    return value


def load_azure_csv(
    path: str | Path,
    *,
    on_error: str = "raise",
    unsorted: str = "raise",
    name: str | None = None,
) -> Trace:
    """Read an Azure LLM inference trace CSV, plain or gzip-compressed.

    The first non-blank line must be the header ``TIMESTAMP,ContextTokens,GeneratedTokens``; a
    UTF-8 byte-order mark before it is ignored. ``TIMESTAMP`` is a date and time such as
    ``2023-11-16 18:15:46.6805900`` (any number of fractional-second digits, no time zone);
    arrivals are made relative to the first row. ``ContextTokens`` and ``GeneratedTokens`` are
    the prompt and output lengths in tokens. The format has no prefix information, so every
    request's block list is empty.

    A ``GeneratedTokens`` of 0 is treated as malformed like any other length below 1: the
    simulator needs at least one decode step per request. Traces that contain such rows load
    with ``on_error="skip"``, which drops them.

    Args:
        path: the ``.csv`` file, optionally gzip-compressed (detected from its content).
        on_error: ``"raise"`` stops at the first malformed row; ``"skip"`` drops malformed
            rows, counts them in :attr:`Trace.skipped` and emits one :class:`TraceWarning`.
            A missing or wrong header is always an error.
        unsorted: ``"raise"`` rejects a timestamp earlier than the previous row's; ``"sort"``
            sorts the rows by time (stable).
        name: trace name; defaults to the file name without its suffixes.

    Returns:
        The trace, with arrivals in seconds relative to its first request.

    Raises:
        ConfigError: as for :func:`load_mooncake_jsonl`, plus a missing or wrong header.
    """
    _check_choice("on_error", on_error, ON_ERROR_CHOICES)
    _check_choice("unsorted", unsorted, UNSORTED_CHOICES)
    p = Path(path)
    rows = _Rows(p, on_error, unsorted, with_blocks=False)
    ref: datetime | None = None  # whole second of the first valid row; times are kept from it
    header_seen = False
    with ExitStack() as stack:
        for lineno, line in _iter_lines(p, stack):
            if not line.strip():
                continue
            if not header_seen:
                try:
                    fields = _split_csv(_decode(line))
                except _LineError as exc:
                    raise ConfigError(f"{p}:{lineno}: {exc}") from None
                if tuple(fields) != _AZURE_HEADER:
                    raise ConfigError(
                        f"{p}:{lineno}: expected the header {','.join(_AZURE_HEADER)}, got "
                        f"{_short(line.decode('utf-8', 'replace').strip())}"
                    )
                header_seen = True
                continue
            try:
                fields = _split_csv(_decode(line))
                if len(fields) != len(_AZURE_HEADER):
                    raise _LineError(
                        f"expected {len(_AZURE_HEADER)} columns "
                        f"({','.join(_AZURE_HEADER)}), got {len(fields)}"
                    )
                try:
                    stamp, frac = _parse_azure_time(fields[0])
                except ValueError:
                    raise _LineError(
                        f"TIMESTAMP must look like 2023-11-16 18:15:46.6805900, "
                        f"got {_short(fields[0])}"
                    ) from None
                n_in = _azure_int(fields[1], "ContextTokens")
                n_out = _azure_int(fields[2], "GeneratedTokens")
            except _LineError as exc:
                rows.bad_line(lineno, str(exc))
                continue
            if ref is None:
                ref = stamp
            delta = stamp - ref
            t = delta.days * 86400 + delta.seconds + frac
            rows.add(lineno, t, repr(fields[0]), n_in, n_out, None)
    if not header_seen:
        raise ConfigError(
            f"{p}: no requests (the file is empty; expected the header {','.join(_AZURE_HEADER)})"
        )
    return rows.build(name if name is not None else _stem(p), 1.0, BLOCK_TOKENS)


def shipped_traces() -> list[str]:
    """Names of the traces shipped with the package, for :func:`load_trace`."""
    return sorted(_SHIPPED)


def _detect_format(path: Path) -> str:
    lower = path.name.lower()
    for suffix, fmt in sorted(_SUFFIX_FORMATS.items(), key=lambda kv: -len(kv[0])):
        if lower.endswith(suffix):
            return fmt
    known = "; ".join(
        f"{fmt}: {', '.join(s for s, f in _SUFFIX_FORMATS.items() if f == fmt)}" for fmt in FORMATS
    )
    raise ConfigError(
        f"{path}: cannot tell the trace format from the file name; pass format= one of "
        f"{', '.join(FORMATS)} (suffixes {known})"
    )


def _load_file(
    path: Path, fmt: str, on_error: str, unsorted: str, name: str | None = None
) -> Trace:
    if fmt == "mooncake":
        return load_mooncake_jsonl(path, on_error=on_error, unsorted=unsorted, name=name)
    return load_azure_csv(path, on_error=on_error, unsorted=unsorted, name=name)


def load_trace(
    spec: str | Path,
    *,
    format: str | None = None,
    on_error: str = "raise",
    unsorted: str = "raise",
) -> Trace:
    """Load a shipped trace by name, or a trace file by path.

    Args:
        spec: a name from :func:`shipped_traces` (e.g. ``"mooncake-conversation"``) or the path
            of a trace file.
        format: ``"mooncake"`` or ``"azure"``; ``None`` tells it from the file name
            (``.jsonl``/``.jsonl.gz`` are Mooncake, ``.csv``/``.csv.gz`` are Azure).
        on_error: ``"raise"`` or ``"skip"``, as for :func:`load_mooncake_jsonl`.
        unsorted: ``"raise"`` or ``"sort"``, as for :func:`load_mooncake_jsonl`.

    Returns:
        The trace. A shipped trace is named after, and has ``source`` set to, its shipped name.

    Raises:
        ConfigError: unknown format, a path that does not exist (the message lists the shipped
            names), a suffix that does not tell the format, or any reader error.
    """
    if format is not None:
        _check_choice("format", format, FORMATS)
    _check_choice("on_error", on_error, ON_ERROR_CHOICES)
    _check_choice("unsorted", unsorted, UNSORTED_CHOICES)
    if isinstance(spec, str) and spec in _SHIPPED:
        file_name, fmt = _SHIPPED[spec]
        if format is not None and format != fmt:
            raise ConfigError(f"shipped trace {spec!r} is in {fmt} format, not {format}")
        resource = resources.files("prfaas_env.traces") / "data" / file_name
        with resources.as_file(resource) as real:
            trace = _load_file(Path(real), fmt, on_error, unsorted, name=spec)
        return replace(trace, source=spec)
    path = Path(spec)
    if not path.exists():
        raise ConfigError(
            f"{path}: file not found (and not a shipped trace; shipped traces: "
            f"{', '.join(shipped_traces())})"
        )
    fmt = format if format is not None else _detect_format(path)
    return _load_file(path, fmt, on_error, unsorted)
