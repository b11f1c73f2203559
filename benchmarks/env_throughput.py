"""Environment steps per second through the Gymnasium API, with CartPole as the yardstick.

    python benchmarks/env_throughput.py --envs 1,64,1024,4096

Each row builds the environment as a user would (``gym.make("PrfaaS-v0")`` for one env,
``gym.make_vec(..., vectorization_mode="vector_entry_point")`` for a vector env; the default
scenario), warms it up, then steps it for ``--seconds`` with a masked random policy (a
uniformly random allowed action per env, from ``info["action_mask"]``): observations, masks,
rewards and autoresets included, as in training. CartPole-v1 (Gymnasium's own NumPy vector
env) runs the same loop with random actions in the same process, so the two columns share
the machine's state. Prints env steps per second (steps x envs / wall time) and
microseconds per ``step`` call.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import prfaas_env  # noqa: F401  (registers PrfaaS-v0)

BLOCK = 256  # steps between clock reads


def _timed(step: Callable[[int], None], seconds: float, warmup: int) -> tuple[int, float]:
    for t in range(warmup):
        step(t)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for t in range(BLOCK):
            step(t)
        steps += BLOCK
    return steps, time.perf_counter() - start


def single(env_id: str, seconds: float, masked: bool, **kwargs: Any) -> tuple[float, float]:
    """One env through ``gym.make``: env steps/s and us per step."""
    env = gym.make(env_id, **kwargs)
    rng = np.random.default_rng(0)
    n = int(env.action_space.n)
    _, info = env.reset(seed=0)
    state = {"info": info}

    def step(t: int) -> None:
        u = rng.random(n)  # fresh draws every step, as in the vector rows
        if masked:
            a = int(np.argmax(np.where(state["info"]["action_mask"], u, -1.0)))
        else:
            a = int(u[0] * n)
        _, _, term, trunc, state["info"] = env.step(a)
        if term or trunc:
            _, state["info"] = env.reset()

    steps, wall = _timed(step, seconds, 500)
    return steps / wall, wall / steps * 1e6


def vector(
    env_id: str, num_envs: int, seconds: float, masked: bool, **kwargs: Any
) -> tuple[float, float]:
    """A native vector env through ``gym.make_vec``: env steps/s and us per step call."""
    envs = gym.make_vec(
        env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs
    )
    rng = np.random.default_rng(0)
    n = int(envs.single_action_space.n)
    _, info = envs.reset(seed=0)
    state = {"info": info}

    def step(t: int) -> None:
        # fresh draws every step (timed: about 30 us at 4096 envs); a small pool of draws
        # reused in a cycle would give some envs the same route every time and overload them
        r = rng.random((num_envs, n))
        if masked:
            a = np.argmax(np.where(state["info"]["action_mask"], r, -1.0), axis=1)
        else:
            a = (r[:, 0] * n).astype(np.int64)
        state["info"] = envs.step(a)[4]

    steps, wall = _timed(step, seconds, 50)
    return steps * num_envs / wall, wall / steps * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--envs", default="1,64,1024,4096", help="comma-separated env counts")
    ap.add_argument("--config", default="paper_prfaas")
    ap.add_argument("--seconds", type=float, default=5.0, help="timed seconds per row")
    args = ap.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, gymnasium {gym.__version__}; scenario {args.config}"
    )
    print(
        f"{'envs':>6}{'PrfaaS steps/s':>16}{'us/step()':>11}{'CartPole steps/s':>18}"
        f"{'us/step()':>11}"
    )
    for num in (int(x) for x in args.envs.split(",")):
        if num == 1:
            ours = single("PrfaaS-v0", args.seconds, True, config=args.config)
            pole = single("CartPole-v1", args.seconds, False)
        else:
            ours = vector("PrfaaS-v0", num, args.seconds, True, config=args.config)
            pole = vector("CartPole-v1", num, args.seconds, False)
        print(f"{num:>6}{ours[0]:>16,.0f}{ours[1]:>11,.1f}{pole[0]:>18,.0f}{pole[1]:>11,.1f}")


if __name__ == "__main__":
    main()
