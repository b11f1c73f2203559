"""Simulator state as a struct of arrays (leading dimension: env) and the constants it reads.

Requests in flight live in per-env *slots* (recycled through a free stack); every queue is a
linked list threaded through the slots, so no queue has a capacity of its own: the slot arrays
grow (doubling) when an env runs out, between two steps.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

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
R_ARR, R_ROUTE, R_IN, R_OUT, R_CACHED, R_PINST, R_PSTART, R_PEND = range(8)
R_KV, R_XFER, R_DINST, R_DSTART, R_FIRST, R_FINISH = range(8, 14)

HIST_BINS = 240  # TTFT histogram: log-spaced bins, 20 per decade from 1 ms to 10^9 ms
HIST_LO_S = 1e-3
HIST_PER_DECADE = 20.0


class Static(NamedTuple):
    """Topology constants in the form compiled code reads (index = route/cluster/...)."""

    route_p: NDArray[np.int64]  # prefill cluster of each route
    route_d: NDArray[np.int64]  # decode cluster of each route
    route_ch: NDArray[np.int64]  # channel of each route, -1 for RDMA
    route_offload: NDArray[np.bool_]  # prefill and decode in different datacenters
    cl_p0: NDArray[np.int64]  # first prefill instance of each cluster
    cl_np: NDArray[np.int64]  # prefill instances of each cluster
    cl_d0: NDArray[np.int64]  # first decode instance of each cluster
    cl_nd: NDArray[np.int64]  # decode instances of each cluster
    cl_rdma_bps: NDArray[np.float64]  # bytes/s of RDMA per node
    cl_max_batch: NDArray[np.int64]
    cl_kv_cap: NDArray[np.float64]  # KV bytes one decode instance holds
    p_cluster: NDArray[np.int64]  # cluster of each prefill instance
    d_cluster: NDArray[np.int64]  # cluster of each decode instance
    ch_latency_s: NDArray[np.float64]  # one-way latency (half the RTT)
    ch_step_s: NDArray[np.float64]  # bandwidth grid step, inf when constant
    ch_cells: NDArray[np.int64]  # cells of one period of the bandwidth series
    prefill_log_t: NDArray[np.float64]  # [cluster, nu, nc]
    decode_log_t: NDArray[np.float64]  # [cluster, batch + 1, nx]
    kv_fixed: float
    kv_per_token: float
    swa_per_token: NDArray[np.float64]
    swa_window: NDArray[np.float64]
    block_tokens: int
    ttft_slo_s: float
    tpot_slo_s: float


class State(NamedTuple):
    """Per-env simulator state (see the module docstring)."""

    now: NDArray[np.float64]  # [E] time of the pending decision, s
    seq: NDArray[np.int64]  # [E] requests routed so far
    # request slots [E, R]
    free: NDArray[np.int64]  # free-slot stack
    nfree: NDArray[np.int64]  # [E]
    r_seq: NDArray[np.int64]
    r_route: NDArray[np.int64]
    r_arr: NDArray[np.float64]
    r_in: NDArray[np.int64]
    r_out: NDArray[np.int64]
    r_unc: NDArray[np.int64]
    r_pinst: NDArray[np.int64]
    r_pstart: NDArray[np.float64]
    r_evt: NDArray[np.float64]  # completion event of the prefill (in-order per instance)
    r_kv: NDArray[np.float64]  # bytes
    r_need: NDArray[np.float64]  # decode KV reservation, bytes
    r_pdone: NDArray[np.bool_]
    r_kvdone: NDArray[np.bool_]
    r_kvarr: NDArray[np.float64]  # KV fully at the decode side, s
    r_tag: NDArray[np.float64]  # link finish tag (bytes of per-flow service)
    r_vadm: NDArray[np.float64]  # decode virtual time at admission (tokens)
    r_dinst: NDArray[np.int64]
    r_dstart: NDArray[np.float64]
    r_first: NDArray[np.float64]
    r_nx_pq: NDArray[np.int64]  # next in its prefill instance's queue
    r_nx_fl: NDArray[np.int64]  # next in its channel's flow list
    r_nx_dl: NDArray[np.int64]  # next in its channel's delay line
    r_nx_dq: NDArray[np.int64]  # next in its decode cluster's admission queue
    # prefill instances [E, P]
    p_free: NDArray[np.float64]  # time the instance has finished all work queued on it
    p_head: NDArray[np.int64]  # oldest job whose completion event has not fired
    p_tail: NDArray[np.int64]
    p_next: NDArray[np.int64]  # next job to start
    p_last_evt: NDArray[np.float64]
    p_nq: NDArray[np.int64]  # jobs waiting to start
    p_qtok: NDArray[np.float64]  # uncached tokens of jobs waiting to start
    p_busy_s: NDArray[np.float64]  # prefill seconds assigned so far
    # channels [E, L]
    l_series: NDArray[np.float64]  # [E, L, cells] usable bandwidth per grid cell, bytes/s
    l_cell: NDArray[np.int64]
    l_bw: NDArray[np.float64]
    l_t: NDArray[np.float64]
    l_v: NDArray[np.float64]  # per-flow service so far, bytes (processor sharing)
    l_n: NDArray[np.int64]
    l_flows: NDArray[np.int64]  # head of the flow list
    l_next_t: NDArray[np.float64]  # next flow completion
    l_next_k: NDArray[np.int64]  # the flow that completes then
    l_dl_head: NDArray[np.int64]
    l_dl_tail: NDArray[np.int64]
    l_bytes_in: NDArray[np.float64]  # bytes of flows started
    l_bytes_done: NDArray[np.float64]  # bytes of flows completed
    l_cap_int: NDArray[np.float64]  # integral of usable bandwidth up to l_t, bytes
    # decode instances [E, D]
    d_n: NDArray[np.int64]
    d_v: NDArray[np.float64]  # tokens each active sequence has produced since d_v was 0
    d_t: NDArray[np.float64]
    d_mem: NDArray[np.float64]
    d_ctx_in: NDArray[np.float64]
    d_sum_vadm: NDArray[np.float64]
    d_step: NDArray[np.float64]
    d_next_t: NDArray[np.float64]
    d_next_s: NDArray[np.int64]  # batch slot that completes then
    d_slots: NDArray[np.int64]  # [E, D, max batch] request slot or -1
    d_tags: NDArray[np.float64]  # [E, D, max batch] finish tag (tokens)
    d_busy_int: NDArray[np.float64]  # integral of batch size over time (sequence-seconds)
    # decode admission queues [E, C]
    q_head: NDArray[np.int64]
    q_tail: NDArray[np.int64]
    q_len: NDArray[np.int64]
    # pending request observation [E, C]
    obs_cached: NDArray[np.int64]
    # metrics [E]
    m_done: NDArray[np.int64]
    m_ttft_sum: NDArray[np.float64]
    m_tpot_sum: NDArray[np.float64]
    m_out_tokens: NDArray[np.float64]
    m_slo_ok: NDArray[np.int64]
    m_offload: NDArray[np.int64]
    m_cached_tokens: NDArray[np.float64]
    m_input_tokens: NDArray[np.float64]
    m_ttft_hist: NDArray[np.int64]  # [E, HIST_BINS]
    m_last_ttft: NDArray[np.float64]  # [E] TTFT of the latest completion
    # records [E, N, fields] (N = 0 when not recording)
    records: NDArray[np.float64]


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
) -> State:
    """Zeroed state; every queue empty, every slot free."""
    e, r = num_envs, slots
    f = np.float64
    i = np.int64

    def z(*shape: int, dtype: type = f, fill: float = 0) -> NDArray:
        return np.full(shape, fill, dtype)

    free = np.tile(np.arange(r - 1, -1, -1, dtype=i), (e, 1))
    return State(
        now=z(e),
        seq=z(e, dtype=i),
        free=free,
        nfree=z(e, dtype=i, fill=r),
        r_seq=z(e, r, dtype=i, fill=-1),
        r_route=z(e, r, dtype=i),
        r_arr=z(e, r),
        r_in=z(e, r, dtype=i),
        r_out=z(e, r, dtype=i),
        r_unc=z(e, r, dtype=i),
        r_pinst=z(e, r, dtype=i),
        r_pstart=z(e, r),
        r_evt=z(e, r),
        r_kv=z(e, r),
        r_need=z(e, r),
        r_pdone=z(e, r, dtype=np.bool_),
        r_kvdone=z(e, r, dtype=np.bool_),
        r_kvarr=z(e, r),
        r_tag=z(e, r),
        r_vadm=z(e, r),
        r_dinst=z(e, r, dtype=i, fill=-1),
        r_dstart=z(e, r),
        r_first=z(e, r),
        r_nx_pq=z(e, r, dtype=i, fill=-1),
        r_nx_fl=z(e, r, dtype=i, fill=-1),
        r_nx_dl=z(e, r, dtype=i, fill=-1),
        r_nx_dq=z(e, r, dtype=i, fill=-1),
        p_free=z(e, prefill_instances),
        p_head=z(e, prefill_instances, dtype=i, fill=-1),
        p_tail=z(e, prefill_instances, dtype=i, fill=-1),
        p_next=z(e, prefill_instances, dtype=i, fill=-1),
        p_last_evt=z(e, prefill_instances),
        p_nq=z(e, prefill_instances, dtype=i),
        p_qtok=z(e, prefill_instances),
        p_busy_s=z(e, prefill_instances),
        l_series=z(e, channels, cells),
        l_cell=z(e, channels, dtype=i),
        l_bw=z(e, channels),
        l_t=z(e, channels),
        l_v=z(e, channels),
        l_n=z(e, channels, dtype=i),
        l_flows=z(e, channels, dtype=i, fill=-1),
        l_next_t=z(e, channels, fill=INF),
        l_next_k=z(e, channels, dtype=i, fill=-1),
        l_dl_head=z(e, channels, dtype=i, fill=-1),
        l_dl_tail=z(e, channels, dtype=i, fill=-1),
        l_bytes_in=z(e, channels),
        l_bytes_done=z(e, channels),
        l_cap_int=z(e, channels),
        d_n=z(e, decode_instances, dtype=i),
        d_v=z(e, decode_instances),
        d_t=z(e, decode_instances),
        d_mem=z(e, decode_instances),
        d_ctx_in=z(e, decode_instances),
        d_sum_vadm=z(e, decode_instances),
        d_step=z(e, decode_instances),
        d_next_t=z(e, decode_instances, fill=INF),
        d_next_s=z(e, decode_instances, dtype=i, fill=-1),
        d_slots=z(e, decode_instances, max_batch, dtype=i, fill=-1),
        d_tags=z(e, decode_instances, max_batch),
        d_busy_int=z(e, decode_instances),
        q_head=z(e, clusters, dtype=i, fill=-1),
        q_tail=z(e, clusters, dtype=i, fill=-1),
        q_len=z(e, clusters, dtype=i),
        obs_cached=z(e, clusters, dtype=i),
        m_done=z(e, dtype=i),
        m_ttft_sum=z(e),
        m_tpot_sum=z(e),
        m_out_tokens=z(e),
        m_slo_ok=z(e, dtype=i),
        m_offload=z(e, dtype=i),
        m_cached_tokens=z(e),
        m_input_tokens=z(e),
        m_ttft_hist=z(e, HIST_BINS, dtype=i),
        m_last_ttft=z(e, fill=np.nan),
        records=z(e, record_capacity, len(RECORD_FIELDS), fill=np.nan),
    )


SLOT_FIELDS = tuple(f for f in State._fields if f.startswith("r_"))


def grow_slots(st: State) -> State:
    """A copy of ``st`` with twice the request slots per env (new slots free)."""
    e, r = st.r_seq.shape
    out = {}
    for name in State._fields:
        a = getattr(st, name)
        if name in SLOT_FIELDS:
            fill = -1 if name in ("r_seq", "r_dinst") or name.startswith("r_nx") else 0
            b = np.full((e, 2 * r), fill, a.dtype)
            b[:, :r] = a
            out[name] = b
        else:
            out[name] = a
    free = np.zeros((e, 2 * r), np.int64)
    nf = st.nfree
    for i in range(e):  # rare (only when an env runs out); keeps each env's stack order
        free[i, : nf[i]] = st.free[i, : nf[i]]
        free[i, nf[i] : nf[i] + r] = np.arange(2 * r - 1, r - 1, -1)
    out["free"] = free
    out["nfree"] = nf + r
    return State(**out)
