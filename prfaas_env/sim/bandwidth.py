"""Usable bandwidth of a cross-datacenter channel over time.

The usable bandwidth is piecewise constant on a grid of ``step_s`` seconds and periodic with
the scenario's bandwidth horizon (default one hour): the series is drawn once per env at reset
and replayed cyclically. Kinds:

- ``constant``: the nominal bandwidth.
- ``fluctuating``: nominal x ``mean_fraction`` x exp(X - volatility^2 / 2), clipped to
  [``min_fraction``, 1] x nominal, where X is a stationary Ornstein-Uhlenbeck process in log
  space with standard deviation ``volatility`` and correlation time ``correlation_s``
  (sampled exactly on the grid as an AR(1) process).
- ``replay``: a CSV file ``time_s,gbps`` (header required, times increasing); each grid cell
  takes the last value at or before its start, the first value before the first row.

``outages`` apply to any kind: a list of ``{start_s, duration_s, fraction}``; grid cells that
start inside an outage carry at most ``fraction`` x nominal (0 = link down). Outage edges are
resolved to the grid step.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from prfaas_env.errors import ConfigError, check_keys, number

KINDS = ("constant", "fluctuating", "replay")
GBPS = 1e9 / 8.0  # bytes per second in one Gbps


@dataclass(frozen=True)
class BandwidthProcess:
    """Parameters of one link's bandwidth process (see the module docstring)."""

    kind: str = "constant"
    step_s: float = 1.0
    mean_fraction: float = 1.0
    volatility: float = 0.0
    correlation_s: float = 60.0
    min_fraction: float = 0.0
    replay_time_s: tuple[float, ...] = ()
    replay_gbps: tuple[float, ...] = ()
    outages: tuple[tuple[float, float, float], ...] = ()  # (start_s, duration_s, fraction)

    @property
    def is_constant(self) -> bool:
        """True when the bandwidth never changes (no grid events are needed)."""
        return self.kind == "constant" and not self.outages

    def cells(self, horizon_s: float) -> int:
        """Grid cells in one period of ``horizon_s`` seconds (1 for a constant process)."""
        return 1 if self.is_constant else max(1, math.ceil(horizon_s / self.step_s))

    def series(
        self, nominal_gbps: float, horizon_s: float, rng: np.random.Generator
    ) -> NDArray[np.float64]:
        """Usable bandwidth, bytes/s, per grid cell over one period of ``horizon_s`` seconds.

        A constant process returns one cell. Random draws come from ``rng`` only.
        """
        nominal = nominal_gbps * GBPS
        if self.is_constant:
            return np.array([nominal])
        cells = self.cells(horizon_s)
        t = np.arange(cells) * self.step_s
        if self.kind == "fluctuating":
            rho = math.exp(-self.step_s / self.correlation_s)
            eps = rng.standard_normal(cells)
            x = np.empty(cells)
            x[0] = self.volatility * eps[0]
            scale = self.volatility * math.sqrt(1.0 - rho * rho)
            for k in range(1, cells):  # AR(1): sequential by nature, once per reset
                x[k] = rho * x[k - 1] + scale * eps[k]
            frac = self.mean_fraction * np.exp(x - 0.5 * self.volatility**2)
            out = nominal * np.clip(frac, self.min_fraction, 1.0)
        elif self.kind == "replay":
            times = np.asarray(self.replay_time_s)
            idx = np.searchsorted(times, t, side="right") - 1
            out = np.asarray(self.replay_gbps)[np.maximum(idx, 0)] * GBPS
        else:
            out = np.full(cells, nominal)
        for start, duration, fraction in self.outages:
            inside = (t >= start) & (t < start + duration)
            out[inside] = np.minimum(out[inside], fraction * nominal)
        return out


def _read_replay(path: Path, where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if not path.is_file():
        raise ConfigError(f"{where}.csv: {path}: file not found")
    times: list[float] = []
    gbps: list[float] = []
    with path.open(newline="", encoding="utf-8-sig") as fh:
        rows = csv.reader(fh)
        header = next(rows, None)
        if header is None or [h.strip() for h in header] != ["time_s", "gbps"]:
            raise ConfigError(f"{path}:1: expected the header 'time_s,gbps', got {header!r}")
        for line, row in enumerate(rows, start=2):
            if not row or not "".join(row).strip():
                continue
            try:
                if len(row) != 2:
                    raise ValueError(f"expected 2 columns, got {len(row)}")
                t, g = float(row[0]), float(row[1])
            except ValueError as exc:
                raise ConfigError(f"{path}:{line}: {exc}") from exc
            if not (math.isfinite(t) and math.isfinite(g)) or t < 0 or g < 0:
                raise ConfigError(f"{path}:{line}: time_s and gbps must be finite and >= 0")
            if times and t <= times[-1]:
                raise ConfigError(f"{path}:{line}: time_s must increase ({t} after {times[-1]})")
            times.append(t)
            gbps.append(g)
    if not times:
        raise ConfigError(f"{path}: no rows")
    return tuple(times), tuple(gbps)


def parse_bandwidth(
    raw: Any, outages_raw: Any, where: str, base_dir: Path | None = None
) -> BandwidthProcess:
    """Parse a link's ``bandwidth`` and ``outages`` entries (both optional)."""
    raw = {"kind": "constant"} if raw is None else raw
    w = f"{where}.bandwidth"
    if not isinstance(raw, dict):
        raise ConfigError(f"{w}: expected a mapping with 'kind' ({', '.join(KINDS)})")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{w}.kind: {kind!r} is not allowed; allowed: {', '.join(KINDS)}")
    allowed = {
        "constant": ["step_s"],
        "fluctuating": ["step_s", "mean_fraction", "volatility", "correlation_s", "min_fraction"],
        "replay": ["step_s", "csv"],
    }[kind]
    check_keys(raw, w, ["kind"] + (["csv"] if kind == "replay" else []), allowed)
    fields: dict[str, Any] = {
        "kind": kind,
        "step_s": number(raw, "step_s", w, minimum=0.001, default=1.0),
    }
    if kind == "fluctuating":
        fields.update(
            mean_fraction=number(raw, "mean_fraction", w, minimum=0, maximum=1, default=0.8),
            volatility=number(raw, "volatility", w, minimum=0, maximum=5, default=0.3),
            correlation_s=number(raw, "correlation_s", w, minimum=0.001, default=30.0),
            min_fraction=number(raw, "min_fraction", w, minimum=0, maximum=1, default=0.05),
        )
    if kind == "replay":
        p = Path(str(raw["csv"]))
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        fields["replay_time_s"], fields["replay_gbps"] = _read_replay(p, w)
    outages = []
    if outages_raw is not None:
        if not isinstance(outages_raw, list):
            raise ConfigError(f"{where}.outages: expected a list of {{start_s, duration_s}}")
        for i, o in enumerate(outages_raw):
            ow = f"{where}.outages[{i}]"
            if not isinstance(o, dict):
                raise ConfigError(f"{ow}: expected a mapping")
            check_keys(o, ow, ["start_s", "duration_s"], ["fraction"])
            outages.append(
                (
                    number(o, "start_s", ow, minimum=0),
                    number(o, "duration_s", ow, minimum=0, exclusive_minimum=True),
                    number(o, "fraction", ow, minimum=0, maximum=1, default=0.0),
                )
            )
    return BandwidthProcess(**fields, outages=tuple(outages))
