"""``python -m prfaas_env.gateway demo``: Envoy, the picker and an emulated deployment on
this machine, a short trace through them, and the same trace and policy in the simulator.

The scenario (``--config``, default ``paper_prfaas``) gives the topology and the workload:
its synthetic workload is drawn into a Mooncake-format trace (``--requests`` requests at
``--rate-multiplier`` times its rate), or ``--trace`` names a trace file. The emulated
deployment runs ``--time-scale`` times faster than the wall clock; every figure is in
deployment seconds. The summary's last line is one JSON object with at least ``requests``,
``responses``, ``status_5xx``, ``ttft_p90_s``, ``picker_decision_p99_ms`` and ``routes``
(requests per route as the servers reported it; ``default`` = Envoy's default route), plus
``sim_ttft_p90_s`` and ``ttft_p90_vs_sim`` (relative difference) unless ``--no-compare``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["add_demo_arguments", "run_demo", "run_demo_command", "simulate_trace"]


def simulate_trace(
    topology: dict[str, Any],
    trace: str | Path,
    requests: int,
    policy: str | None = None,
    bundle: str | None = None,
    params: dict[str, Any] | None = None,
    slo: dict[str, Any] | None = None,
    rate_multiplier: float = 1.0,
) -> dict[str, Any]:
    """Replay the first ``requests`` of ``trace`` (from its first request, at its own pace)
    through the simulator with ``topology`` and the same policy; TTFT percentiles (s) and
    routes per request."""
    import numpy as np

    from prfaas_env.evaluation import heuristic, run_policy
    from prfaas_env.sim.scenario import parse_scenario

    raw = {
        "topology": topology,
        "workload": {
            "kind": "trace",
            "trace": str(trace),
            "start": "first",
            "rate_multiplier": rate_multiplier,
        },
        "slo": slo or {},
    }
    sc = parse_scenario(raw, "gateway comparison")
    if bundle is not None:
        from prfaas_env.policies import RouteTable
        from prfaas_env.router import Router, resolve_bundle
        from prfaas_env.router.core import BundlePolicy
        from prfaas_env.router.routes import bundle_policy_for, is_route_bundle

        path = resolve_bundle(bundle)  # a folder or pretrained:NAME
        if is_route_bundle(path):  # one network for any topology: this one

            def factory(s: Any) -> Any:
                return bundle_policy_for(s, str(path), "bundle")

        else:

            def factory(s: Any) -> Any:
                return BundlePolicy(Router(path), RouteTable.from_topology(s.topology), "bundle")

        name = "bundle"
    else:
        factory = heuristic(str(policy), **(params or {}))
        name = str(policy)
    run = run_policy(sc, factory, name, [0], requests)
    ttft = run.ttft_s[np.isfinite(run.ttft_s)]
    labels = sc.topology.action_labels(False)
    out: dict[str, Any] = {
        "requests": int(run.ttft_s.size),
        "completed": int(ttft.size),
        "ttft_p50_s": float(np.percentile(ttft, 50)),
        "ttft_p90_s": float(np.percentile(ttft, 90)),
        "ttft_p99_s": float(np.percentile(ttft, 99)),
        "ttft_mean_s": float(ttft.mean()),
        "offload_fraction": float(np.nanmean(run.metrics["offload_fraction"])),
        "labels": labels,
    }
    return out


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="paper_prfaas", help="scenario: topology and workload")
    p.add_argument("--trace", help="replay this trace (Mooncake JSONL or shipped name) instead")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--rate-multiplier", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--policy", default=None, help="heuristic (default prfaas_threshold)")
    p.add_argument("--policy-params", help="the heuristic's parameters as a JSON object")
    p.add_argument("--bundle", help="decide with a policy bundle instead of a heuristic")
    p.add_argument("--time-scale", type=float, default=10.0)
    p.add_argument("--body-mode", default="BUFFERED", choices=["BUFFERED", "FULL_DUPLEX_STREAMED"])
    p.add_argument("--no-compare", action="store_true", help="skip the simulator's replay")
    p.add_argument("--out", help="keep the inventory, configs, logs and results here")


def run_case(
    topology: dict[str, Any],
    trace_path: str | Path,
    requests: int,
    work: Path,
    policy: str | None = "prfaas_threshold",
    bundle: str | None = None,
    params: dict[str, Any] | None = None,
    time_scale: float = 10.0,
    rate_multiplier: float = 1.0,
    body_mode: str = "BUFFERED",
    compare: bool = True,
    slo: dict[str, Any] | None = None,
    label: str = "",
) -> dict[str, Any]:
    """Replay the first ``requests`` of a trace through Envoy, the picker and an emulated
    deployment of ``topology`` (and, with ``compare``, through the simulator with the same
    policy); the summary of what the client saw (deployment seconds)."""
    from prfaas_env.gateway.loadgen import LoadOptions, replay, summarise, trace_requests
    from prfaas_env.gateway.stack import Stack

    reqs = trace_requests(trace_path, requests)
    print(
        f"demo: {len(reqs)} requests of {trace_path} over {label or 'the'} topology, policy "
        f"{bundle or policy}, deployment {time_scale:g}x wall speed",
        flush=True,
    )
    stack = Stack(
        topology,
        policy,
        bundle,
        time_scale,
        body_mode,
        workdir=work / "stack",
        policy_params=params,
    )
    with stack:
        print(
            f"demo: Envoy on {stack.url}, picker on 127.0.0.1:{stack.picker_port}, "
            f"{len(stack.inventory.endpoints)} emulated servers",
            flush=True,
        )
        opts = LoadOptions(
            url=stack.url,
            model="prfaas-1t-hybrid",
            time_scale=time_scale,
            rate_multiplier=rate_multiplier,
            duration_s=3600.0,
            timeout_s=600.0,
        )
        results, wall = asyncio.run(replay(reqs, opts))
        stats = stack.picker_stats()
    summary = summarise(results, wall, time_scale)
    summary["picker_decision_p50_ms"] = stats.get("decision_p50_ms")
    summary["picker_decision_p99_ms"] = stats.get("decision_p99_ms")
    summary["picker_fallbacks"] = stats.get("prfaas_gateway_fallbacks", {})
    summary["policy"] = bundle or policy
    summary["time_scale"] = time_scale
    if compare:
        sim = simulate_trace(
            topology, trace_path, len(reqs), policy, bundle, params, slo, rate_multiplier
        )
        summary["sim_ttft_p50_s"] = sim["ttft_p50_s"]
        summary["sim_ttft_p90_s"] = sim["ttft_p90_s"]
        summary["sim_ttft_p99_s"] = sim["ttft_p99_s"]
        if summary["ttft_p90_s"] is not None:
            summary["ttft_p90_vs_sim"] = summary["ttft_p90_s"] / sim["ttft_p90_s"] - 1.0
    with open(work / "results.jsonl", "w") as f:
        for r in results:
            f.write(json.dumps(r.__dict__) + "\n")
    return summary


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """Run the demo (see the module docstring); its summary."""
    from prfaas_env.env.config import resolve_config
    from prfaas_env.gateway.loadgen import synthetic_trace_file

    sc, _ = resolve_config(args.config)
    topology = (sc.raw or {})["topology"]
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="prfaas-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.trace:
        trace_path: str | Path = args.trace
        mult = args.rate_multiplier
    else:
        trace_path = synthetic_trace_file(
            args.config, args.requests, args.seed, work / "trace.jsonl", args.rate_multiplier
        )
        mult = 1.0
    policy = None if args.bundle else (args.policy or "prfaas_threshold")
    params = json.loads(args.policy_params) if args.policy_params else None
    try:
        return run_case(
            topology,
            trace_path,
            args.requests,
            work,
            policy,
            args.bundle,
            params,
            args.time_scale,
            mult,
            args.body_mode,
            not args.no_compare,
            (sc.raw or {}).get("slo"),
            f"{args.config}'s",
        )
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)


def run_demo_command(args: argparse.Namespace) -> int:
    summary = run_demo(args)
    print(
        f"requests {summary['requests']}, responses {summary['responses']}, "
        f"5xx {summary['status_5xx']}, no response {summary['no_response']}"
    )
    print(
        f"TTFT p50 {_s(summary['ttft_p50_s'])}, p90 {_s(summary['ttft_p90_s'])}, "
        f"p99 {_s(summary['ttft_p99_s'])} (deployment seconds)"
    )
    if "sim_ttft_p90_s" in summary:
        print(
            f"simulator, same trace and policy: TTFT p50 {_s(summary['sim_ttft_p50_s'])}, "
            f"p90 {_s(summary['sim_ttft_p90_s'])} "
            f"(emulated p90 {summary.get('ttft_p90_vs_sim', 0):+.1%})"
        )
    print(
        f"picker decision p50 {_ms(summary['picker_decision_p50_ms'])}, "
        f"p99 {_ms(summary['picker_decision_p99_ms'])}"
    )
    print(f"routes {summary['routes']}")
    print(json.dumps(summary))
    return 0 if summary["status_5xx"] == 0 and summary["no_response"] == 0 else 1


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f} ms"


def _s(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f} s"
