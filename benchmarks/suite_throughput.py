"""Decisions per second on suite scenarios of different sizes: how cost grows with topology.

Run: python benchmarks/suite_throughput.py [--suite default]
     [--scenarios paper_poisson,large_poisson] [--envs 1,64,1024] [--decisions N]

For each scenario and number of envs, the router is the LMetric heuristic (a good router, so
queues stay as short as the scenario allows) and two figures are printed:

- **step**: decisions/s counting only the time inside ``VecSimulator.step`` (the simulator);
- **decision**: decisions/s of the whole loop ``evaluate.py`` runs: the router-visible view of
  every env (:class:`~prfaas_env.observation.SimObserver`), the heuristic over it, then
  the step.

Both at the scenario's own rate, after a warm-up that compiles everything (cached on disk).
"""

from __future__ import annotations

import argparse
import platform
import time

import numba

from prfaas_env.evaluation import heuristic
from prfaas_env.observation.simulated import SimObserver
from prfaas_env.sim.engine import VecSimulator, routes_from_actions
from prfaas_env.sim.scenario import Scenario
from prfaas_env.suite import load_suite


def rates(sc: Scenario, envs: int, decisions: int) -> tuple[float, float]:
    """(step-only, whole-decision) decisions/s with LMetric routing ``envs`` envs."""
    sim = VecSimulator(sc, envs)
    sim.reset(seed=0)
    policy = heuristic("lmetric")(sc)
    policy.reset(envs, seed=0)
    n = policy.routes.num_routes
    observer = SimObserver(sim, n)
    step_s = 0.0

    def one() -> float:
        actions = policy.act(observer.observe_view(), observer.mask)
        routes = routes_from_actions(actions, n)
        t0 = time.perf_counter()
        sim.step(routes)
        return time.perf_counter() - t0

    for _ in range(20):
        one()
    steps = max(decisions // envs, 20)
    t0 = time.perf_counter()
    for _ in range(steps):
        step_s += one()
    total = time.perf_counter() - t0
    return steps * envs / step_s, steps * envs / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", default="default")
    ap.add_argument("--scenarios", default="paper_poisson,large_poisson")
    ap.add_argument("--envs", default="1,64,1024")
    ap.add_argument("--decisions", type=int, default=50_000, help="decisions timed per cell")
    args = ap.parse_args()
    suite = load_suite(args.suite)
    print(
        f"{platform.processor() or platform.machine()}, {numba.get_num_threads()} numba "
        f"threads; decisions/s (higher is better)"
    )
    print(f"{'scenario':24s} {'routes':>6s} {'envs':>6s} {'step':>12s} {'decision':>12s}")
    for name in args.scenarios.split(","):
        sc = suite.get(name).scenario
        for envs in (int(e) for e in args.envs.split(",")):
            step_rate, decision_rate = rates(sc, envs, args.decisions)
            print(
                f"{name:24s} {len(sc.topology.routes):6d} {envs:6d} {step_rate:12,.0f} "
                f"{decision_rate:12,.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
