"""The simulator's public view: what a router would read at each env's pending decision.

A policy never reads the simulator's packed state. After every step (and reset) the event loop
writes, for each env it advanced, the quantities a deployed router reads from live metrics,
in physical units, into a matrix whose column layout the caller chooses (the observation
encoder's, see :mod:`prfaas_env.observation.encoder`); plus the measured bandwidth of each
channel, the action mask and the counters rewards are computed from. It does so while the
env's state is still in the CPU's caches, in the same compiled call as the step.

Inputs (:data:`INPUTS`), per entity in topology order (prefill clusters
``Topology.prefill_index``, channels some route uses ``Topology.route_channels``, decode
clusters ``Topology.decode_index``):

========================  =========  ==========================================================
input                     entity     value
========================  =========  ==========================================================
input_tokens              request    prompt length of the pending request, tokens
expected_output_tokens    request    the workload's mean output length, tokens (a router does
                                     not know a request's own)
ttft_ewma_s               request    moving average of TTFT over completions (0 before any), s
cached_tokens             prefill    prefix-cache match in the cluster, tokens (at most the
                                     prompt length - 1)
prefill_s                 prefill    unloaded prefill time of the uncached tokens on one
                                     instance, s (the cost tables')
queued_requests           prefill    requests waiting to start prefill
queued_tokens             prefill    uncached tokens of those requests
wait_s                    prefill    time until the least-loaded instance is free, s
busy_fraction             prefill    share of the cluster's instances busy now
bytes_in_flight           channel    KV bytes the channel still has to send
flows                     channel    concurrent KV transfers on the channel
free_slots                decode     free decode slots over all slots
kv_used                   decode     KV memory reserved over capacity
admission_queue           decode     requests with their KV delivered, waiting for a slot
admission_wait_s          decode     time until a slot frees up (0 when one is free;
                                     at most 1e6), s
========================  =========  ==========================================================

A co-located cluster is both a prefill and a decode entity. As a prefill entity its queue is
the local prompts waiting at its engines whose prefill has not started (``queued_requests``,
``queued_tokens``), ``wait_s`` is the time until the soonest engine step boundary (0 when an
engine is idle: a new request is scheduled at the next boundary) and ``busy_fraction`` the
share of engines with a step in flight. As a decode entity ``free_slots`` is the share of
running-request places free (``max_num_seqs`` per rank), ``kv_used`` the share of KV blocks
allocated, ``admission_queue`` the waiting requests that are not new local prompts (KV
delivered from a prefill elsewhere, or preempted), and ``admission_wait_s`` 0 when some rank
can take one more request, else the time until the soonest step boundary (when a request
can finish and free a place).

Beside the matrix: ``bandwidth_bps`` ``[env, channel]`` the usable bandwidth as measured at the
last multiple of ``staleness_s`` (bytes/s; live when 0), ``mask`` ``[env, action]`` (a route
over a channel whose live bandwidth is 0 is not allowed; actions after the routes, i.e.
reject, always are), and ``counters`` ``[env, COUNTERS]`` (totals since the env's reset).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from prfaas_env.sim.jit import compiled, compiled_inline
from prfaas_env.sim.links import bytes_in_flight
from prfaas_env.sim.state import (
    CHF,
    CLF,
    CLI,
    DF,
    DI,
    EF,
    EI,
    KF,
    KI,
    LF,
    LI,
    PF,
    PI,
    QI,
    ROUTE,
    State,
    Static,
)
from prfaas_env.sim.topology import Topology
from prfaas_env.sim.workload import WI, WorkloadState

INPUTS = (
    "input_tokens",
    "expected_output_tokens",
    "ttft_ewma_s",
    "cached_tokens",
    "prefill_s",
    "queued_requests",
    "queued_tokens",
    "wait_s",
    "busy_fraction",
    "bytes_in_flight",
    "flows",
    "free_slots",
    "kv_used",
    "admission_queue",
    "admission_wait_s",
)
(
    IN_TOKENS,
    IN_OUTPUT,
    IN_EWMA,
    IN_CACHED,
    IN_PREFILL,
    IN_QREQ,
    IN_QTOK,
    IN_WAIT,
    IN_BUSY,
    IN_BYTES,
    IN_FLOWS,
    IN_FREE,
    IN_KV,
    IN_ADMQ,
    IN_ADMW,
) = range(len(INPUTS))
# Totals since an env's reset, the per-step rewards are differences of: completed requests,
# completed within both SLOs, sum of their TTFT (s), request-seconds spent waiting for a
# first token (s), output tokens produced, requests turned away.
COUNTERS = (
    "completed",
    "slo_met",
    "ttft_sum_s",
    "waiting_s",
    "output_tokens",
    "rejected",
    "decode_sum_s",
)
MAX_ADMISSION_WAIT_S = 1e6  # admission wait reported when no decode slot will ever free up


class ViewSpec(NamedTuple):
    """Where the event loop writes each env's view (see the module docstring); an empty
    ``values`` (zero rows) turns the view off."""

    cols: NDArray[np.int64]  # [len(INPUTS), 2]: first column and step between entities
    prefill_clusters: NDArray[np.int64]  # [P] cluster index of each prefill entity
    channels: NDArray[np.int64]  # [C] channel index of each channel entity
    decode_clusters: NDArray[np.int64]  # [D] cluster index of each decode entity
    staleness_s: float  # bandwidth is measured at multiples of this (0: live), s
    expected_output_tokens: float
    values: NDArray[np.float64]  # [env, width]
    bandwidth_bps: NDArray[np.float64]  # [env, C]
    mask: NDArray[np.bool_]  # [env, actions]
    counters: NDArray[np.float64]  # [env, len(COUNTERS)]


class SimView(NamedTuple):
    """The arrays a :class:`ViewSpec` fills (refreshed in place by every step and reset)."""

    values: NDArray[np.float64]
    bandwidth_bps: NDArray[np.float64]
    mask: NDArray[np.bool_]
    counters: NDArray[np.float64]


def view_spec(
    topology: Topology,
    num_envs: int,
    columns: Mapping[str, tuple[int, int]],
    width: int,
    actions: int,
    staleness_s: float = 0.0,
    expected_output_tokens: float = 0.0,
) -> ViewSpec:
    """A spec writing each input ``key`` of entity ``i`` to column ``start + i * step`` where
    ``columns[key] = (start, step)`` (every input of :data:`INPUTS` must be placed) of a
    ``[num_envs, width]`` matrix; ``actions`` columns of mask (the topology's routes, then
    any always-allowed actions)."""
    missing = [k for k in INPUTS if k not in columns]
    if missing:
        raise ValueError(f"columns: no place for {', '.join(missing)}")
    cols = np.array([columns[k] for k in INPUTS], np.int64).reshape(len(INPUTS), 2)
    topo = topology
    entities = {  # how many entities each input has: its last column must be inside too
        **dict.fromkeys(INPUTS[IN_TOKENS:IN_CACHED], 1),
        **dict.fromkeys(INPUTS[IN_CACHED:IN_BYTES], len(topo.prefill_index)),
        **dict.fromkeys(INPUTS[IN_BYTES:IN_FREE], len(topo.route_channels)),
        **dict.fromkeys(INPUTS[IN_FREE:], len(topo.decode_index)),
    }
    for k, (start, step) in zip(INPUTS, cols.tolist(), strict=True):
        last = start + (entities[k] - 1) * step
        if entities[k] and (start < 0 or step < 1 or last >= width):
            raise ValueError(
                f"columns[{k!r}] = ({start}, {step}): its {entities[k]} columns must lie in "
                f"[0, {width}) with a step of at least 1"
            )
    if staleness_s < 0 or not math.isfinite(staleness_s):
        raise ValueError(f"staleness_s: expected a finite number >= 0, got {staleness_s!r}")
    channels = list(topo.route_channels)
    if actions < len(topo.routes):
        raise ValueError(f"actions: {actions}, fewer than the topology's {len(topo.routes)} routes")
    return ViewSpec(
        cols=cols,
        prefill_clusters=np.array(topo.prefill_index, np.int64),
        channels=np.array(channels, np.int64),
        decode_clusters=np.array(topo.decode_index, np.int64),
        staleness_s=float(staleness_s),
        expected_output_tokens=float(expected_output_tokens),
        values=np.zeros((num_envs, width)),
        bandwidth_bps=np.zeros((num_envs, len(channels))),
        mask=np.ones((num_envs, actions), np.bool_),
        counters=np.zeros((num_envs, len(COUNTERS))),
    )


def no_view() -> ViewSpec:
    """A spec that writes nothing (the event loop skips the view)."""
    return ViewSpec(
        cols=np.zeros((len(INPUTS), 2), np.int64),
        prefill_clusters=np.zeros(0, np.int64),
        channels=np.zeros(0, np.int64),
        decode_clusters=np.zeros(0, np.int64),
        staleness_s=0.0,
        expected_output_tokens=0.0,
        values=np.zeros((0, 0)),
        bandwidth_bps=np.zeros((0, 0)),
        mask=np.zeros((0, 0), np.bool_),
        counters=np.zeros((0, len(COUNTERS))),
    )


@compiled_inline
def fill_view(S: Static, ws: WorkloadState, st: State, V: ViewSpec, e: int) -> None:
    """Write env ``e``'s view at its pending decision (see the module docstring)."""
    out = V.values
    c = V.cols
    now = st.ef[e, EF.NOW]
    out[e, c[IN_TOKENS, 0]] = ws.wi[e, WI.REQ_IN]
    out[e, c[IN_OUTPUT, 0]] = V.expected_output_tokens
    ewma = st.ef[e, EF.M_TTFT_EWMA]
    out[e, c[IN_EWMA, 0]] = ewma if ewma == ewma else 0.0
    for j in range(V.prefill_clusters.shape[0]):
        cl = V.prefill_clusters[j]
        if S.cl_i[cl, CLI.NC] > 0:
            _co_prefill_view(S, st, V, e, j, cl, now)
            continue
        p0 = S.cl_i[cl, CLI.P0]
        count = S.cl_i[cl, CLI.NP]
        nq = 0
        qtok = 0.0
        wait = np.inf
        busy = 0
        for i in range(p0, p0 + count):
            nq += st.pi[e, i, PI.NQ]
            qtok += st.pf[e, i, PF.QTOK]
            w = max(st.pf[e, i, PF.FREE] - now, 0.0)
            wait = min(wait, w)
            if w > 0.0:
                busy += 1
        _prefill_inputs(st, V, e, j, cl, nq, qtok, wait, busy / count)
    stale = V.staleness_s
    for j in range(V.channels.shape[0]):
        ch = V.channels[j]
        bw = st.lf[e, ch, LF.BW]
        if stale > 0.0:  # the bandwidth as measured at the last multiple of `stale`
            t = math.floor(now / stale) * stale
            step = S.ch_f[ch, CHF.STEP_S]
            cell = math.floor(t / step) if math.isfinite(step) else 0
            bw = st.l_series[e, ch, cell % S.ch_cells[ch]]
        V.bandwidth_bps[e, j] = bw
        out[e, c[IN_BYTES, 0] + j * c[IN_BYTES, 1]] = bytes_in_flight(st.lf, st.li, e, ch, now)
        out[e, c[IN_FLOWS, 0] + j * c[IN_FLOWS, 1]] = st.li[e, ch, LI.N]
    for j in range(V.decode_clusters.shape[0]):
        cl = V.decode_clusters[j]
        if S.cl_i[cl, CLI.NC] > 0:
            _co_decode_view(S, st, V, e, j, cl, now)
            continue
        d0 = S.cl_i[cl, CLI.D0]
        count = S.cl_i[cl, CLI.ND]
        mb = S.cl_i[cl, CLI.MAX_BATCH]
        free = 0
        mem = 0.0
        has_slot = False
        soonest = np.inf
        for i in range(d0, d0 + count):
            n = st.di[e, i, DI.N]
            free += mb - n
            mem += st.df[e, i, DF.MEM]
            has_slot = has_slot or n < mb
            soonest = min(soonest, st.df[e, i, DF.NEXT_T])
        queue = st.qi[e, cl, QI.LEN]
        out[e, c[IN_FREE, 0] + j * c[IN_FREE, 1]] = free / (mb * count)
        out[e, c[IN_KV, 0] + j * c[IN_KV, 1]] = mem / (S.cl_f[cl, CLF.KV_CAP] * count)
        out[e, c[IN_ADMQ, 0] + j * c[IN_ADMQ, 1]] = queue
        wait = 0.0
        if not (has_slot and queue == 0):
            wait = min(max(soonest - now, 0.0), MAX_ADMISSION_WAIT_S)
        out[e, c[IN_ADMW, 0] + j * c[IN_ADMW, 1]] = wait
    routes = S.route.shape[0]
    for a in range(V.mask.shape[1]):
        ch = S.route[a, ROUTE.CH] if a < routes else -1
        V.mask[e, a] = ch < 0 or st.lf[e, ch, LF.BW] > 0.0
    write_counters(st, e, V.counters)


@compiled_inline
def write_counters(st: State, e: int, out: NDArray[np.float64]) -> None:
    """Env ``e``'s totals in :data:`COUNTERS` order into ``out[e]`` (the one place that
    order is written)."""
    out[e, 0] = st.ei[e, EI.M_DONE]
    out[e, 1] = st.ei[e, EI.M_SLO_OK]
    out[e, 2] = st.ef[e, EF.M_TTFT_SUM]
    out[e, 3] = st.ef[e, EF.W_AREA]
    out[e, 4] = st.ef[e, EF.M_OUT_TOKENS]
    out[e, 5] = st.ei[e, EI.M_REJECTED]
    out[e, 6] = st.ef[e, EF.M_DECODE_SUM]


@compiled_inline
def _prefill_inputs(
    st: State,
    V: ViewSpec,
    e: int,
    j: int,
    cl: int,
    nq: float,
    qtok: float,
    wait: float,
    busy: float,
) -> None:
    """Write prefill entity ``j``'s inputs (cluster ``cl``): cached tokens and unloaded
    prefill time of the pending request, queued requests and uncached tokens, seconds until
    the first instance (or engine) is free, and the busy share."""
    out = V.values
    c = V.cols
    out[e, c[IN_CACHED, 0] + j * c[IN_CACHED, 1]] = st.obs_cached[e, cl]
    out[e, c[IN_PREFILL, 0] + j * c[IN_PREFILL, 1]] = st.obs_prefill_s[e, cl]
    out[e, c[IN_QREQ, 0] + j * c[IN_QREQ, 1]] = nq
    out[e, c[IN_QTOK, 0] + j * c[IN_QTOK, 1]] = qtok
    out[e, c[IN_WAIT, 0] + j * c[IN_WAIT, 1]] = wait
    out[e, c[IN_BUSY, 0] + j * c[IN_BUSY, 1]] = busy


@compiled_inline
def _co_prefill_view(
    S: Static, st: State, V: ViewSpec, e: int, j: int, cl: int, now: float
) -> None:
    """Prefill inputs of co-located cluster ``cl`` (entity ``j``; see the module docstring)."""
    r0 = S.cl_i[cl, CLI.R0]
    nq = 0
    qtok = 0
    for g in range(r0, r0 + S.cl_i[cl, CLI.NC] * S.cl_i[cl, CLI.RANKS]):
        nq += st.ki[e, g, KI.NQ]
        qtok += st.ki[e, g, KI.QTOK]
    wait = np.inf
    busy = 0
    c0 = S.cl_i[cl, CLI.C0]
    for i in range(c0, c0 + S.cl_i[cl, CLI.NC]):
        end = st.kf[e, i, KF.END]
        wait = min(wait, max(end - now, 0.0) if end < np.inf else 0.0)
        if end < np.inf:
            busy += 1
    _prefill_inputs(st, V, e, j, cl, nq, qtok, wait, busy / S.cl_i[cl, CLI.NC])


@compiled_inline
def _co_decode_view(S: Static, st: State, V: ViewSpec, e: int, j: int, cl: int, now: float) -> None:
    """Decode inputs of co-located cluster ``cl`` (entity ``j``; see the module docstring)."""
    out = V.values
    c = V.cols
    r0 = S.cl_i[cl, CLI.R0]
    nr = S.cl_i[cl, CLI.NC] * S.cl_i[cl, CLI.RANKS]
    seqs = S.cl_i[cl, CLI.MAX_SEQS]
    blocks = S.cl_i[cl, CLI.KV_BLOCKS]
    free = 0
    used = 0
    queue = 0
    room = False
    for g in range(r0, r0 + nr):
        free += seqs - st.ki[e, g, KI.NRUN]
        used += blocks - st.ki[e, g, KI.FREE]
        queue += st.ki[e, g, KI.W_LEN] - st.ki[e, g, KI.NQ]
        room = room or st.ki[e, g, KI.NRUN] + st.ki[e, g, KI.W_LEN] < seqs
    soonest = np.inf
    c0 = S.cl_i[cl, CLI.C0]
    for i in range(c0, c0 + S.cl_i[cl, CLI.NC]):
        soonest = min(soonest, st.kf[e, i, KF.END])
    out[e, c[IN_FREE, 0] + j * c[IN_FREE, 1]] = free / (seqs * nr)
    out[e, c[IN_KV, 0] + j * c[IN_KV, 1]] = used / max(blocks * nr, 1)
    out[e, c[IN_ADMQ, 0] + j * c[IN_ADMQ, 1]] = queue
    wait = 0.0
    if not room:
        wait = min(max(soonest - now, 0.0), MAX_ADMISSION_WAIT_S)
    out[e, c[IN_ADMW, 0] + j * c[IN_ADMW, 1]] = wait


@compiled
def read_counters(st: State, out: NDArray[np.float64]) -> None:
    """Every env's totals (:func:`write_counters`)."""
    for e in range(out.shape[0]):
        write_counters(st, e, out)


@compiled
def refresh(S: Static, ws: WorkloadState, st: State, V: ViewSpec, rows: NDArray[np.int64]) -> None:
    """Write the view of the envs in ``rows`` at their pending decisions, advancing nothing
    (for a view enabled between steps, or envs copied in)."""
    for i in range(rows.shape[0]):
        fill_view(S, ws, st, V, rows[i])
