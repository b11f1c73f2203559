"""Cluster prefix caches: exact LRU over block ids, in arrays, for compiled code.

Each (env, cluster) owns a cache of at most ``capacity`` blocks: a doubly linked recency list
(head = most recently used) over node arrays, and an open-addressing hash table (linear
probing, deletion by backward shift, so no tombstones) from block id to node. Lookup, touch,
insert and evict are O(1) expected; the reference simulator uses an ``OrderedDict`` with the
same policy, and the differential tests check the two agree.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit
from numpy.typing import NDArray

_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)
_SHIFT = np.uint64(29)


class CacheState(NamedTuple):
    """Prefix caches of every (env, cluster); node and slot arrays are padded to the largest."""

    key: NDArray[np.int64]  # [env, cluster, capacity] block id of each node
    prev: NDArray[np.int32]  # [env, cluster, capacity] towards the head (more recent)
    next: NDArray[np.int32]  # [env, cluster, capacity] towards the tail (less recent)
    table: NDArray[np.int32]  # [env, cluster, slots] node index or -1
    size: NDArray[np.int64]  # [env, cluster]
    head: NDArray[np.int64]  # [env, cluster] most recently used node, -1 when empty
    tail: NDArray[np.int64]  # [env, cluster] least recently used node
    capacity: NDArray[np.int64]  # [cluster]
    mask: NDArray[np.int64]  # [cluster] slots - 1 (slots is a power of two >= 2 capacity)


def new_cache(num_envs: int, capacities: list[int]) -> CacheState:
    """Empty caches for ``num_envs`` envs with the given per-cluster capacities (blocks)."""
    cap = max(max(capacities), 1)
    slots = [1 << max(1, int(np.ceil(np.log2(max(2 * c, 2))))) for c in capacities]
    shape = (num_envs, len(capacities))
    return CacheState(
        key=np.zeros((*shape, cap), np.int64),
        prev=np.full((*shape, cap), -1, np.int32),
        next=np.full((*shape, cap), -1, np.int32),
        table=np.full((*shape, max(slots)), -1, np.int32),
        size=np.zeros(shape, np.int64),
        head=np.full(shape, -1, np.int64),
        tail=np.full(shape, -1, np.int64),
        capacity=np.array(capacities, np.int64),
        mask=np.array([s - 1 for s in slots], np.int64),
    )


def clear_env(cs: CacheState, e: int) -> None:
    """Empty every cache of env ``e``."""
    cs.table[e] = -1
    cs.size[e] = 0
    cs.head[e] = -1
    cs.tail[e] = -1


@njit(cache=True)
def _home(key: int, mask: int) -> int:
    return np.int64(((np.uint64(key) * _HASH_MUL) >> _SHIFT) & np.uint64(mask))


@njit(cache=True)
def find(cs: CacheState, e: int, c: int, key: int) -> int:
    """Node holding ``key`` in cache (e, c), or -1."""
    if cs.capacity[c] == 0:
        return -1
    m = cs.mask[c]
    i = _home(key, m)
    while True:
        n = cs.table[e, c, i]
        if n < 0:
            return -1
        if cs.key[e, c, n] == key:
            return n
        i = (i + 1) & m


@njit(cache=True)
def _unlink(cs: CacheState, e: int, c: int, n: int) -> None:
    p, q = cs.prev[e, c, n], cs.next[e, c, n]
    if p >= 0:
        cs.next[e, c, p] = q
    else:
        cs.head[e, c] = q
    if q >= 0:
        cs.prev[e, c, q] = p
    else:
        cs.tail[e, c] = p


@njit(cache=True)
def _push_front(cs: CacheState, e: int, c: int, n: int) -> None:
    h = cs.head[e, c]
    cs.prev[e, c, n] = -1
    cs.next[e, c, n] = h
    if h >= 0:
        cs.prev[e, c, h] = n
    else:
        cs.tail[e, c] = n
    cs.head[e, c] = n


@njit(cache=True)
def _table_remove(cs: CacheState, e: int, c: int, key: int) -> None:
    m = cs.mask[c]
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


@njit(cache=True)
def touch_or_insert(cs: CacheState, e: int, c: int, key: int) -> bool:
    """Mark ``key`` most recently used, inserting it (evicting the LRU block if full).

    Returns True if the key was already cached.
    """
    cap = cs.capacity[c]
    if cap == 0:
        return False
    n = find(cs, e, c, key)
    if n >= 0:
        _unlink(cs, e, c, n)
        _push_front(cs, e, c, n)
        return True
    if cs.size[e, c] < cap:
        n = cs.size[e, c]
        cs.size[e, c] += 1
    else:
        n = cs.tail[e, c]
        _table_remove(cs, e, c, cs.key[e, c, n])
        _unlink(cs, e, c, n)
    cs.key[e, c, n] = key
    _push_front(cs, e, c, n)
    m = cs.mask[c]
    i = _home(key, m)
    while cs.table[e, c, i] >= 0:
        i = (i + 1) & m
    cs.table[e, c, i] = n
    return False
