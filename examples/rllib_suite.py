"""PPO of the per-route network across a scenario suite, on RLlib, on one machine or a Ray cluster.

    python examples/rllib_suite.py --iterations 20 --out runs/rllib_suite          # this machine
    python examples/rllib_suite.py --address auto --iterations 300 --out runs/rllib_suite \\
        --set env_runners.num_env_runners=32                                      # a Ray cluster
    python examples/rllib_suite.py --init-from runs/generalist --out runs/generalist_ppo \\
        --eval-every 10                                 # RL fine-tuning of an imitation run

Settings come from ``configs/rllib/suite_ppo.yaml`` (``--file`` for another), overridden with
``--set section.key=value``. Every env runner steps ``num_envs_per_env_runner`` suite envs,
each drawing a train scenario, a load multiplier and (optionally) link shares per episode
(:class:`prfaas_env.env.suite_env.PrfaaSSuiteEnv`); the policy is
:class:`prfaas_env.policies.route_scorer.RouteScorer` inside RLlib
(:class:`prfaas_env.integrations.rllib.RouteScorerModule`).

The network starts from an imitation run (``--init-from``: a ``train.py --suite`` folder or
a ``model.pt``) or fresh, with input statistics from random routing. ``--out`` receives:
``tb/`` (TensorBoard: returns and per-scenario episode metrics, PPO losses, environment
steps/s, and with ``--eval-every`` each train scenario's P90 TTFT against its best heuristic
on validation seeds, the tags ``train.py --suite`` writes), ``model.pt`` (the ``RouteScorer``
state_dict: the best evaluated iteration with ``--eval-every``, else the last), ``last.pt``,
``scorer.json`` (width, features, what ran) and, when it started from an imitation run, that
run's ``run.json`` with a ``fine_tuning`` entry, so the folder is a generalist run that
``evaluate.py --suite`` and ``export.py`` read.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # agents/ (evaluation against the heuristics)
sys.path.insert(0, str(ROOT / "examples"))

from rllib_ppo import load_settings, start_ray  # noqa: E402

DEFAULT_FILE = ROOT / "configs" / "rllib" / "suite_ppo.yaml"
SECTIONS = {"env", "env_runners", "learners", "network", "training"}
LEARNER_KEYS = ("policy_loss", "vf_loss", "entropy", "mean_kl_loss", "vf_explained_var")


def env_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The suite env's ``env_config`` from the ``env`` section (checked by building one)."""
    from prfaas_env.integrations.rllib import SUITE_ENV_KEYS, suite_env_config

    env = dict(settings.get("env", {}))
    unknown = set(env) - set(SUITE_ENV_KEYS)
    if unknown:
        raise SystemExit(f"env: unknown key(s) {sorted(unknown)}; allowed: {list(SUITE_ENV_KEYS)}")
    return suite_env_config(**env)


def build(
    settings: dict[str, Any],
    env_cfg: dict[str, Any],
    hidden: int,
    seed: int,
    anchor: int | None = None,
) -> Any:
    """The RLlib algorithm (Ray must be initialised): ``env_runners``, ``learners`` and
    ``training`` go to the PPOConfig methods of those names (any of their arguments)."""
    from prfaas_env.integrations.rllib import suite_ppo_config

    runners = dict(settings.get("env_runners", {}))
    learners = dict(settings.get("learners", {}))
    cfg = suite_ppo_config(
        env_cfg,
        num_env_runners=int(runners.pop("num_env_runners", 0)),
        num_envs_per_env_runner=int(runners.pop("num_envs_per_env_runner", 8)),
        num_learners=int(learners.pop("num_learners", 0)),
        hidden=hidden,
        training=settings.get("training", {}),
        anchor=anchor,
    ).debugging(seed=seed)
    try:  # the remaining keys are PPOConfig arguments (RLlib names any it does not know)
        cfg = cfg.env_runners(**runners).learners(**learners)
    except TypeError as exc:
        raise SystemExit(f"env_runners/learners: {exc}") from exc
    return cfg.build_algo()


def initial_state(
    init_from: Path | None, env_cfg: dict[str, Any], hidden: int, seed: int, decisions: int
) -> tuple[dict[str, Any], int, dict[str, Any] | None]:
    """The network to start from, its width and, for an imitation run folder, its run.json
    (a run's width replaces ``network.hidden``)."""
    import torch

    from prfaas_env.integrations.rllib import fresh_scorer

    if init_from is None:
        return fresh_scorer(env_cfg, hidden, decisions, seed).state_dict(), hidden, None
    if init_from.is_dir():
        from agents.generalist import load_generalist

        net, summary = load_generalist(init_from)
        if int(summary["settings"].get("members", 1)) > 1:
            raise SystemExit(
                f"--init-from {init_from}: an ensemble run (members="
                f"{summary['settings']['members']}); RLlib fine-tunes one scorer: pass a run "
                "trained with members=1"
            )
        return net.state_dict(), int(summary["settings"]["hidden"]), summary
    if not init_from.is_file():
        raise SystemExit(f"--init-from {init_from}: no such run folder or model.pt")
    state = torch.load(init_from)
    width = int(state["head.weight"].shape[1]) if "head.weight" in state else hidden
    return state, width, None


def scalars(result: dict[str, Any]) -> dict[str, float]:
    """The result entries worth a TensorBoard curve (finite numbers only)."""
    runners = result.get("env_runners", {})
    out = {
        "train/episode_return_mean": runners.get("episode_return_mean"),
        "train/episode_len_mean": runners.get("episode_len_mean"),
        "train/env_steps_sampled": runners.get("num_env_steps_sampled_lifetime"),
    }
    for name, metrics in (runners.get("suite") or {}).items():
        for key, value in metrics.items():
            out[f"suite/{name}/{key}"] = value
    learner = result.get("learners", {}).get("default_policy", {})
    for key in LEARNER_KEYS:
        out[f"ppo/{key}"] = learner.get(key)
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(float(v))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--file", type=Path, default=DEFAULT_FILE, help="settings YAML")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--address", default=None, help="Ray cluster address ('auto' to join)")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--force", action="store_true", help="replace an earlier --out of this kind")
    ap.add_argument("--init-from", type=Path, default=None, help="imitation run or model.pt")
    ap.add_argument("--eval-every", type=int, default=0, help="iterations between evaluations")
    ap.add_argument("--eval-seeds", type=int, default=3)
    ap.add_argument("--eval-decisions", type=int, default=1000)
    ap.add_argument("--statistics-decisions", type=int, default=300, help="per scenario")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads here (default 1)")
    args = ap.parse_args(argv)
    settings = load_settings(args.file, args.set, SECTIONS)
    import torch

    from prfaas_env.errors import ConfigError, replaceable_out

    # the driver samples (num_env_runners 0) and learns (num_learners 0): on the shared 2-core
    # machine, sampling ran six times faster with one torch thread than with the default two
    # (benchmarks/rllib_scaling.py --single)
    torch.set_num_threads(max(1, args.threads))
    try:
        if replaceable_out(args.out, args.force, "scorer.json", "rllib_suite"):
            shutil.rmtree(args.out)
        env_cfg = env_settings(settings)
        state, hidden, imitation = initial_state(
            args.init_from,
            env_cfg,
            int(settings.get("network", {}).get("hidden", 64)),
            args.seed,
            args.statistics_decisions,
        )
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    ray = start_ray(args.address)
    from torch.utils.tensorboard import SummaryWriter

    from prfaas_env.integrations.rllib import get_scorer_state, set_scorer_state
    from prfaas_env.observation.per_route import GLOBAL_FEATURES, ROUTE_FEATURES
    from prfaas_env.policies.route_scorer import RouteScorer, anchor_in

    anchor = anchor_in(state)  # a residual imitation run stays residual
    algo = build(settings, env_cfg, hidden, args.seed, anchor)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(str(out / "tb"))
    try:
        set_scorer_state(algo, state)
        evaluator = Evaluator(env_cfg, args) if args.eval_every > 0 else None
        best_score, best_iteration, history = math.inf, -1, []
        start, last_steps = time.perf_counter(), 0.0
        for i in range(args.iterations):
            t = time.perf_counter()
            result = algo.train()
            values = scalars(result)
            steps = values.get("train/env_steps_sampled", last_steps)
            values["time/env_steps_per_s"] = (steps - last_steps) / (time.perf_counter() - t)
            last_steps = steps
            for key, value in values.items():
                writer.add_scalar(key, value, i + 1)
            line = (
                f"iteration {i + 1}: {steps:,.0f} steps ({values['time/env_steps_per_s']:,.0f}/s),"
                f" episode return {values.get('train/episode_return_mean', math.nan):.2f}"
            )
            record: dict[str, Any] = {"iteration": i + 1, "env_steps": steps}
            if evaluator is not None and (
                (i + 1) % args.eval_every == 0 or i + 1 == args.iterations
            ):
                net = RouteScorer(len(ROUTE_FEATURES), len(GLOBAL_FEATURES), hidden, anchor)
                net.load_state_dict(get_scorer_state(algo))
                score, per = evaluator(net, writer, i + 1)
                record |= {"score": score, "eval": per}
                line += f", validation score {score:+.1%}"
                if score < best_score:
                    best_score, best_iteration = score, i + 1
                    torch.save(net.state_dict(), out / "model.pt")
            history.append(record)
            print(line + f", {time.perf_counter() - start:.0f} s", flush=True)
        last = get_scorer_state(algo)
        torch.save(last, out / "last.pt")
        if evaluator is None:
            torch.save(last, out / "model.pt")
        summary = {
            "kind": "rllib_suite",
            "hidden": hidden,
            "route_features": [n for n, _ in ROUTE_FEATURES],
            "global_features": [n for n, _ in GLOBAL_FEATURES],
            "env": env_cfg,
            "settings": settings,
            "iterations": args.iterations,
            "env_steps": last_steps,
            "init_from": None if args.init_from is None else str(args.init_from),
            "selected_iteration": best_iteration if evaluator is not None else args.iterations,
            "history": history,
            "wall_s": time.perf_counter() - start,
            "command": " ".join(["python", *sys.argv]),
        }
        (out / "scorer.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
        if imitation is not None:  # the folder stays a generalist run (evaluate.py --suite)
            run = dict(imitation)
            run["fine_tuning"] = {
                "by": "examples/rllib_suite.py (RLlib PPO)",
                "from": str(args.init_from),
                "selected_iteration": summary["selected_iteration"],
                "env_steps": last_steps,
                "note": "ranges (the router's guard) are those of the imitation data",
            }
            (out / "run.json").write_text(json.dumps(run, indent=1, default=float) + "\n")
        print(f"wrote {out} (model.pt from iteration {summary['selected_iteration']})")
    finally:
        writer.close()
        algo.stop()
        ray.shutdown()
    return 0


class Evaluator:
    """Greedy routing with the network on each train scenario's validation seeds against the
    scenario's best heuristic (``agents.generalist.evaluate``; TensorBoard ``eval/...``)."""

    def __init__(self, env_cfg: dict[str, Any], args: argparse.Namespace) -> None:
        from agents.generalist import GeneralistSettings, best_heuristics
        from prfaas_env.env.suite_env import PrfaaSSuiteEnv
        from prfaas_env.evaluation import VALIDATION_SEED, seed_range

        env = PrfaaSSuiteEnv(**env_cfg)
        self.scenarios = list(env.scenarios)
        self.settings = GeneralistSettings(
            eval_seeds=args.eval_seeds, eval_decisions=args.eval_decisions
        )
        seeds = seed_range(VALIDATION_SEED, args.eval_seeds)
        print(f"best heuristics of the {len(self.scenarios)} scenarios (validation seeds) ...")
        self.best = best_heuristics(self.scenarios, seeds, args.eval_decisions)
        print("  " + ", ".join(f"{k}: {v}" for k, v in self.best.items()), flush=True)
        self.baselines: dict[str, dict[str, float]] | None = None

    def __call__(self, net: Any, writer: Any, step: int) -> tuple[float, dict[str, Any]]:
        from agents.generalist import evaluate, selection_score

        result, self.baselines = evaluate(
            net, self.scenarios, self.best, self.settings, self.baselines
        )
        score = selection_score(result)
        for name, r in result.items():
            writer.add_scalar(f"eval/{name}/p90_vs_best_heuristic", r["p90_rel"], step)
            writer.add_scalar(f"eval/{name}/throughput_ratio", r["rps_ratio"], step)
        # the selection score counts a scenario under 99 % of the throughput +100 %
        writer.add_scalar("eval/selection_score", score, step)
        mean = sum(r["p90_rel"] for r in result.values()) / len(result)
        writer.add_scalar("eval/mean_p90_vs_best_heuristic", mean, step)
        return score, result


if __name__ == "__main__":
    sys.exit(main())
