"""The compiled event loop: route one request per env, then advance each env to its next arrival.

All functions take the whole batch's state and an env index ``e``; :func:`step` and
:func:`start` loop over the envs inside compiled code, so one Python call advances every env.
The dynamics are described in docs/simulator.md; :mod:`prfaas_env.sim.reference` implements
the same model with plain Python objects, and the differential tests hold the two equal.

Events that fall at the same instant run in a fixed order: bandwidth changes, link flow
completions, KV deliveries, prefill starts, prefill completions, decode completions; within a
kind, by channel or instance index. Events at exactly the next arrival's time run before it.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from prfaas_env.sim.cache import CacheState, find, touch_or_insert
from prfaas_env.sim.costs import decode_step_time, kv_bytes, prefill_time
from prfaas_env.sim.state import (
    HIST_BINS,
    HIST_LO_S,
    HIST_PER_DECADE,
    R_ARR,
    R_CACHED,
    R_DINST,
    R_DSTART,
    R_FINISH,
    R_FIRST,
    R_IN,
    R_KV,
    R_OUT,
    R_PEND,
    R_PINST,
    R_PSTART,
    R_ROUTE,
    R_XFER,
    State,
    Static,
)
from prfaas_env.sim.workload import WorkloadParams, WorkloadState, block_id, next_request

INF = np.inf


@njit(cache=True)
def _record(st: State, e: int, k: int, field: int, value: float) -> None:
    s = st.r_seq[e, k]
    if s < st.records.shape[1]:
        st.records[e, s, field] = value


# ---- links: processor sharing among concurrent flows ------------------------------------------
@njit(cache=True)
def _link_update(st: State, e: int, ch: int, t: float) -> None:
    """Advance channel ``ch``'s per-flow service to time ``t``."""
    dt = t - st.l_t[e, ch]
    if dt > 0.0:
        if st.l_n[e, ch] > 0:
            st.l_v[e, ch] += dt * st.l_bw[e, ch] / st.l_n[e, ch]
        st.l_cap_int[e, ch] += dt * st.l_bw[e, ch]
        st.l_t[e, ch] = t


@njit(cache=True)
def _link_schedule(st: State, e: int, ch: int) -> None:
    """Recompute the next flow completion of channel ``ch`` (ties: lowest request number)."""
    best_k = -1
    best_tag = INF
    k = st.l_flows[e, ch]
    while k >= 0:
        tag = st.r_tag[e, k]
        if tag < best_tag or (tag == best_tag and st.r_seq[e, k] < st.r_seq[e, best_k]):
            best_tag = tag
            best_k = k
        k = st.r_nx_fl[e, k]
    st.l_next_k[e, ch] = best_k
    if best_k < 0 or st.l_bw[e, ch] <= 0.0:
        st.l_next_t[e, ch] = INF
    else:
        left = max(best_tag - st.l_v[e, ch], 0.0)
        st.l_next_t[e, ch] = st.l_t[e, ch] + left * st.l_n[e, ch] / st.l_bw[e, ch]


@njit(cache=True)
def _link_add(st: State, e: int, ch: int, k: int, t: float) -> None:
    _link_update(st, e, ch, t)
    st.r_tag[e, k] = st.l_v[e, ch] + st.r_kv[e, k]
    st.r_nx_fl[e, k] = st.l_flows[e, ch]
    st.l_flows[e, ch] = k
    st.l_n[e, ch] += 1
    st.l_bytes_in[e, ch] += st.r_kv[e, k]
    _link_schedule(st, e, ch)


@njit(cache=True)
def _link_complete(S: Static, st: State, e: int, ch: int, t: float) -> None:
    """The flow with the smallest tag has been served: move it to the delay line."""
    k = st.l_next_k[e, ch]
    _link_update(st, e, ch, t)
    st.l_v[e, ch] = st.r_tag[e, k]
    prev = -1
    j = st.l_flows[e, ch]
    while j != k:
        prev = j
        j = st.r_nx_fl[e, j]
    if prev < 0:
        st.l_flows[e, ch] = st.r_nx_fl[e, k]
    else:
        st.r_nx_fl[e, prev] = st.r_nx_fl[e, k]
    st.r_nx_fl[e, k] = -1
    st.l_n[e, ch] -= 1
    st.l_bytes_done[e, ch] += st.r_kv[e, k]
    if st.l_n[e, ch] == 0:
        st.l_v[e, ch] = 0.0
    st.r_kvarr[e, k] = t + S.ch_latency_s[ch]
    st.r_nx_dl[e, k] = -1
    if st.l_dl_tail[e, ch] < 0:
        st.l_dl_head[e, ch] = k
    else:
        st.r_nx_dl[e, st.l_dl_tail[e, ch]] = k
    st.l_dl_tail[e, ch] = k
    _link_schedule(st, e, ch)


@njit(cache=True)
def _bandwidth_change(S: Static, st: State, e: int, ch: int, t: float) -> None:
    _link_update(st, e, ch, t)
    st.l_cell[e, ch] += 1
    st.l_bw[e, ch] = st.l_series[e, ch, st.l_cell[e, ch] % S.ch_cells[ch]]
    _link_schedule(st, e, ch)


# ---- decode: continuous batching as a fluid, one token per step for every sequence -----------
@njit(cache=True)
def _decode_update(st: State, e: int, j: int, t: float) -> None:
    dt = t - st.d_t[e, j]
    if dt > 0.0:
        if st.d_n[e, j] > 0:
            st.d_v[e, j] += dt / st.d_step[e, j]
            st.d_busy_int[e, j] += dt * st.d_n[e, j]
        st.d_t[e, j] = t


@njit(cache=True)
def _decode_schedule(S: Static, st: State, e: int, j: int) -> None:
    """Re-evaluate the step time at the current batch and context; find the next finisher."""
    n = st.d_n[e, j]
    if n == 0:
        st.d_step[e, j] = 0.0
        st.d_next_t[e, j] = INF
        st.d_next_s[e, j] = -1
        return
    c = S.d_cluster[j]
    ctx = st.d_ctx_in[e, j] + n * st.d_v[e, j] - st.d_sum_vadm[e, j]
    st.d_step[e, j] = decode_step_time(S.decode_log_t[c], n, ctx)
    best_s = -1
    best_tag = INF
    for s in range(S.cl_max_batch[c]):
        k = st.d_slots[e, j, s]
        if k < 0:
            continue
        tag = st.d_tags[e, j, s]
        if tag < best_tag or (
            tag == best_tag and st.r_seq[e, k] < st.r_seq[e, st.d_slots[e, j, best_s]]
        ):
            best_tag = tag
            best_s = s
    st.d_next_s[e, j] = best_s
    st.d_next_t[e, j] = st.d_t[e, j] + max(best_tag - st.d_v[e, j], 0.0) * st.d_step[e, j]


@njit(cache=True)
def _pick_decode(S: Static, st: State, e: int, c: int, need: float) -> int:
    """Decode instance of cluster ``c`` with a free slot and room for ``need`` bytes: the one
    with the fewest sequences (then the lowest index), or -1."""
    best = -1
    for j in range(S.cl_d0[c], S.cl_d0[c] + S.cl_nd[c]):
        if st.d_n[e, j] >= S.cl_max_batch[c] or st.d_mem[e, j] + need > S.cl_kv_cap[c]:
            continue
        if best < 0 or st.d_n[e, j] < st.d_n[e, best]:
            best = j
    return best


@njit(cache=True)
def _admit_to(S: Static, st: State, e: int, j: int, k: int, t: float) -> None:
    _decode_update(st, e, j, t)
    c = S.d_cluster[j]
    s = 0
    while st.d_slots[e, j, s] >= 0:
        s += 1
    st.d_slots[e, j, s] = k
    st.d_tags[e, j, s] = st.d_v[e, j] + st.r_out[e, k]
    st.r_vadm[e, k] = st.d_v[e, j]
    st.d_n[e, j] += 1
    st.d_mem[e, j] += st.r_need[e, k]
    st.d_ctx_in[e, j] += st.r_in[e, k]
    st.d_sum_vadm[e, j] += st.d_v[e, j]
    _decode_schedule(S, st, e, j)
    st.r_dinst[e, k] = j
    st.r_dstart[e, k] = t
    st.r_first[e, k] = t + st.d_step[e, j]
    _record(st, e, k, R_DINST, j - S.cl_d0[c])
    _record(st, e, k, R_DSTART, t)
    _record(st, e, k, R_FIRST, st.r_first[e, k])


@njit(cache=True)
def _kv_ready(S: Static, st: State, e: int, k: int, t: float) -> None:
    """Request ``k``'s KV is complete at the decode side at ``t``: admit it or queue it."""
    _record(st, e, k, R_XFER, t)
    c = S.route_d[st.r_route[e, k]]
    j = -1
    if st.q_len[e, c] == 0:
        j = _pick_decode(S, st, e, c, st.r_need[e, k])
    if j >= 0:
        _admit_to(S, st, e, j, k, t)
        return
    st.r_nx_dq[e, k] = -1
    if st.q_tail[e, c] < 0:
        st.q_head[e, c] = k
    else:
        st.r_nx_dq[e, st.q_tail[e, c]] = k
    st.q_tail[e, c] = k
    st.q_len[e, c] += 1


@njit(cache=True)
def _hist_bin(ttft: float) -> int:
    if ttft <= HIST_LO_S:
        return 0
    b = int(np.log10(ttft / HIST_LO_S) * HIST_PER_DECADE)
    return min(b, HIST_BINS - 1)


@njit(cache=True)
def _decode_complete(S: Static, st: State, e: int, j: int, t: float) -> None:
    s = st.d_next_s[e, j]
    k = st.d_slots[e, j, s]
    _decode_update(st, e, j, t)
    st.d_v[e, j] = st.d_tags[e, j, s]
    st.d_slots[e, j, s] = -1
    st.d_n[e, j] -= 1
    st.d_mem[e, j] -= st.r_need[e, k]
    st.d_ctx_in[e, j] -= st.r_in[e, k]
    st.d_sum_vadm[e, j] -= st.r_vadm[e, k]
    if st.d_n[e, j] == 0:  # drop accumulated rounding while the instance is idle
        st.d_v[e, j] = 0.0
        st.d_mem[e, j] = 0.0
        st.d_ctx_in[e, j] = 0.0
        st.d_sum_vadm[e, j] = 0.0
    _decode_schedule(S, st, e, j)
    # metrics and the request's record
    ttft = st.r_first[e, k] - st.r_arr[e, k]
    tpot = (t - st.r_dstart[e, k]) / st.r_out[e, k]
    st.m_done[e] += 1
    st.m_ttft_sum[e] += ttft
    st.m_tpot_sum[e] += tpot
    st.m_out_tokens[e] += st.r_out[e, k]
    st.m_last_ttft[e] = ttft
    st.m_ttft_hist[e, _hist_bin(ttft)] += 1
    if ttft <= S.ttft_slo_s and tpot <= S.tpot_slo_s:
        st.m_slo_ok[e] += 1
    _record(st, e, k, R_FINISH, t)
    st.r_seq[e, k] = -1
    st.free[e, st.nfree[e]] = k
    st.nfree[e] += 1
    # admit waiting requests of this cluster, in arrival order at the decode side
    c = S.d_cluster[j]
    while st.q_len[e, c] > 0:
        h = st.q_head[e, c]
        jj = _pick_decode(S, st, e, c, st.r_need[e, h])
        if jj < 0:
            break
        st.q_head[e, c] = st.r_nx_dq[e, h]
        st.q_len[e, c] -= 1
        if st.q_len[e, c] == 0:
            st.q_tail[e, c] = -1
        _admit_to(S, st, e, jj, h, t)


# ---- prefill -----------------------------------------------------------------------------------
@njit(cache=True)
def _prefill_start(S: Static, st: State, e: int, i: int) -> None:
    k = st.p_next[e, i]
    st.p_next[e, i] = st.r_nx_pq[e, k]
    st.p_nq[e, i] -= 1
    st.p_qtok[e, i] -= st.r_unc[e, k]
    ch = S.route_ch[st.r_route[e, k]]
    if ch >= 0:
        _link_add(st, e, ch, k, st.r_pstart[e, k])


@njit(cache=True)
def _prefill_complete(S: Static, st: State, e: int, i: int) -> None:
    k = st.p_head[e, i]
    t = st.r_evt[e, k]
    st.p_head[e, i] = st.r_nx_pq[e, k]
    if st.p_head[e, i] < 0:
        st.p_tail[e, i] = -1
    st.r_pdone[e, k] = True
    ch = S.route_ch[st.r_route[e, k]]
    if ch < 0:
        st.r_kvarr[e, k] = t
        _kv_ready(S, st, e, k, t)
    elif st.r_kvdone[e, k]:
        _kv_ready(S, st, e, k, t)


@njit(cache=True)
def _delivery(S: Static, st: State, e: int, ch: int) -> None:
    k = st.l_dl_head[e, ch]
    t = st.r_kvarr[e, k]
    st.l_dl_head[e, ch] = st.r_nx_dl[e, k]
    if st.l_dl_head[e, ch] < 0:
        st.l_dl_tail[e, ch] = -1
    st.r_kvdone[e, k] = True
    if st.r_pdone[e, k]:
        _kv_ready(S, st, e, k, max(t, st.r_evt[e, k]))


@njit(cache=True)
def run_events(S: Static, st: State, e: int, t_end: float, until_idle: bool = False) -> None:
    """Process env ``e``'s events at times <= ``t_end``, in time order (ties: see module).

    With ``until_idle``, stop as soon as no request is in flight (for draining).
    """
    nch = S.ch_step_s.shape[0]
    npi = S.p_cluster.shape[0]
    ndi = S.d_cluster.shape[0]
    slots = st.free.shape[1]
    while True:
        if until_idle and st.nfree[e] == slots:
            return
        best_t = INF
        kind = -1
        idx = -1
        for ch in range(nch):
            tc = (st.l_cell[e, ch] + 1) * S.ch_step_s[ch]
            if tc < best_t:
                best_t, kind, idx = tc, 0, ch
        for ch in range(nch):
            if st.l_next_t[e, ch] < best_t:
                best_t, kind, idx = st.l_next_t[e, ch], 1, ch
        for ch in range(nch):
            k = st.l_dl_head[e, ch]
            if k >= 0 and st.r_kvarr[e, k] < best_t:
                best_t, kind, idx = st.r_kvarr[e, k], 2, ch
        for i in range(npi):
            k = st.p_next[e, i]
            if k >= 0 and st.r_pstart[e, k] < best_t:
                best_t, kind, idx = st.r_pstart[e, k], 3, i
        for i in range(npi):
            k = st.p_head[e, i]
            if k >= 0 and st.p_next[e, i] != k and st.r_evt[e, k] < best_t:
                best_t, kind, idx = st.r_evt[e, k], 4, i
        for j in range(ndi):
            if st.d_next_t[e, j] < best_t:
                best_t, kind, idx = st.d_next_t[e, j], 5, j
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
        else:
            _decode_complete(S, st, e, idx, best_t)


# ---- decisions ---------------------------------------------------------------------------------
@njit(cache=True)
def _prefix_hits(wp: WorkloadParams, ws: WorkloadState, cs: CacheState, e: int, c: int) -> int:
    """Leading blocks of env ``e``'s pending request cached in cluster ``c`` (read only)."""
    hits = 0
    for b in range(ws.req_nblocks[e]):
        if find(cs, e, c, block_id(wp, ws, e, b)) < 0:
            break
        hits += 1
    return hits


@njit(cache=True)
def _cache_request(wp: WorkloadParams, ws: WorkloadState, cs: CacheState, e: int, c: int) -> None:
    """Mark the pending request's blocks most recently used in cluster ``c``, first to last,
    inserting the missing ones (its KV will be there once it is prefilled)."""
    if cs.capacity[c] == 0:
        return
    for b in range(ws.req_nblocks[e]):
        touch_or_insert(cs, e, c, block_id(wp, ws, e, b))


@njit(cache=True)
def _observe(
    S: Static, wp: WorkloadParams, ws: WorkloadState, cs: CacheState, st: State, e: int
) -> None:
    length = ws.req_in[e]
    for c in range(S.cl_np.shape[0]):
        hits = _prefix_hits(wp, ws, cs, e, c)
        st.obs_cached[e, c] = min(hits * S.block_tokens, length - 1)


@njit(cache=True)
def _route(
    S: Static, wp: WorkloadParams, ws: WorkloadState, cs: CacheState, st: State, e: int, r: int
) -> None:
    """Route env ``e``'s pending request (arrived at ``st.now[e]``) on route ``r``."""
    now = st.now[e]
    pc = S.route_p[r]
    length = ws.req_in[e]
    hits = _prefix_hits(wp, ws, cs, e, pc)
    _cache_request(wp, ws, cs, e, pc)
    cached = min(hits * S.block_tokens, length - 1)
    unc = length - cached
    # least-loaded instance: the one that can start soonest (lowest index on ties)
    i = S.cl_p0[pc]
    for ii in range(S.cl_p0[pc] + 1, S.cl_p0[pc] + S.cl_np[pc]):
        if st.p_free[e, ii] < st.p_free[e, i]:
            i = ii
    start = max(now, st.p_free[e, i])
    dur = prefill_time(S.prefill_log_t[pc], float(unc), float(cached))
    end = start + dur
    st.p_free[e, i] = end
    st.p_busy_s[e, i] += dur
    kv = kv_bytes(S.kv_fixed, S.kv_per_token, S.swa_per_token, S.swa_window, float(length))
    ch = S.route_ch[r]
    if ch < 0:  # RDMA streams the KV layer by layer while the prefill runs
        evt = max(end, start + kv / S.cl_rdma_bps[S.route_d[r]])
    else:
        evt = end
    evt = max(evt, st.p_last_evt[e, i])  # completions are delivered in order per instance
    st.p_last_evt[e, i] = evt
    # a request slot
    st.nfree[e] -= 1
    k = st.free[e, st.nfree[e]]
    s = st.seq[e]
    st.seq[e] = s + 1
    st.r_seq[e, k] = s
    st.r_route[e, k] = r
    st.r_arr[e, k] = now
    st.r_in[e, k] = length
    st.r_out[e, k] = ws.req_out[e]
    st.r_unc[e, k] = unc
    st.r_pinst[e, k] = i
    st.r_pstart[e, k] = start
    st.r_evt[e, k] = evt
    st.r_kv[e, k] = kv
    out_total = float(length + ws.req_out[e])
    st.r_need[e, k] = kv_bytes(S.kv_fixed, S.kv_per_token, S.swa_per_token, S.swa_window, out_total)
    st.r_pdone[e, k] = False
    st.r_kvdone[e, k] = False
    st.r_kvarr[e, k] = INF
    st.r_dinst[e, k] = -1
    st.r_nx_pq[e, k] = -1
    if st.p_tail[e, i] < 0:
        st.p_head[e, i] = k
    else:
        st.r_nx_pq[e, st.p_tail[e, i]] = k
    st.p_tail[e, i] = k
    if st.p_next[e, i] < 0:
        st.p_next[e, i] = k
    st.p_nq[e, i] += 1
    st.p_qtok[e, i] += unc
    if S.route_offload[r]:
        st.m_offload[e] += 1
    st.m_cached_tokens[e] += cached
    st.m_input_tokens[e] += length
    _record(st, e, k, R_ARR, now)
    _record(st, e, k, R_ROUTE, r)
    _record(st, e, k, R_IN, length)
    _record(st, e, k, R_OUT, ws.req_out[e])
    _record(st, e, k, R_CACHED, cached)
    _record(st, e, k, R_PINST, i - S.cl_p0[pc])
    _record(st, e, k, R_PSTART, start)
    _record(st, e, k, R_PEND, end)
    _record(st, e, k, R_KV, kv)


@njit(cache=True)
def _advance_one(
    S: Static, wp: WorkloadParams, ws: WorkloadState, cs: CacheState, st: State, e: int
) -> None:
    next_request(wp, ws, e)
    run_events(S, st, e, ws.req_t[e])
    st.now[e] = ws.req_t[e]
    _observe(S, wp, ws, cs, st, e)


@njit(cache=True)
def step(
    S: Static, wp: WorkloadParams, ws: WorkloadState, cs: CacheState, st: State, routes: np.ndarray
) -> None:
    """Route every env's pending request on ``routes[e]`` and advance to the next arrival."""
    for e in range(st.now.shape[0]):
        _route(S, wp, ws, cs, st, e, routes[e])
        _advance_one(S, wp, ws, cs, st, e)


@njit(cache=True)
def start(
    S: Static, wp: WorkloadParams, ws: WorkloadState, cs: CacheState, st: State, mask: np.ndarray
) -> None:
    """Draw the first request of every env in ``mask`` (freshly reset) and observe it."""
    for e in range(st.now.shape[0]):
        if mask[e]:
            _advance_one(S, wp, ws, cs, st, e)


@njit(cache=True)
def drain(S: Static, st: State, limit_s: float) -> None:
    """Run every env until all its routed requests have finished (no new arrivals), for at
    most ``limit_s`` simulated seconds past its last decision."""
    for e in range(st.now.shape[0]):
        run_events(S, st, e, st.now[e] + limit_s, True)
