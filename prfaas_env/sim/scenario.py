"""Scenario files: a topology, a workload and the latency objectives, in one YAML file.

Top-level keys: ``topology`` (see :mod:`prfaas_env.sim.topology`), ``workload`` (see
:mod:`prfaas_env.sim.workload`), ``slo`` (``ttft_s``, ``tpot_s``) and ``simulator``
(``bandwidth_horizon_s``: period of the drawn bandwidth series). Relative paths inside the
file (traces, bandwidth CSVs) are resolved against the file's folder.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prfaas_env.errors import ConfigError, check_keys, load_yaml_mapping, number
from prfaas_env.sim.costs import MAX_PROMPT_TOKENS
from prfaas_env.sim.topology import MAX_INSTANCES, Topology, parse_topology
from prfaas_env.sim.workload import Workload, parse_workload

TOP_KEYS = ("topology", "workload", "slo", "simulator")
RESERVED_KEYS = ("env", "policies", "description", "held_out")  # read by other layers
INSTANCE_KEYS = ("prefill_instances", "decode_instances", "instances")  # a cluster's pool sizes


@dataclass(frozen=True)
class Scenario:
    """A parsed scenario (see the module docstring)."""

    topology: Topology
    workload: Workload
    ttft_slo_s: float = 10.0
    tpot_slo_s: float = 0.025
    bandwidth_horizon_s: float = 3600.0
    source: str = ""
    raw: dict[str, Any] | None = None
    base_dir: Path | None = None

    def with_rate(self, multiplier: float) -> Scenario:
        """This scenario with its arrival rate scaled by ``multiplier`` (on top of its own
        ``workload.rate_multiplier``)."""
        return self._scaled("rate_multiplier", multiplier, "rate")

    def with_output(self, multiplier: float) -> Scenario:
        """This scenario with every request's output length scaled by ``multiplier`` (on top
        of its own ``workload.output_multiplier``)."""
        return self._scaled("output_multiplier", multiplier, "output")

    def with_links(
        self, multiplier: float = 1.0, fluctuation: dict[str, float] | None = None
    ) -> Scenario:
        """This scenario with every link's nominal bandwidth scaled by ``multiplier`` and,
        with ``fluctuation`` (keys of a ``fluctuating`` bandwidth process: ``mean_fraction``,
        ``volatility``, ``correlation_s``, ...), every steady link made fluctuating with it.
        Links that already fluctuate or replay a series keep their process (a replayed
        series is absolute: the multiplier does not scale it); outages are kept."""
        _check_multiplier(multiplier, "link")
        raw = copy.deepcopy(self.raw or {})
        for link in raw["topology"].get("links") or []:
            link["bandwidth_gbps"] = float(link["bandwidth_gbps"]) * multiplier
            process = link.get("bandwidth") or {"kind": "constant"}
            if fluctuation is not None and process.get("kind") == "constant":
                link["bandwidth"] = {"kind": "fluctuating", **fluctuation}
        what = f"links x{multiplier:.4g}" + (", fluctuating" if fluctuation else "")
        return parse_scenario(raw, f"{self.source} ({what})", self.base_dir)

    def with_instances(self, multipliers: Mapping[str, Mapping[str, float]]) -> Scenario:
        """This scenario with pools resized: ``multipliers[cluster][key]`` scales the cluster's
        instance count ``key`` (one of :data:`INSTANCE_KEYS`), rounded to the nearest whole
        number and at least 1; clusters and keys not named, and pools of 0 instances, keep
        theirs (a scaled count is capped at
        :data:`~prfaas_env.sim.topology.MAX_INSTANCES`). ConfigError names an unknown cluster
        or key."""
        raw = copy.deepcopy(self.raw or {})
        clusters = raw["topology"]["clusters"]
        changed = []
        for name, keys in multipliers.items():
            if name not in clusters:
                raise ConfigError(
                    f"with_instances: unknown cluster {name!r}; clusters: {', '.join(clusters)}"
                )
            for key, multiplier in keys.items():
                if key not in INSTANCE_KEYS:
                    raise ConfigError(
                        f"with_instances: {name}.{key}: not an instance count; allowed: "
                        f"{', '.join(INSTANCE_KEYS)}"
                    )
                _check_multiplier(multiplier, f"{name}.{key}")
                n = int(clusters[name].get(key) or 0)
                if n > 0:
                    clusters[name][key] = min(MAX_INSTANCES, max(1, round(n * multiplier)))
                    changed.append(f"{name}.{key}={clusters[name][key]}")
        what = "instances " + (" ".join(changed) or "unchanged")
        return parse_scenario(raw, f"{self.source} ({what})", self.base_dir)

    def _scaled(self, key: str, multiplier: float, what: str) -> Scenario:
        _check_multiplier(multiplier, what)
        raw = copy.deepcopy(self.raw or {})
        w = raw["workload"]
        w[key] = float(w.get(key, 1.0)) * multiplier
        return parse_scenario(raw, f"{self.source} ({what} x{multiplier:.4g})", self.base_dir)


def _check_multiplier(multiplier: float, what: str) -> None:
    """ConfigError naming ``what`` unless ``multiplier`` is a positive finite number."""
    if not (multiplier > 0 and math.isfinite(multiplier)):
        raise ConfigError(f"{what} multiplier: expected a positive number, got {multiplier!r}")


def parse_scenario(data: dict[str, Any], where: str, base_dir: Path | None = None) -> Scenario:
    """Build a Scenario from a mapping; every error names ``where`` and the key."""
    check_keys(data, where, ["topology", "workload"], (*TOP_KEYS, *RESERVED_KEYS))
    topo = parse_topology(data["topology"], f"{where}: topology", base_dir)
    work = parse_workload(data["workload"], f"{where}: workload", base_dir)
    slo = data.get("slo") or {}
    if not isinstance(slo, dict):
        raise ConfigError(f"{where}: slo: expected a mapping with ttft_s, tpot_s")
    check_keys(slo, f"{where}: slo", [], ["ttft_s", "tpot_s"])
    sim = data.get("simulator") or {}
    if not isinstance(sim, dict):
        raise ConfigError(f"{where}: simulator: expected a mapping")
    check_keys(sim, f"{where}: simulator", [], ["bandwidth_horizon_s"])
    tr = work.trace
    if tr is not None and tr.has_prefix_info and tr.block_tokens != topo.block_tokens:
        raise ConfigError(
            f"{where}: workload.trace has {tr.block_tokens}-token blocks but "
            f"topology.block_tokens is {topo.block_tokens}; they must agree"
        )
    _check_capacity(topo, work, where)
    return Scenario(
        topology=topo,
        workload=work,
        ttft_slo_s=number(
            slo, "ttft_s", f"{where}: slo", minimum=0, exclusive_minimum=True, default=10.0
        ),
        tpot_slo_s=number(
            slo, "tpot_s", f"{where}: slo", minimum=0, exclusive_minimum=True, default=0.025
        ),
        bandwidth_horizon_s=number(
            sim,
            "bandwidth_horizon_s",
            f"{where}: simulator",
            minimum=1,
            maximum=1e7,
            default=3600.0,
        ),
        source=where,
        raw=data,
        base_dir=base_dir,
    )


def _check_capacity(topo: Topology, work: Workload, where: str) -> None:
    """Every PD cluster must hold the weights and the longest request's KV on one instance;
    every co-located engine's rank must hold the longest request's KV blocks (else it could
    never run)."""
    if work.trace is not None:
        longest = int((work.trace.input_tokens + work.trace_output_tokens()).max())
    else:
        longest = work.input.longest() + work.longest_output_tokens()
    longest = min(longest, 2 * MAX_PROMPT_TOKENS)
    need = float(topo.model.kv_bytes_for(longest))
    caps = topo.decode_kv_capacity_bytes()
    for c, blocks in zip(topo.clusters, topo.colocated_kv_blocks(), strict=True):
        if not c.colocated:
            continue
        per_block = topo.kv_block_bytes(c)
        fixed = topo.kv_fixed_blocks(c)
        want = -(-longest // c.kv_block_tokens) + fixed if per_block > 0 else 1 + fixed
        if blocks < want:
            what = (
                f"kv_blocks is {blocks}"
                if c.kv_blocks
                else f"its KV memory holds {blocks} blocks of {c.kv_block_tokens} tokens "
                f"(memory_fraction {c.memory_fraction}, after the weights of {topo.model.name})"
            )
            raise ConfigError(
                f"{where}: topology.clusters.{c.name}: {what} per rank, fewer than the "
                f"longest request needs ({want} blocks for {longest} tokens); give more GPUs "
                "per instance, a larger memory_fraction or kv_blocks"
            )
    for c, cap in zip(topo.clusters, caps, strict=True):
        if c.role != "pd":
            continue
        if cap <= 0:
            raise ConfigError(
                f"{where}: topology.clusters.{c.name}: the weights of {topo.model.name} do not "
                f"fit in {c.gpus_per_instance} x {c.gpu} at memory_fraction {c.memory_fraction}"
            )
        if cap < need:
            raise ConfigError(
                f"{where}: topology.clusters.{c.name}: one decode instance holds "
                f"{cap / 1e9:.1f} GB of KV, less than the longest request needs "
                f"({need / 1e9:.1f} GB for {longest} tokens)"
            )


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario YAML file (errors name the file and the key)."""
    p = Path(path)
    return parse_scenario(load_yaml_mapping(p), str(p), p.resolve().parent)
