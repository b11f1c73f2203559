"""Environment steps/s of RLlib PPO across a suite on a local Ray cluster of 1 and of 2 nodes.

Run: python benchmarks/rllib_scaling.py [--runners 2] [--envs 8] [--steps 4000] [--repeats 3]
     [--iterations 3] [--max-routes N] [--single]

For each layout (one node holding every env runner; the same runners spread over two nodes,
every node on 127.0.0.1, started with ``ray.cluster_utils.Cluster``) and, as the per-core
reference, one runner on one node, it builds ``suite_ppo_config`` (the default suite's
train set, the per-route module) and prints:

- **sampling**: env steps/s of the env runners sampling in parallel (each runner steps
  ``--envs`` suite envs until it has ``--steps`` steps; the learner is idle), best of
  ``--repeats`` rounds after a warm-up round;
- **PPO iteration**: env steps/s of whole ``algo.train()`` iterations (sampling, then the
  update in the driver with one torch thread), mean of ``--iterations``.

The nodes of a local cluster share this machine's cores: two nodes cannot sample faster
than its cores allow, so the table also prints the machine's core count and load.

``--single`` measures what one runner's rate is made of instead: one suite env stepped alone
(no RLlib), and sampling in the driver process with torch's default number of threads and
with one thread.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every node on 127.0.0.1

import numpy as np
import ray
import torch
from ray.cluster_utils import Cluster

from prfaas_env.integrations.rllib import make_suite_env, suite_env_config, suite_ppo_config


def measure(
    nodes: int, runners: int, envs: int, steps: int, repeats: int, iterations: int, env: dict
) -> dict[str, Any]:
    """Sampling and PPO-iteration env steps/s with ``runners`` env runners on ``nodes`` local
    nodes of ``runners / nodes`` CPUs each."""
    if runners % nodes:
        raise SystemExit(f"--runners {runners} must divide over {nodes} nodes")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": runners // nodes, "include_dashboard": False},
    )
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=runners // nodes)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        alive = [n for n in ray.nodes() if n["Alive"]]
        assert {n["NodeManagerAddress"] for n in alive} == {"127.0.0.1"}
        algo = suite_ppo_config(
            env,
            num_env_runners=runners,
            num_envs_per_env_runner=envs,
            training={
                "train_batch_size_per_learner": runners * steps,
                "minibatch_size": min(512, runners * steps),
                "num_epochs": 1,
            },
        ).build_algo()
        group = algo.env_runner_group
        placed = group.foreach_env_runner(
            lambda r: ray.get_runtime_context().get_node_id(), local_env_runner=False
        )

        def sample_round() -> tuple[int, float]:
            t = time.perf_counter()
            counts = group.foreach_env_runner(
                lambda r: sum(len(e) for e in r.sample(num_timesteps=steps)),
                local_env_runner=False,
            )
            return int(sum(counts)), time.perf_counter() - t

        sample_round()  # warm-up: first episodes build each scenario's env
        rounds = [sample_round() for _ in range(repeats)]
        sampling = max(n / dt for n, dt in rounds)
        load_during = os.getloadavg()[0]
        before = 0.0
        rates = []
        for _ in range(iterations):
            t = time.perf_counter()
            result = algo.train()
            now = float(result["env_runners"]["num_env_steps_sampled_lifetime"])
            rates.append((now - before) / (time.perf_counter() - t))
            before = now
        algo.stop()
        return {
            "nodes": len(alive),
            "runner_nodes": len(set(placed)),
            "runners": runners,
            "envs": envs,
            "sampling": sampling,
            "iteration": float(np.mean(rates[1:] if len(rates) > 1 else rates)),
            "load": load_during,
        }
    finally:
        ray.shutdown()
        cluster.shutdown()


def env_alone(env: dict[str, Any], steps: int) -> float:
    """Steps/s of one suite env without RLlib (first allowed route, resets included)."""
    e = make_suite_env(env)
    obs, _ = e.reset(seed=0)
    t = time.perf_counter()
    for _ in range(steps):
        obs, _, terminated, truncated, _ = e.step(int(np.flatnonzero(obs["action_mask"])[0]))
        if terminated or truncated:
            obs, _ = e.reset()
    return steps / (time.perf_counter() - t)


def driver_sampling(env: dict[str, Any], envs: int, steps: int, threads: int) -> float:
    """Env steps/s of sampling in the driver process (``num_env_runners`` 0) with ``threads``
    torch threads: the best of two rounds after a warm-up."""
    torch.set_num_threads(threads)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        algo = suite_ppo_config(env, num_envs_per_env_runner=envs).build_algo()
        runner = algo.env_runner
        runner.sample(num_timesteps=200)
        best = 0.0
        for _ in range(2):
            t = time.perf_counter()
            n = sum(len(e) for e in runner.sample(num_timesteps=steps))
            best = max(best, n / (time.perf_counter() - t))
        algo.stop()
        return best
    finally:
        ray.shutdown()
        torch.set_num_threads(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", default="default")
    ap.add_argument("--runners", type=int, default=2, help="env runners in every layout")
    ap.add_argument("--envs", type=int, default=8, help="suite envs per env runner")
    ap.add_argument("--steps", type=int, default=4000, help="env steps per runner per round")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=3, help="PPO iterations timed")
    ap.add_argument("--max-routes", type=int, default=None, help="default: the suite's most")
    ap.add_argument("--episode-steps", type=int, default=1024)
    ap.add_argument(
        "--single",
        action="store_true",
        help="instead: one suite env alone, and sampling in the driver with torch's default "
        "threads and with one",
    )
    args = ap.parse_args()
    default_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the learner runs in this process
    env = suite_env_config(
        args.suite, max_routes=args.max_routes, max_episode_steps=args.episode_steps
    )
    if args.single:
        print(
            f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; max_routes {env['max_routes']}"
        )
        rate = env_alone(env, args.steps)
        print(f"one suite env alone: {rate:,.0f} steps/s ({1e6 / rate:.0f} us per step)")
        for threads in (default_threads, 1):
            rate = driver_sampling(env, args.envs, args.steps, threads)
            print(
                f"sampling in the driver, {args.envs} envs, {threads} torch thread(s): "
                f"{rate:,.0f} env steps/s"
            )
        print(f"load {os.getloadavg()[0]:.1f} at the end")
        return
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load "
        f"{os.getloadavg()[0]:.1f} at start; suite {args.suite} train set, max_routes "
        f"{env['max_routes']}, {args.envs} envs per runner, {args.steps} steps per runner "
        f"per round, best of {args.repeats}; PPO iterations of {args.runners * args.steps} steps"
    )
    layouts = [(1, 1), (1, args.runners), (2, args.runners)]
    rows = [
        measure(n, r, args.envs, args.steps, args.repeats, args.iterations, env) for n, r in layouts
    ]
    print()
    print(
        "| nodes | env runners | nodes with runners | sampling env steps/s "
        "| PPO iteration env steps/s | load (1 min) |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['nodes']} | {r['runners']} | {r['runner_nodes']} | {r['sampling']:,.0f} | "
            f"{r['iteration']:,.0f} | {r['load']:.1f} |"
        )
    one = rows[0]["sampling"]
    for r in rows[1:]:
        print(
            f"{r['runners']} runners on {r['nodes']} node(s): {r['sampling'] / one:.2f}x the "
            f"sampling of one runner (ideal {r['runners']}x with a free core per runner; this "
            f"machine has {os.cpu_count()})"
        )
    print(f"load {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
