"""The compiled parts of a router's observation: derived view entries and normalisation.

A router reads some quantities (cached tokens, queue wait, measured bandwidth, flows) and
derives the rest: uncached tokens, the unloaded prefill time from the cost tables, the KV
transfer time and the estimated TTFT of each route. :func:`derive` computes those entries
for every row of a view in one compiled pass, and :func:`normalise` maps a view laid out in
the observation encoder's columns to the float32 vector a policy reads. The environment
(:func:`finish`, on the inputs the simulator writes, see :mod:`prfaas_env.sim.view`) and a
deployed router (:func:`place`, on the inputs :class:`~prfaas_env.observation.live.LiveState`
reads from live metrics) call these same functions, so the two cannot drift apart; one
compiled call per batch also keeps a single decision's cost low (a few microseconds rather
than dozens of small NumPy calls).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import prange
from numpy.typing import NDArray

from prfaas_env.sim.bandwidth import GBPS
from prfaas_env.sim.costs import CostTables, kv_bytes, prefill_time
from prfaas_env.sim.jit import compiled, compiled_inline, compiled_parallel
from prfaas_env.sim.topology import Topology

DOWN_TRANSFER_S = 1e6  # transfer time reported over a link with no bandwidth, s


class DeriveParams(NamedTuple):
    """Constants of :func:`derive` for one topology, in view order: prefill clusters
    (``Topology.prefill_index``), channels some route uses (``Topology.route_channels``)
    and routes (action order)."""

    prefill_log_t: NDArray[np.float64]  # [prefill cluster, nu, nc] cost table (log seconds)
    nominal_bps: NDArray[np.float64]  # [channel] nominal bandwidth, bytes/s
    latency_s: NDArray[np.float64]  # [channel] one-way latency (half the RTT), s
    route_prefill: NDArray[np.int64]  # [route] index into the prefill clusters
    route_channel: NDArray[np.int64]  # [route] index into the channels, -1 for RDMA
    kv_fixed: float  # KV bytes of any sequence (linear-attention state)
    kv_per_token: float  # KV bytes per token (full-attention layers)
    swa_per_token: NDArray[np.float64]  # [group] KV bytes per token of sliding windows
    swa_window: NDArray[np.float64]  # [group] window, tokens


def derive_params(topology: Topology, tables: CostTables) -> DeriveParams:
    """The constants :func:`derive` needs for ``topology`` with its cost ``tables``."""
    pcl = list(topology.prefill_index)
    return DeriveParams(
        prefill_log_t=np.ascontiguousarray(tables.prefill_log_t[pcl]),
        nominal_bps=np.array(topology.route_channel_gbps(), np.float64) * GBPS,
        latency_s=np.array(
            [topology.channel_latency_s(c) for c in topology.route_channels], np.float64
        ),
        route_prefill=np.array([pcl.index(r.prefill) for r in topology.routes], np.int64),
        route_channel=np.array(topology.route_channel_positions(), np.int64),
        kv_fixed=float(tables.kv_fixed),
        kv_per_token=float(tables.kv_per_token),
        swa_per_token=tables.swa_per_token,
        swa_window=tables.swa_window,
    )


@compiled
def derive(
    p: DeriveParams,
    length: NDArray[np.float64],
    cached: NDArray[np.float64],
    wait_s: NDArray[np.float64],
    bandwidth_bps: NDArray[np.float64],
    flows: NDArray[np.float64],
    uncached: NDArray[np.float64],
    prefill_s: NDArray[np.float64],
    bandwidth: NDArray[np.float64],
    transfer_s: NDArray[np.float64],
    estimated_ttft_s: NDArray[np.float64],
    with_prefill: bool,
) -> None:
    """Fill the derived entries of ``n`` rows of a view, in place.

    Inputs: ``length`` ``[n]`` prompt tokens; ``cached`` ``[n, P]`` prefix-cache matches,
    tokens (clamped here to ``length - 1``: the last token is always computed); ``wait_s``
    ``[n, P]`` seconds until a prefill instance is free; ``bandwidth_bps`` ``[n, C]``
    measured bandwidth, bytes/s; ``flows`` ``[n, C]`` concurrent transfers.

    Outputs: ``uncached`` ``[n, P]`` tokens; ``prefill_s`` ``[n, P]`` unloaded prefill
    seconds of the uncached tokens after the cached ones (computed only ``with_prefill``;
    otherwise read, as the simulator already holds it); ``bandwidth`` ``[n, C]`` fraction
    of nominal; ``transfer_s`` ``[n, C]`` seconds to send this prompt's KV alone at a fair
    share (bandwidth / (flows + 1)) plus the one-way latency (``DOWN_TRANSFER_S`` plus the
    latency on a link that is down); ``estimated_ttft_s`` ``[n, R]`` wait + prefill (+
    transfer across datacenters) per route.
    """
    n = length.shape[0]
    npc = cached.shape[1]
    nch = bandwidth_bps.shape[1]
    for i in range(n):
        total = length[i]
        for c in range(npc):
            hit = min(cached[i, c], total - 1.0)
            cached[i, c] = hit
            uncached[i, c] = total - hit
            if with_prefill:
                prefill_s[i, c] = prefill_time(p.prefill_log_t[c], total - hit, hit)
        kv = kv_bytes(p.kv_fixed, p.kv_per_token, p.swa_per_token, p.swa_window, total)
        for c in range(nch):
            bw = bandwidth_bps[i, c]
            bandwidth[i, c] = bw / p.nominal_bps[c]
            share = bw / (flows[i, c] + 1.0)
            t = kv / max(share, 1e-9) if share > 0 else DOWN_TRANSFER_S
            transfer_s[i, c] = t + p.latency_s[c]
        for r in range(p.route_prefill.shape[0]):
            c = p.route_prefill[r]
            est = wait_s[i, c] + prefill_s[i, c]
            ch = p.route_channel[r]
            if ch >= 0:
                est = est + transfer_s[i, ch]
            estimated_ttft_s[i, r] = est


@compiled
def normalise(
    values: NDArray[np.float64],
    log_cols: NDArray[np.bool_],
    divisor: NDArray[np.float64],
    scale: NDArray[np.float64],
    high: float,
    out: NDArray[np.float32],
) -> None:
    """``out[i, j]`` = ``log1p(max(x, 0) / divisor[j]) / scale[j]`` on log columns, ``x``
    elsewhere, then clipped to ``[0, high]``: NaN and -inf give 0, +inf gives ``high``."""
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            x = values[i, j]
            if log_cols[j] and x == x:
                x = math.log1p(max(x, 0.0) / divisor[j]) / scale[j]
            if not x > 0.0:
                x = 0.0
            elif x > high:
                x = high
            out[i, j] = x


class Columns(NamedTuple):
    """Where :func:`place` finds the entries :func:`derive` reads and writes in a matrix laid
    out in the observation encoder's columns: ``(start, stop, step)`` of each entry's columns
    (one per entity; ``length`` has one)."""

    length: tuple[int, int, int]
    cached: tuple[int, int, int]
    wait_s: tuple[int, int, int]
    flows: tuple[int, int, int]
    uncached: tuple[int, int, int]
    prefill_s: tuple[int, int, int]
    bandwidth: tuple[int, int, int]
    transfer_s: tuple[int, int, int]
    estimated_ttft_s: tuple[int, int, int]


@compiled
def place(
    p: DeriveParams,
    cols: Columns,
    read: NDArray[np.float64],
    dest: NDArray[np.int64],
    values: NDArray[np.float64],
    bandwidth_bps: NDArray[np.float64],
    mask: NDArray[np.bool_],
) -> None:
    """Put metrics read from live states into ``values``, derive the rest and fill the
    action ``mask`` ``[n, actions]`` (a router's path: one compiled call from the numbers
    read to every view entry).

    ``read`` ``[n, k]``: the numbers read from each state; ``dest[k]`` is the column of
    ``values`` ``[n, encoder size]`` that number goes to, or ``-1 - c`` for the measured
    bandwidth of channel ``c`` in Gbps (kept in ``bandwidth_bps`` ``[n, C]``, bytes/s).
    Then :func:`derive` fills the derived columns, prefill time included, and
    :func:`allowed` the mask.
    """
    for i in range(read.shape[0]):
        for k in range(dest.shape[0]):
            d = dest[k]
            if d >= 0:
                values[i, d] = read[i, k]
            else:
                bandwidth_bps[i, -1 - d] = read[i, k] * GBPS
    derive_columns(p, cols, values, bandwidth_bps, True)
    c = cols
    allowed(values[:, c.bandwidth[0] : c.bandwidth[1] : c.bandwidth[2]], p.route_channel, mask)


@compiled_inline
def derive_columns(
    p: DeriveParams,
    cols: Columns,
    values: NDArray[np.float64],
    bandwidth_bps: NDArray[np.float64],
    with_prefill: bool,
) -> None:
    """:func:`derive` on a matrix laid out in the encoder's columns (``cols``), in place."""
    c = cols
    derive(
        p,
        values[:, c.length[0]],
        values[:, c.cached[0] : c.cached[1] : c.cached[2]],
        values[:, c.wait_s[0] : c.wait_s[1] : c.wait_s[2]],
        bandwidth_bps,
        values[:, c.flows[0] : c.flows[1] : c.flows[2]],
        values[:, c.uncached[0] : c.uncached[1] : c.uncached[2]],
        values[:, c.prefill_s[0] : c.prefill_s[1] : c.prefill_s[2]],
        values[:, c.bandwidth[0] : c.bandwidth[1] : c.bandwidth[2]],
        values[:, c.transfer_s[0] : c.transfer_s[1] : c.transfer_s[2]],
        values[:, c.estimated_ttft_s[0] : c.estimated_ttft_s[1] : c.estimated_ttft_s[2]],
        with_prefill,
    )


@compiled
def finish(
    p: DeriveParams,
    cols: Columns,
    values: NDArray[np.float64],
    bandwidth_bps: NDArray[np.float64],
    log_cols: NDArray[np.bool_],
    divisor: NDArray[np.float64],
    scale: NDArray[np.float64],
    high: float,
    out: NDArray[np.float32],
) -> None:
    """The environment's path: from the inputs the simulator wrote into ``values`` (its
    prefill times included) and the measured ``bandwidth_bps``, derive the other entries in
    place, then :func:`normalise` into ``out``. One compiled call per step."""
    derive_columns(p, cols, values, bandwidth_bps, False)
    normalise(values, log_cols, divisor, scale, high, out)


@compiled
def allowed(
    bandwidth: NDArray[np.float64], route_channel: NDArray[np.int64], mask: NDArray[np.bool_]
) -> None:
    """The action mask of a view, ``mask`` ``[n, actions]``: a route over a channel whose
    measured ``bandwidth`` ``[n, C]`` is 0 (the link is down) is not allowed; routes inside a
    datacenter (``route_channel[r]`` = -1) and actions after the routes (reject) always are."""
    routes = route_channel.shape[0]
    for i in range(mask.shape[0]):
        for a in range(mask.shape[1]):
            ch = route_channel[a] if a < routes else -1
            mask[i, a] = ch < 0 or bandwidth[i, ch] > 0.0


def columns_array(cols: Columns) -> NDArray[np.int64]:
    """``cols`` as a ``[9, 3]`` int64 array (numba's parallel loops take no nested tuples)."""
    return np.array(cols, np.int64)


@compiled_inline
def _columns_of(a: NDArray[np.int64]) -> Columns:
    def span(i: int) -> tuple[int, int, int]:
        return (a[i, 0], a[i, 1], a[i, 2])

    return Columns(span(0), span(1), span(2), span(3), span(4), span(5), span(6), span(7), span(8))


@compiled_parallel
def finish_parallel(
    p: DeriveParams,
    cols: NDArray[np.int64],
    values: NDArray[np.float64],
    bandwidth_bps: NDArray[np.float64],
    log_cols: NDArray[np.bool_],
    divisor: NDArray[np.float64],
    scale: NDArray[np.float64],
    high: float,
    out: NDArray[np.float32],
    threads: int,
) -> None:
    """:func:`finish` with the rows split into one block per thread (many envs); ``cols``
    is :func:`columns_array` of the columns."""
    n = values.shape[0]
    blocks = max(min(threads, n), 1)
    for b in prange(blocks):
        lo = b * n // blocks
        hi = (b + 1) * n // blocks
        finish(
            p,
            _columns_of(cols),
            values[lo:hi],
            bandwidth_bps[lo:hi],
            log_cols,
            divisor,
            scale,
            high,
            out[lo:hi],
        )
