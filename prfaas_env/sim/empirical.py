"""Empirical workload pieces: token-length quantile tables, client mixes and rate shapes.

- :class:`QuantileTable`: a token-length distribution given by its quantile function at a few
  cumulative probabilities, sampled by inverting it with linear interpolation between them.
- :class:`ClientSpec`: one client of a client mix, a renewal process of its own (gamma or
  Weibull gaps) carrying a share of the total rate and, optionally, its own length tables.
- :class:`RateShape`: a multiplier of the arrival rate over an episode (ramp, sinusoid or
  periodic steps). Any arrival process is run in *operational time* tau and a request at tau
  arrives at t = Lambda^-1(tau), Lambda(t) = integral of the multiplier from 0 to t: a Poisson
  process then has intensity multiplier(t) x rate, and a renewal or MMPP process keeps its
  burst structure, stretched where the rate is low and compressed where it is high.
- The shipped ServeGen tables (``servegen/language``, ``servegen/reason``), derived by
  :mod:`prfaas_env.workloads.servegen` (see ``prfaas_env/workloads/PROVENANCE.md``).

Only plain Python here (parsing, validation, means); the compiled sampling is in
:mod:`prfaas_env.sim.workload`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from prfaas_env.errors import ConfigError, check_keys, number

FAMILIES = ("gamma", "weibull", "exponential")
SHAPE_KINDS = ("ramp", "sinusoid", "steps")
TABLES = {"servegen/language": "servegen_language.json", "servegen/reason": "servegen_reason.json"}
MAX_TABLE_POINTS = 1024
MAX_CLIENTS = 4096


@dataclass(frozen=True)
class QuantileTable:
    """Token counts ``tokens[j]`` at cumulative probabilities ``probs[j]`` (0 first, 1 last,
    increasing); between two points the quantile function is linear."""

    probs: tuple[float, ...]
    tokens: tuple[float, ...]

    def mean(self) -> float:
        """Mean tokens of the interpolated distribution (before rounding to whole tokens)."""
        return sum(
            (self.probs[j + 1] - self.probs[j]) * (self.tokens[j] + self.tokens[j + 1]) / 2
            for j in range(len(self.probs) - 1)
        )

    @property
    def high(self) -> float:
        """Largest token count drawn."""
        return self.tokens[-1]


@dataclass(frozen=True)
class ClientSpec:
    """One client of a client mix: ``share`` of the total rate, gaps of ``family`` with
    ``shape`` (gamma: shape k, coefficient of variation 1/sqrt(k); Weibull: shape c), and its
    own input/output length tables (or None)."""

    share: float
    family: str
    shape: float
    input: QuantileTable | None = None
    output: QuantileTable | None = None

    def cv(self) -> float:
        """Coefficient of variation of the client's gaps."""
        k = self.shape
        if self.family == "weibull":
            return math.sqrt(math.gamma(1 + 2 / k) / math.gamma(1 + 1 / k) ** 2 - 1)
        return 1 / math.sqrt(k)


@dataclass(frozen=True)
class RateShape:
    """A rate multiplier over time (see the module docstring).

    ramp: ``start`` at t = 0, linear to ``end`` at ``duration_s``, then ``end``.
    sinusoid: ``1 + amplitude * sin(2 pi t / period_s + phase)`` (amplitude below 1).
    steps: ``multipliers[i]`` during ``[i, i + 1) * step_s``, repeating.
    """

    kind: str
    start: float = 1.0
    end: float = 1.0
    duration_s: float = 1.0
    amplitude: float = 0.0
    period_s: float = 1.0
    phase: float = 0.0
    step_s: float = 1.0
    multipliers: tuple[float, ...] = (1.0,)

    def multiplier(self, t: float) -> float:
        """The rate multiplier at time ``t`` (s)."""
        if self.kind == "ramp":
            return self.start + (self.end - self.start) * min(t / self.duration_s, 1.0)
        if self.kind == "sinusoid":
            return 1 + self.amplitude * math.sin(2 * math.pi * t / self.period_s + self.phase)
        return self.multipliers[int(t // self.step_s) % len(self.multipliers)]

    def integral(self, t: float) -> float:
        """Lambda(t): the multiplier integrated from 0 to ``t`` (operational time, s)."""
        if self.kind == "ramp":
            d, a, b = self.duration_s, self.start, self.end
            if t <= d:
                return a * t + (b - a) * t * t / (2 * d)
            return d * (a + b) / 2 + b * (t - d)
        if self.kind == "sinusoid":
            w = 2 * math.pi / self.period_s
            return t + self.amplitude / w * (math.cos(self.phase) - math.cos(w * t + self.phase))
        n, s = len(self.multipliers), self.step_s
        whole, rest = divmod(t, n * s)
        k = int(rest // s)
        return (
            whole * s * sum(self.multipliers)
            + s * sum(self.multipliers[:k])
            + (rest - k * s) * self.multipliers[k % n]
        )

    def long_run_mean(self) -> float:
        """Mean multiplier over a long episode (ramp: its end value)."""
        if self.kind == "ramp":
            return self.end
        if self.kind == "sinusoid":
            return 1.0
        return sum(self.multipliers) / len(self.multipliers)


# ---- shipped tables ----------------------------------------------------------------------------
@cache
def shipped_table(name: str) -> dict[str, Any]:
    """The shipped table ``name`` (see :data:`TABLES`) as a mapping."""
    if name not in TABLES:
        raise ConfigError(f"unknown table {name!r}; shipped tables: {', '.join(sorted(TABLES))}")
    text = (resources.files("prfaas_env.workloads") / "data" / TABLES[name]).read_text()
    return json.loads(text)


def _table_name(raw: dict[str, Any], where: str) -> str:
    name = raw.get("table")
    if name not in TABLES:
        raise ConfigError(
            f"{where}.table: {name!r} is not a shipped table; shipped: {', '.join(sorted(TABLES))}"
        )
    return str(name)


def shipped_clients(name: str) -> tuple[ClientSpec, ...]:
    """The client mix of shipped table ``name``, with each client's length tables."""
    t = shipped_table(name)
    probs = tuple(float(p) for p in t["probs"])
    return tuple(
        ClientSpec(
            share=float(c["share"]),
            family=c["family"],
            shape=float(c["shape"]),
            input=QuantileTable(probs, tuple(float(v) for v in c["input"])),
            output=QuantileTable(probs, tuple(float(v) for v in c["output"])),
        )
        for c in t["clients"]
    )


# ---- parsing -----------------------------------------------------------------------------------
def parse_quantiles(raw: Any, where: str, max_tokens: int) -> QuantileTable:
    """A table from ``[[probability, tokens], ...]`` (probabilities from 0 to 1, increasing;
    tokens non-decreasing, from 1 to ``max_tokens``)."""
    if not isinstance(raw, list) or not 2 <= len(raw) <= MAX_TABLE_POINTS:
        raise ConfigError(
            f"{where}: expected a list of 2 to {MAX_TABLE_POINTS} [probability, tokens] pairs"
        )
    probs, toks = [], []
    for i, pair in enumerate(raw):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise ConfigError(f"{where}[{i}]: expected [probability, tokens], got {pair!r}")
        probs.append(number({"p": pair[0]}, "p", f"{where}[{i}]", minimum=0, maximum=1))
        toks.append(number({"t": pair[1]}, "t", f"{where}[{i}]", minimum=1, maximum=max_tokens))
    if probs[0] != 0.0 or probs[-1] != 1.0:
        raise ConfigError(f"{where}: the first probability must be 0 and the last 1")
    for i in range(1, len(probs)):
        if probs[i] <= probs[i - 1]:
            raise ConfigError(f"{where}[{i}]: probabilities must increase")
        if toks[i] < toks[i - 1]:
            raise ConfigError(f"{where}[{i}]: tokens must not decrease")
    return QuantileTable(tuple(probs), tuple(toks))


def shipped_lengths(raw: dict[str, Any], where: str, side: str) -> QuantileTable:
    """The pooled ``side`` (input or output) table named by ``raw['table']``."""
    t = shipped_table(_table_name(raw, where))
    return QuantileTable(
        tuple(float(p) for p in t["probs"]), tuple(float(v) for v in t["pooled"][side])
    )


def parse_clients(raw: Any, where: str, max_tokens: int) -> tuple[ClientSpec, ...]:
    """A client mix: a shipped table's name, or a list of ``{share, family, shape, input,
    output}`` (shares are normalised to sum to 1; input/output are quantile lists)."""
    if isinstance(raw, str):
        return shipped_clients(_table_name({"table": raw}, where))
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_CLIENTS:
        raise ConfigError(
            f"{where}: expected a shipped table ({', '.join(sorted(TABLES))}) or a list of 1 to "
            f"{MAX_CLIENTS} clients {{share, family, shape, input, output}}"
        )
    out = []
    for i, c in enumerate(raw):
        cw = f"{where}[{i}]"
        if not isinstance(c, dict):
            raise ConfigError(f"{cw}: expected a mapping with share, family, shape")
        check_keys(c, cw, ["share"], ["family", "shape", "input", "output"])
        fam = c.get("family", "exponential")
        if fam not in FAMILIES:
            raise ConfigError(
                f"{cw}.family: {fam!r} is not allowed; allowed: {', '.join(FAMILIES)}"
            )
        if fam == "exponential":
            if "shape" in c:
                raise ConfigError(f"{cw}.shape: exponential gaps take no shape")
            shape = 1.0
        else:
            shape = number(c, "shape", cw, minimum=0.01, maximum=100)
        out.append(
            ClientSpec(
                share=number(c, "share", cw, minimum=0, exclusive_minimum=True),
                family="gamma" if fam == "exponential" else fam,
                shape=shape,
                input=None
                if "input" not in c
                else parse_quantiles(c["input"], f"{cw}.input", max_tokens),
                output=None
                if "output" not in c
                else parse_quantiles(c["output"], f"{cw}.output", max_tokens),
            )
        )
    total = sum(c.share for c in out)
    return tuple(ClientSpec(c.share / total, c.family, c.shape, c.input, c.output) for c in out)


def parse_rate_shape(raw: Any, where: str) -> RateShape | None:
    """A rate shape from its mapping (None when ``raw`` is None)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with 'kind' ({', '.join(SHAPE_KINDS)})")
    kind = raw.get("kind")
    if kind not in SHAPE_KINDS:
        raise ConfigError(
            f"{where}.kind: {kind!r} is not allowed; allowed: {', '.join(SHAPE_KINDS)}"
        )
    if kind == "ramp":
        check_keys(raw, where, ["kind", "start", "end", "duration_s"])
        return RateShape(
            "ramp",
            start=number(raw, "start", where, minimum=0.01, maximum=100),
            end=number(raw, "end", where, minimum=0.01, maximum=100),
            duration_s=number(raw, "duration_s", where, minimum=0, exclusive_minimum=True),
        )
    if kind == "sinusoid":
        check_keys(raw, where, ["kind", "amplitude", "period_s"], ["phase"])
        amp = number(raw, "amplitude", where, minimum=0, maximum=0.99)
        return RateShape(
            "sinusoid",
            amplitude=amp,
            period_s=number(raw, "period_s", where, minimum=0, exclusive_minimum=True),
            phase=number(raw, "phase", where, minimum=-100, maximum=100, default=0.0),
        )
    check_keys(raw, where, ["kind", "step_s"], ["multipliers", "table"])
    if ("multipliers" in raw) == ("table" in raw):
        raise ConfigError(
            f"{where}: give either multipliers (a list) or table (a shipped day profile: "
            f"{', '.join(sorted(TABLES))})"
        )
    if "table" in raw:
        mult = [float(v) for v in shipped_table(_table_name(raw, where))["day_profile"]]
    else:
        mult = raw["multipliers"]
        if not isinstance(mult, list) or not 1 <= len(mult) <= MAX_TABLE_POINTS:
            raise ConfigError(
                f"{where}.multipliers: expected a list of 1 to {MAX_TABLE_POINTS} numbers"
            )
        mult = [
            number({"m": m}, "m", f"{where}.multipliers[{i}]", minimum=0.01, maximum=100)
            for i, m in enumerate(mult)
        ]
    return RateShape(
        "steps",
        step_s=number(raw, "step_s", where, minimum=0, exclusive_minimum=True),
        multipliers=tuple(mult),
    )
