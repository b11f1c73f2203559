"""The training driver behind ``train.py``: build, train, evaluate and save a routing agent.

Data separation:

- training episodes run on the scenario given with ``--config`` (env ``i`` seeded
  ``seed + i``; later episodes draw their seeds from each env's generator);
- periodic evaluation (model selection, TensorBoard ``eval/``) runs on the held-out scenario
  (``--eval-config``, else the file's ``held_out:`` key, else the same scenario) with seeds
  ``VALIDATION_SEED + k``;
- the final table runs on the held-out scenario with other seeds, ``TEST_SEED + k``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

from agents.algos import (
    EVAL_METRICS,
    AgentConfig,
    agent_config_path,
    algo_class,
    make_model,
    parse_agent_config,
)
from agents.callbacks import (
    EnvMetricsCallback,
    PeriodicCallback,
    ProgressCallback,
    TimedVecEnv,
    TimingCallback,
    save_snapshot,
)
from agents.pretrain import behaviour_clone
from agents.run import RUN_FORMAT, TrainedRun, load_run, normalizer_of, read_meta
from prfaas_env import package_versions
from prfaas_env.env.config import EnvConfig, held_out_config, resolve_config
from prfaas_env.env.spaces import check_spaces, spaces_signature
from prfaas_env.errors import ConfigError, NotApplicableError, load_yaml_mapping, replaceable_out
from prfaas_env.evaluation import (
    KEEP_UP,
    METRICS,
    TEST_SEED,
    VALIDATION_SEED,
    Run,
    best_baseline,
    heuristic,
    heuristic_params,
    interval,
    run_policy,
    seed_range,
)
from prfaas_env.integrations.sb3 import SB3VecEnv
from prfaas_env.policies import RouteTable, make_policy, policy_names
from prfaas_env.report import table
from prfaas_env.sim.scenario import Scenario


@dataclass
class TrainArgs:
    """Everything ``train.py`` takes (see its ``--help``)."""

    out: Path
    config: str | None = None
    algo: str | None = None
    timesteps: int = 200_000
    seed: int = 0
    resume: bool = False
    force: bool = False
    agent_config: str | None = None
    eval_config: str | None = None
    num_envs: int | None = None
    final_seeds: int = 5
    final_decisions: int | None = None
    progress: bool = True
    threads: int = 1
    rate_multiplier: float | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What a run trains and evaluates on."""

    config: str
    scenario: Scenario
    env_cfg: EnvConfig
    eval_scenario: Scenario
    eval_env_cfg: EnvConfig
    eval_config: str | None
    agent: AgentConfig
    seed: int
    rate_multiplier: float | None
    spaces: dict[str, Any]  # the training config's spaces signature (see agents/run.py)


def _prepare(a: TrainArgs) -> tuple[Context, dict[str, Any] | None]:
    out = Path(a.out)
    meta: dict[str, Any] | None = None
    if a.resume:
        meta_path = out / "run.json"
        if not meta_path.is_file():
            raise ConfigError(f"--resume: {meta_path} not found (nothing to resume)")
        meta = read_meta(out)
        for name, given, stored in (
            ("--algo", a.algo, meta["algo"]),
            ("--config", a.config, meta["config"]),
            ("--seed", a.seed if a.seed != 0 else None, meta["seed"]),
        ):
            if given is not None and given != stored:
                raise ConfigError(f"--resume: {name} {given!r} differs from the run's {stored!r}")
        algo, config, seed = meta["algo"], meta["config"], int(meta["seed"])
        rate = meta.get("rate_multiplier")
        agent = parse_agent_config(algo, meta["agent"]["raw"], f"{out}/run.json: agent")
        eval_config = meta.get("eval_config")
    else:
        if replaceable_out(out, a.force, "run.json", "run", "continue it with --resume, or "):
            shutil.rmtree(out)
        algo = a.algo or "ppo"
        cls = algo_class(algo)
        config = a.config or "paper_prfaas"
        seed = a.seed
        raw = load_yaml_mapping(agent_config_path(algo, a.agent_config))
        raw = _apply_overrides(raw, a.overrides, a.num_envs)
        agent = parse_agent_config(algo, raw, a.agent_config or f"configs/agents/{algo}.yaml", cls)
        eval_config = a.eval_config
        rate = a.rate_multiplier
    scenario, env_cfg = resolve_config(config)
    if eval_config is not None:
        eval_sc, eval_cfg = resolve_config(eval_config)
    else:
        eval_sc, eval_cfg = held_out_config(scenario) or (scenario, env_cfg)
    if rate is not None:
        scenario, eval_sc = scenario.with_rate(rate), eval_sc.with_rate(rate)
    sig = spaces_signature(scenario, env_cfg)
    check_spaces(sig, eval_sc, eval_cfg, "the training config")
    ctx = Context(config, scenario, env_cfg, eval_sc, eval_cfg, eval_config, agent, seed, rate, sig)
    return ctx, meta


def _apply_overrides(
    raw: dict[str, Any], overrides: dict[str, Any], num_envs: int | None
) -> dict[str, Any]:
    """``--set section.key=value`` overrides (and ``--num-envs``) on the agent mapping."""
    out = json.loads(json.dumps(raw))
    if num_envs is not None:
        out["num_envs"] = num_envs
    for dotted, value in overrides.items():
        node = out
        parts = dotted.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {dotted}: {p} is not a section")
        node[parts[-1]] = value
    return out


def evaluate_policy(
    scenario: Scenario,
    env_cfg: EnvConfig,
    factory: Callable[[Scenario], Any],
    name: str,
    seeds: list[int],
    decisions: int,
) -> Run:
    """One policy on ``seeds`` of ``scenario`` (the observation staleness of ``env_cfg``)."""
    return run_policy(
        scenario, factory, name, seeds, decisions, staleness_s=env_cfg.bandwidth_staleness_s
    )


def baseline_runs(
    scenario: Scenario, env_cfg: EnvConfig, seeds: list[int], decisions: int
) -> dict[str, Run]:
    """Every heuristic that applies to ``scenario``, run on ``seeds``."""
    runs = {}
    for name in policy_names():
        factory = heuristic(name)
        try:
            factory(scenario)
        except NotApplicableError:
            continue
        runs[name] = evaluate_policy(scenario, env_cfg, factory, name, seeds, decisions)
    return runs


def means(run: Run) -> dict[str, float]:
    return {k: float(np.nanmean(run.metrics[k])) for k in METRICS}


def _better(metric: str, a: float, b: float) -> bool:
    return a < b if EVAL_METRICS[metric] else a > b


def _improves(
    keeps_up: bool,
    value: float,
    throughput: float,
    best_keeps_up: bool,
    best: float,
    best_throughput: float,
    metric: str,
) -> bool:
    """Checkpoint selection: keeping up with the best heuristic's throughput comes first;
    among checkpoints that do not keep up, higher throughput (by more than 1 %) comes next;
    then ``metric``."""
    if keeps_up != best_keeps_up:
        return keeps_up
    if not keeps_up and abs(throughput - best_throughput) > (1 - KEEP_UP) * max(
        throughput, best_throughput
    ):
        return throughput > best_throughput
    return _better(metric, value, best)


def _versions() -> dict[str, str]:
    return package_versions("gymnasium", "stable-baselines3", "torch", "numpy")


def train(a: TrainArgs, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) training; returns the final summary written into ``run.json``.

    The steps, in order: resolve what to train on; build the environment stack; build (or
    load) the model; clone a heuristic first if the agent file asks; score the heuristics
    once on the validation seeds; learn, evaluating and checkpointing periodically; save;
    run the final table on the test seeds.
    """
    ctx, meta = _prepare(a)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, a.threads))
    venv, vecnorm, timed = _environment(ctx, out, meta)
    model = _model(ctx, out, meta, timed, a.timesteps, echo)
    pretrained = _pretrain(ctx, meta, model, timed, venv, echo)
    run_meta = _run_record(ctx, meta, a, pretrained)
    _write_json(out / "run.json", run_meta)
    base_scores = _baseline_scores(ctx, out, echo)
    session = _learn(ctx, out, a, meta, model, vecnorm, timed, base_scores, pretrained, echo)
    run_meta["history"].append(session)
    run_meta["status"] = session["status"]
    run_meta["timesteps_done"] = int(model.num_timesteps)
    if session["status"] == "interrupted":
        _write_json(out / "run.json", run_meta)
        echo(
            f"\ninterrupted at {model.num_timesteps:,} timesteps; checkpoint saved. Continue with:"
            f"\n  python train.py --out {out} --resume --timesteps {a.timesteps}"
        )
        return run_meta
    save_snapshot(model, vecnorm, out, "model")
    run_meta["final"] = final_evaluation(ctx, out, a, echo)
    _write_json(out / "run.json", run_meta)
    return run_meta


def _environment(
    ctx: Context, out: Path, meta: dict[str, Any] | None
) -> tuple[SB3VecEnv, VecNormalize | None, TimedVecEnv]:
    """The training stack: the native vector env (SAME_STEP) as an SB3 VecEnv, episode
    statistics, observation/reward normalisation (restored on resume), a timer."""
    venv = SB3VecEnv.from_config(
        ctx.config, ctx.agent.num_envs, rate_multiplier=ctx.rate_multiplier
    )
    monitor = VecMonitor(venv)
    ck = out / "checkpoints"
    if meta is not None and not (ck / "latest.zip").is_file():
        raise ConfigError(f"--resume: {ck}/latest.zip not found (no checkpoint was saved)")
    vecnorm: VecNormalize | None = None
    if meta is not None and (ck / "latest_vecnormalize.pkl").is_file():
        vecnorm = VecNormalize.load(str(ck / "latest_vecnormalize.pkl"), monitor)
    elif ctx.agent.normalize_observation or ctx.agent.normalize_reward:
        vecnorm = VecNormalize(
            monitor,
            norm_obs=ctx.agent.normalize_observation,
            norm_reward=ctx.agent.normalize_reward,
            clip_obs=ctx.agent.clip,
            gamma=float(ctx.agent.hyperparameters.get("gamma", 0.99)),
            norm_obs_keys=["observation"] if ctx.env_cfg.dict_observation else None,
        )
    return venv, vecnorm, TimedVecEnv(vecnorm if vecnorm is not None else monitor)


def _model(
    ctx: Context,
    out: Path,
    meta: dict[str, Any] | None,
    timed: TimedVecEnv,
    timesteps: int,
    echo: Callable[[str], None],
) -> Any:
    """A fresh model, or the latest checkpoint's when resuming."""
    tb = str(out / "tb")
    if meta is None:
        return make_model(ctx.agent, timed, ctx.seed, tensorboard_log=tb)
    cls = algo_class(ctx.agent.algo)
    model = cls.load(
        out / "checkpoints" / "latest.zip", env=timed, device="cpu", tensorboard_log=tb
    )
    timed.seed(ctx.seed + int(model.num_timesteps))
    echo(f"resuming {out} at {model.num_timesteps:,} of {timesteps:,} timesteps")
    return model


def _pretrain(
    ctx: Context,
    meta: dict[str, Any] | None,
    model: Any,
    timed: TimedVecEnv,
    venv: SB3VecEnv,
    echo: Callable[[str], None],
) -> dict[str, Any] | None:
    """Behaviour cloning of the agent file's heuristic into a fresh model (the figures of a
    resumed run's cloning are kept from its run.json)."""
    if meta is not None:
        return meta.get("pretrain")
    name = ctx.agent.pretrain.policy
    if name is None:
        return None
    t = time.perf_counter()
    topo = ctx.scenario.topology
    teacher = make_policy(
        name,
        RouteTable.from_topology(topo, ctx.env_cfg.admission_control),
        topo,
        **heuristic_params(ctx.scenario, name),
    )
    figures: dict[str, Any] = behaviour_clone(
        model, timed, venv.env, teacher, ctx.agent.pretrain, echo
    )
    figures["seconds"] = time.perf_counter() - t
    return figures


def _run_record(
    ctx: Context, meta: dict[str, Any] | None, a: TrainArgs, pretrained: dict[str, Any] | None
) -> dict[str, Any]:
    """The run.json of this run (status "running" until it ends)."""
    return {
        "format": RUN_FORMAT,
        "status": "running",
        "algo": ctx.agent.algo,
        "seed": ctx.seed,
        "config": ctx.config,
        "config_source": ctx.scenario.source,
        "rate_multiplier": ctx.rate_multiplier,
        "eval_config": ctx.eval_config,
        "eval_source": ctx.eval_scenario.source,
        "timesteps_target": a.timesteps,
        "spaces": ctx.spaces,
        "agent": {"raw": _raw_of(ctx.agent), "resolved": ctx.agent.to_dict()},
        "versions": _versions(),
        "history": (meta or {}).get("history", []),
        "pretrain": pretrained,
    }


def _baseline_scores(
    ctx: Context, out: Path, echo: Callable[[str], None]
) -> dict[str, dict[str, float]]:
    """The heuristics' mean metrics on the validation seeds of the held-out scenario, cached
    in baselines.json (they do not change during a run)."""
    ev = ctx.agent.evaluation
    path = out / "baselines.json"
    if path.is_file():
        scores: dict[str, dict[str, float]] = json.loads(path.read_text())["scores"]
        return scores
    seeds = seed_range(VALIDATION_SEED, ev.seeds)
    echo(f"evaluating the heuristics on {ctx.eval_scenario.source} (validation seeds)")
    runs = baseline_runs(ctx.eval_scenario, ctx.eval_env_cfg, seeds, ev.decisions)
    scores = {n: means(r) for n, r in runs.items()}
    _write_json(path, {"seeds": seeds, "decisions": ev.decisions, "scores": scores})
    return scores


class _Selector:
    """Periodic evaluation on the validation seeds, TensorBoard ``eval/`` scalars, and the
    choice of the best checkpoint (:func:`_improves`), kept in ``best/`` and best.json."""

    def __init__(
        self,
        ctx: Context,
        out: Path,
        model: Any,
        vecnorm: VecNormalize | None,
        base_scores: dict[str, dict[str, float]],
        progress: ProgressCallback,
        echo: Callable[[str], None],
    ) -> None:
        self.ctx, self.out, self.model, self.vecnorm = ctx, out, model, vecnorm
        self.progress = progress
        ev = ctx.agent.evaluation
        self.metric = ev.metric
        self.seeds = seed_range(VALIDATION_SEED, ev.seeds)
        self.best_name = best_baseline(base_scores, ev.metric)
        self.best_value = base_scores[self.best_name][ev.metric]
        self.best_rps = base_scores[self.best_name]["throughput_rps"]
        echo(f"best heuristic on {ev.metric}: {self.best_name} ({self.best_value:.4g})")
        path = out / "best.json"
        self.best_so_far = json.loads(path.read_text()) if path.is_file() else None
        # the agent as a router on the held-out scenario (spaces checked once, in _prepare)
        self.run = TrainedRun(out, {"spaces": ctx.spaces}, model, normalizer_of(vecnorm))
        self.policy = self.run.policy(ctx.eval_scenario, ctx.eval_env_cfg)

    def evaluate(self, step: int) -> None:
        ctx, metric = self.ctx, self.metric
        self.run.normalizer = normalizer_of(self.vecnorm)  # the statistics as they are now
        run = evaluate_policy(
            ctx.eval_scenario,
            ctx.eval_env_cfg,
            lambda _sc: self.policy,
            "agent",
            self.seeds,
            ctx.agent.evaluation.decisions,
        )
        score = means(run)
        log = self.model.logger
        for k, v in score.items():
            log.record(f"eval/{k}", v)
        log.record(f"eval/baseline_{metric}", self.best_value)
        rel = score[metric] / self.best_value - 1.0 if self.best_value else float("nan")
        log.record(f"eval/{metric}_vs_baseline", rel)
        log.dump(step)
        self.progress.set_postfix(**{metric: f"{score[metric]:.3g}", "vs_best": f"{rel:+.1%}"})
        # a checkpoint that serves fewer requests than the best heuristic (backlog) never
        # beats one that keeps up, whatever its latency; among backlogged ones, the one that
        # serves more wins
        keeps_up = score["throughput_rps"] >= KEEP_UP * self.best_rps
        best = self.best_so_far
        if best is None or _improves(
            keeps_up,
            score[metric],
            score["throughput_rps"],
            best.get("keeps_up", True),
            best["score"],
            best["metrics"]["throughput_rps"],
            metric,
        ):
            save_snapshot(self.model, self.vecnorm, self.out / "best", "model")
            self.best_so_far = {
                "step": step,
                "score": score[metric],
                "keeps_up": keeps_up,
                "metrics": score,
            }
            _write_json(self.out / "best.json", self.best_so_far)


def _learn(
    ctx: Context,
    out: Path,
    a: TrainArgs,
    meta: dict[str, Any] | None,
    model: Any,
    vecnorm: VecNormalize | None,
    timed: TimedVecEnv,
    base_scores: dict[str, dict[str, float]],
    pretrained: dict[str, Any] | None,
    echo: Callable[[str], None],
) -> dict[str, Any]:
    """SB3's ``learn`` up to the target timesteps with evaluation, checkpoints, progress and
    timing; Ctrl-C stops it with a checkpoint. Returns this session's record."""
    progress = ProgressCallback(a.timesteps, disable=not a.progress)
    timing = TimingCallback(timed)
    selector = _Selector(ctx, out, model, vecnorm, base_scores, progress, echo)

    def checkpoint_now(step: int) -> None:
        save_snapshot(model, vecnorm, out / "checkpoints", "latest")

    # a cloned policy is a candidate too: PPO must improve on it to replace it
    cloned = meta is None and pretrained is not None
    periodic_eval = PeriodicCallback(ctx.agent.evaluation.every_steps, selector.evaluate, cloned)
    periodic_ckpt = PeriodicCallback(ctx.agent.checkpoint_every_steps, checkpoint_now)
    callbacks = [progress, timing, EnvMetricsCallback(), periodic_eval, periodic_ckpt]
    start_steps = int(model.num_timesteps)
    remaining = max(a.timesteps - start_steps, 0)
    t0 = time.perf_counter()
    status = "finished"
    try:
        if remaining > 0:
            model.learn(
                total_timesteps=remaining,
                callback=callbacks,
                tb_log_name="run",
                reset_num_timesteps=meta is None,
            )
        best = selector.best_so_far
        if best is None or best.get("step") != model.num_timesteps:
            selector.evaluate(int(model.num_timesteps))
    except KeyboardInterrupt:
        status = "interrupted"
        progress._on_training_end()
    checkpoint_now(int(model.num_timesteps))
    split = timing.split(periodic_eval.spent_s + periodic_ckpt.spent_s) if remaining > 0 else {}
    if split and status == "finished":
        echo(
            f"\ntrained {split['steps']:,.0f} steps in {split['train_wall_s']:.0f} s "
            f"({split['steps_per_s']:,.0f} steps/s; environment {split['env_s']:.0f} s, "
            f"policy inference {split['policy_s']:.0f} s, updates {split['update_s']:.0f} s; "
            f"periodic evaluation {periodic_eval.spent_s:.0f} s more)"
        )
    return {
        "started_at_step": start_steps,
        "ended_at_step": int(model.num_timesteps),
        "wall_s": time.perf_counter() - t0,
        "timing": split,
        "eval_s": periodic_eval.spent_s,
        "status": status,
    }


def final_evaluation(
    ctx: Context, out: Path, a: TrainArgs, echo: Callable[[str], None]
) -> dict[str, Any]:
    """The agent (best validation checkpoint) and every heuristic on the test seeds of the
    held-out scenario; prints the table and writes ``final_eval.json``."""
    ev = ctx.agent.evaluation
    decisions = a.final_decisions or ev.decisions
    seeds = seed_range(TEST_SEED, a.final_seeds)
    trained = load_run(out, "selected")
    pol = trained.policy(ctx.eval_scenario, ctx.eval_env_cfg)
    runs = {
        "agent": evaluate_policy(
            ctx.eval_scenario, ctx.eval_env_cfg, lambda _sc: pol, "agent", seeds, decisions
        )
    }
    runs.update(baseline_runs(ctx.eval_scenario, ctx.eval_env_cfg, seeds, decisions))
    records = [r for run in runs.values() for r in run.records()]
    _write_json(out / "final_eval.json", records)
    scores = {n: means(r) for n, r in runs.items()}
    best = best_baseline({n: s for n, s in scores.items() if n != "agent"}, ev.metric)
    rows = {n: {k: interval(r.metrics[k]) for k in METRICS} for n, r in runs.items()}
    echo(
        f"\nfinal evaluation on {ctx.eval_scenario.source}: {len(seeds)} seeds x {decisions} "
        f"requests (seeds {seeds[0]}..{seeds[-1]}), mean ± 95% interval (TTFT/TPOT in s)"
    )
    echo(table(rows, list(METRICS)))
    ag, bs = scores["agent"], scores[best]
    rel = ag[ev.metric] / bs[ev.metric] - 1.0 if bs[ev.metric] else float("nan")
    echo(
        f"\nagent {ev.metric} {ag[ev.metric]:.4g} vs best heuristic {best} {bs[ev.metric]:.4g} "
        f"({rel:+.1%}); throughput {ag['throughput_rps']:.3f} vs {bs['throughput_rps']:.3f} req/s"
        f"\nwrote {out}/final_eval.json"
    )
    shipped = _pretrained_row(ctx, seeds, decisions, scores[best], best, ev.metric, echo)
    return {
        "metric": ev.metric,
        "agent": ag,
        "pretrained": shipped,
        "best_heuristic": best,
        "best_heuristic_metrics": bs,
        "relative": rel,
        "seeds": seeds,
        "decisions": decisions,
    }


def _pretrained_row(
    ctx: Context,
    seeds: list[int],
    decisions: int,
    best_scores: dict[str, float],
    best: str,
    metric: str,
    echo: Callable[[str], None],
) -> dict[str, float] | None:
    """The shipped generalist (``pretrained:generalist``, trained on other scenarios) on the
    final table's requests: its row, and how it compares with the best heuristic."""
    from prfaas_env.router import pretrained_names
    from prfaas_env.router.routes import bundle_policy_for

    if "generalist" not in pretrained_names() or ctx.eval_env_cfg.admission_control:
        return None
    label = "pretrained:generalist"
    policy = bundle_policy_for(ctx.eval_scenario, label, label)
    run = evaluate_policy(
        ctx.eval_scenario, ctx.eval_env_cfg, lambda _sc: policy, label, seeds, decisions
    )
    echo(
        f"\nthe shipped generalist (trained on other scenarios; its guard sent "
        f"{policy.stats()['guard_fired']:.1%} of decisions to its fallback) on the same requests:"
    )
    echo(table({label: {k: interval(run.metrics[k]) for k in METRICS}}, list(METRICS)))
    mine = means(run)
    rel = mine[metric] / best_scores[metric] - 1.0 if best_scores[metric] else float("nan")
    echo(
        f"{label} {metric} {mine[metric]:.4g} vs best heuristic {best} {best_scores[metric]:.4g} "
        f"({rel:+.1%}); throughput {mine['throughput_rps']:.3f} vs "
        f"{best_scores['throughput_rps']:.3f} req/s"
    )
    return mine


def _raw_of(cfg: AgentConfig) -> dict[str, Any]:
    d = cfg.to_dict()
    return {k: v for k, v in d.items() if k != "source"}


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_json_default) + "\n")
    tmp.replace(path)


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
