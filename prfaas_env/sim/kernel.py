"""The compiled event loop: route one request per env, then advance each env to its next arrival.

The helpers take the whole batch's state and an env index ``e``. :func:`run` loops over a
range of envs inside compiled code, so one Python call advances every env, and
:func:`step_parallel` splits the envs across numba's threads. Every helper that takes the
state tuples is inlined into :func:`run` (``compiled_inline``; small helpers taking a few
arrays stay plain calls, which LLVM inlines): a call between compiled functions passes each
array of the tuples as separate arguments, and with ~50 arrays that cost more than the events
themselves (measured at 64 envs on one thread: about 2.5 us per decision with calls, about
1 us inlined). Resets and draining go through :func:`run` too (codes START and DRAIN), so the
event loop is compiled once.

The dynamics are described in docs/simulator.md; :mod:`prfaas_env.sim.reference` implements
the same model with plain Python objects, and the differential tests hold the two equal.

The co-located engines' handlers (:func:`_co_join`, :func:`_co_step_end`, :func:`_co_route`)
are plain calls, not inlined: they cost a call with every array of the state tuples, paid only
by topologies with co-located clusters, and keep the inlined event loop of the others as it
was (inlined, they made it measurably slower on one thread).

Events that fall at the same instant run in a fixed order: bandwidth changes, link flow
completions, KV deliveries, prefill starts, prefill completions, decode completions,
co-located engine steps; within a kind, by channel or instance index. Events at exactly the
next arrival's time run before it.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from prfaas_env.sim.cache import CFG, CacheState, find, touch_or_insert
from prfaas_env.sim.costs import decode_step_time, kv_bytes, pass_time, prefill_time
from prfaas_env.sim.jit import compiled, compiled_inline, compiled_parallel
from prfaas_env.sim.links import served
from prfaas_env.sim.lookahead import prefetch_ahead
from prfaas_env.sim.state import (
    CF,
    CHF,
    CI,
    CLF,
    CLI,
    DF,
    DI,
    DRAIN,
    EF,
    EI,
    HIST_BINS,
    HIST_LO_S,
    HIST_PER_DECADE,
    KF,
    KI,
    LF,
    LI,
    LOOP,
    PF,
    PI,
    QI,
    REC_ARR,
    REC_CACHED,
    REC_DINST,
    REC_DSTART,
    REC_FINISH,
    REC_FIRST,
    REC_IN,
    REC_KV,
    REC_OUT,
    REC_PEND,
    REC_PINST,
    REC_PSTART,
    REC_ROUTE,
    REC_XFER,
    REJECT,
    RF,
    RI,
    ROUTE,
    SKIP,
    START,
    TTFT_EWMA_ALPHA,
    State,
    Static,
)
from prfaas_env.sim.view import ViewSpec, fill_view
from prfaas_env.sim.workload import (
    WF,
    WI,
    WorkloadParams,
    WorkloadState,
    block_id,
    next_request,
)

INF = np.inf
Arr = np.ndarray  # annotation shorthand for the packed arrays


@compiled
def _record(records: Arr, ri: Arr, e: int, k: int, field: int, value: float) -> None:
    s = ri[e, k, RI.SEQ]
    if s < records.shape[1]:
        records[e, s, field] = value


# ---- FIFO queues: linked lists through the request slots ------------------------------------
@compiled
def _fifo_push(ri: Arr, nx: int, q: Arr, e: int, j: int, head: int, tail: int, k: int) -> None:
    """Append slot ``k`` to queue ``j`` (head and tail in ``q[e, j, head/tail]``, next links in
    ``ri[e, :, nx]``)."""
    ri[e, k, nx] = -1
    last = q[e, j, tail]
    if last < 0:
        q[e, j, head] = k
    else:
        ri[e, last, nx] = k
    q[e, j, tail] = k


@compiled
def _fifo_pop(ri: Arr, nx: int, q: Arr, e: int, j: int, head: int, tail: int) -> int:
    """Remove and return the head slot of queue ``j`` (see :func:`_fifo_push`)."""
    k = q[e, j, head]
    q[e, j, head] = ri[e, k, nx]
    if q[e, j, head] < 0:
        q[e, j, tail] = -1
    return k


@compiled_inline
def _prefill_times(st: State, e: int, i: int) -> None:
    """Refresh prefill instance ``i``'s cached event times after its queue changed."""
    k = st.pi[e, i, PI.NEXT]
    st.pf[e, i, PF.START_T] = st.rf[e, k, RF.PSTART] if k >= 0 else INF
    h = st.pi[e, i, PI.HEAD]
    st.pf[e, i, PF.DONE_T] = st.rf[e, h, RF.EVT] if h >= 0 and h != k else INF


@compiled_inline
def _delay_time(st: State, e: int, ch: int) -> None:
    """Refresh channel ``ch``'s cached delay-line arrival after its delay line changed."""
    k = st.li[e, ch, LI.DL_HEAD]
    st.lf[e, ch, LF.DL_T] = st.rf[e, k, RF.KVARR] if k >= 0 else INF


# ---- links: processor sharing among concurrent flows ------------------------------------------
@compiled
def _link_update(lf: Arr, li: Arr, e: int, ch: int, t: float) -> None:
    """Advance channel ``ch``'s per-flow service to time ``t`` (:func:`links.served`)."""
    dt = t - lf[e, ch, LF.T]
    if dt > 0.0:
        lf[e, ch, LF.V] = served(lf, li, e, ch, t)
        lf[e, ch, LF.CAP_INT] += dt * lf[e, ch, LF.BW]
        lf[e, ch, LF.T] = t


@compiled
def _link_schedule(lf: Arr, li: Arr, rf: Arr, ri: Arr, e: int, ch: int) -> None:
    """Recompute the next flow completion of channel ``ch`` (ties: lowest request number)."""
    best_k = -1
    best_tag = INF
    k = li[e, ch, LI.FLOWS]
    while k >= 0:
        tag = rf[e, k, RF.TAG]
        if tag < best_tag or (tag == best_tag and ri[e, k, RI.SEQ] < ri[e, best_k, RI.SEQ]):
            best_tag = tag
            best_k = k
        k = ri[e, k, RI.NX_FL]
    li[e, ch, LI.NEXT_K] = best_k
    if best_k < 0 or lf[e, ch, LF.BW] <= 0.0:
        lf[e, ch, LF.NEXT_T] = INF
    else:
        left = max(best_tag - lf[e, ch, LF.V], 0.0)
        lf[e, ch, LF.NEXT_T] = lf[e, ch, LF.T] + left * li[e, ch, LI.N] / lf[e, ch, LF.BW]


@compiled_inline
def _link_add(st: State, e: int, ch: int, k: int, t: float) -> None:
    _link_update(st.lf, st.li, e, ch, t)
    st.rf[e, k, RF.TAG] = st.lf[e, ch, LF.V] + st.rf[e, k, RF.KV]
    st.ri[e, k, RI.NX_FL] = st.li[e, ch, LI.FLOWS]
    st.li[e, ch, LI.FLOWS] = k
    st.li[e, ch, LI.N] += 1
    st.lf[e, ch, LF.SUM_TAG] += st.rf[e, k, RF.TAG]
    _link_schedule(st.lf, st.li, st.rf, st.ri, e, ch)


@compiled_inline
def _link_complete(S: Static, st: State, e: int, ch: int, t: float) -> None:
    """The flow with the smallest tag has been served: move it to the delay line."""
    k = st.li[e, ch, LI.NEXT_K]
    _link_update(st.lf, st.li, e, ch, t)
    st.lf[e, ch, LF.V] = st.rf[e, k, RF.TAG]
    prev = -1
    j = st.li[e, ch, LI.FLOWS]
    while j != k:
        prev = j
        j = st.ri[e, j, RI.NX_FL]
    if prev < 0:
        st.li[e, ch, LI.FLOWS] = st.ri[e, k, RI.NX_FL]
    else:
        st.ri[e, prev, RI.NX_FL] = st.ri[e, k, RI.NX_FL]
    st.ri[e, k, RI.NX_FL] = -1
    st.li[e, ch, LI.N] -= 1
    st.lf[e, ch, LF.SUM_TAG] -= st.rf[e, k, RF.TAG]
    st.lf[e, ch, LF.BYTES_DONE] += st.rf[e, k, RF.KV]
    if st.li[e, ch, LI.N] == 0:
        st.lf[e, ch, LF.V] = 0.0
        st.lf[e, ch, LF.SUM_TAG] = 0.0
    st.rf[e, k, RF.KVARR] = t + S.ch_f[ch, CHF.LATENCY_S]
    _fifo_push(st.ri, RI.NX_DL, st.li, e, ch, LI.DL_HEAD, LI.DL_TAIL, k)
    _delay_time(st, e, ch)
    _link_schedule(st.lf, st.li, st.rf, st.ri, e, ch)


@compiled_inline
def _bandwidth_change(S: Static, st: State, e: int, ch: int, t: float) -> None:
    _link_update(st.lf, st.li, e, ch, t)
    st.li[e, ch, LI.CELL] += 1
    st.lf[e, ch, LF.BW] = st.l_series[e, ch, st.li[e, ch, LI.CELL] % S.ch_cells[ch]]
    _link_schedule(st.lf, st.li, st.rf, st.ri, e, ch)


# ---- decode: continuous batching as a fluid, one token per step for every sequence -----------
@compiled
def _decode_update(df: Arr, di: Arr, e: int, j: int, t: float) -> None:
    dt = t - df[e, j, DF.T]
    if dt > 0.0:
        if di[e, j, DI.N] > 0:
            df[e, j, DF.V] += dt / df[e, j, DF.STEP]
            df[e, j, DF.BUSY_INT] += dt * di[e, j, DI.N]
        df[e, j, DF.T] = t


@compiled_inline
def _decode_schedule(S: Static, st: State, e: int, j: int) -> None:
    """Re-evaluate the step time at the current batch and context; find the next finisher."""
    c = S.d_cluster[j]
    _decode_schedule_arrays(
        S.decode_log_t[c],
        st.df,
        st.di,
        st.d_slots,
        st.d_tags,
        st.ri,
        e,
        j,
    )


@compiled
def _decode_schedule_arrays(
    log_t: Arr, df: Arr, di: Arr, d_slots: Arr, d_tags: Arr, ri: Arr, e: int, j: int
) -> None:
    # the active sequences occupy batch slots 0 .. n-1 (kept compact on completion)
    n = di[e, j, DI.N]
    if n == 0:
        df[e, j, DF.STEP] = 0.0
        df[e, j, DF.NEXT_T] = INF
        di[e, j, DI.NEXT_S] = -1
        return
    ctx = df[e, j, DF.CTX_IN] + n * df[e, j, DF.V] - df[e, j, DF.SUM_VADM]
    df[e, j, DF.STEP] = decode_step_time(log_t, n, ctx)
    best_s = -1
    best_tag = INF
    for s in range(n):
        k = d_slots[e, j, s]
        tag = d_tags[e, j, s]
        if tag < best_tag or (
            tag == best_tag and ri[e, k, RI.SEQ] < ri[e, d_slots[e, j, best_s], RI.SEQ]
        ):
            best_tag = tag
            best_s = s
    di[e, j, DI.NEXT_S] = best_s
    df[e, j, DF.NEXT_T] = df[e, j, DF.T] + max(best_tag - df[e, j, DF.V], 0.0) * df[e, j, DF.STEP]


@compiled
def _pick_decode(cl_i: Arr, cl_f: Arr, df: Arr, di: Arr, e: int, c: int, need: float) -> int:
    """Decode instance of cluster ``c`` with a free slot and room for ``need`` bytes: the one
    with the fewest sequences (then the lowest index), or -1."""
    best = -1
    for j in range(cl_i[c, CLI.D0], cl_i[c, CLI.D0] + cl_i[c, CLI.ND]):
        if (
            di[e, j, DI.N] >= cl_i[c, CLI.MAX_BATCH]
            or df[e, j, DF.MEM] + need > cl_f[c, CLF.KV_CAP]
        ):
            continue
        if best < 0 or di[e, j, DI.N] < di[e, best, DI.N]:
            best = j
    return best


@compiled_inline
def _wait_to(st: State, e: int, t: float) -> None:
    """Integrate the number of requests waiting for a first token up to time ``t``."""
    if t > st.ef[e, EF.W_T]:
        st.ef[e, EF.W_AREA] += st.ei[e, EI.W_N] * (t - st.ef[e, EF.W_T])
        st.ef[e, EF.W_T] = t


@compiled_inline
def _admit_to(S: Static, st: State, e: int, j: int, k: int, t: float) -> None:
    _decode_update(st.df, st.di, e, j, t)
    c = S.d_cluster[j]
    s = st.di[e, j, DI.N]  # the first free batch slot: active ones are kept at 0 .. n-1
    st.d_slots[e, j, s] = k
    st.d_tags[e, j, s] = st.df[e, j, DF.V] + st.ri[e, k, RI.OUT]
    st.rf[e, k, RF.VADM] = st.df[e, j, DF.V]
    st.di[e, j, DI.N] += 1
    st.df[e, j, DF.MEM] += st.rf[e, k, RF.NEED]
    st.df[e, j, DF.CTX_IN] += st.ri[e, k, RI.IN]
    st.df[e, j, DF.SUM_VADM] += st.df[e, j, DF.V]
    _decode_schedule(S, st, e, j)
    # the client sees the tokens the serving overhead per request later (0 without one)
    req_s = S.cl_f[c, CLF.REQUEST_S]
    st.rf[e, k, RF.DSTART] = t
    st.rf[e, k, RF.FIRST] = t + (st.df[e, j, DF.STEP] + req_s)
    # the request stops waiting: its first decode step is credited now, so the integral
    # summed over a drained run equals the sum of TTFTs exactly
    _wait_to(st, e, t)
    st.ei[e, EI.W_N] -= 1
    st.ef[e, EF.W_AREA] += st.df[e, j, DF.STEP] + req_s
    _record(st.records, st.ri, e, k, REC_DINST, j - S.cl_i[c, CLI.D0])
    _record(st.records, st.ri, e, k, REC_DSTART, t + req_s)
    _record(st.records, st.ri, e, k, REC_FIRST, st.rf[e, k, RF.FIRST])


@compiled_inline
def _kv_ready(S: Static, st: State, e: int, k: int, t: float) -> None:
    """Request ``k``'s KV is complete at the decode side at ``t``: admit it or queue it."""
    _record(st.records, st.ri, e, k, REC_XFER, t)
    c = S.route[st.ri[e, k, RI.ROUTE], ROUTE.D]
    if S.cl_i[c, CLI.NC] > 0:  # a co-located engine decodes it; its last token is recomputed
        _co_join(S, st, e, c, k, t, st.ri[e, k, RI.IN] - 1, 1)
        return
    j = -1
    if st.qi[e, c, QI.LEN] == 0:
        j = _pick_decode(S.cl_i, S.cl_f, st.df, st.di, e, c, st.rf[e, k, RF.NEED])
    if j >= 0:
        _admit_to(S, st, e, j, k, t)
        return
    _fifo_push(st.ri, RI.NX_DQ, st.qi, e, c, QI.HEAD, QI.TAIL, k)
    st.qi[e, c, QI.LEN] += 1


@compiled
def _hist_bin(ttft: float) -> int:
    if ttft <= HIST_LO_S:
        return 0
    b = int(np.log10(ttft / HIST_LO_S) * HIST_PER_DECADE)
    return min(b, HIST_BINS - 1)


@compiled_inline
def _finish(S: Static, st: State, e: int, k: int, t: float, req_s: float) -> None:
    """Request ``k`` produced its last token at ``t`` (engine time; the client sees it
    ``req_s`` later): metrics, its record, its slot freed; under a closed loop its client
    starts the next request when it sees the last token."""
    ttft = st.rf[e, k, RF.FIRST] - st.rf[e, k, RF.ARR]
    decode_s = t - st.rf[e, k, RF.DSTART]
    tpot = decode_s / st.ri[e, k, RI.OUT]
    st.ei[e, EI.M_DONE] += 1
    st.ef[e, EF.M_TTFT_SUM] += ttft
    st.ef[e, EF.M_TPOT_SUM] += tpot
    st.ef[e, EF.M_DECODE_SUM] += decode_s
    st.ef[e, EF.M_OUT_TOKENS] += st.ri[e, k, RI.OUT]
    ewma = st.ef[e, EF.M_TTFT_EWMA]
    st.ef[e, EF.M_TTFT_EWMA] = ttft if np.isnan(ewma) else ewma + TTFT_EWMA_ALPHA * (ttft - ewma)
    st.m_ttft_hist[e, _hist_bin(ttft)] += 1
    if ttft <= S.ttft_slo_s and tpot <= S.tpot_slo_s:
        st.ei[e, EI.M_SLO_OK] += 1
    _record(st.records, st.ri, e, k, REC_FINISH, t + req_s)
    st.ri[e, k, RI.SEQ] = -1
    st.free[e, st.ei[e, EI.NFREE]] = k
    st.ei[e, EI.NFREE] += 1
    if S.closed_loop > 0:
        _loop_push(st.starts, st.loop_f, st.loop_n, e, t + req_s)


# ---- closed loop: the clients' pending starts ----------------------------------------------
@compiled
def _loop_push(starts: Arr, loop_f: Arr, loop_n: Arr, e: int, t: float) -> None:
    """A client of env ``e`` will send its next request at ``t``."""
    starts[e, loop_n[e]] = t
    loop_n[e] += 1
    if t < loop_f[e, LOOP.NEXT_T]:
        loop_f[e, LOOP.NEXT_T] = t


@compiled
def _loop_pop(starts: Arr, loop_f: Arr, loop_n: Arr, e: int) -> float:
    """Remove and return the earliest pending start of env ``e`` (inf: none)."""
    n = loop_n[e]
    if n == 0:
        return INF
    best = 0
    for i in range(1, n):
        if starts[e, i] < starts[e, best]:
            best = i
    t = starts[e, best]
    starts[e, best] = starts[e, n - 1]
    loop_n[e] = n - 1
    nxt = INF
    for i in range(n - 1):
        nxt = min(nxt, starts[e, i])
    loop_f[e, LOOP.NEXT_T] = nxt
    return t


@compiled_inline
def _decode_complete(S: Static, st: State, e: int, j: int, t: float) -> None:
    s = st.di[e, j, DI.NEXT_S]
    k = st.d_slots[e, j, s]
    _decode_update(st.df, st.di, e, j, t)
    st.df[e, j, DF.V] = st.d_tags[e, j, s]
    last = st.di[e, j, DI.N] - 1  # keep the batch compact: the last slot fills the hole
    st.d_slots[e, j, s] = st.d_slots[e, j, last]
    st.d_tags[e, j, s] = st.d_tags[e, j, last]
    st.d_slots[e, j, last] = -1
    st.di[e, j, DI.N] -= 1
    st.df[e, j, DF.MEM] -= st.rf[e, k, RF.NEED]
    st.df[e, j, DF.CTX_IN] -= st.ri[e, k, RI.IN]
    st.df[e, j, DF.SUM_VADM] -= st.rf[e, k, RF.VADM]
    if st.di[e, j, DI.N] == 0:  # drop accumulated rounding while the instance is idle
        st.df[e, j, DF.V] = 0.0
        st.df[e, j, DF.MEM] = 0.0
        st.df[e, j, DF.CTX_IN] = 0.0
        st.df[e, j, DF.SUM_VADM] = 0.0
    _decode_schedule(S, st, e, j)
    _finish(S, st, e, k, t, S.cl_f[S.d_cluster[j], CLF.REQUEST_S])
    # admit waiting requests of this cluster, in arrival order at the decode side
    c = S.d_cluster[j]
    while st.qi[e, c, QI.LEN] > 0:
        h = st.qi[e, c, QI.HEAD]
        jj = _pick_decode(S.cl_i, S.cl_f, st.df, st.di, e, c, st.rf[e, h, RF.NEED])
        if jj < 0:
            break
        _fifo_pop(st.ri, RI.NX_DQ, st.qi, e, c, QI.HEAD, QI.TAIL)
        st.qi[e, c, QI.LEN] -= 1
        _admit_to(S, st, e, jj, h, t)


# ---- co-located engines: continuous batching with chunked prefill, step by step ---------------
@compiled
def _blocks(tokens: int, block_tokens: int, fixed: int) -> int:
    """KV blocks a sequence needs once ``tokens`` of its tokens are computed (0 for none)."""
    if tokens <= 0:
        return 0
    return (tokens + block_tokens - 1) // block_tokens + fixed


@compiled
def _waiting_push(ci: Arr, ki: Arr, e: int, g: int, k: int, front: bool) -> None:
    """Put slot ``k`` at the back (or, preempted, the front) of rank ``g``'s waiting list."""
    if front:
        ci[e, k, CI.NX_W] = ki[e, g, KI.W_HEAD]
        ki[e, g, KI.W_HEAD] = k
        if ki[e, g, KI.W_TAIL] < 0:
            ki[e, g, KI.W_TAIL] = k
    else:
        ci[e, k, CI.NX_W] = -1
        last = ki[e, g, KI.W_TAIL]
        if last < 0:
            ki[e, g, KI.W_HEAD] = k
        else:
            ci[e, last, CI.NX_W] = k
        ki[e, g, KI.W_TAIL] = k
    ki[e, g, KI.W_LEN] += 1


@compiled
def _waiting_pop(ci: Arr, ki: Arr, e: int, g: int) -> int:
    """Remove and return the head of rank ``g``'s waiting list."""
    k = ki[e, g, KI.W_HEAD]
    ki[e, g, KI.W_HEAD] = ci[e, k, CI.NX_W]
    if ki[e, g, KI.W_HEAD] < 0:
        ki[e, g, KI.W_TAIL] = -1
    ci[e, k, CI.NX_W] = -1
    ki[e, g, KI.W_LEN] -= 1
    return k


@compiled
def _co_join(
    S: Static, st: State, e: int, c: int, k: int, t: float, comp: int, started: int
) -> None:
    """Request ``k`` reaches co-located cluster ``c`` at ``t`` with ``comp`` tokens' KV already
    computed (``started`` 0: a prompt to prefill here; 1: its KV was prefilled elsewhere): the
    cluster's frontend hands it on after its time per request, one request at a time, to the
    rank with the fewest requests (running and waiting, when it arrived; lowest index on
    ties), whose engine, if idle, starts a step then."""
    r0 = S.cl_i[c, CLI.R0]
    g = r0
    best = st.ki[e, r0, KI.NRUN] + st.ki[e, r0, KI.W_LEN]
    for gg in range(r0 + 1, r0 + S.cl_i[c, CLI.NC] * S.cl_i[c, CLI.RANKS]):
        n = st.ki[e, gg, KI.NRUN] + st.ki[e, gg, KI.W_LEN]
        if n < best:
            best = n
            g = gg
    st.ci[e, k, CI.COMP] = comp
    st.ci[e, k, CI.NTOK] = st.ri[e, k, RI.IN]
    st.ci[e, k, CI.GEN] = 0
    st.ci[e, k, CI.BLK] = 0
    st.ci[e, k, CI.SCH] = 0
    st.ci[e, k, CI.RANK] = g
    st.ci[e, k, CI.STARTED] = started
    ready = max(t, st.fe_free[e, c]) + S.cl_f[c, CLF.FRONTEND_S]
    st.fe_free[e, c] = ready
    st.cf[e, k, CF.READY] = ready
    _waiting_push(st.ci, st.ki, e, g, k, False)
    if started == 0:
        st.ki[e, g, KI.NQ] += 1
        st.ki[e, g, KI.QTOK] += st.ri[e, k, RI.IN] - comp
    j = S.cl_i[c, CLI.C0] + (g - r0) // S.cl_i[c, CLI.RANKS]
    if st.kf[e, j, KF.END] == INF:  # idle: wake the engine (an empty step ending then)
        st.kf[e, j, KF.END] = ready
        st.kf[e, j, KF.START] = ready
        st.kf[e, j, KF.STEP] = 0.0
        st.kf[e, j, KF.RUNS] = 0.0
        st.kf[e, j, KF.PREFILL] = 0.0
    _record(st.records, st.ri, e, k, REC_DINST, j - S.cl_i[c, CLI.C0])


@compiled
def _co_step_end(S: Static, st: State, e: int, j: int, t: float) -> None:
    """Co-located engine ``j``'s step ends at ``t``: apply what it computed (a request whose
    sequence is fully computed samples a token; the first is its first token, the last
    finishes it), then schedule the next step as vLLM's scheduler does, rank by rank (see
    docs/simulator.md), and start it at ``t`` (the engine goes idle when nothing is left)."""
    c = S.k_cluster[j]
    ranks = S.cl_i[c, CLI.RANKS]
    g0 = S.cl_i[c, CLI.R0] + (j - S.cl_i[c, CLI.C0]) * ranks
    req_s = S.cl_f[c, CLF.REQUEST_S]
    step = st.kf[e, j, KF.STEP]
    st.kf[e, j, KF.BUSY_INT] += st.kf[e, j, KF.RUNS] * step
    st.kf[e, j, KF.PBUSY] += st.kf[e, j, KF.PREFILL] * step
    st.kf[e, j, KF.T] = t
    for g in range(g0, g0 + ranks):
        kept = 0
        for i in range(st.ki[e, g, KI.NRUN]):
            k = st.k_run[e, g, i]
            n = st.ci[e, k, CI.SCH]
            done = False
            if n > 0:
                st.ci[e, k, CI.SCH] = 0
                st.ci[e, k, CI.COMP] += n
                if st.ci[e, k, CI.COMP] == st.ci[e, k, CI.NTOK]:  # a token is sampled
                    st.ci[e, k, CI.GEN] += 1
                    st.ci[e, k, CI.NTOK] += 1
                    if st.ci[e, k, CI.GEN] == 1:  # its first token
                        st.rf[e, k, RF.DSTART] = st.kf[e, j, KF.START]
                        st.rf[e, k, RF.FIRST] = t + req_s
                        _wait_to(st, e, t)
                        st.ei[e, EI.W_N] -= 1
                        st.ef[e, EF.W_AREA] += req_s
                        if S.route[st.ri[e, k, RI.ROUTE], ROUTE.P] == c:  # prefilled here
                            _record(st.records, st.ri, e, k, REC_PEND, t)
                            _record(st.records, st.ri, e, k, REC_XFER, t)
                        _record(st.records, st.ri, e, k, REC_DSTART, st.kf[e, j, KF.START] + req_s)
                        _record(st.records, st.ri, e, k, REC_FIRST, t + req_s)
                    if st.ci[e, k, CI.GEN] >= st.ri[e, k, RI.OUT]:  # its last token
                        st.ki[e, g, KI.FREE] += st.ci[e, k, CI.BLK]
                        st.ci[e, k, CI.BLK] = 0
                        _finish(S, st, e, k, t, req_s)
                        done = True
            if not done:
                st.k_run[e, g, kept] = k
                kept += 1
        for i in range(kept, st.ki[e, g, KI.NRUN]):
            st.k_run[e, g, i] = -1
        st.ki[e, g, KI.NRUN] = kept
    _co_schedule(
        S.cl_i,
        S.cl_f,
        S.co_na_log_t,
        S.co_pa_log_t,
        S.co_da_log_t,
        st.ci,
        st.cf,
        st.ki,
        st.kf,
        st.k_run,
        st.records,
        st.ri,
        e,
        c,
        j,
        g0,
        t,
    )


@compiled
def _co_schedule(
    cl_i: Arr,
    cl_f: Arr,
    na_log_t: Arr,
    pa_log_t: Arr,
    da_log_t: Arr,
    ci: Arr,
    cf: Arr,
    ki: Arr,
    kf: Arr,
    k_run: Arr,
    records: Arr,
    ri: Arr,
    e: int,
    c: int,
    j: int,
    g0: int,
    t: float,
) -> None:
    """Schedule engine ``j``'s next step from ``t`` (cluster ``c``, ranks from ``g0``): each
    rank serves its running requests in admission order (a decoding request 1 token, one
    still prefilling its next chunk), allocating KV blocks and preempting the most recently
    admitted request when none is free, then, if nothing was preempted, admits waiting
    requests first come first served while the step's token budget, the running-request
    limit and free blocks allow (and they have left the frontend). The step lasts as long as
    its slowest rank's; an engine with nothing to run but requests still in the frontend
    wakes when the first of them leaves it."""
    ranks = cl_i[c, CLI.RANKS]
    bt = cl_i[c, CLI.KV_BT]
    fixed = cl_i[c, CLI.FIXED_BLOCKS]
    budget0 = cl_i[c, CLI.BUDGET]
    max_seqs = cl_i[c, CLI.MAX_SEQS]
    na_t = na_log_t[c]
    pa_t = pa_log_t[c]
    da_t = da_log_t[c]
    step = 0.0
    runs = 0
    prefill = 0.0
    for g in range(g0, g0 + ranks):
        budget = budget0
        preempted = False
        p_tok = 0
        attn = 0.0
        b = 0
        ctx = 0.0
        i = 0
        while i < ki[e, g, KI.NRUN] and budget > 0:
            k = k_run[e, g, i]
            n = min(ci[e, k, CI.NTOK] - ci[e, k, CI.COMP], budget)
            need = _blocks(ci[e, k, CI.COMP] + n, bt, fixed) - ci[e, k, CI.BLK]
            lost = False
            while need > ki[e, g, KI.FREE]:  # preempt the most recently admitted request
                last = ki[e, g, KI.NRUN] - 1
                v = k_run[e, g, last]
                k_run[e, g, last] = -1
                ki[e, g, KI.NRUN] = last
                ki[e, g, KI.FREE] += ci[e, v, CI.BLK]
                ci[e, v, CI.BLK] = 0
                ci[e, v, CI.COMP] = 0
                _waiting_push(ci, ki, e, g, v, True)
                preempted = True
                if v == k:
                    lost = True
                    break
            if lost:
                break
            ki[e, g, KI.FREE] -= need
            ci[e, k, CI.BLK] += need
            ci[e, k, CI.SCH] = n
            budget -= n
            if n == 1 and ci[e, k, CI.GEN] >= 1:
                b += 1
                ctx += ci[e, k, CI.COMP] + 1
            else:
                p_tok += n
                attn += prefill_time(pa_t, float(n), float(ci[e, k, CI.COMP]))
            i += 1
        if not preempted:
            while ki[e, g, KI.W_LEN] > 0 and budget > 0 and ki[e, g, KI.NRUN] < max_seqs:
                k = ki[e, g, KI.W_HEAD]
                if cf[e, k, CF.READY] > t:  # still in the frontend
                    break
                n = min(ci[e, k, CI.NTOK] - ci[e, k, CI.COMP], budget)
                need = _blocks(ci[e, k, CI.COMP] + n, bt, fixed) - ci[e, k, CI.BLK]
                if need > ki[e, g, KI.FREE]:
                    break
                _waiting_pop(ci, ki, e, g)
                k_run[e, g, ki[e, g, KI.NRUN]] = k
                ki[e, g, KI.NRUN] += 1
                ki[e, g, KI.FREE] -= need
                ci[e, k, CI.BLK] += need
                ci[e, k, CI.SCH] = n
                budget -= n
                if ci[e, k, CI.STARTED] == 0:  # its prefill starts now
                    ci[e, k, CI.STARTED] = 1
                    ki[e, g, KI.NQ] -= 1
                    ki[e, g, KI.QTOK] -= ci[e, k, CI.NTOK] - ci[e, k, CI.COMP]
                    _record(records, ri, e, k, REC_PSTART, t)
                if n == 1 and ci[e, k, CI.GEN] >= 1:
                    b += 1
                    ctx += ci[e, k, CI.COMP] + 1
                else:
                    p_tok += n
                    attn += prefill_time(pa_t, float(n), float(ci[e, k, CI.COMP]))
        runs += ki[e, g, KI.NRUN]
        if p_tok + b > 0:
            rank_s = pass_time(na_t, float(p_tok + b)) + attn + cl_f[c, CLF.STEP_S]
            if b > 0:
                rank_s += decode_step_time(da_t, b, ctx) + cl_f[c, CLF.SEQ_S] * b
            step = max(step, rank_s)
            if p_tok > 0:
                prefill = 1.0
    if step > 0.0:
        kf[e, j, KF.START] = t
        kf[e, j, KF.STEP] = step
        kf[e, j, KF.END] = t + step
        kf[e, j, KF.RUNS] = float(runs)
        kf[e, j, KF.PREFILL] = prefill
    else:
        wake = INF  # the first request still in the frontend, if any
        for g in range(g0, g0 + ranks):
            if ki[e, g, KI.W_LEN] > 0:
                wake = min(wake, cf[e, ki[e, g, KI.W_HEAD], CF.READY])
        kf[e, j, KF.END] = wake
        kf[e, j, KF.START] = wake
        kf[e, j, KF.STEP] = 0.0
        kf[e, j, KF.RUNS] = 0.0
        kf[e, j, KF.PREFILL] = 0.0


# ---- prefill -----------------------------------------------------------------------------------
@compiled_inline
def _prefill_start(S: Static, st: State, e: int, i: int) -> None:
    k = st.pi[e, i, PI.NEXT]
    st.pi[e, i, PI.NEXT] = st.ri[e, k, RI.NX_PQ]
    st.pi[e, i, PI.NQ] -= 1
    st.pf[e, i, PF.QTOK] -= st.ri[e, k, RI.UNC]
    _prefill_times(st, e, i)
    ch = S.route[st.ri[e, k, RI.ROUTE], ROUTE.CH]
    if ch >= 0:
        _link_add(st, e, ch, k, st.rf[e, k, RF.PSTART])


@compiled_inline
def _prefill_complete(S: Static, st: State, e: int, i: int) -> None:
    k = _fifo_pop(st.ri, RI.NX_PQ, st.pi, e, i, PI.HEAD, PI.TAIL)
    _prefill_times(st, e, i)
    t = st.rf[e, k, RF.EVT]
    st.ri[e, k, RI.PDONE] = 1
    ch = S.route[st.ri[e, k, RI.ROUTE], ROUTE.CH]
    if ch < 0 or st.ri[e, k, RI.KVDONE]:
        _kv_ready(S, st, e, k, t)


@compiled_inline
def _delivery(S: Static, st: State, e: int, ch: int) -> None:
    k = _fifo_pop(st.ri, RI.NX_DL, st.li, e, ch, LI.DL_HEAD, LI.DL_TAIL)
    _delay_time(st, e, ch)
    t = st.rf[e, k, RF.KVARR]
    st.ri[e, k, RI.KVDONE] = 1
    if st.ri[e, k, RI.PDONE]:
        _kv_ready(S, st, e, k, max(t, st.rf[e, k, RF.EVT]))


@compiled_inline
def run_events(
    S: Static, st: State, e: int, t_end: float, until_idle: bool = False, closed: bool = False
) -> None:
    """Process env ``e``'s events at times <= ``t_end``, in time order (ties: see module).

    With ``until_idle``, stop as soon as no request is in flight (for draining); with
    ``closed`` (a closed-loop workload), stop before the first event later than the earliest
    pending start.
    """
    nch = S.ch_f.shape[0]
    npi = st.pf.shape[1]
    ndi = S.d_cluster.shape[0]
    nk = S.k_cluster.shape[0]
    slots = st.free.shape[1]
    while True:
        if until_idle and st.ei[e, EI.NFREE] == slots:
            return
        best_t = INF
        kind = -1
        idx = -1
        for ch in range(nch):
            tc = (st.li[e, ch, LI.CELL] + 1) * S.ch_f[ch, CHF.STEP_S]
            if tc < best_t:
                best_t, kind, idx = tc, 0, ch
        for ch in range(nch):
            if st.lf[e, ch, LF.NEXT_T] < best_t:
                best_t, kind, idx = st.lf[e, ch, LF.NEXT_T], 1, ch
        for ch in range(nch):
            if st.lf[e, ch, LF.DL_T] < best_t:
                best_t, kind, idx = st.lf[e, ch, LF.DL_T], 2, ch
        for i in range(npi):
            if st.pf[e, i, PF.START_T] < best_t:
                best_t, kind, idx = st.pf[e, i, PF.START_T], 3, i
        for i in range(npi):
            if st.pf[e, i, PF.DONE_T] < best_t:
                best_t, kind, idx = st.pf[e, i, PF.DONE_T], 4, i
        for j in range(ndi):
            if st.df[e, j, DF.NEXT_T] < best_t:
                best_t, kind, idx = st.df[e, j, DF.NEXT_T], 5, j
        for j in range(nk):
            if st.kf[e, j, KF.END] < best_t:
                best_t, kind, idx = st.kf[e, j, KF.END], 6, j
        if closed and st.loop_f[e, LOOP.NEXT_T] < best_t:
            return
        if kind < 0 or best_t > t_end:
            return
        if kind == 0:
            _bandwidth_change(S, st, e, idx, best_t)
        elif kind == 1:
            _link_complete(S, st, e, idx, best_t)
        elif kind == 2:
            _delivery(S, st, e, idx)
        elif kind == 3:
            _prefill_start(S, st, e, idx)
        elif kind == 4:
            _prefill_complete(S, st, e, idx)
        elif kind == 5:
            _decode_complete(S, st, e, idx, best_t)
        else:
            _co_step_end(S, st, e, idx, best_t)


# ---- decisions ---------------------------------------------------------------------------------
@compiled_inline
def _prefix_hits(tr_blocks: Arr, wi: Arr, cs: CacheState, e: int, c: int) -> int:
    """Leading blocks of env ``e``'s pending request cached in cluster ``c`` (read only)."""
    if cs.cfg[c, CFG.CAPACITY] == 0:
        return 0
    hits = 0
    for b in range(wi[e, WI.REQ_NBLOCKS]):
        if find(cs, e, c, block_id(tr_blocks, wi, e, b)) < 0:
            break
        hits += 1
    return hits


@compiled_inline
def _cache_request(tr_blocks: Arr, wi: Arr, cs: CacheState, e: int, c: int) -> None:
    """Mark the pending request's blocks most recently used in cluster ``c``, first to last,
    inserting the missing ones (its KV will be there once it is prefilled)."""
    if cs.cfg[c, CFG.CAPACITY] == 0:
        return
    for b in range(wi[e, WI.REQ_NBLOCKS]):
        touch_or_insert(cs, e, c, block_id(tr_blocks, wi, e, b))


@compiled_inline
def _observe(
    S: Static, wp: WorkloadParams, ws: WorkloadState, cs: CacheState, st: State, e: int
) -> None:
    length = ws.wi[e, WI.REQ_IN]
    for c in range(S.cl_i.shape[0]):
        hits = _prefix_hits(wp.tr_blocks, ws.wi, cs, e, c)
        cached = min(hits * S.block_tokens, length - 1)
        st.obs_cached[e, c] = cached
        if S.cl_i[c, CLI.NP] > 0 or S.cl_i[c, CLI.NC] > 0:
            st.obs_prefill_s[e, c] = prefill_time(
                S.prefill_log_t[c], float(length - cached), float(cached)
            )


@compiled_inline
def _route(
    S: Static, wp: WorkloadParams, ws: WorkloadState, cs: CacheState, st: State, e: int, r: int
) -> None:
    """Route env ``e``'s pending request (arrived at ``st.ef[e, EF.NOW]``) on route ``r``."""
    now = st.ef[e, EF.NOW]
    pc = S.route[r, ROUTE.P]
    if S.cl_i[pc, CLI.NC] > 0:
        _co_route(S, wp, ws, cs, st, e, r)
        return
    length = ws.wi[e, WI.REQ_IN]
    cached = st.obs_cached[e, pc]  # observed at arrival; no cache changed since
    _cache_request(wp.tr_blocks, ws.wi, cs, e, pc)
    unc = length - cached
    st.ei[e, EI.W_N] += 1  # the waiting integral already runs to now (see _advance_one)
    # least-loaded instance: the one that can start soonest (lowest index on ties)
    i = S.cl_i[pc, CLI.P0]
    for ii in range(S.cl_i[pc, CLI.P0] + 1, S.cl_i[pc, CLI.P0] + S.cl_i[pc, CLI.NP]):
        if st.pf[e, ii, PF.FREE] < st.pf[e, i, PF.FREE]:
            i = ii
    start = max(now, st.pf[e, i, PF.FREE])
    dur = st.obs_prefill_s[e, pc]  # _observe's prefill_time of these very tokens
    end = start + dur
    st.pf[e, i, PF.FREE] = end
    st.pf[e, i, PF.BUSY_S] += dur
    kv = kv_bytes(S.kv_fixed, S.kv_per_token, S.swa_per_token, S.swa_window, float(length))
    ch = S.route[r, ROUTE.CH]
    if ch < 0:  # RDMA streams the KV layer by layer while the prefill runs
        evt = max(end, start + kv / S.cl_f[S.route[r, ROUTE.D], CLF.RDMA_BPS])
    else:
        evt = end
    evt = max(evt, st.pf[e, i, PF.LAST_EVT])  # completions are delivered in order per instance
    st.pf[e, i, PF.LAST_EVT] = evt
    k = _take_slot(ws, st, e, r, now, length, unc)
    st.rf[e, k, RF.PSTART] = start
    st.rf[e, k, RF.EVT] = evt
    st.rf[e, k, RF.KV] = kv
    out_total = float(length + ws.wi[e, WI.REQ_OUT])
    st.rf[e, k, RF.NEED] = kv_bytes(
        S.kv_fixed, S.kv_per_token, S.swa_per_token, S.swa_window, out_total
    )
    st.ri[e, k, RI.PDONE] = 0
    st.ri[e, k, RI.KVDONE] = 0
    _fifo_push(st.ri, RI.NX_PQ, st.pi, e, i, PI.HEAD, PI.TAIL, k)
    if st.pi[e, i, PI.NEXT] < 0:  # otherwise neither the next start nor the head changed
        st.pi[e, i, PI.NEXT] = k
        _prefill_times(st, e, i)
    st.pi[e, i, PI.NQ] += 1
    st.pf[e, i, PF.QTOK] += unc
    if ch >= 0:
        st.ei[e, EI.M_OFFLOAD] += 1
    _count_arrival(ws, st, e, k, r, now, length, cached)
    _record(st.records, st.ri, e, k, REC_PINST, i - S.cl_i[pc, CLI.P0])
    _record(st.records, st.ri, e, k, REC_PSTART, start)
    _record(st.records, st.ri, e, k, REC_PEND, end)
    _record(st.records, st.ri, e, k, REC_KV, kv)


@compiled_inline
def _take_slot(
    ws: WorkloadState, st: State, e: int, r: int, now: float, length: int, unc: int
) -> int:
    """A free request slot for env ``e``'s pending request on route ``r``, filled with its
    sequence number, arrival time (s), input, output and uncached tokens; returns it."""
    st.ei[e, EI.NFREE] -= 1
    k = st.free[e, st.ei[e, EI.NFREE]]
    s = st.ei[e, EI.SEQ]
    st.ei[e, EI.SEQ] = s + 1
    st.ri[e, k, RI.SEQ] = s
    st.ri[e, k, RI.ROUTE] = r
    st.rf[e, k, RF.ARR] = now
    st.ri[e, k, RI.IN] = length
    st.ri[e, k, RI.OUT] = ws.wi[e, WI.REQ_OUT]
    st.ri[e, k, RI.UNC] = unc
    return k


@compiled_inline
def _count_arrival(
    ws: WorkloadState, st: State, e: int, k: int, r: int, now: float, length: int, cached: int
) -> None:
    """Count request ``k``'s prompt and cached tokens and record its arrival, route and
    lengths (the recording is a no-op unless records are kept)."""
    st.ef[e, EF.M_CACHED_TOKENS] += cached
    st.ef[e, EF.M_INPUT_TOKENS] += length
    _record(st.records, st.ri, e, k, REC_ARR, now)
    _record(st.records, st.ri, e, k, REC_ROUTE, r)
    _record(st.records, st.ri, e, k, REC_IN, length)
    _record(st.records, st.ri, e, k, REC_OUT, ws.wi[e, WI.REQ_OUT])
    _record(st.records, st.ri, e, k, REC_CACHED, cached)


@compiled
def _co_route(
    S: Static, wp: WorkloadParams, ws: WorkloadState, cs: CacheState, st: State, e: int, r: int
) -> None:
    """Route env ``e``'s pending request to its co-located cluster's engines (route ``r`` is
    the cluster's own): it waits there to be prefilled in chunks and decoded."""
    now = st.ef[e, EF.NOW]
    c = S.route[r, ROUTE.P]
    length = ws.wi[e, WI.REQ_IN]
    cached = st.obs_cached[e, c]
    _cache_request(wp.tr_blocks, ws.wi, cs, e, c)
    st.ei[e, EI.W_N] += 1
    k = _take_slot(ws, st, e, r, now, length, length - cached)
    kv = kv_bytes(S.kv_fixed, S.kv_per_token, S.swa_per_token, S.swa_window, float(length))
    st.rf[e, k, RF.KV] = kv
    _count_arrival(ws, st, e, k, r, now, length, cached)
    _record(st.records, st.ri, e, k, REC_KV, kv)
    _co_join(S, st, e, c, k, now, cached, 0)
    _record(st.records, st.ri, e, k, REC_PINST, _engine_of(S, st, e, c, k))


@compiled_inline
def _engine_of(S: Static, st: State, e: int, c: int, k: int) -> int:
    """Index (in its cluster) of the co-located engine request ``k`` waits at."""
    return (st.ci[e, k, CI.RANK] - S.cl_i[c, CLI.R0]) // S.cl_i[c, CLI.RANKS]


@compiled_inline
def _advance_one(
    S: Static, wp: WorkloadParams, ws: WorkloadState, cs: CacheState, st: State, e: int
) -> None:
    next_request(wp, ws, e)
    closed = S.closed_loop > 0
    run_events(S, st, e, INF if closed else ws.wf[e, WF.REQ_T], False, closed)
    if closed:  # the next request starts when a client's previous one has finished
        t = _loop_pop(st.starts, st.loop_f, st.loop_n, e)
        ws.wf[e, WF.REQ_T] = t if t < INF else st.ef[e, EF.NOW]
    _wait_to(st, e, ws.wf[e, WF.REQ_T])
    st.ef[e, EF.NOW] = ws.wf[e, WF.REQ_T]
    _observe(S, wp, ws, cs, st, e)


@compiled_inline
def _decide(
    S: Static,
    wp: WorkloadParams,
    ws: WorkloadState,
    cs: CacheState,
    st: State,
    V: ViewSpec,
    e: int,
    r: int,
    limit_s: float,
) -> None:
    """Apply code ``r`` to env ``e``: a route index, REJECT, SKIP (leave the env as is),
    START (draw and observe the first request after a reset) or DRAIN (run the routed
    requests to completion, for at most ``limit_s`` simulated seconds; no new arrival).
    An env advanced to its next arrival then writes its view (when ``V`` has rows)."""
    if r == SKIP:
        return
    if r == DRAIN:
        run_events(S, st, e, st.ef[e, EF.NOW] + limit_s, True)
        return
    if r == REJECT:
        st.ei[e, EI.M_REJECTED] += 1
        if S.closed_loop > 0:  # its client starts the next request at once
            _loop_push(st.starts, st.loop_f, st.loop_n, e, st.ef[e, EF.NOW])
    elif r >= 0:
        _route(S, wp, ws, cs, st, e, r)
    elif r != START:  # no other code exists; leave the env untouched
        return
    _advance_one(S, wp, ws, cs, st, e)
    if V.values.shape[0] > 0:
        fill_view(S, ws, st, V, e)


@compiled
def run(
    S: Static,
    wp: WorkloadParams,
    ws: WorkloadState,
    cs: CacheState,
    st: State,
    V: ViewSpec,
    codes: Arr,
    lo: int,
    hi: int,
    limit_s: float,
) -> None:
    """Apply ``codes[e]`` to envs ``lo .. hi-1`` (see :func:`_decide`), writing each
    advanced env's view where ``V`` asks (:mod:`prfaas_env.sim.view`). While it steps env
    ``e`` it asks the CPU for the memory of envs a few places ahead
    (:func:`prfaas_env.sim.lookahead.prefetch_ahead`)."""
    for e in range(lo, hi):
        prefetch_ahead(wp, ws, cs, st, V, codes, e, hi)
        _decide(S, wp, ws, cs, st, V, e, codes[e], limit_s)


@compiled_parallel
def step_parallel(
    S: Static,
    wp: WorkloadParams,
    ws: WorkloadState,
    cs: CacheState,
    st: State,
    V: ViewSpec,
    routes: Arr,
    threads: int,
) -> None:
    """Apply ``routes[e]`` to every env, the envs split into one contiguous block per thread
    (``threads``: numba's thread count); envs share no state, so the result is the same as
    ``run(..., V, routes, 0, num_envs, 0.0)``."""
    n = st.ef.shape[0]
    blocks = max(min(threads, n), 1)
    # one call of the compiled `run` per block: with the loop body inlined straight into the
    # prange loop, numba (0.68) compiled a loop whose iterations changed nothing
    for b in prange(blocks):
        run(S, wp, ws, cs, st, V, routes, b * n // blocks, (b + 1) * n // blocks, 0.0)


def start(
    S: Static,
    wp: WorkloadParams,
    ws: WorkloadState,
    cs: CacheState,
    st: State,
    V: ViewSpec,
    mask: Arr,
) -> None:
    """Draw the first request of every env in ``mask`` (freshly reset) and observe it."""
    codes = np.where(np.asarray(mask, np.bool_), START, SKIP).astype(np.int64)
    run(S, wp, ws, cs, st, V, codes, 0, codes.shape[0], 0.0)


def drain(
    S: Static,
    wp: WorkloadParams,
    ws: WorkloadState,
    cs: CacheState,
    st: State,
    V: ViewSpec,
    limit_s: float,
) -> None:
    """Run every env until all its routed requests have finished (no new arrivals), for at
    most ``limit_s`` simulated seconds past its last decision (the view is not written)."""
    codes = np.full(st.ef.shape[0], DRAIN, np.int64)
    run(S, wp, ws, cs, st, V, codes, 0, codes.shape[0], float(limit_s))
