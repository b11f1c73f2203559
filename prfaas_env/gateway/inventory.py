"""The picker's inventory: which model servers exist, in which cluster and role, and where
their metrics are.

An inventory is a YAML file::

    topology:                 # the same mapping as a scenario's topology (docs/simulator.md);
      model: prfaas-1t-hybrid # optional with --bundle (the bundle's topology is used)
      datacenters: [local, remote]
      clusters:
        prfaas: {datacenter: remote, role: prefill, gpu: h200}   # instance counts may be left
        pd:     {datacenter: local,  role: pd,      gpu: h20}    # out: taken from endpoints
      links:
        - {between: [remote, local], bandwidth_gbps: 100, rtt_ms: 10}
    endpoints:                # every model server, by cluster and role, as ip:port
      prfaas:
        prefill: [10.0.0.11:8000, 10.0.0.12:8000]
      pd:
        prefill: [10.0.1.11:8000]
        decode:  [10.0.1.21:8000, {address: 10.0.1.22:8000, metrics: http://10.0.1.22:9000/metrics}]
    models: [kimi-linear]     # optional: model names served; others get 404
    engine: vllm              # optional: vllm (default) | sglang -- which metric names to read
    channels:                 # optional: where each link direction's state is measured
      remote->local:
        url: http://10.0.2.1:9400/metrics
        bandwidth_gbps: 'link_bandwidth_gbps{from="remote",to="local"}'
        bytes_in_flight: 'kv_bytes_in_flight{from="remote",to="local"}'
        flows: 'kv_flows{from="remote",to="local"}'
        scale: 1.0            # multiply bandwidth_gbps's value by this to get Gbps
    picker:                   # optional settings (PickerSettings; docs/gateway.md lists them)
      scrape_interval_s: 0.1
    time_scale: 1             # deployment seconds per wall-clock second: 1 for real servers;
                              # an emulated deployment may run faster (docs/gateway.md)

Endpoints are IP literals with a port (``10.0.0.1:8000``, ``[fd00::1]:8000``): Envoy's
ORIGINAL_DST cluster connects to the address as given, without name resolution. An address
may be listed under both ``prefill`` and ``decode`` of one PD cluster (a co-located instance
that prefills for itself); it may not appear in two clusters. When the topology gives
``prefill_instances`` or ``decode_instances``, they must equal the number of endpoints
listed; when it leaves them out they are taken from the endpoints.

Every mistake is refused at start by :func:`load_inventory` with a :class:`ConfigError` that
names the file, the key and what is allowed.
"""

from __future__ import annotations

import copy
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prfaas_env.errors import ConfigError, check_keys, load_yaml_mapping, number
from prfaas_env.sim.topology import Topology, parse_topology

__all__ = [
    "ENGINES",
    "ChannelSource",
    "Endpoint",
    "Inventory",
    "PickerSettings",
    "load_inventory",
    "parse_endpoint_address",
    "parse_inventory",
]

# metric names each engine exports, by what the picker reads from them
ENGINES: dict[str, dict[str, str]] = {
    "vllm": {
        "waiting": "vllm:num_requests_waiting",
        "running": "vllm:num_requests_running",
        "kv_usage": "vllm:kv_cache_usage_perc",
        "ttft_sum": "vllm:time_to_first_token_seconds_sum",
        "ttft_count": "vllm:time_to_first_token_seconds_count",
    },
    "sglang": {
        "waiting": "sglang:num_queue_reqs",
        "running": "sglang:num_running_reqs",
        "kv_usage": "sglang:token_usage",
        "ttft_sum": "sglang:time_to_first_token_seconds_sum",
        "ttft_count": "sglang:time_to_first_token_seconds_count",
    },
}
# vLLM before 0.10 named the KV usage gauge differently; read it when the new name is absent
LEGACY_NAMES = {"vllm:kv_cache_usage_perc": "vllm:gpu_cache_usage_perc"}
ROLES = ("prefill", "decode")
_TOP_KEYS = ("topology", "endpoints", "models", "engine", "channels", "picker", "time_scale")


@dataclass(frozen=True)
class PickerSettings:
    """Tunable settings of the picker (the inventory's ``picker:`` section).

    Attributes:
        scrape_interval_s: seconds between two scrapes of one server's metrics.
        scrape_timeout_s: a scrape that takes longer fails.
        stale_after_s: metrics older than this are reported missing to the router (which
            then falls back), and the server is not picked while they are.
        chars_per_token: bytes of prompt text per estimated token.
        max_prefix_blocks: prefix blocks hashed per request (longer prompts match on their
            first blocks only).
        fallbacks: decode endpoints offered after the chosen one.
        max_body_bytes: larger request bodies get 413.
        expected_output_tokens: default output length a policy assumes, tokens.
        ttft_slo_s: the deployment's TTFT objective, s (a per-route bundle scales its
            features' times by it).
        fallback_format: ``key`` puts fallback endpoints under their own metadata key
            ``x-gateway-destination-endpoint-fallback`` (for ORIGINAL_DST, which reads one
            address); ``list`` appends them to the destination value itself, comma-separated,
            in both header and metadata (protocol v0.4+, for proxies that try the list in
            order, e.g. Envoy's override-host load balancing).
    """

    scrape_interval_s: float = 0.1
    scrape_timeout_s: float = 0.5
    stale_after_s: float = 2.0
    chars_per_token: int = 4
    max_prefix_blocks: int = 512
    fallbacks: int = 2
    max_body_bytes: int = 32 << 20
    expected_output_tokens: float = 1024.0
    ttft_slo_s: float = 10.0
    fallback_format: str = "key"


@dataclass(frozen=True)
class Endpoint:
    """One model server: its address (``ip:port``), cluster, role and metrics URL."""

    address: str
    cluster: str
    role: str
    metrics_url: str
    index: int = 0  # position among its cluster's endpoints of this role


@dataclass(frozen=True)
class ChannelSource:
    """Where one link direction's state is scraped: a URL and, per live-state key, a metric
    selector (``name`` or ``name{label="value",...}``); None keys are estimated."""

    url: str
    bandwidth_gbps: str | None = None
    bytes_in_flight: str | None = None
    flows: str | None = None
    scale: float = 1.0


@dataclass(frozen=True)
class Inventory:
    """A parsed inventory (see the module docstring)."""

    topology: Topology
    endpoints: tuple[Endpoint, ...]
    models: tuple[str, ...] | None = None
    engine: str = "vllm"
    channels: dict[str, ChannelSource] = field(default_factory=dict)
    picker: PickerSettings = field(default_factory=PickerSettings)
    time_scale: float = 1.0
    source: str = ""

    def pool(self, cluster: str, role: str) -> list[Endpoint]:
        """Endpoints of ``cluster`` in ``role``, in file order."""
        return [e for e in self.endpoints if e.cluster == cluster and e.role == role]

    def metric_names(self) -> dict[str, str]:
        """What the picker reads -> this engine's metric name."""
        return ENGINES[self.engine]


def parse_endpoint_address(value: Any, where: str) -> str:
    """``ip:port`` normalised (IPv6 in brackets); ConfigError naming ``where`` otherwise."""
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected an address 'ip:port', got {value!r}")
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: {value!r} is not 'ip:port' with a port in 1-65535")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        ip = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise ConfigError(
            f"{where}: {value!r}: the host must be an IP literal (Envoy's ORIGINAL_DST "
            f"cluster connects to it without name resolution), e.g. 10.0.0.1:8000 or "
            f"[fd00::1]:8000"
        ) from None
    if ip.version == 6:
        if not bracketed:
            raise ConfigError(f"{where}: {value!r}: write an IPv6 address in brackets, [ip]:port")
        return f"[{ip.compressed}]:{int(port)}"
    return f"{ip.compressed}:{int(port)}"


def _selector(raw: dict[str, Any], key: str, where: str) -> str | None:
    v = raw.get(key)
    if v is None:
        return None
    if not isinstance(v, str) or not v.strip():
        raise ConfigError(f'{where}.{key}: expected a metric name, e.g. name{{label="value"}}')
    from prfaas_env.gateway.scrape import parse_selector

    try:
        parse_selector(v)
    except ValueError as exc:
        raise ConfigError(f"{where}.{key}: {exc}") from None
    return v


def _url(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: expected an http:// or https:// URL, got {value!r}")
    return value


def _picker(raw: Any, where: str) -> PickerSettings:
    if raw is None:
        return PickerSettings()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of settings")
    d = PickerSettings()
    check_keys(raw, where, [], list(PickerSettings.__dataclass_fields__))
    fmt = raw.get("fallback_format", d.fallback_format)
    if fmt not in ("key", "list"):
        raise ConfigError(f"{where}.fallback_format: {fmt!r} is not allowed; allowed: key, list")
    return PickerSettings(
        scrape_interval_s=number(
            raw, "scrape_interval_s", where, minimum=0.005, maximum=60, default=d.scrape_interval_s
        ),
        scrape_timeout_s=number(
            raw, "scrape_timeout_s", where, minimum=0.01, maximum=60, default=d.scrape_timeout_s
        ),
        stale_after_s=number(
            raw, "stale_after_s", where, minimum=0.01, maximum=3600, default=d.stale_after_s
        ),
        chars_per_token=number(
            raw,
            "chars_per_token",
            where,
            minimum=1,
            maximum=64,
            integer=True,
            default=d.chars_per_token,
        ),
        max_prefix_blocks=number(
            raw,
            "max_prefix_blocks",
            where,
            minimum=0,
            maximum=1 << 16,
            integer=True,
            default=d.max_prefix_blocks,
        ),
        fallbacks=number(
            raw, "fallbacks", where, minimum=0, maximum=64, integer=True, default=d.fallbacks
        ),
        max_body_bytes=number(
            raw,
            "max_body_bytes",
            where,
            minimum=1024,
            maximum=1 << 30,
            integer=True,
            default=d.max_body_bytes,
        ),
        expected_output_tokens=number(
            raw, "expected_output_tokens", where, minimum=1, default=d.expected_output_tokens
        ),
        ttft_slo_s=number(
            raw, "ttft_slo_s", where, minimum=0, exclusive_minimum=True, default=d.ttft_slo_s
        ),
        fallback_format=fmt,
    )


def parse_inventory(
    data: dict[str, Any], where: str, topology: Topology | None = None, base_dir: Path | None = None
) -> Inventory:
    """Build an Inventory from a mapping; every error names ``where`` and the key.

    ``topology``: the policy's topology (a bundle's); the file's ``topology:`` may then be
    left out, and when given it must have the same clusters and routes."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: top level must be a mapping")
    check_keys(data, where, ["endpoints"], _TOP_KEYS)
    eps_raw = data["endpoints"]
    if not isinstance(eps_raw, dict) or not eps_raw:
        raise ConfigError(
            f"{where}: endpoints: expected a mapping of cluster -> "
            "{prefill: [...], decode: [...]}"
        )
    listed: dict[str, dict[str, list[tuple[str, str]]]] = {}
    seen: dict[str, str] = {}
    for cname, roles in eps_raw.items():
        cw = f"{where}: endpoints.{cname}"
        if not isinstance(roles, dict) or not roles:
            raise ConfigError(f"{cw}: expected a mapping with prefill and/or decode lists")
        check_keys(roles, cw, [], ROLES)
        listed[str(cname)] = {}
        for role in ROLES:
            items = roles.get(role)
            if items is None:
                continue
            rw = f"{cw}.{role}"
            if not isinstance(items, list) or not items:
                raise ConfigError(f"{rw}: expected a non-empty list of 'ip:port' addresses")
            out: list[tuple[str, str]] = []
            for i, item in enumerate(items):
                iw = f"{rw}[{i}]"
                if isinstance(item, dict):
                    check_keys(item, iw, ["address"], ["metrics"])
                    addr = parse_endpoint_address(item["address"], f"{iw}.address")
                    murl = _url(item["metrics"], f"{iw}.metrics") if "metrics" in item else None
                else:
                    addr, murl = parse_endpoint_address(item, iw), None
                if any(a == addr for a, _ in out):
                    raise ConfigError(f"{iw}: {addr} is listed twice")
                other = seen.get(addr)
                if other is not None and other != cname:
                    raise ConfigError(f"{iw}: {addr} is already an endpoint of cluster {other}")
                seen[addr] = str(cname)
                out.append((addr, murl or f"http://{addr}/metrics"))
            listed[str(cname)][role] = out
    if "topology" in data:
        raw_topo = copy.deepcopy(data["topology"])
        if isinstance(raw_topo, dict) and isinstance(raw_topo.get("clusters"), dict):
            _fill_counts(raw_topo, listed, where)
        topo = parse_topology(raw_topo, f"{where}: topology", base_dir)
        if topology is not None and topo.action_labels(False) != topology.action_labels(False):
            raise ConfigError(
                f"{where}: topology: routes {topo.action_labels(False)} differ from the "
                f"policy's {topology.action_labels(False)}"
            )
    elif topology is not None:
        topo = topology
    else:
        raise ConfigError(f"{where}: missing key topology (required unless a bundle is given)")
    endpoints = _check_endpoints(topo, listed, where)
    models = data.get("models")
    if models is not None:
        if (
            not isinstance(models, list)
            or not models
            or not all(isinstance(m, str) and m for m in models)
        ):
            raise ConfigError(f"{where}: models: expected a non-empty list of model names")
        models = tuple(models)
    engine = data.get("engine", "vllm")
    if engine not in ENGINES:
        raise ConfigError(
            f"{where}: engine: {engine!r} is not allowed; allowed: {', '.join(ENGINES)}"
        )
    channels = _channels(data.get("channels"), topo, f"{where}: channels")
    return Inventory(
        topology=topo,
        endpoints=endpoints,
        models=models,
        engine=engine,
        channels=channels,
        picker=_picker(data.get("picker"), f"{where}: picker"),
        time_scale=number(
            data,
            "time_scale",
            where,
            minimum=0,
            exclusive_minimum=True,
            maximum=1e4,
            default=1.0,
        ),
        source=where,
    )


def _fill_counts(raw: dict[str, Any], listed: dict[str, dict[str, list]], where: str) -> None:
    """Set each cluster's instance counts from its endpoints where the file leaves them out;
    refuse counts that differ from the endpoints listed."""
    for cname, c in raw["clusters"].items():
        if not isinstance(c, dict):
            continue  # parse_topology says what is wrong
        for role, key in (("prefill", "prefill_instances"), ("decode", "decode_instances")):
            n = len(listed.get(str(cname), {}).get(role, []))
            if role == "decode" and n and c.get("role") == "prefill":
                raise ConfigError(
                    f"{where}: endpoints.{cname}.decode: {cname} is a prefill-only cluster; "
                    "it takes no decode endpoints"
                )
            if key not in c:
                if n or c.get("role") == "pd" or role == "prefill":
                    c[key] = n
            elif c[key] != n and not isinstance(c[key], bool):
                raise ConfigError(
                    f"{where}: topology.clusters.{cname}.{key} is {c[key]!r} but "
                    f"endpoints.{cname}.{role} lists {n}; they must agree (or leave "
                    f"{key} out to take it from the endpoints)"
                )


def _check_endpoints(
    topo: Topology, listed: dict[str, dict[str, list[tuple[str, str]]]], where: str
) -> tuple[Endpoint, ...]:
    names = [c.name for c in topo.clusters]
    for cname in listed:
        if cname not in names:
            raise ConfigError(
                f"{where}: endpoints.{cname}: not a cluster of the topology; clusters: "
                f"{', '.join(names)}"
            )
    out: list[Endpoint] = []
    for c in topo.clusters:
        got = listed.get(c.name, {})
        want = {"prefill": c.prefill_instances, "decode": c.decode_instances}
        for role in ROLES:
            items = got.get(role, [])
            if len(items) != want[role]:
                allowed = (
                    "no decode endpoints (a prefill-only cluster)"
                    if (role == "decode" and c.role == "prefill")
                    else f"{want[role]} (the topology's {role}_instances)"
                )
                raise ConfigError(
                    f"{where}: endpoints.{c.name}.{role}: {len(items)} listed; allowed: {allowed}"
                )
            out += [Endpoint(a, c.name, role, m, i) for i, (a, m) in enumerate(items)]
    return tuple(out)


def _channels(raw: Any, topo: Topology, where: str) -> dict[str, ChannelSource]:
    if raw is None:
        return {}
    used = {f"{topo.channels[c][1]}->{topo.channels[c][2]}": c for c in topo.route_channels}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of 'from->to' -> metric sources")
    out = {}
    for name, src in raw.items():
        cw = f"{where}.{name}"
        if name not in used:
            raise ConfigError(
                f"{cw}: not a link direction any route uses; allowed: {', '.join(used) or 'none'}"
            )
        if not isinstance(src, dict):
            raise ConfigError(f"{cw}: expected a mapping with url and metric names")
        check_keys(src, cw, ["url"], ["bandwidth_gbps", "bytes_in_flight", "flows", "scale"])
        out[name] = ChannelSource(
            url=_url(src["url"], f"{cw}.url"),
            bandwidth_gbps=_selector(src, "bandwidth_gbps", cw),
            bytes_in_flight=_selector(src, "bytes_in_flight", cw),
            flows=_selector(src, "flows", cw),
            scale=number(src, "scale", cw, minimum=0, exclusive_minimum=True, default=1.0),
        )
    return out


def load_inventory(path: str | Path, topology: Topology | None = None) -> Inventory:
    """Read and check an inventory file (ConfigError naming the file and key)."""
    p = Path(path)
    return parse_inventory(load_yaml_mapping(p), str(p), topology, p.parent)
