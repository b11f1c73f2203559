"""Small scenarios for the simulator tests (built from configs/paper_prfaas.yaml)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from prfaas_env.sim.scenario import Scenario, parse_scenario

ROOT = Path(__file__).resolve().parents[1]
BASE: dict[str, Any] = yaml.safe_load((ROOT / "configs" / "paper_prfaas.yaml").read_text())


def base() -> dict[str, Any]:
    """A deep copy of the paper scenario's mapping."""
    return copy.deepcopy(BASE)


def light() -> dict[str, Any]:
    """Paper topology at half a request per second: queues rarely form."""
    d = base()
    d["workload"]["arrival"]["rate_rps"] = 0.5
    return d


def saturated() -> dict[str, Any]:
    """Near saturation, with prefix reuse and small caches (evictions) and 4 decode slots per
    instance (admission waits)."""
    d = base()
    d["workload"]["arrival"]["rate_rps"] = 2.5
    cl = d["topology"]["clusters"]
    cl["pd"]["max_batch"] = 4
    cl["pd"]["prefix_cache_blocks"] = 300
    cl["prfaas"]["prefix_cache_blocks"] = 200
    d["workload"]["prefix"] = {
        "system_prompts": 4,
        "system_prompt_tokens": 4096,
        "system_prompt_share": 0.7,
        "session_reuse": 0.5,
        "sessions": 16,
    }
    return d


def starved() -> dict[str, Any]:
    """A 5 Gbps fluctuating link with a 20 s outage, under bursty (MMPP) arrivals."""
    d = base()
    link = d["topology"]["links"][0]
    link["bandwidth_gbps"] = 5
    link["bandwidth"] = {
        "kind": "fluctuating",
        "mean_fraction": 0.6,
        "volatility": 0.5,
        "correlation_s": 10,
    }
    link["outages"] = [{"start_s": 50, "duration_s": 20}]
    d["workload"]["arrival"] = {
        "process": "mmpp",
        "rate_rps": 1.5,
        "burst_factor": 5,
        "burst_fraction": 0.2,
        "burst_mean_s": 10,
    }
    return d


def mooncake() -> dict[str, Any]:
    """Mooncake conversation replay with prefix caches in both clusters."""
    d = base()
    d["workload"] = {"kind": "trace", "trace": "mooncake-conversation"}
    d["topology"]["clusters"]["pd"]["prefix_cache_blocks"] = 2000
    d["topology"]["clusters"]["prfaas"]["prefix_cache_blocks"] = 1000
    return d


def servegen_mix() -> dict[str, Any]:
    """ServeGen's reasoning client mix (each request's lengths from its client's tables), its
    rate swinging on a sinusoid, on a 20 Gbps link."""
    d = base()
    d["topology"]["links"][0]["bandwidth_gbps"] = 20
    d["workload"] = {
        "kind": "synthetic",
        "arrival": {"process": "clients", "rate_rps": 2.0, "clients": "servegen/reason"},
        "input": {"distribution": "clients"},
        "output": {"distribution": "clients"},
        "rate_shape": {"kind": "sinusoid", "amplitude": 0.6, "period_s": 60},
    }
    return d


def mixture_shaped() -> dict[str, Any]:
    """Long log-normal prompts mixed with ServeGen's short ones, MMPP arrivals ramping up."""
    d = base()
    d["workload"]["arrival"] = {
        "process": "mmpp",
        "rate_rps": 2.0,
        "burst_factor": 4,
        "burst_fraction": 0.2,
        "burst_mean_s": 5,
    }
    d["workload"]["input"] = {
        "distribution": "mixture",
        "weight": 0.4,
        "components": [
            d["workload"]["input"],
            {"distribution": "empirical", "table": "servegen/language"},
        ],
    }
    d["workload"]["rate_shape"] = {"kind": "ramp", "start": 0.3, "end": 1.5, "duration_s": 80}
    return d


def colocated() -> dict[str, Any]:
    """A co-located cluster (two engines of two attention data-parallel ranks each, small
    token budgets so prompts are chunked, few KV blocks so requests are preempted, a prefix
    cache) beside the remote prefill cluster, under MMPP bursts."""
    d = base()
    cl = d["topology"]["clusters"]
    cl["prfaas"]["prefix_cache_blocks"] = 200
    cl["pd"] = {
        "datacenter": "local",
        "role": "colocated",
        "gpu": "h20",
        "gpus_per_instance": 8,
        "instances": 2,
        "max_num_seqs": 6,
        "max_num_batched_tokens": 4096,
        "kv_block_tokens": 256,
        "kv_blocks": 400,
        "prefix_cache_blocks": 300,
        "serving": {"attention_dp": 2},
    }
    w = d["workload"]
    w["arrival"] = {
        "process": "mmpp",
        "rate_rps": 0.4,
        "burst_factor": 4,
        "burst_fraction": 0.2,
        "burst_mean_s": 10,
    }
    w["input"] = {"distribution": "lognormal", "mu": 9.0, "sigma": 1.0, "min": 128, "max": 65536}
    w["output"] = {"distribution": "lognormal", "mu": 4.5, "sigma": 1.0, "min": 1, "max": 1024}
    w["prefix"] = saturated()["workload"]["prefix"]
    return d


def closed_colocated() -> dict[str, Any]:
    """The co-located topology under a closed loop of 12 clients."""
    d = colocated()
    d["workload"]["arrival"] = {"process": "closed_loop", "concurrency": 12}
    return d


def closed_pd() -> dict[str, Any]:
    """The paper's PD topology under a closed loop of 20 clients starting over 5 s, 8 decode
    slots an instance."""
    d = base()
    d["topology"]["clusters"]["pd"]["max_batch"] = 8
    d["workload"]["arrival"] = {"process": "closed_loop", "concurrency": 20, "ramp_s": 5.0}
    d["workload"]["output"] = {"distribution": "fixed", "tokens": 256}
    return d


SCENARIOS = {
    "light": light,
    "saturated": saturated,
    "starved": starved,
    "mooncake": mooncake,
    "servegen_mix": servegen_mix,
    "mixture_shaped": mixture_shaped,
    "colocated": colocated,
    "closed_colocated": closed_colocated,
    "closed_pd": closed_pd,
}


def scenario(name: str) -> Scenario:
    """The named test scenario, parsed."""
    return parse_scenario(SCENARIOS[name](), f"test:{name}")
