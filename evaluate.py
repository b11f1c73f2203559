"""Compare routing policies on one scenario: throughput, tail TTFT, SLO attainment.

    python evaluate.py --config paper_prfaas --policies all --seeds 3 --out runs/eval_paper
    python evaluate.py --config paper_prfaas --policies prfaas_threshold,mooncake --sweep-rate

Prints a table (policy x metric, mean and 95 % interval over seeds) and writes to ``--out``:
``results.json`` (one record per policy and seed), ``results.csv`` (the same),
``ttft_cdf.png`` and, with ``--sweep-rate``, ``goodput.png`` (goodput against arrival rate)
and each policy's ``max_rps`` (highest throughput at which SLO attainment stays >= 90 %).
``--analytic`` adds the paper's throughput model (Lambda_max at the best threshold) for
scenarios of the paper's shape.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from prfaas_env.env.config import resolve_config
from prfaas_env.errors import ConfigError, NotApplicableError, UnknownNameError
from prfaas_env.evaluation import METRICS, heuristic, interval, run_policy, sweep_max_rate
from prfaas_env.policies import PLANNERS, policy_names
from prfaas_env.report import table, write_outputs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--config", default=None, help="config name or YAML path (default: paper_prfaas)"
    )
    ap.add_argument(
        "--suite",
        default=None,
        metavar="NAME",
        help="evaluate on every scenario of a suite (a shipped name such as 'default', or a "
        "folder with train/ and held_out/) instead of one config",
    )
    ap.add_argument(
        "--scenarios", default=None, help="with --suite: comma-separated scenario names only"
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=None,
        help="with --suite: worker processes (default: the machine's cores)",
    )
    ap.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="with --suite: run the work as Ray tasks on this cluster ('auto' to join one)",
    )
    ap.add_argument(
        "--policies",
        default="all",
        help="'all' (every heuristic), 'none' or comma-separated names; 'rollout_oracle' adds "
        "the oracle (a bound that sees the future, not a router), e.g. all,rollout_oracle",
    )
    ap.add_argument(
        "--agent",
        action="append",
        default=[],
        metavar="RUN",
        help="a train.py run folder or an exported bundle to evaluate next to the policies "
        "(repeatable); a run acts with its best checkpoint, or its final model with RUN:final",
    )
    ap.add_argument(
        "--policy-params",
        default=None,
        metavar="YAML",
        help="a YAML file whose 'policies:' section sets policy parameters (e.g. a bundle's "
        "distilled.yaml); overrides the config's own policies: section",
    )
    ap.add_argument("--seeds", type=int, default=3, help="seeds per policy (default 3)")
    ap.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    ap.add_argument("--decisions", type=int, default=2000, help="requests routed per seed")
    ap.add_argument("--out", default=None, help="output folder (must not exist unless --force)")
    ap.add_argument("--force", action="store_true", help="write into an existing --out")
    ap.add_argument(
        "--rate-multiplier",
        type=float,
        default=None,
        help="scale the scenario's arrival rate (as train.py --rate-multiplier does)",
    )
    ap.add_argument("--sweep-rate", action="store_true", help="find each policy's max_rps")
    ap.add_argument("--analytic", action="store_true", help="print the paper's model too")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.decisions < 1:
        ap.error("--seeds and --decisions must be positive")
    if args.rate_multiplier is not None and not args.rate_multiplier > 0:
        ap.error("--rate-multiplier must be positive")
    if args.suite is not None:
        for flag, value in (
            ("--config", args.config),
            ("--sweep-rate", args.sweep_rate or None),
            ("--analytic", args.analytic or None),
            ("--rate-multiplier", args.rate_multiplier),
        ):
            if value is not None:
                ap.error(f"{flag} does not apply with --suite (each scenario runs at its own rate)")
    elif args.scenarios or args.ray or args.workers is not None:
        ap.error("--scenarios, --workers and --ray apply with --suite only")
    if args.workers is not None and args.workers < 1:
        ap.error("--workers must be positive")
    return args


def select_policies(spec: str) -> list[str]:
    """Policy names from ``all`` or a comma-separated list (unknown names are errors)."""
    known = policy_names()
    if spec == "none":
        return []
    names: list[str] = []
    for n in (s.strip() for s in spec.split(",") if s.strip()):
        if n == "all":  # every heuristic; planners (the oracle) only when named
            names += [k for k in known if k not in names]
        elif n in known or n in PLANNERS:
            names.append(n)
        else:
            raise UnknownNameError("policy", n, [*known, *PLANNERS])
    return names


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.suite is not None:
        return main_suite(args)
    try:
        names = select_policies(args.policies)
        scenario, env_cfg = resolve_config(args.config)
        if args.rate_multiplier is not None:
            scenario = scenario.with_rate(args.rate_multiplier)
        params = read_policy_params(args.policy_params)
        factories = {n: heuristic(n, **params.get(n, {})) for n in names}
        factories.update(agent_factories(args.agent, scenario, env_cfg))
    except (ConfigError, UnknownNameError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not factories:
        print("error: nothing to evaluate (--policies none and no --agent)", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.force:
        print(f"error: {out} exists; choose another --out or pass --force", file=sys.stderr)
        return 2
    seeds = list(range(args.seed, args.seed + args.seeds))
    from tqdm import tqdm

    records: list[dict[str, Any]] = []
    rows: dict[str, dict[str, tuple[float, float]]] = {}
    cdfs: dict[str, np.ndarray] = {}
    sweeps: dict[str, Any] = {}
    bar = tqdm(
        total=len(factories) * args.decisions,
        desc="evaluating",
        unit="step",
        disable=args.no_progress,
    )
    for name, factory in factories.items():
        try:
            policy = factory(scenario)  # fresh: used for the main run below
        except NotApplicableError as exc:  # e.g. the paper's model on another topology shape
            bar.write(f"skipping {name}: {exc}")
            bar.update(args.decisions)
            continue
        except ConfigError as exc:  # a bad parameter in the config's policies: section
            bar.close()
            print(f"error: {exc}", file=sys.stderr)
            return 2
        bar.set_postfix_str(name)
        run = run_policy(
            scenario,
            lambda _sc, p=policy: p,
            name,
            seeds,
            args.decisions,
            progress=bar.update,
            staleness_s=env_cfg.bandwidth_staleness_s,
        )
        recs = run.records()
        rows[name] = {k: interval(run.metrics[k]) for k in METRICS}
        cdfs[name] = run.ttft_s
        if args.sweep_rate:
            sw = sweep_max_rate(
                scenario, factory, name, seeds, args.decisions, env_cfg.bandwidth_staleness_s
            )
            sweeps[name] = sw
            rows[name]["max_rps"] = (sw.max_rps, 0.0)
            for r in recs:
                r["max_rps"] = sw.max_rps
        records += recs
    bar.close()
    keys = list(METRICS) + (["max_rps"] if args.sweep_rate else [])
    print(
        f"\n{scenario.source}: {len(seeds)} seeds x {args.decisions} requests, mean ± 95% "
        f"interval (TTFT/TPOT in s)"
    )
    print(table(rows, keys))
    if args.analytic:
        print_analytic(scenario)
    if out is not None:
        write_outputs(out, records, keys, cdfs, sweeps, scenario.ttft_slo_s)
        print(
            f"\nwrote {out}/results.json, results.csv, ttft_cdf.png"
            + (", goodput.png" if sweeps else "")
        )
    return 0


ORACLE_ROUTES_WARN = 16  # routes above which the full oracle takes hours per scenario


def main_suite(args: argparse.Namespace) -> int:
    """``--suite``: every router on every scenario of the suite (prfaas_env.suite_eval)."""
    from tqdm import tqdm

    from prfaas_env.report import headroom_table, suite_table, write_suite_outputs
    from prfaas_env.suite_eval import builtin_spec, default_workers, evaluate_suite

    try:
        names = select_policies(args.policies)
        params = read_policy_params(args.policy_params)
        specs = [builtin_spec(n, params.get(n)) for n in names]
        specs += agent_specs(args.agent)
        suite_spec = args.suite
        from prfaas_env.suite import load_suite

        suite = load_suite(suite_spec)
        wanted = [x.strip() for x in args.scenarios.split(",")] if args.scenarios else None
        for n in wanted or []:
            suite.get(n)
    except (ConfigError, UnknownNameError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not specs:
        print("error: nothing to evaluate (--policies none and no --agent)", file=sys.stderr)
        return 2
    from prfaas_env.evaluation import heuristic_params

    for spec in specs:  # the oracle simulates every route per decision unless told otherwise
        if spec.kwargs.get("name") == "rollout_oracle" and "candidates" not in spec.kwargs:
            large = [
                f"{s.name} ({len(s.scenario.topology.routes)} routes)"
                for s in suite.scenarios
                if len(s.scenario.topology.routes) > ORACLE_ROUTES_WARN
                and (not wanted or s.name in wanted)
                and "candidates" not in heuristic_params(s.scenario, "rollout_oracle")
            ]
            if large:
                print(
                    "note: rollout_oracle simulates every route at each decision on "
                    f"{', '.join(large)}: expect hours; 'candidates: K' shortlists routes "
                    "(--policy-params configs/suite_params/oracle_shortlist.yaml)",
                    file=sys.stderr,
                )
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.force:
        print(f"error: {out} exists; choose another --out or pass --force", file=sys.stderr)
        return 2
    seeds = list(range(args.seed, args.seed + args.seeds))
    count = len(wanted) if wanted else len(suite.scenarios)
    bar = tqdm(
        total=count * len(specs) * len(seeds) * args.decisions,
        desc=f"suite {suite.name}",
        unit="decision",
        unit_scale=True,
        disable=args.no_progress,
    )
    try:
        result = evaluate_suite(
            suite_spec,
            specs,
            seeds,
            args.decisions,
            workers=args.workers or default_workers(),
            ray_address=args.ray,
            scenarios=wanted,
            progress=bar.update,
        )
    except ConfigError as exc:
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bar.close()
    for (scenario, policy), reason in sorted(result.skipped.items()):
        print(f"skipped {policy} on {scenario}: {reason}")
    print(
        f"\nsuite {suite.name}: {count} scenarios, {len(seeds)} seeds x {args.decisions} "
        f"requests each (seeds {seeds[0]}..{seeds[-1]}), the same requests for every router"
    )
    print(suite_table(result))
    headroom = headroom_table(result)
    if headroom:
        print("\nheadroom: the planner against the best heuristic, and the learned routers\n")
        print(headroom)
    if out is not None:
        write_suite_outputs(out, result)
        written = "results.json, results.csv, summary.json, heatmap.png"
        if headroom:
            (out / "headroom.md").write_text(headroom + "\n")
            written += ", headroom.md"
        else:  # no planner ran: an earlier run's table must not sit beside these results
            (out / "headroom.md").unlink(missing_ok=True)
        print(f"\nwrote {out}/{written}")
    return 0


def agent_specs(runs: list[str]) -> list[Any]:
    """:class:`~prfaas_env.suite_eval.PolicySpec` of each ``--agent RUN[:final]`` (a train.py
    run folder or an exported bundle), for suite evaluation."""
    from prfaas_env.suite_eval import PolicySpec

    out = []
    for spec in runs:
        kind, root = agent_kind(spec)
        if kind == "route_bundle":
            out.append(
                PolicySpec(
                    _label(spec, root),
                    "prfaas_env.router.routes:bundle_policy_for",
                    {"path": str(root), "label": _label(spec, root)},
                    "learned",
                )
            )
            continue
        if kind == "generalist":
            out.append(
                PolicySpec(
                    f"generalist:{root.name}",
                    "agents.generalist:generalist_policy",
                    {"path": str(root)},
                    "learned",
                )
            )
            continue
        which = spec.partition(":")[2] or "selected"
        if kind == "bundle":
            out.append(
                PolicySpec(
                    f"bundle:{root.name}", "evaluate:suite_bundle", {"path": str(root)}, "learned"
                )
            )
        else:
            out.append(
                PolicySpec(
                    f"agent:{root.name}",
                    "evaluate:suite_run",
                    {"path": str(root), "which": which},
                    "learned",
                )
            )
    return out


def agent_kind(spec: str) -> tuple[str, Path]:
    """What ``--agent spec`` names: ``route_bundle`` (a per-route bundle folder or
    ``pretrained:NAME``), ``generalist`` (a ``train.py --suite`` run), ``bundle`` or ``run``
    (one scenario's); ConfigError for anything else."""
    from prfaas_env.router import resolve_bundle
    from prfaas_env.router.routes import is_route_bundle

    if spec.startswith("pretrained:"):
        root = resolve_bundle(spec)
        return "route_bundle", root
    path, _, which = spec.partition(":")
    if which not in ("", "final"):
        raise ConfigError(f"--agent {spec}: after ':' only 'final' is allowed")
    root = Path(path).resolve()
    if not root.is_dir():
        raise ConfigError(f"--agent {spec}: no such run or bundle folder")
    if is_route_bundle(root):
        return "route_bundle", root
    if (root / "run.json").is_file():
        import json

        try:
            kind = json.loads((root / "run.json").read_text()).get("kind")
        except ValueError as exc:
            raise ConfigError(f"{root}/run.json: invalid JSON: {exc}") from exc
        if kind == "generalist":
            return "generalist", root
        return "run", root
    return "bundle", root


def _label(spec: str, root: Path) -> str:
    return spec if spec.startswith("pretrained:") else f"bundle:{root.name}"


def suite_run(scenario: Any, path: str, which: str) -> Any:
    """A train.py run as a policy on ``scenario`` of a suite (NotApplicableError when it
    was trained on other observation features or actions)."""
    from agents.run import load_run
    from prfaas_env.env.config import parse_env_config

    env_cfg = parse_env_config((scenario.raw or {}).get("env"), f"{scenario.source}: env")
    try:
        return load_run(path, which).policy(scenario, env_cfg, label=f"agent:{Path(path).name}")
    except ConfigError as exc:
        if "does not match" in str(exc):
            raise NotApplicableError(str(exc)) from exc
        raise


def suite_bundle(scenario: Any, path: str) -> Any:
    """An exported bundle as a policy on ``scenario`` of a suite (NotApplicableError when
    its features or actions differ from the scenario's)."""
    from prfaas_env.env.config import parse_env_config

    env_cfg = parse_env_config((scenario.raw or {}).get("env"), f"{scenario.source}: env")
    try:
        return bundle_policy(Path(path), scenario, env_cfg)
    except ConfigError as exc:
        if "does not match" in str(exc):
            raise NotApplicableError(str(exc)) from exc
        raise


def agent_factories(runs: list[str], scenario: Any, env_cfg: Any) -> dict[str, Any]:
    """``agent:NAME`` -> policy factory for each ``--agent RUN[:final]`` (ConfigError when a
    run is missing a file or was trained on other observation or action spaces)."""
    if not runs:
        return {}
    from agents.run import load_run  # imports torch and SB3, so only when --agent is given

    out: dict[str, Any] = {}
    for spec in runs:
        kind, root = agent_kind(spec)
        if kind == "route_bundle":
            from prfaas_env.router.routes import bundle_policy_for

            policy = bundle_policy_for(scenario, root, _label(spec, root))
            out[policy.name] = lambda _sc, p=policy: p
            continue
        if kind == "generalist":
            from agents.generalist import generalist_policy

            policy = generalist_policy(scenario, str(root))
            out[policy.name] = lambda _sc, p=policy: p
            continue
        path, _, which = spec.partition(":")
        which = which or "selected"
        root = Path(path)
        if (root / "manifest.json").is_file() and not (root / "run.json").is_file():
            if which != "selected":
                raise ConfigError(f"--agent {spec}: a bundle holds one policy; drop ':{which}'")
            policy = bundle_policy(root, scenario, env_cfg)
        else:
            policy = load_run(root, which).policy(scenario, env_cfg, label=f"agent:{root.name}")
        out[policy.name] = lambda _sc, p=policy: p
    return out


def read_policy_params(path: str | None) -> dict[str, dict[str, Any]]:
    """``{policy: {parameter: value}}`` from the ``policies:`` section of a YAML file
    (ConfigError naming the file and key for anything else)."""
    if path is None:
        return {}
    from prfaas_env.errors import load_yaml_mapping
    from prfaas_env.evaluation import check_policies_section

    raw = load_yaml_mapping(path)
    return check_policies_section(raw.get("policies"), f"--policy-params {path}: policies")


def bundle_policy(root: Path, scenario: Any, env_cfg: Any) -> Any:
    """An exported bundle as a policy on ``scenario`` (ConfigError when its features or
    actions differ from the config's)."""
    from prfaas_env.env.spaces import check_spaces
    from prfaas_env.router.core import BundlePolicy, Router

    router = Router(root)
    sig = {"features": router.bundle.features, "actions": router.bundle.actions}
    check_spaces(sig, scenario, env_cfg, str(root), form=False)  # the graph takes the Box form
    return BundlePolicy(router, router.live.routes, f"bundle:{root.name}")


def print_analytic(scenario: Any) -> None:
    from prfaas_env.policies.analytic import PaperSystem, optimise

    try:
        system = PaperSystem.from_topology(scenario.topology, tpot_slo_s=scenario.tpot_slo_s)
    except NotApplicableError as exc:
        print(f"\nanalytic model: not applicable ({exc})")
        return
    w = scenario.workload
    out_tokens = w.mean_output_tokens()
    if w.trace is not None:
        lengths = w.trace.input_tokens.astype(float)
    else:
        rng = np.random.default_rng(0)
        d = w.input
        if d.kind == "fixed":
            lengths = np.full(10_000, float(d.tokens))
        else:
            x = np.exp(rng.normal(d.mu, d.sigma, 200_000))
            lengths = x[(x >= d.low) & (x <= d.high)][:50_000]
    for label, split in (("as deployed", False), ("best split", True)):
        c = optimise(system, lengths, out_tokens, split=split)
        print(
            f"\nanalytic model ({label}): Lambda_max {c.lambda_max:.2f} req/s at t = "
            f"{c.threshold_tokens:,.0f} tokens, {c.prefill_instances}P + {c.decode_instances}D"
            f" (offload p = {c.offload_probability:.2f}; paths: PrfaaS {c.theta_prfaas:.2f}, "
            f"PD-P {c.theta_pdp:.2f}, PD-D {c.theta_pdd:.2f} req/s)"
        )


if __name__ == "__main__":
    sys.exit(main())
