"""Simulator throughput: routing decisions per second and memory per env, by number of envs.

Run: python benchmarks/simulator_throughput.py [--envs 1,64,1024,4096] [--decisions N]

Two scenarios: the paper's case study with synthetic arrivals (configs/paper_prfaas.yaml at
2 requests/s) and Mooncake conversation replay with prefix caches of 4,096 blocks per cluster.
The router is a fixed threshold on uncached tokens computed in NumPy (offload over 20K tokens
for the paper workload, over 4K for the shorter Mooncake prompts, which keeps both scenarios
below saturation), so the figures are the simulator's own cost plus one cheap policy call per
step.
Compilation happens before timing (and is cached on disk after the first run).
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from prfaas_env.sim.engine import VecSimulator
from prfaas_env.sim.scenario import parse_scenario

ROOT = Path(__file__).resolve().parents[1]


def scenarios() -> dict[str, tuple[dict, int]]:
    """The benchmarked scenario mappings with their offload thresholds (tokens)."""
    paper = yaml.safe_load((ROOT / "configs" / "paper_prfaas.yaml").read_text())
    paper["workload"]["arrival"]["rate_rps"] = 2.0
    moon = copy.deepcopy(paper)
    moon["workload"] = {"kind": "trace", "trace": "mooncake-conversation"}
    for c in moon["topology"]["clusters"].values():
        c["prefix_cache_blocks"] = 4096
    return {"paper (synthetic)": (paper, 20_000), "mooncake replay": (moon, 4_000)}


def memory_per_env(sim: VecSimulator) -> float:
    """Bytes of simulator state per env (state, prefix caches, workload state)."""
    total = 0
    for part in (sim.state, sim.cache, sim.workload_state):
        total += sum(
            getattr(part, f).nbytes for f in part._fields if hasattr(getattr(part, f), "nbytes")
        )
    return total / sim.num_envs


def threshold_policy(sim: VecSimulator, threshold: int) -> Callable[[], np.ndarray]:
    """The benchmark's router: offload a request to the PrfaaS cluster when its uncached
    tokens at the PD cluster exceed ``threshold``, else prefill it locally."""
    labels = sim.scenario.topology.route_labels()
    remote, local = labels.index("prfaas->pd"), labels.index("pd->pd")

    def policy() -> np.ndarray:
        unc = sim.workload_state.req_in - sim.state.obs_cached[:, 1]
        return np.where(unc > threshold, remote, local)

    return policy


def measure(
    data: dict, threshold: int, name: str, envs: int, decisions: int
) -> tuple[float, float]:
    """(decisions per second, bytes per env) for ``envs`` envs."""
    sim = VecSimulator(parse_scenario(data, name), envs)
    sim.reset(seed=0)
    policy = threshold_policy(sim, threshold)
    for _ in range(20):  # warm-up (and compilation on a first run)
        sim.step(policy())
    steps = max(50, decisions // envs)
    start = time.perf_counter()
    for _ in range(steps):
        sim.step(policy())
    elapsed = time.perf_counter() - start
    return steps * envs / elapsed, memory_per_env(sim)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", default="1,64,1024,4096", help="comma-separated env counts")
    ap.add_argument("--decisions", type=int, default=400_000, help="decisions timed per row")
    args = ap.parse_args()
    counts = [int(x) for x in args.envs.split(",")]
    print(
        f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"python {platform.python_version()}"
    )
    print(f"{'scenario':<20} {'envs':>6} {'decisions/s':>14} {'KiB/env':>10}")
    for name, (data, threshold) in scenarios().items():
        for n in counts:
            rate, mem = measure(data, threshold, name, n, args.decisions)
            print(f"{name:<20} {n:>6} {rate:>14,.0f} {mem / 1024:>10,.1f}", flush=True)


if __name__ == "__main__":
    main()
