"""Workloads: synthetic request streams and trace replay, sampled per env in compiled code.

A workload produces, per env, the next request: arrival time (s), input and output tokens and
its prefix blocks (ids of ``block_tokens``-token blocks; two requests whose first k ids agree
share a k-block prefix). Kinds:

**synthetic**
  - arrivals: ``poisson`` (rate ``rate_rps``); ``gamma`` (renewal process with gamma gaps of
    coefficient of variation ``cv``: cv = 1 is Poisson, larger is burstier); ``mmpp``
    (two-state Markov-modulated Poisson: a burst state at ``burst_factor`` times the base rate
    for a fraction ``burst_fraction`` of the time, bursts lasting ``burst_mean_s`` on average;
    the long-run rate is ``rate_rps``); ``clients`` (a client mix: the superposition of one
    renewal process per client, each with its share of ``rate_rps`` and its own gamma or
    Weibull gaps, started in equilibrium; ``clients`` names a shipped ServeGen mix or lists
    the clients, see :mod:`prfaas_env.sim.empirical`); ``closed_loop`` (``concurrency``
    clients, each sending its next request as soon as it has received the last token of its
    previous one, as benchmark tools run at a fixed concurrency; client ``i`` sends its first
    request at ``i * ramp_s / concurrency``: all at time 0 by default).
  - input and output lengths: ``fixed`` (``tokens``); ``lognormal`` (``mu``, ``sigma`` of the
    natural log, conditioned on [``min``, ``max``]; the paper's workload is mu 9.90, sigma 1.00
    on [128, 131072]); ``empirical`` (a quantile table: ``table`` names a shipped one, or
    ``quantiles`` lists [probability, tokens] pairs); ``clients`` (each request's length from
    the table of the client that sent it; needs the ``clients`` arrival process);
    ``mixture`` (``components``: two of the above but mixture and clients, the first drawn
    with probability ``weight``).
  - prefix sharing: with probability ``system_prompt_share`` a new session starts with one of
    ``system_prompts`` shared system prompts of ``system_prompt_tokens`` tokens (rounded down to
    whole blocks); with probability ``session_reuse`` a request is a further turn of one of the
    ``sessions`` most recent sessions (uniformly chosen) and its prompt is that session's block
    chain up to its own length, so it shares ``min`` of the two lengths with earlier turns;
    otherwise it opens a new session, replacing a random one.

**rate_shape** (both kinds): a multiplier of the rate over the episode (``ramp``,
``sinusoid``, ``steps``), applied by time-warping the arrival process (see
:mod:`prfaas_env.sim.empirical`). The request stream never depends on routing decisions,
except under a closed loop: there a request arrives when an earlier one finishes, which the
routing decides (its lengths and prefix blocks still do not depend on it).

**trace** (Mooncake JSONL or Azure CSV, see :mod:`prfaas_env.sim.traces`)
  Replays a time window of the trace (``window_s``) with gaps divided by ``rate_multiplier``.
  Each env starts at a uniformly drawn request of the window (``start: random``) or at its
  first (``start: first``) and loops over the window; on each loop block ids are shifted so a
  repeated request does not hit the cache it filled one loop earlier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import IntEnum
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from prfaas_env.errors import ConfigError, check_keys, number
from prfaas_env.sim.costs import MAX_PROMPT_TOKENS
from prfaas_env.sim.empirical import (
    ClientSpec,
    QuantileTable,
    RateShape,
    parse_clients,
    parse_quantiles,
    parse_rate_shape,
    shipped_lengths,
)
from prfaas_env.sim.jit import compiled, compiled_inline
from prfaas_env.sim.packing import add_views
from prfaas_env.sim.rng import (
    exponential,
    gamma,
    quantile_draw,
    seed_states,
    truncated_lognormal,
    uniform,
)
from prfaas_env.sim.traces import Trace, load_trace

ARRIVALS = ("poisson", "gamma", "mmpp", "clients", "closed_loop")
CLOSED_LOOP = 4  # code of the closed-loop arrival process
MAX_CONCURRENCY = 1 << 16  # most clients of a closed loop
LENGTHS = ("fixed", "lognormal", "empirical", "clients", "mixture")
SHAPES = ("none", "ramp", "sinusoid", "steps")
KINDS = ("synthetic", "trace")
ID_STRIDE = 1 << 20  # block-id space of one system prompt or one session chain
MAX_OUTPUT_TOKENS = 1 << 24  # longest output a trace may ask for (request slots hold int32)

_ARRIVAL_CODE = {a: i for i, a in enumerate(ARRIVALS)}
_LENGTH_CODE = {a: i for i, a in enumerate(LENGTHS)}
_SHAPE_CODE = {a: i for i, a in enumerate(SHAPES)}


@dataclass(frozen=True)
class LengthDist:
    """A token-length distribution: ``fixed``, truncated ``lognormal``, ``empirical`` (one
    quantile table), ``clients`` (one table per client of the mix, weighted by ``shares``) or a
    ``mixture`` of two ``components`` (the first with probability ``weight``)."""

    kind: str = "fixed"
    tokens: int = 1024
    mu: float = 0.0
    sigma: float = 1.0
    low: float = 1.0
    high: float = float(MAX_PROMPT_TOKENS)
    tables: tuple[QuantileTable, ...] = ()
    shares: tuple[float, ...] = ()
    weight: float = 1.0
    components: tuple[LengthDist, ...] = ()

    def mean(self) -> float:
        """Mean tokens (analytic, before rounding)."""
        if self.kind == "fixed":
            return float(self.tokens)
        if self.kind in ("empirical", "clients"):
            return sum(s * t.mean() for s, t in zip(self.shares, self.tables, strict=True))
        if self.kind == "mixture":
            a, b = self.components
            return self.weight * a.mean() + (1 - self.weight) * b.mean()
        s, mu = self.sigma, self.mu

        def phi(x: float) -> float:
            return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))

        a, b = (math.log(self.low) - mu) / s, (math.log(self.high) - mu) / s
        mass = phi(b) - phi(a)
        return math.exp(mu + s * s / 2) * (phi(b - s) - phi(a - s)) / mass

    def longest(self) -> int:
        """Most tokens a draw can have."""
        if self.kind == "fixed":
            return self.tokens
        if self.kind == "lognormal":
            return int(self.high + 0.5)
        if self.kind == "mixture":
            return max(c.longest() for c in self.components)
        return int(max(t.high for t in self.tables) + 0.5)


@dataclass(frozen=True)
class Workload:
    """A parsed workload (see the module docstring); ``trace`` is set for trace replay."""

    kind: str
    rate_multiplier: float = 1.0
    output_multiplier: float = 1.0
    arrival: str = "poisson"
    rate_rps: float = 1.0
    cv: float = 1.0
    burst_factor: float = 4.0
    burst_fraction: float = 0.2
    burst_mean_s: float = 10.0
    input: LengthDist = field(default_factory=LengthDist)
    output: LengthDist = field(default_factory=LengthDist)
    system_prompts: int = 0
    system_prompt_tokens: int = 0
    system_prompt_share: float = 0.0
    session_reuse: float = 0.0
    sessions: int = 64
    trace: Trace | None = None
    random_start: bool = True
    clients: tuple[ClientSpec, ...] = ()
    rate_shape: RateShape | None = None
    concurrency: int = 0
    ramp_s: float = 0.0

    @property
    def closed_loop(self) -> bool:
        """Whether requests start when earlier ones finish (``concurrency`` in flight)."""
        return self.arrival == "closed_loop"

    def mean_rate_rps(self) -> float:
        """Long-run arrival rate after the rate multiplier and the rate shape, requests/s
        (NaN under a closed loop: the serving system sets it)."""
        if self.closed_loop:
            return math.nan
        shape = self.rate_shape.long_run_mean() if self.rate_shape is not None else 1.0
        if self.trace is not None:
            n = len(self.trace)
            span = self.trace.duration_s
            return shape * self.rate_multiplier * (n / span if span > 0 else 0.0)
        return shape * self.rate_rps * self.rate_multiplier

    def mean_output_tokens(self) -> float:
        """Mean output length, tokens: the trace's mean, or the distribution's. A router
        does not know a request's output length in advance; observations carry this mean."""
        if self.trace is not None:
            return float(self.trace.output_tokens.mean()) * self.output_multiplier
        return self.output.mean() * self.output_multiplier

    def longest_output_tokens(self) -> int:
        """The longest output a request of this workload can ask for, tokens (after
        ``output_multiplier``)."""
        if self.trace is not None:
            return int(self.trace_output_tokens().max())
        return scaled_output(self.output.longest(), self.output_multiplier)

    def trace_output_tokens(self) -> NDArray[np.int64]:
        """Each trace request's output tokens as the simulator draws them (after
        ``output_multiplier``)."""
        assert self.trace is not None
        raw = self.trace.output_tokens
        m = self.output_multiplier
        if m == 1.0:
            return raw.astype(np.int64)
        return np.array([scaled_output(int(t), m) for t in raw], np.int64)


class WorkloadParams(NamedTuple):
    """Workload constants in the form compiled code reads."""

    is_trace: bool
    arrival: int
    rate: float
    cv: float
    rate_lo: float
    rate_hi: float
    mean_lo_s: float
    mean_hi_s: float
    lengths: NDArray[np.float64]  # [4, LP]: input first/second component, output first/second
    quantiles: NDArray[np.float64]  # [2, points]: probabilities, tokens of every table
    clients: NDArray[np.float64]  # [clients, CP]
    shape_kind: int
    shape: NDArray[np.float64]  # [SP]
    shape_knots: NDArray[np.float64]  # steps: Lambda at each step boundary of one period
    block_tokens: int
    system_prompts: int
    system_blocks: int
    system_share: float
    session_reuse: float
    sessions: int
    multiplier: float
    out_multiplier: float
    tr_arrival: NDArray[np.float64]
    tr_input: NDArray[np.int64]
    tr_output: NDArray[np.int64]
    tr_offsets: NDArray[np.int64]
    tr_blocks: NDArray[np.int64]
    tr_id_shift: int
    tr_loop_gap: float


class LP(IntEnum):
    """Per length component (rows of ``WorkloadParams.lengths``): kind (index in LENGTHS),
    fixed tokens, log-normal parameters and bounds, quantile table (offset, points), and the
    probability of drawing the first component (row 0 of input or output; 1: no mixture)."""

    KIND = 0
    TOKENS = 1
    MU = 2
    SIGMA = 3
    LOW = 4
    HIGH = 5
    QOFF = 6
    QLEN = 7
    WEIGHT = 8


class CP(IntEnum):
    """Per client of a client mix: rate (req/s), gap family (0 gamma, 1 Weibull), shape,
    scale (s), and its input and output tables (offset and points; -1 none)."""

    RATE = 0
    FAMILY = 1
    SHAPE = 2
    SCALE = 3
    IN_OFF = 4
    IN_LEN = 5
    OUT_OFF = 6
    OUT_LEN = 7


class SP(IntEnum):
    """Rate-shape parameters: ramp (start, end, duration s), sinusoid (amplitude, period s,
    phase), steps (step s, number of steps)."""

    A = 0
    B = 1
    C = 2


class WF(IntEnum):
    """Per env (float): last synthetic arrival, next MMPP switch, trace time base (s), and the
    next request's arrival time (s)."""

    LAST_T = 0
    SWITCH_T = 1
    BASE_T = 2
    REQ_T = 3


class WI(IntEnum):
    """Per env (int): MMPP burst state, sessions opened, trace cursor and loop count; the next
    request's input/output tokens, blocks, system prompt (-1 none) and its blocks, session
    chain base id, trace block offset (-1 synthetic), block-id shift and client (client
    mix; 0 otherwise)."""

    BURST = 0
    SESS_COUNT = 1
    CURSOR = 2
    LOOP = 3
    REQ_IN = 4
    REQ_OUT = 5
    REQ_NBLOCKS = 6
    REQ_SYS = 7
    REQ_NSYS = 8
    REQ_BASE = 9
    REQ_TOFF = 10
    REQ_SHIFT = 11
    REQ_CLIENT = 12


class SESS(IntEnum):
    """Per env and session slot (int32): number of its chain among the env's chains (-1 none;
    the chain's block ids start at ``(system prompts + chain) * ID_STRIDE``), system prompt
    (-1 none)."""

    CHAIN = 0
    SYS = 1


WORKLOAD_LAYOUT: dict[str, tuple[type[IntEnum], str]] = {
    "wf": (WF, ""),
    "wi": (WI, ""),
    "sess": (SESS, "sess_"),
}


class WorkloadState(NamedTuple):
    """Per-env workload state (leading dimension: env) and the next request it produced;
    fields by name as views (``ws.req_in``, ``ws.req_t``, ...)."""

    rng: NDArray[np.uint64]  # [E] stream states
    wf: NDArray[np.float64]  # [E, 4]
    wi: NDArray[np.int64]  # [E, 12]
    sess: NDArray[np.int32]  # [E, sessions, 2] (int32: 8 bytes a session, read at random)
    cnext: NDArray[np.float64]  # [E, clients]: next arrival per client (operational time, s)


add_views(WorkloadState, WORKLOAD_LAYOUT)


def new_state(num_envs: int, sessions: int, clients: int = 0) -> WorkloadState:
    """Initial workload state for ``num_envs`` envs (``clients``: size of the client mix)."""
    st = WorkloadState(
        rng=np.zeros(num_envs, np.uint64),
        wf=np.zeros((num_envs, len(WF))),
        wi=np.zeros((num_envs, len(WI)), np.int64),
        sess=np.full((num_envs, max(sessions, 1), len(SESS)), -1, np.int32),
        cnext=np.full((num_envs, max(clients, 1)), -1.0),
    )
    st.wi[:, WI.REQ_SYS] = -1
    st.wi[:, WI.REQ_TOFF] = -1
    return st


def trace_length_error(trace: Trace) -> str:
    """Why ``trace`` has requests the simulator cannot hold (prompts over MAX_PROMPT_TOKENS,
    outputs over MAX_OUTPUT_TOKENS), or "" when it has none."""
    if not len(trace):
        return ""
    longest_in, longest_out = int(trace.input_tokens.max()), int(trace.output_tokens.max())
    if longest_in > MAX_PROMPT_TOKENS:
        return (
            f"a request has {longest_in} input tokens; the simulator supports at most "
            f"{MAX_PROMPT_TOKENS}"
        )
    if longest_out > MAX_OUTPUT_TOKENS:
        return (
            f"a request has {longest_out} output tokens; the simulator supports at most "
            f"{MAX_OUTPUT_TOKENS}"
        )
    return ""


def params(w: Workload, block_tokens: int) -> WorkloadParams:
    """Compile a Workload for a topology with ``block_tokens``-token blocks."""
    f = w.burst_fraction
    rate = w.rate_rps * w.rate_multiplier
    rate_lo = rate / (f * w.burst_factor + 1.0 - f) if w.arrival == "mmpp" else rate
    tr = w.trace
    if tr is not None:
        too_long = trace_length_error(tr)
        if too_long:  # the config parser says so with the file and key; this guards
            raise ValueError(f"trace: {too_long}")  # Workloads built in code
        n = len(tr)
        gap = tr.duration_s / max(n - 1, 1) if n > 1 else 1.0
        shift = int(tr.block_ids.max()) + 1 if tr.block_ids.size else 0
        arrays = (
            tr.arrival_s.astype(np.float64),
            tr.input_tokens.astype(np.int64),
            tr.output_tokens.astype(np.int64),
            tr.block_offsets.astype(np.int64),
            tr.block_ids.astype(np.int64),
        )
    else:
        gap, shift = 1.0, 0
        arrays = (np.zeros(1), np.ones(1, np.int64), np.ones(1, np.int64), np.zeros(2, np.int64))
        arrays = (*arrays, np.zeros(0, np.int64))
    return WorkloadParams(
        is_trace=tr is not None,
        arrival=_ARRIVAL_CODE[w.arrival],
        rate=rate,
        cv=w.cv,
        rate_lo=rate_lo,
        rate_hi=rate_lo * w.burst_factor,
        mean_lo_s=w.burst_mean_s * (1.0 - f) / f if f > 0 else math.inf,
        mean_hi_s=w.burst_mean_s,
        **_length_params(w),
        **_shape_params(w.rate_shape),
        block_tokens=block_tokens,
        system_prompts=w.system_prompts,
        system_blocks=w.system_prompt_tokens // block_tokens,
        system_share=w.system_prompt_share,
        session_reuse=w.session_reuse,
        sessions=max(w.sessions, 1),
        multiplier=w.rate_multiplier,
        out_multiplier=w.output_multiplier,
        tr_arrival=arrays[0],
        tr_input=arrays[1],
        tr_output=arrays[2],
        tr_offsets=arrays[3],
        tr_blocks=arrays[4],
        tr_id_shift=shift,
        tr_loop_gap=gap,
    )


class _Tables:
    """Quantile tables packed one after another (``[2, points]``: probabilities, tokens)."""

    def __init__(self) -> None:
        self.cols: list[tuple[float, float]] = []
        self.seen: dict[int, int] = {}

    def add(self, t: QuantileTable | None) -> tuple[float, float]:
        """(offset, points) of table ``t`` in the packed array; (-1, 0) for None."""
        if t is None:
            return -1.0, 0.0
        if id(t) not in self.seen:
            self.seen[id(t)] = len(self.cols)
            self.cols.extend(zip(t.probs, t.tokens, strict=True))
        return float(self.seen[id(t)]), float(len(t.probs))

    def array(self) -> NDArray[np.float64]:
        return np.array(self.cols, np.float64).T.copy() if self.cols else np.zeros((2, 1))


def _length_params(w: Workload) -> dict[str, Any]:
    """The ``lengths``, ``quantiles`` and ``clients`` arrays of :class:`WorkloadParams`."""
    tables = _Tables()
    rows = np.zeros((4, len(LP)))
    for side, dist in enumerate((w.input, w.output)):
        comps = dist.components if dist.kind == "mixture" else (dist,)
        rows[2 * side, LP.WEIGHT] = dist.weight if dist.kind == "mixture" else 1.0
        for j, d in enumerate(comps):
            r = rows[2 * side + j]
            r[LP.KIND] = _LENGTH_CODE[d.kind]
            r[LP.TOKENS], r[LP.MU], r[LP.SIGMA] = d.tokens, d.mu, d.sigma
            r[LP.LOW], r[LP.HIGH] = d.low, d.high
            r[LP.QOFF], r[LP.QLEN] = tables.add(d.tables[0] if d.kind == "empirical" else None)
    rate = w.rate_rps * w.rate_multiplier
    clients = np.zeros((max(len(w.clients), 1), len(CP)))
    for c, spec in enumerate(w.clients):
        row = clients[c]
        row[CP.RATE] = rate * spec.share
        row[CP.FAMILY] = 1.0 if spec.family == "weibull" else 0.0
        row[CP.SHAPE] = spec.shape
        if spec.family == "weibull":  # mean gap scale * Gamma(1 + 1/shape) = 1 / rate
            row[CP.SCALE] = 1.0 / (row[CP.RATE] * math.gamma(1.0 + 1.0 / spec.shape))
        else:  # mean gap shape * scale = 1 / rate
            row[CP.SCALE] = 1.0 / (row[CP.RATE] * spec.shape)
        row[CP.IN_OFF], row[CP.IN_LEN] = tables.add(spec.input)
        row[CP.OUT_OFF], row[CP.OUT_LEN] = tables.add(spec.output)
    return {"lengths": rows, "quantiles": tables.array(), "clients": clients}


def _shape_params(shape: RateShape | None) -> dict[str, Any]:
    """The rate-shape fields of :class:`WorkloadParams`."""
    sp = np.zeros(len(SP))
    knots = np.zeros(1)
    if shape is None:
        return {"shape_kind": 0, "shape": sp, "shape_knots": knots}
    if shape.kind == "ramp":
        sp[:] = shape.start, shape.end, shape.duration_s
    elif shape.kind == "sinusoid":
        sp[:] = shape.amplitude, shape.period_s, shape.phase
    else:
        sp[SP.A], sp[SP.B] = shape.step_s, len(shape.multipliers)
        knots = np.concatenate(([0.0], np.cumsum(shape.multipliers) * shape.step_s))
    return {"shape_kind": _SHAPE_CODE[shape.kind], "shape": sp, "shape_knots": knots}


def reset_env(w: Workload, st: WorkloadState, e: int, rng: np.random.Generator) -> None:
    """Re-initialise env ``e``'s workload state from its generator ``rng``."""
    st.rng[e] = seed_states(rng, 1)[0]
    st.wf[e, WF.LAST_T] = 0.0
    st.wi[e, WI.BURST] = 0
    st.wf[e, WF.SWITCH_T] = 0.0
    st.sess[e] = -1
    st.wi[e, WI.SESS_COUNT] = 0
    st.wi[e, WI.LOOP] = 0
    st.wi[e, WI.REQ_CLIENT] = 0
    st.cnext[e] = -1.0  # drawn with the first request
    if w.trace is not None:
        start = int(rng.integers(len(w.trace))) if w.random_start else 0
        st.wi[e, WI.CURSOR] = start
        st.wf[e, WF.BASE_T] = float(w.trace.arrival_s[start])
    else:
        st.wi[e, WI.CURSOR] = 0
        st.wf[e, WF.BASE_T] = 0.0


@compiled_inline
def scaled_output(tokens: int, multiplier: float) -> int:
    """``tokens`` output tokens scaled by the workload's ``output_multiplier`` (rounded, at
    least 1, at most MAX_OUTPUT_TOKENS; unchanged at 1)."""
    if multiplier == 1.0:
        return tokens
    return min(max(int(tokens * multiplier + 0.5), 1), MAX_OUTPUT_TOKENS)


@compiled_inline
def _length(p: WorkloadParams, st: WorkloadState, e: int, side: int) -> int:
    """Tokens of env ``e``'s next request: input (``side`` 0) or output (1)."""
    row = 2 * side
    if p.lengths[row, LP.WEIGHT] < 1.0 and uniform(st.rng, e) >= p.lengths[row, LP.WEIGHT]:
        row += 1  # the mixture's second component
    kind = p.lengths[row, LP.KIND]
    if kind == 0:
        return int(p.lengths[row, LP.TOKENS])
    if kind == 1:
        x = truncated_lognormal(
            st.rng,
            e,
            p.lengths[row, LP.MU],
            p.lengths[row, LP.SIGMA],
            p.lengths[row, LP.LOW],
            p.lengths[row, LP.HIGH],
        )
    elif kind == 2:
        x = quantile_draw(
            st.rng, e, p.quantiles, int(p.lengths[row, LP.QOFF]), int(p.lengths[row, LP.QLEN])
        )
    else:  # the table of the client that sent the request
        c = st.wi[e, WI.REQ_CLIENT]
        off = CP.IN_OFF if side == 0 else CP.OUT_OFF
        x = quantile_draw(
            st.rng, e, p.quantiles, int(p.clients[c, off]), int(p.clients[c, off + 1])
        )
    return max(int(x + 0.5), 1)


@compiled_inline
def _client_gap(p: WorkloadParams, st: WorkloadState, e: int, c: int, first: bool) -> float:
    """Seconds to client ``c``'s next arrival; ``first``: from a random instant (the renewal
    process's equilibrium: a uniform fraction of a length-biased gap, which is gamma with
    shape k + 1 for gamma gaps, and scale * G^(1/c), G ~ gamma(1 + 1/c), for Weibull gaps)."""
    k = p.clients[c, CP.SHAPE]
    scale = p.clients[c, CP.SCALE]
    if p.clients[c, CP.FAMILY] == 0.0:
        x = scale * gamma(st.rng, e, k + 1.0 if first else k)
    elif first:
        x = scale * gamma(st.rng, e, 1.0 + 1.0 / k) ** (1.0 / k)
    else:
        x = scale * exponential(st.rng, e) ** (1.0 / k)
    if first:
        x *= uniform(st.rng, e)
    return x


@compiled_inline
def _next_client(p: WorkloadParams, st: WorkloadState, e: int) -> float:
    """Operational time of env ``e``'s next arrival under a client mix; sets its client."""
    n = p.clients.shape[0]
    if st.cnext[e, 0] < 0.0:  # first call: every client from equilibrium
        for c in range(n):
            st.cnext[e, c] = st.wf[e, WF.LAST_T] + _client_gap(p, st, e, c, True)
    best = 0
    for c in range(1, n):
        if st.cnext[e, c] < st.cnext[e, best]:
            best = c
    t = st.cnext[e, best]
    st.cnext[e, best] = t + _client_gap(p, st, e, best, False)
    st.wi[e, WI.REQ_CLIENT] = best
    return t


@compiled
def warp(kind: int, sp: NDArray[np.float64], knots: NDArray[np.float64], tau: float) -> float:
    """Real time (s) of operational time ``tau``: the inverse of Lambda, the rate multiplier's
    integral (``kind`` 1 ramp, 2 sinusoid, 3 steps; see :mod:`prfaas_env.sim.empirical`)."""
    if kind == 1:
        a, b, d = sp[SP.A], sp[SP.B], sp[SP.C]
        end = d * (a + b) / 2.0
        if tau >= end:
            return d + (tau - end) / b
        # a t + (b - a) t^2 / (2 d) = tau, in the form without cancellation
        return 2.0 * tau / (a + np.sqrt(a * a + 2.0 * (b - a) * tau / d))
    if kind == 2:
        amp, period, phase = sp[SP.A], sp[SP.B], sp[SP.C]
        w = 2.0 * np.pi / period
        whole = np.floor(tau / period)
        r = tau - whole * period  # Lambda(t + period) = Lambda(t) + period
        lo, hi = 0.0, period
        t = r
        for _ in range(100):  # Newton's method, kept inside a shrinking bracket
            f = t + amp / w * (np.cos(phase) - np.cos(w * t + phase)) - r
            if abs(f) <= 1e-12 * period:
                break
            if f > 0.0:
                hi = t
            else:
                lo = t
            t = t - f / (1.0 + amp * np.sin(w * t + phase))
            if not lo < t < hi:
                t = 0.5 * (lo + hi)
        return whole * period + t
    n = knots.shape[0] - 1
    step = sp[SP.A]
    whole = np.floor(tau / knots[n])
    r = tau - whole * knots[n]
    lo, hi = 0, n  # knots[lo] <= r < knots[hi]
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if knots[mid] <= r:
            lo = mid
        else:
            hi = mid
    return (whole * n + lo) * step + (r - knots[lo]) * step / (knots[lo + 1] - knots[lo])


@compiled_inline
def _next_gap(p: WorkloadParams, st: WorkloadState, e: int) -> float:
    """Seconds from the last arrival of env ``e`` to its next one."""
    if p.arrival == 0:
        return exponential(st.rng, e) / p.rate
    if p.arrival == 1:
        k = 1.0 / (p.cv * p.cv)
        return gamma(st.rng, e, k) / (k * p.rate)
    if p.arrival == 3:
        return _next_client(p, st, e) - st.wf[e, WF.LAST_T]
    if p.arrival == CLOSED_LOOP:  # the event loop sets the arrival time
        return 0.0
    # Markov-modulated Poisson: sample within the current state, switching as needed.
    t = st.wf[e, WF.LAST_T]
    if st.wf[e, WF.SWITCH_T] <= 0.0:  # first call: stationary initial state
        st.wi[e, WI.BURST] = (
            1 if uniform(st.rng, e) < p.mean_hi_s / (p.mean_hi_s + p.mean_lo_s) else 0
        )
        mean = p.mean_hi_s if st.wi[e, WI.BURST] == 1 else p.mean_lo_s
        st.wf[e, WF.SWITCH_T] = t + exponential(st.rng, e) * mean
    now = t
    while True:
        rate = p.rate_hi if st.wi[e, WI.BURST] == 1 else p.rate_lo
        cand = now + exponential(st.rng, e) / rate
        if cand < st.wf[e, WF.SWITCH_T]:
            return cand - t
        now = st.wf[e, WF.SWITCH_T]
        st.wi[e, WI.BURST] = 1 - st.wi[e, WI.BURST]
        mean = p.mean_hi_s if st.wi[e, WI.BURST] == 1 else p.mean_lo_s
        st.wf[e, WF.SWITCH_T] = now + exponential(st.rng, e) * mean


@compiled_inline
def next_request(p: WorkloadParams, st: WorkloadState, e: int) -> None:
    """Draw env ``e``'s next request into the ``req_*`` fields of ``st``."""
    bt = p.block_tokens
    if p.is_trace:
        n = p.tr_arrival.shape[0]
        j = st.wi[e, WI.CURSOR]
        if j >= n:  # loop over the window
            j = 0
            st.wi[e, WI.LOOP] += 1
            st.wf[e, WF.BASE_T] -= p.tr_arrival[n - 1] - p.tr_arrival[0] + p.tr_loop_gap
        st.wi[e, WI.CURSOR] = j + 1
        tau = (p.tr_arrival[j] - st.wf[e, WF.BASE_T]) / p.multiplier
        st.wf[e, WF.REQ_T] = (
            tau if p.shape_kind == 0 else warp(p.shape_kind, p.shape, p.shape_knots, tau)
        )
        st.wi[e, WI.REQ_IN] = p.tr_input[j]
        st.wi[e, WI.REQ_OUT] = scaled_output(p.tr_output[j], p.out_multiplier)
        st.wi[e, WI.REQ_TOFF] = p.tr_offsets[j]
        st.wi[e, WI.REQ_NBLOCKS] = p.tr_offsets[j + 1] - p.tr_offsets[j]
        st.wi[e, WI.REQ_SHIFT] = st.wi[e, WI.LOOP] * p.tr_id_shift
        st.wi[e, WI.REQ_SYS] = -1
        st.wi[e, WI.REQ_NSYS] = 0
        st.wi[e, WI.REQ_BASE] = 0
        return
    t = st.wf[e, WF.LAST_T] + _next_gap(p, st, e)
    st.wf[e, WF.LAST_T] = t
    st.wf[e, WF.REQ_T] = t if p.shape_kind == 0 else warp(p.shape_kind, p.shape, p.shape_knots, t)
    length = _length(p, st, e, 0)
    st.wi[e, WI.REQ_OUT] = scaled_output(_length(p, st, e, 1), p.out_multiplier)
    s = int(uniform(st.rng, e) * p.sessions)
    if (
        p.session_reuse > 0.0
        and st.sess[e, s, SESS.CHAIN] >= 0
        and uniform(st.rng, e) < p.session_reuse
    ):
        sys_id = st.sess[e, s, SESS.SYS]
    else:
        sys_id = -1
        if p.system_prompts > 0 and uniform(st.rng, e) < p.system_share:
            sys_id = min(int(uniform(st.rng, e) * p.system_prompts), p.system_prompts - 1)
        st.wi[e, WI.SESS_COUNT] += 1
        st.sess[e, s, SESS.CHAIN] = st.wi[e, WI.SESS_COUNT]
        st.sess[e, s, SESS.SYS] = sys_id
    nsys = p.system_blocks if sys_id >= 0 else 0
    length = max(length, nsys * bt + 1)
    st.wi[e, WI.REQ_IN] = length
    st.wi[e, WI.REQ_NBLOCKS] = (length + bt - 1) // bt
    st.wi[e, WI.REQ_SYS] = sys_id
    st.wi[e, WI.REQ_NSYS] = nsys
    st.wi[e, WI.REQ_BASE] = (p.system_prompts + st.sess[e, s, SESS.CHAIN]) * ID_STRIDE
    st.wi[e, WI.REQ_TOFF] = -1
    st.wi[e, WI.REQ_SHIFT] = 0


@compiled
def block_id(tr_blocks: NDArray[np.int64], wi: NDArray[np.int64], e: int, b: int) -> int:
    """Id of block ``b`` of env ``e``'s current request (``tr_blocks``: the trace's block ids,
    ``wi``: the workload state's int fields)."""
    if wi[e, WI.REQ_TOFF] >= 0:
        return tr_blocks[wi[e, WI.REQ_TOFF] + b] + wi[e, WI.REQ_SHIFT]
    if b < wi[e, WI.REQ_NSYS]:
        return wi[e, WI.REQ_SYS] * ID_STRIDE + b
    return wi[e, WI.REQ_BASE] + (b - wi[e, WI.REQ_NSYS])


# ---- parsing ---------------------------------------------------------------------------------
def _parse_length(
    raw: Any,
    where: str,
    default: LengthDist,
    side: str,
    clients: tuple[ClientSpec, ...] = (),
    allowed: tuple[str, ...] = LENGTHS,
) -> LengthDist:
    """A length distribution of ``side`` (input or output) from its mapping."""
    if raw is None:
        return default
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with 'distribution'")
    kind = raw.get("distribution", "fixed")
    if kind not in allowed:
        raise ConfigError(
            f"{where}.distribution: {kind!r} is not allowed; allowed: {', '.join(allowed)}"
        )
    if kind == "empirical":
        check_keys(raw, where, [], ["distribution", "table", "quantiles"])
        if ("table" in raw) == ("quantiles" in raw):
            raise ConfigError(f"{where}: give either table (a shipped table) or quantiles")
        if "table" in raw:
            table = shipped_lengths(raw, where, side)
        else:
            table = parse_quantiles(raw["quantiles"], f"{where}.quantiles", MAX_PROMPT_TOKENS)
        return LengthDist("empirical", tables=(table,), shares=(1.0,))
    if kind == "clients":
        check_keys(raw, where, [], ["distribution"])
        if not clients:
            raise ConfigError(
                f"{where}.distribution: clients needs the clients arrival process "
                "(workload.arrival.process: clients)"
            )
        missing = [i for i, c in enumerate(clients) if getattr(c, side) is None]
        if missing:
            raise ConfigError(
                f"{where}.distribution: clients needs an {side} table for every client; "
                f"client(s) {', '.join(map(str, missing))} of workload.arrival.clients have none"
            )
        tables = tuple(getattr(c, side) for c in clients)
        return LengthDist("clients", tables=tables, shares=tuple(c.share for c in clients))
    if kind == "mixture":
        check_keys(raw, where, ["weight", "components"], ["distribution"])
        comps = raw["components"]
        if not (isinstance(comps, list) and len(comps) == 2):
            raise ConfigError(f"{where}.components: expected a list of two distributions")
        parts = tuple(
            _parse_length(
                c,
                f"{where}.components[{i}]",
                default,
                side,
                (),
                ("fixed", "lognormal", "empirical"),
            )
            for i, c in enumerate(comps)
        )
        weight = number(raw, "weight", where, minimum=0, maximum=1)
        return LengthDist("mixture", weight=weight, components=parts)
    if kind == "fixed":
        check_keys(raw, where, ["tokens"], ["distribution"])
        tok = number(raw, "tokens", where, minimum=1, maximum=MAX_PROMPT_TOKENS, integer=True)
        return LengthDist("fixed", tokens=tok)
    check_keys(raw, where, ["mu", "sigma"], ["distribution", "min", "max"])
    d = LengthDist(
        "lognormal",
        mu=number(raw, "mu", where, minimum=-50, maximum=50),
        sigma=number(raw, "sigma", where, minimum=0, maximum=10, exclusive_minimum=True),
        low=number(raw, "min", where, minimum=1, maximum=MAX_PROMPT_TOKENS, default=1.0),
        high=number(
            raw, "max", where, minimum=1, maximum=MAX_PROMPT_TOKENS, default=MAX_PROMPT_TOKENS
        ),
    )
    if d.low >= d.high:
        raise ConfigError(f"{where}: min ({d.low}) must be below max ({d.high})")
    a = (math.log(d.low) - d.mu) / d.sigma
    b = (math.log(d.high) - d.mu) / d.sigma
    mass = 0.5 * (math.erf(b / math.sqrt(2)) - math.erf(a / math.sqrt(2)))
    if mass < 1e-3:
        raise ConfigError(
            f"{where}: only {mass:.2e} of the log-normal's mass lies in [min, max]; "
            "move mu or widen the interval"
        )
    return d


_SYNTH_KEYS = ("arrival", "input", "output", "prefix", "rate_shape")
_TRACE_KEYS = ("trace", "format", "window_s", "start", "on_error", "unsorted", "rate_shape")


def parse_workload(raw: Any, where: str, base_dir: Path | None = None) -> Workload:
    """Build a Workload from the ``workload:`` mapping; errors name ``where`` and the key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with 'kind' ({', '.join(KINDS)})")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{where}.kind: {kind!r} is not allowed; allowed: {', '.join(KINDS)}")
    keys = _SYNTH_KEYS if kind == "synthetic" else _TRACE_KEYS
    check_keys(
        raw,
        where,
        ["kind"] + (["trace"] if kind == "trace" else []),
        ("rate_multiplier", "output_multiplier", *keys),
    )
    mult = number(raw, "rate_multiplier", where, minimum=0, exclusive_minimum=True, default=1.0)
    out_mult = number(raw, "output_multiplier", where, minimum=0.01, maximum=100, default=1.0)
    shape = parse_rate_shape(raw.get("rate_shape"), f"{where}.rate_shape")
    if kind == "trace":
        w = _parse_trace_workload(raw, where, mult, base_dir)
        return replace(w, output_multiplier=out_mult, rate_shape=shape or w.rate_shape)
    arr = raw.get("arrival") or {}
    aw = f"{where}.arrival"
    if not isinstance(arr, dict):
        raise ConfigError(f"{aw}: expected a mapping")
    proc = arr.get("process", "poisson")
    if proc not in ARRIVALS:
        raise ConfigError(f"{aw}.process: {proc!r} is not allowed; allowed: {', '.join(ARRIVALS)}")
    allowed = {
        "poisson": [],
        "gamma": ["cv"],
        "mmpp": ["burst_factor", "burst_fraction", "burst_mean_s"],
        "clients": ["clients"],
        "closed_loop": ["concurrency", "ramp_s"],
    }[proc]
    closed = proc == "closed_loop"
    if closed:
        if shape is not None:
            raise ConfigError(
                f"{where}.rate_shape: not allowed with a closed loop (arrivals follow "
                "completions); use an open-loop arrival process"
            )
        if mult != 1.0:
            raise ConfigError(
                f"{where}.rate_multiplier: not allowed with a closed loop (arrivals follow "
                "completions); change arrival.concurrency instead"
            )
    if proc == "clients" and "clients" not in arr:
        raise ConfigError(
            f"{aw}.clients: missing (a shipped mix: servegen/language, servegen/reason; or a "
            "list of clients)"
        )
    clients = (
        parse_clients(arr["clients"], f"{aw}.clients", MAX_PROMPT_TOKENS)
        if proc == "clients"
        else ()
    )
    check_keys(arr, aw, ["concurrency"] if closed else ["rate_rps"], ["process", *allowed])
    pre = raw.get("prefix") or {}
    pw = f"{where}.prefix"
    if not isinstance(pre, dict):
        raise ConfigError(f"{pw}: expected a mapping")
    check_keys(
        pre,
        pw,
        [],
        [
            "system_prompts",
            "system_prompt_tokens",
            "system_prompt_share",
            "session_reuse",
            "sessions",
        ],
    )
    w = Workload(
        kind="synthetic",
        rate_multiplier=mult,
        output_multiplier=out_mult,
        arrival=proc,
        rate_rps=1.0 if closed else number(arr, "rate_rps", aw, minimum=0, exclusive_minimum=True),
        concurrency=number(
            arr, "concurrency", aw, minimum=1, maximum=MAX_CONCURRENCY, integer=True, default=0
        ),
        ramp_s=number(arr, "ramp_s", aw, minimum=0, maximum=1e7, default=0.0),
        cv=number(arr, "cv", aw, minimum=0.05, maximum=20, default=1.0),
        burst_factor=number(arr, "burst_factor", aw, minimum=1, maximum=1000, default=4.0),
        burst_fraction=number(
            arr, "burst_fraction", aw, minimum=0, maximum=1, exclusive_minimum=True, default=0.2
        ),
        burst_mean_s=number(
            arr, "burst_mean_s", aw, minimum=0, exclusive_minimum=True, default=10.0
        ),
        input=_parse_length(
            raw.get("input"), f"{where}.input", LengthDist("fixed", 8192), "input", clients
        ),
        output=_parse_length(
            raw.get("output"), f"{where}.output", LengthDist("fixed", 1024), "output", clients
        ),
        clients=clients,
        rate_shape=shape,
        system_prompts=number(
            pre, "system_prompts", pw, minimum=0, maximum=1 << 20, integer=True, default=0
        ),
        system_prompt_tokens=number(
            pre,
            "system_prompt_tokens",
            pw,
            minimum=0,
            maximum=MAX_PROMPT_TOKENS // 2,
            integer=True,
            default=0,
        ),
        system_prompt_share=number(
            pre, "system_prompt_share", pw, minimum=0, maximum=1, default=0.0
        ),
        session_reuse=number(pre, "session_reuse", pw, minimum=0, maximum=1, default=0.0),
        sessions=number(pre, "sessions", pw, minimum=1, maximum=1 << 16, integer=True, default=64),
    )
    if w.arrival == "mmpp" and w.burst_fraction >= 1.0:
        raise ConfigError(f"{aw}.burst_fraction: must be below 1 for mmpp")
    return w


def _parse_trace_workload(raw: dict, where: str, mult: float, base_dir: Path | None) -> Workload:
    spec = str(raw["trace"])
    p = Path(spec)
    if base_dir is not None and not p.is_absolute() and (base_dir / p).exists():
        spec = str(base_dir / p)
    on_error = raw.get("on_error", "raise")
    unsorted = raw.get("unsorted", "raise")
    try:
        trace = load_trace(spec, format=raw.get("format"), on_error=on_error, unsorted=unsorted)
    except ConfigError as exc:
        raise ConfigError(f"{where}.trace: {exc}") from exc
    win = raw.get("window_s")
    if win is not None:
        if not (isinstance(win, list) and len(win) == 2):
            raise ConfigError(f"{where}.window_s: expected [start_s, end_s] (end_s may be null)")
        lo = number({"start": win[0]}, "start", f"{where}.window_s", minimum=0)
        hi = None if win[1] is None else number({"end": win[1]}, "end", f"{where}.window_s")
        try:
            trace = trace.window(lo, hi)
        except ConfigError as exc:
            raise ConfigError(f"{where}.window_s: {exc}") from exc
    start = raw.get("start", "random")
    if start not in ("random", "first"):
        raise ConfigError(f"{where}.start: {start!r} is not allowed; allowed: random, first")
    too_long = trace_length_error(trace)
    if too_long:
        raise ConfigError(f"{where}.trace: {too_long}")
    return Workload(kind="trace", rate_multiplier=mult, trace=trace, random_start=start == "random")


# ---- sampling outside the simulator -------------------------------------------------------------
@compiled
def _draw_many(
    p: WorkloadParams, st: WorkloadState, out_f: NDArray[np.float64], out_i: NDArray[np.int64]
) -> None:
    for j in range(out_f.shape[0]):
        next_request(p, st, 0)
        out_f[j] = st.wf[0, WF.REQ_T]
        out_i[j, 0] = st.wi[0, WI.REQ_IN]
        out_i[j, 1] = st.wi[0, WI.REQ_OUT]
        out_i[j, 2] = st.wi[0, WI.REQ_CLIENT]


def sample(w: Workload, n: int, seed: int, block_tokens: int = 512) -> dict[str, NDArray]:
    """The first ``n`` requests of ``w`` as an env seeded ``seed`` draws them, without
    simulating the serving system: ``arrival_s``, ``input_tokens``, ``output_tokens`` and
    ``client`` (the client of a client mix, else 0): the same requests as env 0 of a
    :class:`~prfaas_env.sim.engine.VecSimulator` seeded ``seed`` (the request stream does not
    depend on routing). For tests and for looking at a workload. Under a closed loop the
    arrival times depend on the serving system: ``arrival_s`` is NaN."""
    p = params(w, block_tokens)
    st = new_state(1, w.sessions, len(w.clients))
    reset_env(w, st, 0, np.random.default_rng(seed))
    out_f = np.zeros(n)
    out_i = np.zeros((n, 3), np.int64)
    _draw_many(p, st, out_f, out_i)
    if w.closed_loop:
        out_f[:] = np.nan
    return {
        "arrival_s": out_f,
        "input_tokens": out_i[:, 0],
        "output_tokens": out_i[:, 1],
        "client": out_i[:, 2],
    }
