"""Simulator state as a struct of arrays (leading dimension: env) and the constants it reads.

Requests in flight live in per-env *slots* (recycled through a free stack); every queue is a
linked list threaded through the slots, so no queue has a capacity of its own: the slot arrays
grow (doubling) when an env runs out, between two steps.

Fields of one entity and dtype are packed into one array (see :mod:`prfaas_env.sim.packing`):
``rf``/``ri`` per request slot, ``pf``/``pi`` per prefill instance, ``lf``/``li`` per link
channel, ``df``/``di`` per decode instance, ``qi`` per decode cluster's admission queue,
``ef``/``ei`` per env; for co-located engines ``ci`` per request slot, ``kf`` per engine and
``ki`` per attention data-parallel rank (with ``k_run``, each rank's running requests in
admission order), ``cf`` per request slot and ``fe_free`` per cluster (its serving frontend);
for a closed-loop workload ``starts`` (the pending starts' times) and ``loop_f``/``loop_n``.
The kernel addresses them with the ``F_*`` constants; Python code reads them by name
(``state.r_arr``, ``state.p_free``, ...), as views.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from prfaas_env.sim.packing import add_views

INF = np.inf

# Fields of a per-request record (``records`` when recording is on), all float64.
RECORD_FIELDS = (
    "arrival_s",
    "route",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "prefill_instance",
    "prefill_start_s",
    "prefill_end_s",
    "kv_bytes",
    "transfer_end_s",
    "decode_instance",
    "decode_start_s",
    "first_token_s",
    "finish_s",
)
REC_ARR, REC_ROUTE, REC_IN, REC_OUT, REC_CACHED, REC_PINST, REC_PSTART, REC_PEND = range(8)
REC_KV, REC_XFER, REC_DINST, REC_DSTART, REC_FIRST, REC_FINISH = range(8, 14)

HIST_BINS = 240  # TTFT histogram: log-spaced bins, 20 per decade from 1 ms to 10^9 ms
HIST_LO_S = 1e-3
HIST_PER_DECADE = 20.0
TTFT_EWMA_ALPHA = 0.05  # weight of the newest completion in the TTFT moving average

# Decision codes of the event loop besides route indices (>= 0).
REJECT = -1  # turn the request away (admission control)
SKIP = -2  # leave this env untouched in this step
START = -3  # draw and observe an env's first request (after a reset)
DRAIN = -4  # finish an env's routed requests (no new arrivals)


# Packed fields: one IntEnum per packed array; Python views are named prefix + member name.
class ROUTE(IntEnum):
    """Per route (int): prefill cluster, decode cluster, channel (-1 = RDMA: the route stays
    in one datacenter; a channel means it offloads across datacenters)."""

    P = 0
    D = 1
    CH = 2


class CLI(IntEnum):
    """Per cluster (int): first/count of prefill instances, first/count of decode instances,
    decode slots per instance; for a co-located cluster: first/count of engines, first rank,
    attention data-parallel ranks per engine, running requests and tokens per step per rank,
    KV block size (tokens), KV blocks per rank, blocks every sequence holds besides its
    tokens' (0 for the other roles)."""

    P0 = 0
    NP = 1
    D0 = 2
    ND = 3
    MAX_BATCH = 4
    C0 = 5
    NC = 6
    R0 = 7
    RANKS = 8
    MAX_SEQS = 9
    BUDGET = 10
    KV_BT = 11
    KV_BLOCKS = 12
    FIXED_BLOCKS = 13


class CLF(IntEnum):
    """Per cluster (float): RDMA bytes/s per node; KV bytes one decode instance holds; the
    serving overhead per request (s, added to the first token's and the last token's times at
    the decode side), and, for co-located engines, per step and per decoding sequence in a
    step and the serial frontend's time per request (s)."""

    RDMA_BPS = 0
    KV_CAP = 1
    REQUEST_S = 2
    STEP_S = 3
    SEQ_S = 4
    FRONTEND_S = 5


class CHF(IntEnum):
    """Per channel (float): one-way latency, s; bandwidth grid step, s (inf when constant)."""

    LATENCY_S = 0
    STEP_S = 1


class EF(IntEnum):
    """Per env (float): time of the pending decision, s; metric sums since reset."""

    NOW = 0
    M_TTFT_SUM = 1
    M_TPOT_SUM = 2
    M_OUT_TOKENS = 3
    M_CACHED_TOKENS = 4
    M_INPUT_TOKENS = 5
    M_TTFT_EWMA = 6  # exponentially weighted mean TTFT of completions (weight TTFT_EWMA_ALPHA)
    W_AREA = 7  # request-seconds spent waiting for a first token since reset (integral, s)
    W_T = 8  # time up to which W_AREA is integrated, s
    M_DECODE_SUM = 9  # completions' decode durations (last token - decode start), summed, s


class EI(IntEnum):
    """Per env (int): requests routed, free slots, completed, within SLO, offloaded,
    rejected, routed requests still waiting for their first token."""

    SEQ = 0
    NFREE = 1
    M_DONE = 2
    M_SLO_OK = 3
    M_OFFLOAD = 4
    M_REJECTED = 5
    W_N = 6


class RF(IntEnum):
    """Per request slot (float): arrival, prefill start, prefill completion event, KV bytes,
    decode KV reservation, KV complete at decode side, link finish tag (bytes), decode virtual
    time at admission (tokens), decode start, first token (all times in s)."""

    ARR = 0
    PSTART = 1
    EVT = 2
    KV = 3
    NEED = 4
    KVARR = 5
    TAG = 6
    VADM = 7
    DSTART = 8
    FIRST = 9


class RI(IntEnum):
    """Per request slot (int): request number (-1 = free), route, input/output/uncached
    tokens, prefill done, KV delivered, and the next slot in
    its prefill queue, channel flow list, channel delay line and decode admission queue."""

    SEQ = 0
    ROUTE = 1
    IN = 2
    OUT = 3
    UNC = 4
    PDONE = 5
    KVDONE = 6
    NX_PQ = 7
    NX_FL = 8
    NX_DL = 9
    NX_DQ = 10


class PF(IntEnum):
    """Per prefill instance (float): time it has finished all queued work, last completion
    event, uncached tokens waiting to start, prefill seconds assigned so far; the start time
    of the next job to start and the completion event of the oldest started job (inf when
    there is none; copies of their request slots' times, so that looking for the next event
    reads no request slot)."""

    FREE = 0
    LAST_EVT = 1
    QTOK = 2
    BUSY_S = 3
    START_T = 4
    DONE_T = 5


class PI(IntEnum):
    """Per prefill instance (int): oldest job not yet completed, newest job, next job to start,
    jobs waiting to start."""

    HEAD = 0
    TAIL = 1
    NEXT = 2
    NQ = 3


class LF(IntEnum):
    """Per channel (float): usable bandwidth now (bytes/s), time of last update, per-flow
    service so far (bytes), next flow completion, bytes completed, integral of
    usable bandwidth up to the last update (bytes), sum of the active flows' finish tags
    (bytes), and the arrival of the delay line's first request at the decode side (a copy of
    its request slot's time, inf when the line is empty)."""

    BW = 0
    T = 1
    V = 2
    NEXT_T = 3
    BYTES_DONE = 4
    CAP_INT = 5
    SUM_TAG = 6  # sum of the active flows' finish tags (bytes left = SUM_TAG - N * V)
    DL_T = 7  # arrival of the delay line's first request at the decode side (inf: none)


class LI(IntEnum):
    """Per channel (int): bandwidth grid cell, active flows, flow list head, next finishing
    flow, delay line head and tail."""

    CELL = 0
    N = 1
    FLOWS = 2
    NEXT_K = 3
    DL_HEAD = 4
    DL_TAIL = 5


class DF(IntEnum):
    """Per decode instance (float): tokens produced by each active sequence since V was 0,
    time of last update, KV bytes reserved, input tokens of active sequences, sum of V at their
    admissions, step time (s), next completion (s), integral of batch size (sequence-s)."""

    V = 0
    T = 1
    MEM = 2
    CTX_IN = 3
    SUM_VADM = 4
    STEP = 5
    NEXT_T = 6
    BUSY_INT = 7


class DI(IntEnum):
    """Per decode instance (int): active sequences, batch slot that completes next."""

    N = 0
    NEXT_S = 1


class QI(IntEnum):
    """Per decode cluster (int): admission queue head, tail and length."""

    HEAD = 0
    TAIL = 1
    LEN = 2


class CI(IntEnum):
    """Per request slot, co-located engines (int32): tokens whose KV is computed, tokens of
    the sequence (prompt and outputs so far), outputs produced, KV blocks held, tokens
    scheduled in the step in flight, next slot in its rank's waiting list, its rank, and
    whether its prefill has started (a local request) or it needs none (1)."""

    COMP = 0
    NTOK = 1
    GEN = 2
    BLK = 3
    SCH = 4
    NX_W = 5
    RANK = 6
    STARTED = 7


class CF(IntEnum):
    """Per request slot, co-located engines (float): when the serving frontend hands the
    request to its engine (s)."""

    READY = 0


class KF(IntEnum):
    """Per co-located engine (float): end of the step in flight (inf when idle), its start
    and duration, the time busy integrals run to, running-request-seconds and seconds of
    steps that computed prompt tokens; the step in flight's running requests and whether it
    computes prompt tokens (1.0) or not."""

    END = 0
    START = 1
    STEP = 2
    T = 3
    BUSY_INT = 4
    PBUSY = 5
    RUNS = 6  # running requests in the step in flight
    PREFILL = 7  # 1 when the step in flight computes prompt tokens


class KI(IntEnum):
    """Per attention data-parallel rank of a co-located engine (int): running requests,
    waiting list head, tail and length, free KV blocks, waiting requests whose prefill has
    not started (local prompts) and their uncached tokens."""

    NRUN = 0
    W_HEAD = 1
    W_TAIL = 2
    W_LEN = 3
    FREE = 4
    NQ = 5
    QTOK = 6


class LOOP(IntEnum):
    """Per env, closed-loop workload (float): time of the earliest pending start (inf: none)."""

    NEXT_T = 0


STATIC_LAYOUT: dict[str, tuple[type[IntEnum], str]] = {
    "route": (ROUTE, "route_"),
    "cl_i": (CLI, "cl_"),
    "cl_f": (CLF, "cl_"),
    "ch_f": (CHF, "ch_"),
}
STATE_LAYOUT: dict[str, tuple[type[IntEnum], str]] = {
    "ef": (EF, ""),
    "ei": (EI, ""),
    "rf": (RF, "r_"),
    "ri": (RI, "r_"),
    "pf": (PF, "p_"),
    "pi": (PI, "p_"),
    "lf": (LF, "l_"),
    "li": (LI, "l_"),
    "df": (DF, "d_"),
    "di": (DI, "d_"),
    "qi": (QI, "q_"),
    "ci": (CI, "c_"),
    "cf": (CF, "c_"),
    "kf": (KF, "k_"),
    "ki": (KI, "k_"),
    "loop_f": (LOOP, "loop_"),
}

# Initial value of each packed field (0 unless listed), by view name.
_INITIAL = {
    "m_ttft_ewma": np.nan,
    "r_seq": -1,
    "r_nx_pq": -1,
    "r_nx_fl": -1,
    "r_nx_dl": -1,
    "r_nx_dq": -1,
    "p_head": -1,
    "p_tail": -1,
    "p_next": -1,
    "l_next_t": INF,
    "l_dl_t": INF,
    "p_start_t": INF,
    "p_done_t": INF,
    "l_flows": -1,
    "l_next_k": -1,
    "l_dl_head": -1,
    "l_dl_tail": -1,
    "d_next_t": INF,
    "d_next_s": -1,
    "q_head": -1,
    "q_tail": -1,
    "c_nx_w": -1,
    "c_rank": -1,
    "k_end": INF,
    "k_w_head": -1,
    "k_w_tail": -1,
    "loop_next_t": INF,
}


class Static(NamedTuple):
    """Topology constants in the form compiled code reads; packed fields by name:
    ``route_p/d/ch`` (per route), ``cl_p0/np/d0/nd/max_batch`` and
    ``cl_rdma_bps/kv_cap`` (per cluster), ``ch_latency_s/step_s`` (per channel)."""

    route: NDArray[np.int64]  # [routes, 3]
    cl_i: NDArray[np.int64]  # [clusters, len(CLI)]
    cl_f: NDArray[np.float64]  # [clusters, len(CLF)]
    ch_f: NDArray[np.float64]  # [channels, 2]: one-way latency s; bandwidth grid step s
    ch_cells: NDArray[np.int64]  # cells of one period of each channel's bandwidth series
    d_cluster: NDArray[np.int64]  # cluster of each decode instance
    prefill_log_t: NDArray[np.float64]  # [cluster, nu, nc]
    decode_log_t: NDArray[np.float64]  # [cluster, batch + 1, nx]
    swa_per_token: NDArray[np.float64]
    swa_window: NDArray[np.float64]
    kv_fixed: float
    kv_per_token: float
    block_tokens: int
    ttft_slo_s: float
    tpot_slo_s: float
    k_cluster: NDArray[np.int64]  # cluster of each co-located engine
    co_na_log_t: NDArray[np.float64]  # [cluster, nn] co-located non-attention table
    co_pa_log_t: NDArray[np.float64]  # [cluster, nu, nc] prefill-chunk attention
    co_da_log_t: NDArray[np.float64]  # [cluster, max_num_seqs + 1, nx] decode attention
    closed_loop: int  # requests in flight of a closed-loop workload (0: open loop)


class State(NamedTuple):
    """Per-env simulator state (see the module docstring for the packed arrays)."""

    ef: NDArray[np.float64]  # [E, 9]
    ei: NDArray[np.int64]  # [E, 7]
    rf: NDArray[np.float64]  # [E, slots, 10]
    ri: NDArray[np.int32]  # [E, slots, 11]
    free: NDArray[np.int32]  # [E, slots] free-slot stack (ei nfree entries)
    pf: NDArray[np.float64]  # [E, prefill instances, 6]
    pi: NDArray[np.int64]  # [E, prefill instances, 4]
    lf: NDArray[np.float64]  # [E, channels, 8]
    li: NDArray[np.int64]  # [E, channels, 6]
    l_series: NDArray[np.float64]  # [E, channels, cells] usable bandwidth, bytes/s
    df: NDArray[np.float64]  # [E, decode instances, 8]
    di: NDArray[np.int64]  # [E, decode instances, 2]
    d_slots: NDArray[np.int32]  # [E, decode instances, max batch] request slot or -1
    d_tags: NDArray[np.float64]  # [E, decode instances, max batch] finish tag, tokens
    qi: NDArray[np.int64]  # [E, clusters, 3]
    obs_cached: NDArray[np.int64]  # [E, clusters] cached tokens of the pending request
    obs_prefill_s: NDArray[np.float64]  # [E, clusters] its unloaded prefill time there, s
    m_ttft_hist: NDArray[np.int32]  # [E, HIST_BINS]
    records: NDArray[np.float64]  # [E, N, fields] (N = 0 when not recording)
    ci: NDArray[np.int32]  # [E, slots (0 without co-located engines), 8]
    cf: NDArray[np.float64]  # [E, slots (0 without co-located engines), 1]
    fe_free: NDArray[np.float64]  # [E, clusters] when each cluster's frontend is free, s
    kf: NDArray[np.float64]  # [E, co-located engines, 8]
    ki: NDArray[np.int64]  # [E, ranks, 7]
    k_run: NDArray[np.int32]  # [E, ranks, max_num_seqs] running slots, admission order
    starts: NDArray[np.float64]  # [E, concurrency (1 when open loop)] pending start times
    loop_f: NDArray[np.float64]  # [E, 1]
    loop_n: NDArray[np.int64]  # [E] pending starts


add_views(Static, STATIC_LAYOUT)
add_views(State, STATE_LAYOUT)

_DTYPE = {"f": np.float64, "i": np.int64}
# per-slot ints are int32: a slot's int fields then take 44 bytes (one or two cache lines)
# instead of 88 (two or three); every value fits (slot indices, token counts, route indices,
# request numbers below 2^31 per env)
_ARRAY_DTYPE = {"ri": np.int32, "ci": np.int32}


def _packed(name: str, shape: tuple[int, ...]) -> NDArray:
    enum, prefix = STATE_LAYOUT[name]
    out = np.zeros((*shape, len(enum)), _ARRAY_DTYPE.get(name, _DTYPE[name[-1]]))
    for member in enum:
        out[..., member] = _INITIAL.get(prefix + member.name.lower(), 0)
    return out


def new_state(
    num_envs: int,
    slots: int,
    prefill_instances: int,
    channels: int,
    cells: int,
    decode_instances: int,
    max_batch: int,
    clusters: int,
    record_capacity: int,
    co_engines: int = 0,
    co_ranks: int = 0,
    co_seqs: int = 0,
    loop: int = 0,
) -> State:
    """Initial state; every queue empty, every slot free. ``co_*``: co-located engines,
    their ranks and running requests per rank (the slots' co-located fields exist only
    when there are engines); ``loop``: requests in flight of a closed-loop workload."""
    e = num_envs
    st = State(
        ef=_packed("ef", (e,)),
        ei=_packed("ei", (e,)),
        rf=_packed("rf", (e, slots)),
        ri=_packed("ri", (e, slots)),
        free=np.tile(np.arange(slots - 1, -1, -1, dtype=np.int32), (e, 1)),
        pf=_packed("pf", (e, prefill_instances)),
        pi=_packed("pi", (e, prefill_instances)),
        lf=_packed("lf", (e, channels)),
        li=_packed("li", (e, channels)),
        l_series=np.zeros((e, channels, cells)),
        df=_packed("df", (e, decode_instances)),
        di=_packed("di", (e, decode_instances)),
        d_slots=np.full((e, decode_instances, max_batch), -1, np.int32),
        d_tags=np.zeros((e, decode_instances, max_batch)),
        qi=_packed("qi", (e, clusters)),
        obs_cached=np.zeros((e, clusters), np.int64),
        obs_prefill_s=np.zeros((e, clusters)),
        m_ttft_hist=np.zeros((e, HIST_BINS), np.int32),
        records=np.full((e, record_capacity, len(RECORD_FIELDS)), np.nan),
        ci=_packed("ci", (e, slots if co_engines else 0)),
        cf=_packed("cf", (e, slots if co_engines else 0)),
        fe_free=np.zeros((e, clusters)),
        kf=_packed("kf", (e, co_engines)),
        ki=_packed("ki", (e, co_ranks)),
        k_run=np.full((e, co_ranks, max(co_seqs, 1)), -1, np.int32),
        starts=np.zeros((e, max(loop, 1))),
        loop_f=_packed("loop_f", (e,)),
        loop_n=np.zeros(e, np.int64),
    )
    st.nfree[:] = slots
    return st


SLOT_ARRAYS = ("rf", "ri", "ci", "cf")


def grow_slots(st: State) -> State:
    """A copy of ``st`` with twice the request slots per env (new slots free)."""
    e, r = st.free.shape
    out = st._asdict()
    for name in SLOT_ARRAYS:
        old = getattr(st, name)
        if old.shape[1] == 0:  # no co-located engines: the slots have no such fields
            continue
        grown = _packed(name, (e, 2 * r))
        grown[:, :r] = old
        out[name] = grown
    free = np.zeros((e, 2 * r), st.free.dtype)
    nf = st.nfree.copy()
    for i in range(e):  # rare (only when an env runs out); keeps each env's stack order
        free[i, : nf[i]] = st.free[i, : nf[i]]
        free[i, nf[i] : nf[i] + r] = np.arange(2 * r - 1, r - 1, -1)
    out["free"] = free
    grown_state = State(**out)
    grown_state.nfree[:] = nf + r
    return grown_state
