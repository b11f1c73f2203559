"""Cluster prefix caches: exact LRU over block ids, in arrays, for compiled code.

Each (env, cluster) owns a cache of at most ``capacity`` blocks: a doubly linked recency list
(head = most recently used) over node arrays, and an open-addressing hash table (linear
probing, deletion by backward shift, so no tombstones) from block id to node. Lookup, touch,
insert and evict are O(1) expected; the reference simulator uses an ``OrderedDict`` with the
same policy, and the differential tests check the two agree.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from prfaas_env.sim.jit import compiled_inline
from prfaas_env.sim.packing import add_views

_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)
_SHIFT = np.uint64(29)


class META(IntEnum):
    """Per (env, cluster): blocks held, most and least recently used node (-1 when empty)."""

    SIZE = 0
    HEAD = 1
    TAIL = 2


class CFG(IntEnum):
    """Per cluster: capacity in blocks, hash-table slots - 1 (slots: a power of two >= 2x)."""

    CAPACITY = 0
    MASK = 1


CACHE_LAYOUT: dict[str, tuple[type[IntEnum], str]] = {"meta": (META, ""), "cfg": (CFG, "")}


class CacheState(NamedTuple):
    """Prefix caches of every (env, cluster); node and slot arrays are padded to the largest.
    Packed fields by name as views: ``size``, ``head``, ``tail``, ``capacity``, ``mask``."""

    key: NDArray[np.int64]  # [env, cluster, capacity] block id of each node
    prev: NDArray[np.int32]  # [env, cluster, capacity] towards the head (more recent)
    next: NDArray[np.int32]  # [env, cluster, capacity] towards the tail (less recent)
    table: NDArray[np.int32]  # [env, cluster, slots] node index or -1
    meta: NDArray[np.int64]  # [env, cluster, 3]
    cfg: NDArray[np.int64]  # [cluster, 2]


add_views(CacheState, CACHE_LAYOUT)


def new_cache(num_envs: int, capacities: list[int]) -> CacheState:
    """Empty caches for ``num_envs`` envs with the given per-cluster capacities (blocks)."""
    cap = max(max(capacities), 1)
    slots = [1 << max(1, int(np.ceil(np.log2(max(2 * c, 2))))) for c in capacities]
    shape = (num_envs, len(capacities))
    meta = np.full((*shape, len(META)), -1, np.int64)
    meta[..., META.SIZE] = 0
    return CacheState(
        key=np.zeros((*shape, cap), np.int64),
        prev=np.full((*shape, cap), -1, np.int32),
        next=np.full((*shape, cap), -1, np.int32),
        table=np.full((*shape, max(slots)), -1, np.int32),
        meta=meta,
        cfg=np.array([(c, s - 1) for c, s in zip(capacities, slots, strict=True)], np.int64),
    )


def clear_env(cs: CacheState, e: int) -> None:
    """Empty every cache of env ``e``."""
    cs.table[e] = -1
    cs.meta[e, :, META.SIZE] = 0
    cs.meta[e, :, META.HEAD] = -1
    cs.meta[e, :, META.TAIL] = -1


@compiled_inline
def _home(key: int, mask: int) -> int:
    return np.int64(((np.uint64(key) * _HASH_MUL) >> _SHIFT) & np.uint64(mask))


@compiled_inline
def find(cs: CacheState, e: int, c: int, key: int) -> int:
    """Node holding ``key`` in cache (e, c), or -1."""
    m = cs.cfg[c, CFG.MASK]
    i = _home(key, m)
    while True:
        n = cs.table[e, c, i]
        if n < 0:
            return -1
        if cs.key[e, c, n] == key:
            return n
        i = (i + 1) & m


@compiled_inline
def _unlink(cs: CacheState, e: int, c: int, n: int) -> None:
    p, q = cs.prev[e, c, n], cs.next[e, c, n]
    if p >= 0:
        cs.next[e, c, p] = q
    else:
        cs.meta[e, c, META.HEAD] = q
    if q >= 0:
        cs.prev[e, c, q] = p
    else:
        cs.meta[e, c, META.TAIL] = p


@compiled_inline
def _push_front(cs: CacheState, e: int, c: int, n: int) -> None:
    h = cs.meta[e, c, META.HEAD]
    cs.prev[e, c, n] = -1
    cs.next[e, c, n] = h
    if h >= 0:
        cs.prev[e, c, h] = n
    else:
        cs.meta[e, c, META.TAIL] = n
    cs.meta[e, c, META.HEAD] = n


@compiled_inline
def _table_remove(cs: CacheState, e: int, c: int, key: int) -> None:
    m = cs.cfg[c, CFG.MASK]
    i = _home(key, m)
    while cs.key[e, c, cs.table[e, c, i]] != key:
        i = (i + 1) & m
    j = i
    while True:  # backward-shift deletion (Knuth, TAOCP vol. 3, algorithm R)
        j = (j + 1) & m
        n = cs.table[e, c, j]
        if n < 0:
            break
        k = _home(cs.key[e, c, n], m)
        if (i <= j and i < k <= j) or (i > j and (i < k or k <= j)):
            continue
        cs.table[e, c, i] = n
        i = j
    cs.table[e, c, i] = -1


@compiled_inline
def touch_or_insert(cs: CacheState, e: int, c: int, key: int) -> bool:
    """Mark ``key`` most recently used, inserting it (evicting the LRU block if full).

    Returns True if the key was already cached.
    """
    cap = cs.cfg[c, CFG.CAPACITY]
    if cap == 0:
        return False
    n = find(cs, e, c, key)
    if n >= 0:
        _unlink(cs, e, c, n)
        _push_front(cs, e, c, n)
        return True
    if cs.meta[e, c, META.SIZE] < cap:
        n = cs.meta[e, c, META.SIZE]
        cs.meta[e, c, META.SIZE] += 1
    else:
        n = cs.meta[e, c, META.TAIL]
        _table_remove(cs, e, c, cs.key[e, c, n])
        _unlink(cs, e, c, n)
    cs.key[e, c, n] = key
    _push_front(cs, e, c, n)
    m = cs.cfg[c, CFG.MASK]
    i = _home(key, m)
    while cs.table[e, c, i] >= 0:
        i = (i + 1) & m
    cs.table[e, c, i] = n
    return False
