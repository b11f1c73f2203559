"""The per-route observation: one row of scale-free features per candidate route.

The flat observation (:mod:`.encoder`) lists every cluster, channel and route of one
topology in a fixed order, so a policy trained on it knows that topology only. This form
describes each candidate route by its own features instead (its prefill cluster's queue and
cache match, its link, its decode pool, the estimates of its prefill, transfer and TTFT), so
one network that scores a route from its row can score the routes of any topology: the
paper's two, a multi-region layout's dozen, a large deployment's seventy. Values are
scale-free where they can be, so that they mean the same on other GPUs and loads: times are
relative to the TTFT SLO, loads to capacity, lengths on a log scale. Every feature is in
[-1, 10] (clipped).

:func:`route_features` computes the form from a view in physical units (what the simulator
writes and the router parses), so the environment and a deployed router share it. It returns
``[n, routes, len(ROUTE_FEATURES)]`` route rows and ``[n, len(GLOBAL_FEATURES)]`` global
ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from prfaas_env.observation.routes import RouteTable
from prfaas_env.sim.bandwidth import GBPS
from prfaas_env.sim.costs import MAX_PROMPT_TOKENS
from prfaas_env.sim.topology import Topology

HIGH = 10.0
_TOKENS = math.log1p(MAX_PROMPT_TOKENS)

# name, meaning (every time is relative to the TTFT SLO, ``slo``)
ROUTE_FEATURES: tuple[tuple[str, str], ...] = (
    ("uncached_tokens", "log1p(prompt tokens this route's prefill cluster computes) / log1p(2^18)"),
    ("cached_fraction", "share of the prompt already in the prefill cluster's prefix cache"),
    ("prefill", "log1p(unloaded prefill time / slo)"),
    ("wait", "log1p(time until the prefill cluster's least-loaded instance is free / slo)"),
    ("queued_per_instance", "log1p(requests waiting to prefill / prefill instances)"),
    (
        "queued_tokens_per_instance",
        "log1p(uncached tokens waiting / prefill instances) / log1p(2^18)",
    ),
    ("busy_fraction", "share of the prefill cluster's instances busy now"),
    ("remote", "1 when prefill and decode are in different datacenters"),
    (
        "transfer",
        "log1p(this prompt's KV transfer time at a fair share of the link / slo); 0 on RDMA",
    ),
    ("bandwidth", "the link's measured bandwidth over its nominal one; 1 on RDMA"),
    ("link_backlog", "log1p(KV bytes the link still sends / nominal bandwidth / slo); 0 on RDMA"),
    ("flows", "log1p(concurrent KV transfers on the link); 0 on RDMA"),
    ("free_slots", "free decode slots over all slots of the decode cluster"),
    ("kv_used", "KV memory reserved over capacity in the decode cluster"),
    (
        "admission_queue_per_instance",
        "log1p(requests waiting for a decode slot / decode instances)",
    ),
    ("admission_wait", "log1p(time until a decode slot frees up / slo)"),
    ("estimated_ttft", "log1p(wait + prefill + transfer on this route / slo)"),
    ("ttft_gap", "log1p((this route's estimated TTFT - the lowest allowed one) / slo)"),
)
GLOBAL_FEATURES: tuple[tuple[str, str], ...] = (
    ("input_tokens", "log1p(prompt tokens) / log1p(2^18)"),
    ("expected_output_tokens", "log1p(mean output tokens) / log1p(2^18)"),
    ("recent_ttft", "log1p(moving average of recent TTFT / slo)"),
    ("routes", "log1p(number of routes) / log1p(128)"),
    ("allowed_routes", "share of routes allowed now"),
    ("best_estimated_ttft", "log1p(lowest estimated TTFT among allowed routes / slo)"),
)


@dataclass(frozen=True)
class RouteForm:
    """Constants of the per-route form for one topology and TTFT SLO."""

    routes: RouteTable
    ttft_slo_s: float
    prefill_instances: NDArray[np.float64]  # [prefill entity]
    decode_instances: NDArray[np.float64]  # [decode entity]
    nominal_bps: NDArray[np.float64]  # [channel entity] bytes/s

    @classmethod
    def of(cls, topology: Topology, ttft_slo_s: float) -> RouteForm:
        if not ttft_slo_s > 0:
            raise ValueError(f"ttft_slo_s: expected a positive number, got {ttft_slo_s!r}")
        cl = topology.clusters
        return cls(
            routes=RouteTable.from_topology(topology),
            ttft_slo_s=float(ttft_slo_s),
            prefill_instances=np.array(
                [cl[i].prefill_instances for i in topology.prefill_index], float
            ),
            decode_instances=np.array(
                [cl[i].decode_instances for i in topology.decode_index], float
            ),
            nominal_bps=np.array(topology.route_channel_gbps(), float) * GBPS,
        )

    @property
    def num_routes(self) -> int:
        return self.routes.num_routes


def route_features(
    form: RouteForm, view: Mapping[str, NDArray[np.float64]], mask: NDArray[np.bool_]
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """``([n, routes, F], [n, G])`` float32 features of ``n`` views (``view``: entries in
    physical units, derived ones filled, as :meth:`ObservationEncoder.view_of` gives them;
    ``mask``: ``[n, routes(+1)]`` the allowed actions)."""
    r, slo = form.routes, form.ttft_slo_s
    length = np.asarray(view["input_tokens"], np.float64)
    n = length.shape[0]

    def col(key: str) -> NDArray[np.float64]:
        return np.asarray(view[key], np.float64)

    def per_prefill(key: str) -> NDArray[np.float64]:
        return col(key)[:, r.prefill]

    def per_decode(key: str) -> NDArray[np.float64]:
        return col(key)[:, r.decode]

    remote = r.channel >= 0
    ch = np.where(remote, r.channel, 0)

    def per_channel(key: str, rdma: float) -> NDArray[np.float64]:
        a = col(key)
        if a.shape[1] == 0:
            return np.full((n, r.num_routes), rdma)
        return np.where(remote[None, :], a[:, ch], rdma)

    def lslo(x: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.log1p(np.maximum(x, 0.0) / slo)

    allowed = mask[:, : r.num_routes]
    est = col("estimated_ttft_s")
    best = np.where(allowed, est, np.inf).min(axis=1)
    best = np.where(np.isfinite(best), best, 0.0)
    backlog_s = np.zeros((n, r.num_routes))
    if form.nominal_bps.size:
        nominal = form.nominal_bps[ch]
        backlog_s = np.where(remote[None, :], per_channel("bytes_in_flight", 0.0) / nominal, 0.0)
    rows = [
        np.log1p(per_prefill("uncached_tokens")) / _TOKENS,
        per_prefill("cached_tokens") / np.maximum(length, 1.0)[:, None],
        lslo(per_prefill("prefill_s")),
        lslo(per_prefill("wait_s")),
        np.log1p(per_prefill("queued_requests") / form.prefill_instances[r.prefill]),
        np.log1p(per_prefill("queued_tokens") / form.prefill_instances[r.prefill]) / _TOKENS,
        per_prefill("busy_fraction"),
        np.broadcast_to(remote.astype(float), (n, r.num_routes)),
        np.where(remote[None, :], lslo(per_channel("transfer_s", 0.0)), 0.0),
        per_channel("bandwidth", 1.0),
        lslo(backlog_s),
        np.log1p(per_channel("flows", 0.0)),
        per_decode("free_slots"),
        per_decode("kv_used"),
        np.log1p(per_decode("admission_queue") / form.decode_instances[r.decode]),
        lslo(per_decode("admission_wait_s")),
        lslo(est),
        lslo(est - best[:, None]),
    ]
    feats = np.clip(np.stack(rows, axis=2), -1.0, HIGH)
    glob = np.stack(
        [
            np.log1p(length) / _TOKENS,
            np.log1p(col("expected_output_tokens")) / _TOKENS,
            lslo(col("ttft_ewma_s")),
            np.full(n, math.log1p(r.num_routes) / math.log1p(128)),
            allowed.mean(axis=1),
            lslo(best),
        ],
        axis=1,
    )
    glob = np.clip(glob, -1.0, HIGH)
    return np.nan_to_num(feats, nan=0.0).astype(np.float32), np.nan_to_num(glob, nan=0.0).astype(
        np.float32
    )
