"""Workloads: synthetic request streams and trace replay, sampled per env in compiled code.

A workload produces, per env, the next request: arrival time (s), input and output tokens and
its prefix blocks (ids of ``block_tokens``-token blocks; two requests whose first k ids agree
share a k-block prefix). Kinds:

**synthetic**
  - arrivals: ``poisson`` (rate ``rate_rps``); ``gamma`` (renewal process with gamma gaps of
    coefficient of variation ``cv``: cv = 1 is Poisson, larger is burstier); ``mmpp``
    (two-state Markov-modulated Poisson: a burst state at ``burst_factor`` times the base rate
    for a fraction ``burst_fraction`` of the time, bursts lasting ``burst_mean_s`` on average;
    the long-run rate is ``rate_rps``).
  - input and output lengths: ``fixed`` (``tokens``) or ``lognormal`` (``mu``, ``sigma`` of the
    natural log, conditioned on [``min``, ``max``]; the paper's workload is mu 9.90, sigma 1.00
    on [128, 131072]).
  - prefix sharing: with probability ``system_prompt_share`` a new session starts with one of
    ``system_prompts`` shared system prompts of ``system_prompt_tokens`` tokens (rounded down to
    whole blocks); with probability ``session_reuse`` a request is a further turn of one of the
    ``sessions`` most recent sessions (uniformly chosen) and its prompt is that session's block
    chain up to its own length, so it shares ``min`` of the two lengths with earlier turns;
    otherwise it opens a new session, replacing a random one.

**trace** (Mooncake JSONL or Azure CSV, see :mod:`prfaas_env.sim.traces`)
  Replays a time window of the trace (``window_s``) with gaps divided by ``rate_multiplier``.
  Each env starts at a uniformly drawn request of the window (``start: random``) or at its
  first (``start: first``) and loops over the window; on each loop block ids are shifted so a
  repeated request does not hit the cache it filled one loop earlier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from prfaas_env.errors import ConfigError, check_keys, number
from prfaas_env.sim.costs import MAX_PROMPT_TOKENS
from prfaas_env.sim.jit import compiled, compiled_inline
from prfaas_env.sim.packing import add_views
from prfaas_env.sim.rng import (
    exponential,
    gamma,
    seed_states,
    truncated_lognormal,
    uniform,
)
from prfaas_env.sim.traces import Trace, load_trace

ARRIVALS = ("poisson", "gamma", "mmpp")
LENGTHS = ("fixed", "lognormal")
KINDS = ("synthetic", "trace")
ID_STRIDE = 1 << 20  # block-id space of one system prompt or one session chain
MAX_OUTPUT_TOKENS = 1 << 24  # longest output a trace may ask for (request slots hold int32)

_ARRIVAL_CODE = {a: i for i, a in enumerate(ARRIVALS)}
_LENGTH_CODE = {a: i for i, a in enumerate(LENGTHS)}


@dataclass(frozen=True)
class LengthDist:
    """A token-length distribution (``fixed`` or truncated ``lognormal``)."""

    kind: str = "fixed"
    tokens: int = 1024
    mu: float = 0.0
    sigma: float = 1.0
    low: float = 1.0
    high: float = float(MAX_PROMPT_TOKENS)

    def mean(self) -> float:
        """Mean tokens (analytic for the truncated log-normal, before rounding)."""
        if self.kind == "fixed":
            return float(self.tokens)
        s, mu = self.sigma, self.mu

        def phi(x: float) -> float:
            return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))

        a, b = (math.log(self.low) - mu) / s, (math.log(self.high) - mu) / s
        mass = phi(b) - phi(a)
        return math.exp(mu + s * s / 2) * (phi(b - s) - phi(a - s)) / mass


@dataclass(frozen=True)
class Workload:
    """A parsed workload (see the module docstring); ``trace`` is set for trace replay."""

    kind: str
    rate_multiplier: float = 1.0
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

    def mean_rate_rps(self) -> float:
        """Long-run arrival rate after the rate multiplier, requests/s."""
        if self.trace is not None:
            n = len(self.trace)
            span = self.trace.duration_s
            return self.rate_multiplier * (n / span if span > 0 else 0.0)
        return self.rate_rps * self.rate_multiplier

    def mean_output_tokens(self) -> float:
        """Mean output length, tokens: the trace's mean, or the distribution's. A router
        does not know a request's output length in advance; observations carry this mean."""
        if self.trace is not None:
            return float(self.trace.output_tokens.mean())
        return self.output.mean()


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
    in_kind: int
    in_tokens: float
    in_mu: float
    in_sigma: float
    in_low: float
    in_high: float
    out_kind: int
    out_tokens: float
    out_mu: float
    out_sigma: float
    out_low: float
    out_high: float
    block_tokens: int
    system_prompts: int
    system_blocks: int
    system_share: float
    session_reuse: float
    sessions: int
    multiplier: float
    tr_arrival: NDArray[np.float64]
    tr_input: NDArray[np.int64]
    tr_output: NDArray[np.int64]
    tr_offsets: NDArray[np.int64]
    tr_blocks: NDArray[np.int64]
    tr_id_shift: int
    tr_loop_gap: float


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
    chain base id, trace block offset (-1 synthetic) and block-id shift."""

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


add_views(WorkloadState, WORKLOAD_LAYOUT)


def new_state(num_envs: int, sessions: int) -> WorkloadState:
    """Initial workload state for ``num_envs`` envs."""
    st = WorkloadState(
        rng=np.zeros(num_envs, np.uint64),
        wf=np.zeros((num_envs, len(WF))),
        wi=np.zeros((num_envs, len(WI)), np.int64),
        sess=np.full((num_envs, max(sessions, 1), len(SESS)), -1, np.int32),
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
        in_kind=_LENGTH_CODE[w.input.kind],
        in_tokens=float(w.input.tokens),
        in_mu=w.input.mu,
        in_sigma=w.input.sigma,
        in_low=w.input.low,
        in_high=w.input.high,
        out_kind=_LENGTH_CODE[w.output.kind],
        out_tokens=float(w.output.tokens),
        out_mu=w.output.mu,
        out_sigma=w.output.sigma,
        out_low=w.output.low,
        out_high=w.output.high,
        block_tokens=block_tokens,
        system_prompts=w.system_prompts,
        system_blocks=w.system_prompt_tokens // block_tokens,
        system_share=w.system_prompt_share,
        session_reuse=w.session_reuse,
        sessions=max(w.sessions, 1),
        multiplier=w.rate_multiplier,
        tr_arrival=arrays[0],
        tr_input=arrays[1],
        tr_output=arrays[2],
        tr_offsets=arrays[3],
        tr_blocks=arrays[4],
        tr_id_shift=shift,
        tr_loop_gap=gap,
    )


def reset_env(w: Workload, st: WorkloadState, e: int, rng: np.random.Generator) -> None:
    """Re-initialise env ``e``'s workload state from its generator ``rng``."""
    st.rng[e] = seed_states(rng, 1)[0]
    st.wf[e, WF.LAST_T] = 0.0
    st.wi[e, WI.BURST] = 0
    st.wf[e, WF.SWITCH_T] = 0.0
    st.sess[e] = -1
    st.wi[e, WI.SESS_COUNT] = 0
    st.wi[e, WI.LOOP] = 0
    if w.trace is not None:
        start = int(rng.integers(len(w.trace))) if w.random_start else 0
        st.wi[e, WI.CURSOR] = start
        st.wf[e, WF.BASE_T] = float(w.trace.arrival_s[start])
    else:
        st.wi[e, WI.CURSOR] = 0
        st.wf[e, WF.BASE_T] = 0.0


@compiled_inline
def _length(
    st: WorkloadState,
    e: int,
    kind: int,
    tokens: float,
    mu: float,
    sigma: float,
    low: float,
    high: float,
) -> int:
    if kind == 0:
        return int(tokens)
    x = truncated_lognormal(st.rng, e, mu, sigma, low, high)
    return max(int(x + 0.5), 1)


@compiled_inline
def _next_gap(p: WorkloadParams, st: WorkloadState, e: int) -> float:
    """Seconds from the last arrival of env ``e`` to its next one."""
    if p.arrival == 0:
        return exponential(st.rng, e) / p.rate
    if p.arrival == 1:
        k = 1.0 / (p.cv * p.cv)
        return gamma(st.rng, e, k) / (k * p.rate)
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
        st.wf[e, WF.REQ_T] = (p.tr_arrival[j] - st.wf[e, WF.BASE_T]) / p.multiplier
        st.wi[e, WI.REQ_IN] = p.tr_input[j]
        st.wi[e, WI.REQ_OUT] = p.tr_output[j]
        st.wi[e, WI.REQ_TOFF] = p.tr_offsets[j]
        st.wi[e, WI.REQ_NBLOCKS] = p.tr_offsets[j + 1] - p.tr_offsets[j]
        st.wi[e, WI.REQ_SHIFT] = st.wi[e, WI.LOOP] * p.tr_id_shift
        st.wi[e, WI.REQ_SYS] = -1
        st.wi[e, WI.REQ_NSYS] = 0
        st.wi[e, WI.REQ_BASE] = 0
        return
    t = st.wf[e, WF.LAST_T] + _next_gap(p, st, e)
    st.wf[e, WF.LAST_T] = t
    st.wf[e, WF.REQ_T] = t
    length = _length(st, e, p.in_kind, p.in_tokens, p.in_mu, p.in_sigma, p.in_low, p.in_high)
    st.wi[e, WI.REQ_OUT] = _length(
        st, e, p.out_kind, p.out_tokens, p.out_mu, p.out_sigma, p.out_low, p.out_high
    )
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
def _parse_length(raw: Any, where: str, default: LengthDist) -> LengthDist:
    if raw is None:
        return default
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with 'distribution'")
    kind = raw.get("distribution", "fixed")
    if kind not in LENGTHS:
        raise ConfigError(
            f"{where}.distribution: {kind!r} is not allowed; allowed: {', '.join(LENGTHS)}"
        )
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


_SYNTH_KEYS = ("arrival", "input", "output", "prefix")
_TRACE_KEYS = ("trace", "format", "window_s", "start", "on_error", "unsorted")


def parse_workload(raw: Any, where: str, base_dir: Path | None = None) -> Workload:
    """Build a Workload from the ``workload:`` mapping; errors name ``where`` and the key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with 'kind' ({', '.join(KINDS)})")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{where}.kind: {kind!r} is not allowed; allowed: {', '.join(KINDS)}")
    keys = _SYNTH_KEYS if kind == "synthetic" else _TRACE_KEYS
    check_keys(
        raw, where, ["kind"] + (["trace"] if kind == "trace" else []), ("rate_multiplier", *keys)
    )
    mult = number(raw, "rate_multiplier", where, minimum=0, exclusive_minimum=True, default=1.0)
    if kind == "trace":
        return _parse_trace_workload(raw, where, mult, base_dir)
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
    }[proc]
    check_keys(arr, aw, ["rate_rps"], ["process", *allowed])
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
        arrival=proc,
        rate_rps=number(arr, "rate_rps", aw, minimum=0, exclusive_minimum=True),
        cv=number(arr, "cv", aw, minimum=0.05, maximum=20, default=1.0),
        burst_factor=number(arr, "burst_factor", aw, minimum=1, maximum=1000, default=4.0),
        burst_fraction=number(
            arr, "burst_fraction", aw, minimum=0, maximum=1, exclusive_minimum=True, default=0.2
        ),
        burst_mean_s=number(
            arr, "burst_mean_s", aw, minimum=0, exclusive_minimum=True, default=10.0
        ),
        input=_parse_length(raw.get("input"), f"{where}.input", LengthDist("fixed", 8192)),
        output=_parse_length(raw.get("output"), f"{where}.output", LengthDist("fixed", 1024)),
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
