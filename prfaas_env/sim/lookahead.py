"""Which memory to prefetch, and when: the prefetch schedule of the event loop.

:mod:`prfaas_env.sim.prefetch` is the mechanism (a hint to the CPU that never changes a
result); this module is the plan, kept apart from the dynamics in :mod:`prfaas_env.sim.kernel`.
While the event loop steps env ``e`` it names the memory of envs ahead that will be stepped
(code not SKIP), in three stages so that each stage reads only memory an earlier stage asked
for: the per-env rows of env ``e + 2 PREFETCH_AHEAD``; the head slots of the prefill queues
and channels of env ``e + PREFETCH_AHEAD`` (their indices are in those rows); the decode
batches' next finishers and the next free slot of env ``e + PREFETCH_AHEAD / 2``; and the
rows of the view (:mod:`prfaas_env.sim.view`) the env will write, when the view is on.
"""

from __future__ import annotations

import numpy as np

from prfaas_env.sim.cache import CacheState
from prfaas_env.sim.jit import compiled_inline
from prfaas_env.sim.prefetch import prefetch_bytes, prefetch_row, prefetch_span
from prfaas_env.sim.state import DI, EI, LI, PI, SKIP, State
from prfaas_env.sim.view import ViewSpec
from prfaas_env.sim.workload import WorkloadParams, WorkloadState

PREFETCH_AHEAD = 8  # envs between the env stepped and the env whose slots are prefetched


@compiled_inline
def _prefetch_env(wp: WorkloadParams, ws: WorkloadState, cs: CacheState, st: State, e: int) -> None:
    """Prefetch env ``e``'s per-env blocks (see :mod:`prfaas_env.sim.prefetch`)."""
    prefetch_row(st.ef, e)
    prefetch_row(st.ei, e)
    prefetch_row(st.pf, e)
    prefetch_row(st.pi, e)
    prefetch_row(st.lf, e)
    prefetch_row(st.li, e)
    prefetch_row(st.df, e)
    prefetch_row(st.di, e)
    prefetch_row(st.qi, e)
    prefetch_row(st.obs_cached, e)
    prefetch_row(st.obs_prefill_s, e)
    prefetch_row(ws.wf, e)
    prefetch_row(ws.wi, e)
    prefetch_row(ws.rng, e)
    if not wp.is_trace:  # a synthetic request reads one of the env's sessions at random
        prefetch_row(ws.sess, e)
    prefetch_row(cs.meta, e)
    for j in range(st.d_slots.shape[1]):  # the front of each decode batch
        prefetch_bytes(st.d_slots, e, j * st.d_slots.strides[1])
        prefetch_bytes(st.d_tags, e, j * st.d_tags.strides[1])


@compiled_inline
def _prefetch_slot(st: State, e: int, k: int) -> None:
    """Prefetch request slot ``k`` of env ``e`` (both its float and its int fields)."""
    if k >= 0:
        prefetch_span(st.rf, e, k * st.rf.strides[1], st.rf.strides[1])
        prefetch_span(st.ri, e, k * st.ri.strides[1], st.ri.strides[1])


@compiled_inline
def _prefetch_heads(st: State, e: int) -> None:
    """Prefetch the request slots at the head of env ``e``'s prefill queues and channels, and
    the lines holding the indices of the slots :func:`_prefetch_slots_named` will prefetch
    (reads only the env's per-env rows, which :func:`_prefetch_env` asked for)."""
    for i in range(st.pi.shape[1]):
        _prefetch_slot(st, e, st.pi[e, i, PI.NEXT])
        _prefetch_slot(st, e, st.pi[e, i, PI.HEAD])
    for ch in range(st.li.shape[1]):
        _prefetch_slot(st, e, st.li[e, ch, LI.NEXT_K])
        _prefetch_slot(st, e, st.li[e, ch, LI.DL_HEAD])
    for j in range(st.di.shape[1]):  # where each decode batch keeps its next finisher
        s = st.di[e, j, DI.NEXT_S]
        if s >= 0:
            prefetch_bytes(st.d_slots, e, j * st.d_slots.strides[1] + s * st.d_slots.strides[2])
    n = st.ei[e, EI.NFREE]
    if n > 0:  # the top of the free stack: the slot the next routed request takes
        prefetch_bytes(st.free, e, (n - 1) * st.free.strides[1])


@compiled_inline
def _prefetch_slots_named(st: State, e: int) -> None:
    """Prefetch the slots whose indices :func:`_prefetch_heads` brought in: each decode
    batch's next finisher, and the slot env ``e``'s next routed request takes (the top of its
    free stack)."""
    for j in range(st.di.shape[1]):
        s = st.di[e, j, DI.NEXT_S]
        if s >= 0:
            _prefetch_slot(st, e, st.d_slots[e, j, s])
    n = st.ei[e, EI.NFREE]
    if n > 0:
        _prefetch_slot(st, e, st.free[e, n - 1])


@compiled_inline
def prefetch_ahead(
    wp: WorkloadParams,
    ws: WorkloadState,
    cs: CacheState,
    st: State,
    V: ViewSpec,
    codes: np.ndarray,
    e: int,
    hi: int,
) -> None:
    """Prefetch for the envs ahead of env ``e`` (up to ``hi``) that ``codes`` will step (see
    the module docstring)."""
    a = e + 2 * PREFETCH_AHEAD
    if a < hi and codes[a] != SKIP:
        _prefetch_env(wp, ws, cs, st, a)
        if V.values.shape[0] > 0:
            prefetch_row(V.values, a)
            prefetch_row(V.counters, a)
            prefetch_row(V.mask, a)
            prefetch_row(V.bandwidth_bps, a)
    a = e + PREFETCH_AHEAD
    if a < hi and codes[a] != SKIP:
        _prefetch_heads(st, a)
    a = e + PREFETCH_AHEAD // 2
    if a < hi and codes[a] != SKIP:
        _prefetch_slots_named(st, a)
