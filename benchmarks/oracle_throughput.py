"""Decisions per second of the rollout oracle (prfaas_env/policies/oracle.py).

    python benchmarks/oracle_throughput.py --horizon 128 --envs 1,16,64,256

Each row routes ``--decisions`` requests per env of the paper scenario (the suite's
``paper_poisson``: 2 routes) with the oracle planning around Mooncake's router; every
decision simulates each candidate action followed by ``--horizon`` arrivals and a drain.
Prints decisions per second (envs x decisions / wall time, after a warm-up) and the
simulated steps per second that took.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prfaas_env.evaluation import heuristic, run_policy
from prfaas_env.suite import load_suite


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--horizon", type=int, default=128)
    ap.add_argument("--envs", default="1,16,64,256")
    ap.add_argument("--decisions", type=int, default=100, help="decisions per env timed")
    ap.add_argument("--scenario", default="paper_poisson", help="a scenario of the default suite")
    args = ap.parse_args()
    sc = load_suite("default").get(args.scenario).scenario
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; {args.scenario}, horizon {args.horizon}"
    )
    print(f"{'envs':>6}{'decisions/s':>14}{'sim steps/s':>14}")
    routes = len(sc.topology.routes)
    factory = heuristic("rollout_oracle", horizon=args.horizon, base="mooncake")
    run_policy(sc, factory, "warm-up", [0], 5)
    for n in (int(x) for x in args.envs.split(",")):
        t = time.perf_counter()
        run_policy(sc, factory, "oracle", list(range(n)), args.decisions)
        wall = time.perf_counter() - t
        rate = n * args.decisions / wall
        print(f"{n:>6}{rate:>14,.0f}{rate * routes * (args.horizon + 1):>14,.0f}")


if __name__ == "__main__":
    main()
