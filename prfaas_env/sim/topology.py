"""Topology: datacenters, prefill-only and PD clusters, and the links between datacenters.

A topology is read from the ``topology:`` section of a scenario YAML file (see
``configs/*.yaml`` and docs/simulator.md). Clusters are either ``prefill`` (prefill-only, the
PrfaaS role) or ``pd`` (a prefill pool and a decode pool joined by RDMA). Every configured
link joins two datacenters and is full duplex: it becomes two directed *channels* of the same
nominal bandwidth whose usable bandwidth follows its own realisation of the link's process.

A *route* is a pair (prefill cluster, decode cluster) that the topology can serve: the decode
cluster is a PD cluster and either both are in the same datacenter (KV moves over RDMA) or a
link joins their datacenters (KV moves over that link's channel).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from prfaas_env.architecture import ModelSpec, get_model
from prfaas_env.costmodel import CostModel, ServingSpec, parse_serving
from prfaas_env.errors import ConfigError, UnknownNameError, check_keys, number
from prfaas_env.sim.bandwidth import BandwidthProcess, parse_bandwidth

ROLES = ("pd", "prefill")

REJECT_LABEL = "reject"  # label of the action that turns a request away (admission control)


@dataclass(frozen=True)
class Cluster:
    """One cluster: instances of ``gpus_per_instance`` x ``gpu`` in one datacenter.

    Attributes:
        prefix_cache_blocks: capacity of the cluster-wide prefix cache, in blocks of
            ``block_tokens`` tokens (0 disables prefix caching in this cluster).
        rdma_gbps: RDMA bandwidth per node, Gbps, used for KV moved inside the datacenter.
        max_batch: decode slots per decode instance (sequences per batch).
        memory_fraction: share of decode-instance HBM usable for weights plus KV cache.
        serving: engine backend, precision and parallelism of the instances (the
            ``serving:`` mapping; see :mod:`prfaas_env.costmodel.serving`).
    """

    name: str
    datacenter: str
    role: str
    gpu: str
    gpus_per_instance: int
    prefill_instances: int
    decode_instances: int
    rdma_gbps: float
    prefix_cache_blocks: int
    max_batch: int
    memory_fraction: float
    serving: ServingSpec = field(default_factory=ServingSpec)


@dataclass(frozen=True)
class Link:
    """A full-duplex link between two datacenters."""

    a: str
    b: str
    bandwidth_gbps: float
    rtt_ms: float
    process: BandwidthProcess


@dataclass(frozen=True)
class Route:
    """Prefill on ``prefill`` (cluster index), decode on ``decode``; KV over ``channel``
    (index of a directed channel, or -1 for RDMA inside the datacenter)."""

    prefill: int
    decode: int
    channel: int

    def label(self, topo: Topology) -> str:
        """Human-readable name, e.g. ``prfaas->pd``."""
        return f"{topo.clusters[self.prefill].name}->{topo.clusters[self.decode].name}"


@dataclass(frozen=True)
class Topology:
    """A parsed topology with its derived routes and channels."""

    model: ModelSpec
    block_tokens: int
    datacenters: tuple[str, ...]
    clusters: tuple[Cluster, ...]
    links: tuple[Link, ...]
    source: str = ""
    routes: tuple[Route, ...] = field(init=False)
    channels: tuple[tuple[int, str, str], ...] = field(init=False)  # (link, from dc, to dc)
    # the entities a router sees, as indices in topology order: clusters with a prefill
    # pool, PD clusters, and the directed channels some route uses
    prefill_index: tuple[int, ...] = field(init=False)
    decode_index: tuple[int, ...] = field(init=False)
    route_channels: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        chans: list[tuple[int, str, str]] = []
        for li, link in enumerate(self.links):
            chans += [(li, link.a, link.b), (li, link.b, link.a)]
        object.__setattr__(self, "channels", tuple(chans))
        routes = []
        for p, pc in enumerate(self.clusters):
            if pc.prefill_instances == 0:
                continue
            for d, dc in enumerate(self.clusters):
                if dc.role != "pd":
                    continue
                if pc.datacenter == dc.datacenter:
                    routes.append(Route(p, d, -1))
                    continue
                ch = self.channel_index(pc.datacenter, dc.datacenter)
                if ch >= 0:
                    routes.append(Route(p, d, ch))
        if not routes:
            raise ConfigError(f"{self.source}: topology has no route from a prefill pool to a PD")
        object.__setattr__(self, "routes", tuple(routes))
        cl = self.clusters
        object.__setattr__(
            self, "prefill_index", tuple(i for i, c in enumerate(cl) if c.prefill_instances)
        )
        object.__setattr__(
            self, "decode_index", tuple(i for i, c in enumerate(cl) if c.role == "pd")
        )
        object.__setattr__(
            self, "route_channels", tuple(sorted({r.channel for r in routes if r.channel >= 0}))
        )

    def channel_index(self, src: str, dst: str) -> int:
        """Index of the directed channel from datacenter ``src`` to ``dst``, or -1."""
        for i, (_, a, b) in enumerate(self.channels):
            if a == src and b == dst:
                return i
        return -1

    def channel_latency_s(self, channel: int) -> float:
        """One-way latency of directed channel ``channel`` (half its link's RTT), s."""
        return self.links[self.channels[channel][0]].rtt_ms / 2e3

    def route_channel_positions(self) -> list[int]:
        """Per route, the position of its channel in :attr:`route_channels` (-1: the route
        stays in one datacenter). Observations and masks list channels in that order."""
        used = list(self.route_channels)
        return [used.index(r.channel) if r.channel >= 0 else -1 for r in self.routes]

    def route_channel_gbps(self) -> list[float]:
        """Nominal bandwidth of each channel of :attr:`route_channels` (its link's), Gbps."""
        return [self.links[self.channels[c][0]].bandwidth_gbps for c in self.route_channels]

    def cluster_index(self, name: str) -> int:
        """Index of the cluster called ``name`` (UnknownNameError lists the clusters)."""
        for i, c in enumerate(self.clusters):
            if c.name == name:
                return i
        raise UnknownNameError("cluster", name, [c.name for c in self.clusters])

    def cost_models(self) -> list[CostModel]:
        """One cost model per cluster (its GPU type, instance size and serving spec)."""
        return list(self._cost_models)

    @cached_property
    def _cost_models(self) -> tuple[CostModel, ...]:
        return tuple(
            CostModel(
                self.model,
                c.gpu,
                c.gpus_per_instance,
                serving=c.serving,
                mode="disagg",
                where=f"{self.source}.clusters.{c.name}",
            )
            for c in self.clusters
        )

    def decode_kv_capacity_bytes(self) -> np.ndarray:
        """KV-cache bytes one decode instance of each cluster can hold (0 for prefill-only)."""
        out = np.zeros(len(self.clusters))
        for i, (c, cm) in enumerate(zip(self.clusters, self.cost_models(), strict=True)):
            if c.role == "pd":
                out[i] = cm.kv_capacity_bytes(c.memory_fraction)
        return out

    def route_labels(self) -> list[str]:
        """Labels of the routes, in action order."""
        return [r.label(self) for r in self.routes]

    def action_labels(self, admission_control: bool) -> list[str]:
        """Labels of the environment's actions: the routes, then :data:`REJECT_LABEL` when
        admission control adds a reject action."""
        return self.route_labels() + ([REJECT_LABEL] if admission_control else [])


_CLUSTER_KEYS = (
    "datacenter",
    "role",
    "gpu",
    "gpus_per_instance",
    "prefill_instances",
    "decode_instances",
    "rdma_gbps",
    "prefix_cache_blocks",
    "max_batch",
    "memory_fraction",
    "serving",
)


def _parse_cluster(name: str, raw: Any, where: str, dcs: tuple[str, ...]) -> Cluster:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of cluster fields")
    check_keys(raw, where, ["datacenter", "role", "gpu"], _CLUSTER_KEYS)
    role = raw["role"]
    if role not in ROLES:
        raise ConfigError(f"{where}.role: {role!r} is not allowed; allowed: {', '.join(ROLES)}")
    dc = raw["datacenter"]
    if dc not in dcs:
        raise ConfigError(f"{where}.datacenter: {dc!r} is not declared; declared: {', '.join(dcs)}")
    from prfaas_env.hardware import get_gpu

    try:
        gpu = get_gpu(str(raw["gpu"])).name
    except UnknownNameError as exc:
        raise ConfigError(f"{where}.gpu: {exc}") from exc
    prefill = number(raw, "prefill_instances", where, minimum=0, integer=True, default=0)
    decode = number(raw, "decode_instances", where, minimum=0, integer=True, default=0)
    if role == "prefill" and decode:
        raise ConfigError(f"{where}.decode_instances: a prefill-only cluster has no decode pool")
    if role == "pd" and decode < 1:
        raise ConfigError(f"{where}.decode_instances: a pd cluster needs at least 1")
    if role == "prefill" and prefill < 1:
        raise ConfigError(f"{where}.prefill_instances: a prefill cluster needs at least 1")
    return Cluster(
        name=name,
        datacenter=dc,
        role=role,
        gpu=gpu,
        gpus_per_instance=number(
            raw, "gpus_per_instance", where, minimum=1, integer=True, default=8
        ),
        prefill_instances=prefill,
        decode_instances=decode,
        rdma_gbps=number(raw, "rdma_gbps", where, minimum=0, exclusive_minimum=True, default=800.0),
        prefix_cache_blocks=number(
            raw, "prefix_cache_blocks", where, minimum=0, maximum=2**24, integer=True, default=0
        ),
        max_batch=number(
            raw, "max_batch", where, minimum=1, maximum=4096, integer=True, default=128
        ),
        memory_fraction=number(
            raw, "memory_fraction", where, minimum=0, maximum=1, exclusive_minimum=True, default=0.9
        ),
        serving=parse_serving(raw.get("serving"), f"{where}.serving"),
    )


def parse_topology(raw: Any, where: str, base_dir: Path | None = None) -> Topology:
    """Build a Topology from the ``topology:`` mapping; errors name ``where`` and the key.

    ``base_dir`` resolves relative paths (bandwidth replay CSV files).
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with model, datacenters, clusters, links")
    check_keys(raw, where, ["model", "datacenters", "clusters"], ["links", "block_tokens"])
    try:
        model = get_model(str(raw["model"]))
    except UnknownNameError as exc:
        raise ConfigError(f"{where}.model: {exc}") from exc
    dcs = raw["datacenters"]
    if not isinstance(dcs, list) or not dcs or not all(isinstance(d, str) for d in dcs):
        raise ConfigError(f"{where}.datacenters: expected a non-empty list of names")
    if len(set(dcs)) != len(dcs):
        raise ConfigError(f"{where}.datacenters: names must be unique, got {dcs}")
    dcs_t = tuple(dcs)
    clusters_raw = raw["clusters"]
    if not isinstance(clusters_raw, dict) or not clusters_raw:
        raise ConfigError(f"{where}.clusters: expected a non-empty mapping of name -> fields")
    clusters = tuple(
        _parse_cluster(str(n), c, f"{where}.clusters.{n}", dcs_t) for n, c in clusters_raw.items()
    )
    block_tokens = number(raw, "block_tokens", where, minimum=1, integer=True, default=512)
    links_raw = raw.get("links") or []
    if not isinstance(links_raw, list):
        raise ConfigError(f"{where}.links: expected a list of links")
    links = []
    seen: set[frozenset[str]] = set()
    for i, lr in enumerate(links_raw):
        lw = f"{where}.links[{i}]"
        if not isinstance(lr, dict):
            raise ConfigError(f"{lw}: expected a mapping")
        check_keys(lr, lw, ["between", "bandwidth_gbps"], ["rtt_ms", "bandwidth", "outages"])
        pair = lr["between"]
        if not (isinstance(pair, list) and len(pair) == 2 and all(p in dcs_t for p in pair)):
            raise ConfigError(
                f"{lw}.between: expected two declared datacenters out of {', '.join(dcs_t)}, "
                f"got {pair!r}"
            )
        if pair[0] == pair[1] or frozenset(pair) in seen:
            raise ConfigError(f"{lw}.between: {pair} repeats a datacenter or an earlier link")
        seen.add(frozenset(pair))
        links.append(
            Link(
                a=pair[0],
                b=pair[1],
                bandwidth_gbps=number(lr, "bandwidth_gbps", lw, minimum=0, exclusive_minimum=True),
                rtt_ms=number(lr, "rtt_ms", lw, minimum=0, default=0.0),
                process=parse_bandwidth(lr.get("bandwidth"), lr.get("outages"), lw, base_dir),
            )
        )
    names = [c.name for c in clusters]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}.clusters: names must be unique")
    for c in clusters:
        _check_weights_fit(model, c, f"{where}.clusters.{c.name}")
    model = _common_kv_precision(model, clusters, where)
    return Topology(
        model=model,
        block_tokens=block_tokens,
        datacenters=dcs_t,
        clusters=clusters,
        links=tuple(links),
        source=where,
    )


def _common_kv_precision(model: ModelSpec, clusters: tuple[Cluster, ...], where: str) -> ModelSpec:
    """The model at the KV-cache precision every cluster serves it at (KV caches move between
    clusters, so they must agree); ConfigError names the first cluster that differs."""
    first = clusters[0].serving.apply_precision(model).kv_bytes
    for c in clusters[1:]:
        kv = c.serving.apply_precision(model).kv_bytes
        if kv != first:
            raise ConfigError(
                f"{where}.clusters.{c.name}.serving.kv_cache: {kv:g} bytes per element, but "
                f"cluster {clusters[0].name} uses {first:g}; KV caches move between clusters, "
                "so every cluster must use the same KV-cache precision"
            )
    if first == model.kv_bytes:
        return model
    from dataclasses import replace

    return replace(model, kv_bytes=first)


def _check_weights_fit(model: ModelSpec, c: Cluster, where: str) -> None:
    """A cluster with a serving spec must hold the model's weights on each GPU (ConfigError
    naming the cluster and what to change otherwise). Clusters without one are checked,
    as before, by the scenario's capacity check."""
    if c.serving == ServingSpec():
        return
    from dataclasses import replace

    spec = replace(c.serving, backend=None, version=None)
    cm = CostModel(model, c.gpu, c.gpus_per_instance, serving=spec, where=where)
    per_gpu = cm.weight_bytes_per_gpu()
    cap = cm.gpu.hbm_bytes * c.memory_fraction
    if per_gpu > cap:
        raise ConfigError(
            f"{where}.serving: the weights of {model.name} ({cm.describe()['precision']}) "
            f"need {per_gpu / 1e9:.1f} GB on each GPU as {cm.serving.label()}, more than "
            f"{cap / 1e9:.1f} GB of {c.gpu} at memory_fraction {c.memory_fraction}; use more "
            "GPUs per instance (gpus_per_instance) or lower-precision weights "
            "(serving.weights: fp8, nvfp4, int4_wo)"
        )
