"""Training throughput: the plain PyTorch PPO loop against stable-baselines3's PPO.

    python benchmarks/training_throughput.py --timesteps 500000

Both train PPO on the same scenario with the same settings (``configs/agents/ppo.yaml``:
64 envs x 64 steps per rollout, 64 x 64 tanh MLPs for policy and value, 4 epochs of 1024-sample
minibatches, observation and reward normalisation; no behaviour cloning, no periodic
evaluation) on one thread, and the table gives environment steps per second and how the wall
time splits between stepping the environment, policy inference and gradient updates. One
difference: SB3's VecNormalize clips normalised values to [-10, 10], Gymnasium's wrappers
do not.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))


def sb3(config: str, rate: float | None, timesteps: int) -> dict[str, float]:
    from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

    from agents.algos import load_agent_config, make_model
    from agents.callbacks import TimedVecEnv, TimingCallback
    from prfaas_env.integrations.sb3 import SB3VecEnv

    cfg = load_agent_config("ppo")
    venv = SB3VecEnv.from_config(config, cfg.num_envs, rate_multiplier=rate)
    env = TimedVecEnv(VecNormalize(VecMonitor(venv), gamma=0.99))
    model = make_model(cfg, env, seed=0)
    timing = TimingCallback(env)
    start = time.perf_counter()
    model.learn(timesteps, callback=timing)
    wall = time.perf_counter() - start
    split = timing.split()
    return {
        "steps_per_s": model.num_timesteps / wall,
        "seconds": wall,
        "env_s": split["env_s"],
        "inference_s": split["policy_s"],
        "update_s": split["update_s"],
    }


def plain(config: str, rate: float | None, timesteps: int) -> dict[str, float]:
    import plain_ppo

    return plain_ppo.train(
        plain_ppo.Args(config=config, rate_multiplier=rate, timesteps=timesteps), log=lambda s: None
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="paper_prfaas")
    ap.add_argument("--rate-multiplier", type=float, default=2.7)
    ap.add_argument("--timesteps", type=int, default=500_000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, torch {torch.__version__}"
    )
    print(f"{args.config} x{args.rate_multiplier}, {args.timesteps:,} steps each\n")
    print(f"{'trainer':<24}{'steps/s':>10}{'wall s':>8}{'env s':>8}{'infer s':>9}{'update s':>10}")
    for name, fn in (("plain PyTorch loop", plain), ("stable-baselines3 PPO", sb3)):
        r = fn(args.config, args.rate_multiplier, args.timesteps)
        print(
            f"{name:<24}{r['steps_per_s']:>10,.0f}{r['seconds']:>8.1f}{r['env_s']:>8.1f}"
            f"{r['inference_s']:>9.1f}{r['update_s']:>10.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
