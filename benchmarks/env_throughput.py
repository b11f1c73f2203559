"""Environment steps per second: PrfaaSVectorEnv.step with a fixed action, observation
encoding included.

    python benchmarks/env_throughput.py --envs 1,64,1024

Each row: one env count on the default scenario, a warm-up of 200 steps, then ``--seconds``
of stepping with action 0 everywhere (episodes truncate and autoreset as in training); prints
env steps per second (steps x envs / wall time) and microseconds per step call.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prfaas_env.env.vector import PrfaaSVectorEnv


def measure(num_envs: int, config: str, seconds: float) -> tuple[float, float]:
    env = PrfaaSVectorEnv(num_envs, config)
    env.reset(seed=0)
    action = np.zeros(num_envs, np.int64)
    for _ in range(200):
        env.step(action)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(50):
            env.step(action)
        steps += 50
    wall = time.perf_counter() - start
    return steps * num_envs / wall, wall / steps * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--envs", default="1,64,1024", help="comma-separated env counts")
    ap.add_argument("--config", default="paper_prfaas")
    ap.add_argument("--seconds", type=float, default=5.0, help="timed seconds per row")
    args = ap.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; {args.config}"
    )
    print(f"{'envs':>6}{'env steps/s':>14}{'us per step()':>15}")
    for n in (int(x) for x in args.envs.split(",")):
        rate, per_call = measure(n, args.config, args.seconds)
        print(f"{n:>6}{rate:>14,.0f}{per_call:>15,.0f}")


if __name__ == "__main__":
    main()
