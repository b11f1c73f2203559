"""Train a routing agent (PPO, DQN or MaskablePPO) and compare it with the heuristics.

    python train.py --config paper_prfaas --algo ppo --timesteps 300000 --out runs/ppo_paper
    python train.py --out runs/ppo_paper --resume --timesteps 600000     # continue a run
    python train.py --suite default --out runs/generalist    # one policy for every topology
    tensorboard --logdir runs/ppo_paper/tb

Writes the run folder described in agents/run.py: the model with its observation
normalisation, the best checkpoint by periodic evaluation against the best heuristic on
held-out data, checkpoints, TensorBoard logs, and ``final_eval.json`` (the final table's
records, with the keys of evaluate.py's ``results.json``). Agent settings come from
``configs/agents/ALGO.yaml`` (``--agent-config`` for another file, ``--set key=value`` for
single values). Ctrl-C saves a checkpoint; ``--resume`` continues from it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from agents.algos import ALGOS
from agents.training import TrainArgs, train
from prfaas_env.errors import ConfigError, UnknownNameError


def parse_args(argv: list[str] | None = None) -> TrainArgs:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="scenario: shipped name or YAML path")
    ap.add_argument(
        "--suite",
        default=None,
        metavar="NAME",
        help="train the generalist (per-route policy, imitation of the rollout oracle) on a "
        "suite's train scenarios instead of an agent on one scenario (agents/generalist.py)",
    )
    ap.add_argument("--algo", default=None, help=f"one of {', '.join(ALGOS)} (default ppo)")
    ap.add_argument("--timesteps", type=int, default=200_000, help="total decisions to train on")
    ap.add_argument("--seed", type=int, default=0, help="seed of the whole run (default 0)")
    ap.add_argument("--out", required=True, help="run folder, e.g. runs/NAME")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out")
    ap.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    ap.add_argument(
        "--agent-config", default=None, help="agent YAML (default configs/agents/ALGO.yaml)"
    )
    ap.add_argument("--eval-config", default=None, help="held-out scenario for evaluation")
    ap.add_argument(
        "--rate-multiplier",
        type=float,
        default=None,
        help="scale the arrival rate of the training and evaluation scenarios",
    )
    ap.add_argument("--num-envs", type=int, default=None, help="override the agent's num_envs")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an agent setting, e.g. hyperparameters.learning_rate=1e-4 (repeatable)",
    )
    ap.add_argument("--final-seeds", type=int, default=5, help="seeds in the final table")
    ap.add_argument("--final-decisions", type=int, default=None, help="requests per final seed")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ns = ap.parse_args(argv)
    if ns.algo is not None and ns.algo not in ALGOS:
        ap.error(str(UnknownNameError("algorithm", ns.algo, ALGOS)))
    if ns.timesteps < 1 or ns.final_seeds < 1:
        ap.error("--timesteps and --final-seeds must be positive")
    if ns.rate_multiplier is not None and not ns.rate_multiplier > 0:
        ap.error("--rate-multiplier must be positive")
    if ns.num_envs is not None and ns.num_envs < 1:
        ap.error("--num-envs must be positive")
    overrides: dict[str, Any] = {}
    for item in ns.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            ap.error(f"--set {item!r}: expected KEY=VALUE")
        overrides[key.strip()] = yaml.safe_load(value)
    return TrainArgs(
        out=Path(ns.out),
        config=ns.config,
        algo=ns.algo,
        timesteps=ns.timesteps,
        seed=ns.seed,
        resume=ns.resume,
        force=ns.force,
        agent_config=ns.agent_config,
        eval_config=ns.eval_config,
        num_envs=ns.num_envs,
        final_seeds=ns.final_seeds,
        final_decisions=ns.final_decisions,
        progress=not ns.no_progress,
        threads=ns.threads,
        rate_multiplier=ns.rate_multiplier,
        overrides=overrides,
    )


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if "--suite" in argv or any(a.startswith("--suite=") for a in argv):
        return main_suite(argv)
    args = parse_args(argv)
    try:
        meta = train(args)
    except (ConfigError, UnknownNameError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 130 if meta.get("status") == "interrupted" else 0


def main_suite(argv: list[str]) -> int:
    """``--suite``: train the generalist (settings: ``--set NAME=VALUE`` for any field of
    ``agents.generalist.GeneralistSettings``)."""
    from agents.generalist import settings_from, train_generalist
    from prfaas_env.errors import replaceable_out

    ap = argparse.ArgumentParser(description="Train the generalist router on a suite.")
    ap.add_argument("--suite", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    ns = ap.parse_args(argv)
    try:
        settings = settings_from(ns.set, seed=ns.seed)
    except ConfigError as exc:
        ap.error(f"--set {exc}")
    import torch

    torch.set_num_threads(max(1, ns.threads))
    try:
        out = Path(ns.out)
        if replaceable_out(out, ns.force, "run.json", "run"):
            import shutil

            shutil.rmtree(out)
        summary = train_generalist(ns.suite, out, settings)
    except (ConfigError, UnknownNameError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {ns.out} (selected iteration {summary['selected_iteration']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
