"""Topology: datacenters, prefill-only and PD clusters, and the links between datacenters.

A topology is read from the ``topology:`` section of a scenario YAML file (see
``configs/*.yaml`` and docs/simulator.md). Clusters are ``prefill`` (prefill-only, the
PrfaaS role), ``pd`` (a prefill pool and a decode pool joined by RDMA) or ``colocated``
(engines that prefill and decode on the same GPUs with continuous batching and chunked
prefill, as vLLM, SGLang and TensorRT-LLM run by default). Every configured
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

ROLES = ("pd", "prefill", "colocated")
KV_BLOCK_TOKENS = 16  # default KV-cache block of a co-located engine (vLLM's block_size)

MAX_STEP_TOKENS = 1 << 20  # most tokens a co-located engine step may compute
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
        prefill_pool, decode_pool: a PD cluster's pools when they differ from the cluster
            (:class:`Pool`: GPUs per instance and serving spec); None: as the cluster.
        instances: engines of a co-located cluster (0 for the other roles).
        max_num_seqs: running requests per engine of a co-located cluster (per attention
            data-parallel rank).
        max_num_batched_tokens: tokens one engine step computes at most (prefill chunks
            and decode tokens together), per rank.
        kv_block_tokens: tokens per KV-cache block of a co-located engine.
        kv_blocks: KV-cache blocks per rank of a co-located engine (0: from memory, the
            HBM share ``memory_fraction`` less the weights).
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
    prefill_pool: Pool | None = None
    decode_pool: Pool | None = None
    instances: int = 0
    max_num_seqs: int = 0
    max_num_batched_tokens: int = 0
    kv_block_tokens: int = KV_BLOCK_TOKENS
    kv_blocks: int = 0

    @property
    def colocated(self) -> bool:
        """Whether the cluster's engines prefill and decode on the same GPUs."""
        return self.role == "colocated"

    @property
    def prefills(self) -> bool:
        """Whether the cluster prefills (a prefill pool, or co-located engines)."""
        return self.prefill_instances > 0 or self.colocated

    @property
    def decodes(self) -> bool:
        """Whether the cluster decodes (a decode pool, or co-located engines)."""
        return self.role == "pd" or self.colocated


@dataclass(frozen=True)
class Pool:
    """One pool of a PD cluster whose instances differ from the cluster's defaults."""

    gpus_per_instance: int
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
            if not pc.prefills:
                continue
            for d, dc in enumerate(self.clusters):
                if not dc.decodes or (pc.colocated and d != p):
                    continue
                if pc.datacenter == dc.datacenter:
                    routes.append(Route(p, d, -1))
                    continue
                ch = self.channel_index(pc.datacenter, dc.datacenter)
                if ch >= 0:
                    routes.append(Route(p, d, ch))
        if not routes:
            raise ConfigError(
                f"{self.source}: topology has no route from a prefill pool to a PD or "
                "co-located cluster"
            )
        object.__setattr__(self, "routes", tuple(routes))
        cl = self.clusters
        object.__setattr__(self, "prefill_index", tuple(i for i, c in enumerate(cl) if c.prefills))
        object.__setattr__(self, "decode_index", tuple(i for i, c in enumerate(cl) if c.decodes))
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
        """One cost model per cluster (its GPU type, instance size and serving spec): the
        prefill pool's for a PD cluster whose pools differ (see :meth:`decode_cost_models`),
        the engines' for a co-located cluster."""
        return list(self._cost_models)

    def decode_cost_models(self) -> list[CostModel]:
        """Per cluster, the cost model of the instances that decode: a PD cluster's decode
        pool, a co-located cluster's engines (as :meth:`cost_models` for the others)."""
        return list(self._decode_cost_models)

    def _model_of(self, c: Cluster, pool: Pool | None, label: str) -> CostModel:
        gpus = pool.gpus_per_instance if pool is not None else c.gpus_per_instance
        serving = pool.serving if pool is not None else c.serving
        where = f"{self.source}.clusters.{c.name}" + (f".{label}" if pool is not None else "")
        return CostModel(
            self.model,
            c.gpu,
            gpus,
            serving=serving,
            mode="agg" if c.colocated else "disagg",
            where=where,
        )

    @cached_property
    def _cost_models(self) -> tuple[CostModel, ...]:
        return tuple(self._model_of(c, c.prefill_pool, "prefill_pool") for c in self.clusters)

    @cached_property
    def _decode_cost_models(self) -> tuple[CostModel, ...]:
        return tuple(
            self._cost_models[i]
            if c.decode_pool is None
            else self._model_of(c, c.decode_pool, "decode_pool")
            for i, c in enumerate(self.clusters)
        )

    def decode_kv_capacity_bytes(self) -> np.ndarray:
        """KV-cache bytes one decode instance (a co-located engine) of each cluster can hold
        (0 for prefill-only)."""
        out = np.zeros(len(self.clusters))
        for i, (c, cm) in enumerate(zip(self.clusters, self.decode_cost_models(), strict=True)):
            if c.decodes:
                out[i] = cm.kv_capacity_bytes(c.memory_fraction)
        return out

    def colocated_kv_blocks(self) -> list[int]:
        """KV-cache blocks per rank of each co-located cluster's engines (0 for the other
        clusters): ``kv_blocks`` when set, else the engine's KV capacity shared by its
        attention data-parallel ranks, in blocks of ``kv_block_tokens`` tokens (the bytes
        of a block: :meth:`kv_block_bytes`)."""
        out = []
        for c, cm in zip(self.clusters, self.decode_cost_models(), strict=True):
            if not c.colocated:
                out.append(0)
            elif c.kv_blocks:
                out.append(c.kv_blocks)
            else:
                per_rank = cm.kv_capacity_bytes(c.memory_fraction) / cm.prefill_parallelism
                out.append(max(int(per_rank // self.kv_block_bytes(c)), 0))
        return out

    def kv_block_bytes(self, c: Cluster) -> float:
        """Bytes of one KV-cache block of co-located cluster ``c``: ``kv_block_tokens``
        tokens of every attention layer's KV (sliding-window layers count every token)."""
        m = self.model
        swa = sum(
            g.count * g.attention.kv_bytes_per_token(m.kv_bytes)
            for g in m.groups
            if g.attention.type == "swa"
        )
        return float((m.kv_bytes_per_token + swa) * c.kv_block_tokens)

    def kv_fixed_blocks(self, c: Cluster) -> int:
        """Blocks every sequence of co-located cluster ``c`` holds besides its tokens' (the
        fixed per-request state of linear-attention layers, rounded up to blocks)."""
        block = self.kv_block_bytes(c)
        fixed = float(self.model.state_bytes_per_request)
        return int(np.ceil(fixed / block)) if fixed > 0 and block > 0 else 0

    def route_labels(self) -> list[str]:
        """Labels of the routes, in action order."""
        return [r.label(self) for r in self.routes]

    def action_labels(self, admission_control: bool) -> list[str]:
        """Labels of the environment's actions: the routes, then :data:`REJECT_LABEL` when
        admission control adds a reject action."""
        return self.route_labels() + ([REJECT_LABEL] if admission_control else [])


_COMMON_KEYS = (
    "datacenter",
    "role",
    "gpu",
    "gpus_per_instance",
    "rdma_gbps",
    "prefix_cache_blocks",
    "memory_fraction",
    "serving",
)
MAX_INSTANCES = 4096  # the most engines a co-located cluster may have
# keys allowed per role (beside the common ones)
_ROLE_KEYS = {
    "prefill": ("prefill_instances",),
    "pd": ("prefill_instances", "decode_instances", "max_batch", "prefill_pool", "decode_pool"),
    "colocated": (
        "instances",
        "max_num_seqs",
        "max_num_batched_tokens",
        "kv_block_tokens",
        "kv_blocks",
    ),
}
_CLUSTER_KEYS = tuple(dict.fromkeys(_COMMON_KEYS + sum(_ROLE_KEYS.values(), ())))


def _parse_pool(raw: Any, where: str, gpus_default: int) -> Pool | None:
    """A PD cluster's ``prefill_pool`` / ``decode_pool`` mapping (``gpus_per_instance``,
    ``serving``), or None when absent."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with gpus_per_instance and/or serving")
    check_keys(raw, where, [], ["gpus_per_instance", "serving"])
    return Pool(
        gpus_per_instance=number(
            raw, "gpus_per_instance", where, minimum=1, integer=True, default=gpus_default
        ),
        serving=parse_serving(raw.get("serving"), f"{where}.serving"),
    )


def _parse_cluster(name: str, raw: Any, where: str, dcs: tuple[str, ...]) -> Cluster:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of cluster fields")
    check_keys(raw, where, ["datacenter", "role", "gpu"], _CLUSTER_KEYS)
    role = raw["role"]
    if role not in ROLES:
        raise ConfigError(f"{where}.role: {role!r} is not allowed; allowed: {', '.join(ROLES)}")
    for key in raw:
        if key not in _COMMON_KEYS and key not in _ROLE_KEYS[role]:
            owners = [r for r, keys in _ROLE_KEYS.items() if key in keys]
            raise ConfigError(
                f"{where}.{key}: not a key of a {role} cluster (it belongs to "
                f"{' and '.join(owners)} clusters); allowed for {role}: "
                f"{', '.join(_COMMON_KEYS + _ROLE_KEYS[role])}"
            )
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
    if role == "pd" and decode < 1:
        raise ConfigError(f"{where}.decode_instances: a pd cluster needs at least 1")
    if role == "prefill" and prefill < 1:
        raise ConfigError(f"{where}.prefill_instances: a prefill cluster needs at least 1")
    gpus = number(raw, "gpus_per_instance", where, minimum=1, integer=True, default=8)
    co: dict[str, Any] = {}
    if role == "colocated":
        co = {
            "instances": number(
                raw, "instances", where, minimum=1, maximum=MAX_INSTANCES, integer=True
            ),
            "max_num_seqs": number(
                raw, "max_num_seqs", where, minimum=1, maximum=4096, integer=True, default=256
            ),
            "max_num_batched_tokens": number(
                raw,
                "max_num_batched_tokens",
                where,
                minimum=1,
                maximum=MAX_STEP_TOKENS,
                integer=True,
                default=8192,
            ),
            "kv_block_tokens": number(
                raw,
                "kv_block_tokens",
                where,
                minimum=1,
                maximum=4096,
                integer=True,
                default=KV_BLOCK_TOKENS,
            ),
            "kv_blocks": number(
                raw, "kv_blocks", where, minimum=1, maximum=2**30, integer=True, default=0
            ),
        }
    return Cluster(
        name=name,
        datacenter=dc,
        role=role,
        gpu=gpu,
        gpus_per_instance=gpus,
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
        prefill_pool=_parse_pool(raw.get("prefill_pool"), f"{where}.prefill_pool", gpus),
        decode_pool=_parse_pool(raw.get("decode_pool"), f"{where}.decode_pool", gpus),
        **co,
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
    for c, key, spec in _serving_specs(clusters):
        kv = spec.apply_precision(model).kv_bytes
        if kv != first:
            raise ConfigError(
                f"{where}.clusters.{c.name}.{key}.kv_cache: {kv:g} bytes per element, but "
                f"cluster {clusters[0].name} uses {first:g}; KV caches move between clusters, "
                "so every cluster must use the same KV-cache precision"
            )
    if first == model.kv_bytes:
        return model
    from dataclasses import replace

    return replace(model, kv_bytes=first)


def _serving_specs(clusters: tuple[Cluster, ...]) -> list[tuple[Cluster, str, ServingSpec]]:
    """Every serving spec of the clusters: (cluster, key path, spec), pools included."""
    out = []
    for c in clusters:
        out.append((c, "serving", c.serving))
        for key, pool in (("prefill_pool", c.prefill_pool), ("decode_pool", c.decode_pool)):
            if pool is not None:
                out.append((c, f"{key}.serving", pool.serving))
    return out


def _check_weights_fit(model: ModelSpec, c: Cluster, where: str) -> None:
    """A cluster with a serving spec must hold the model's weights on each GPU (ConfigError
    naming the cluster and what to change otherwise). Clusters without one are checked,
    as before, by the scenario's capacity check. A PD cluster's pools are checked alike."""
    _check_spec_fits(model, c, c.serving, c.gpus_per_instance, where)
    for key, pool in (("prefill_pool", c.prefill_pool), ("decode_pool", c.decode_pool)):
        if pool is not None:
            _check_spec_fits(model, c, pool.serving, pool.gpus_per_instance, f"{where}.{key}")


def _check_spec_fits(
    model: ModelSpec, c: Cluster, serving: ServingSpec, gpus: int, where: str
) -> None:
    if serving == ServingSpec():
        return
    from dataclasses import replace

    spec = replace(serving, backend=None, version=None)
    cm = CostModel(model, c.gpu, gpus, serving=spec, where=where)
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
