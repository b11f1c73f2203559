"""Decisions per second on suite scenarios of different sizes: how cost grows with topology.

Run: python benchmarks/suite_throughput.py [--suite default]
     [--scenarios paper_poisson,large_poisson] [--envs 1,64,1024] [--decisions N]

For each scenario and number of envs, two figures:

- **simulator**: ``VecSimulator.step`` alone, routes drawn uniformly among the usable routes
  in NumPy (the simulator's cost with the cheapest possible router);
- **with lmetric**: what ``evaluate.py`` pays per decision: the router-visible view of every
  env (``view_from_sim``), the LMetric heuristic over it, then the step.

Both at the scenario's own rate, after a warm-up that compiles everything (cached on disk).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numba
import numpy as np

from prfaas_env.env.features import view_from_sim
from prfaas_env.evaluation import heuristic
from prfaas_env.sim.engine import VecSimulator, routes_from_actions
from prfaas_env.sim.scenario import Scenario
from prfaas_env.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]


def _random_routes(sim: VecSimulator, rng: np.random.Generator) -> np.ndarray:
    mask = sim.route_mask()
    scores = rng.random(mask.shape) * mask
    return scores.argmax(1)


def simulator_rate(sc: Scenario, envs: int, decisions: int) -> float:
    """Decisions/s of the simulator alone (random usable routes)."""
    sim = VecSimulator(sc, envs)
    sim.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        sim.step(_random_routes(sim, rng))
    steps = max(decisions // envs, 20)
    t0 = time.perf_counter()
    for _ in range(steps):
        sim.step(_random_routes(sim, rng))
    return steps * envs / (time.perf_counter() - t0)


def policy_rate(sc: Scenario, envs: int, decisions: int) -> float:
    """Decisions/s of view + LMetric + step (evaluate.py's loop)."""
    sim = VecSimulator(sc, envs)
    sim.reset(seed=0)
    policy = heuristic("lmetric")(sc)
    policy.reset(envs, seed=0)
    n = policy.routes.num_routes

    def one() -> None:
        actions = policy.act(view_from_sim(sim, 0.0, 1024.0), sim.route_mask())
        sim.step(routes_from_actions(actions, n))

    for _ in range(20):
        one()
    steps = max(decisions // envs, 20)
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    return steps * envs / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", default="default")
    ap.add_argument("--scenarios", default="paper_poisson,large_poisson")
    ap.add_argument("--envs", default="1,64,1024")
    ap.add_argument("--decisions", type=int, default=100_000, help="decisions timed per cell")
    args = ap.parse_args()
    suite = load_suite(args.suite)
    print(
        f"{platform.processor() or platform.machine()}, {numba.get_num_threads()} numba "
        f"threads; decisions/s (higher is better)"
    )
    print(f"{'scenario':24s} {'routes':>6s} {'envs':>6s} {'simulator':>12s} {'with lmetric':>13s}")
    for name in args.scenarios.split(","):
        sc = suite.get(name).scenario
        for envs in (int(e) for e in args.envs.split(",")):
            sim_rate = simulator_rate(sc, envs, args.decisions)
            pol_rate = policy_rate(sc, envs, args.decisions // 4)
            print(
                f"{name:24s} {len(sc.topology.routes):6d} {envs:6d} {sim_rate:12,.0f} "
                f"{pol_rate:13,.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
