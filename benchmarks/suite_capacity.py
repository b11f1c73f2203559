"""Load and router spread of every scenario of a suite (the figures of docs/suite.md).

For each scenario:

- **capacity**: for each of a few strong heuristics, the highest arrival-rate multiplier at
  which the mean SLO attainment over the seeds stays at or above the target (bisection, as
  ``evaluate.py --sweep-rate``); the scenario's sustainable maximum is the best of them, and
  its **load** is the file's rate over that maximum (1 / the best multiplier);
- **spread** (``--spread``): every built-in heuristic at the file's rate on the same seeds:
  P90 TTFT, throughput and SLO attainment, and how far the heuristics are apart (the second
  best, the median and the worst P90 over the best). Throughput here is completed requests
  over the simulated time including the drain after the last arrival, so it mostly tells how
  long the backlog took to clear; SLO attainment is the fairer second column.

    python benchmarks/suite_capacity.py --suite default
    python benchmarks/suite_capacity.py --suite default --spread --scenarios paper_poisson
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prfaas_env.errors import NotApplicableError
from prfaas_env.evaluation import heuristic, run_policy, sweep_max_rate
from prfaas_env.policies import policy_names
from prfaas_env.sim.empirical import RateShape
from prfaas_env.sim.scenario import Scenario, parse_scenario
from prfaas_env.suite import SuiteScenario, load_suite


def steady(sc: Scenario) -> Scenario:
    """``sc`` without its rate shape (a constant rate at the shape's long-run mean)."""
    raw = copy.deepcopy(sc.raw or {})
    shape = raw["workload"].pop("rate_shape", None)
    if shape is None:
        return sc
    steady_sc = parse_scenario(raw, f"{sc.source} (steady)", sc.base_dir)
    mean = sc.workload.mean_rate_rps() / steady_sc.workload.mean_rate_rps()
    return steady_sc.with_rate(mean)


def capacity(s: SuiteScenario, policies: list[str], seeds: list[int], decisions: int) -> None:
    """A scenario whose rate changes over the episode is measured at a constant rate (its
    long-run mean); its load then ranges over the shape's lowest and highest multiplier."""
    t0 = time.perf_counter()
    best, rps, parts = 0.0, 0.0, []
    sc = steady(s.scenario)
    for name in policies:
        sw = sweep_max_rate(sc, heuristic(name), name, seeds, decisions)
        parts.append(f"{name} x{sw.multiplier:.2f}")
        if sw.multiplier > best:
            best, rps = sw.multiplier, sw.max_rps
    rate = sc.workload.mean_rate_rps()
    load = 1 / best if best > 0 else float("inf")
    shape = s.scenario.workload.rate_shape
    span = ""
    if shape is not None:
        lo, hi = _multiplier_range(shape)
        span = f" (from {load * lo:.2f} to {load * hi:.2f} over the episode)"
    print(
        f"{s.split:9s} {s.name:28s} rate {rate:8.3f} req/s  max {rate * best:8.3f} req/s "
        f"(goodput {rps:7.3f})  load {load:5.2f}{span}  [{', '.join(parts)}]  "
        f"{time.perf_counter() - t0:.0f} s",
        flush=True,
    )


def _multiplier_range(shape: RateShape) -> tuple[float, float]:
    """Lowest and highest rate multiplier of ``shape`` over its long-run mean."""
    mean = shape.long_run_mean()
    if shape.kind == "ramp":
        values = [shape.start, shape.end]
    elif shape.kind == "sinusoid":
        values = [1 - shape.amplitude, 1 + shape.amplitude]
    else:
        values = list(shape.multipliers)
    return min(values) / mean, max(values) / mean


def spread(s: SuiteScenario, seeds: list[int], decisions: int) -> None:
    rows = []
    for name in policy_names():
        try:
            run = run_policy(s.scenario, heuristic(name), name, seeds, decisions)
        except NotApplicableError:  # the paper's analytic model on another topology shape
            continue
        m = run.metrics
        rows.append(
            (
                name,
                float(np.nanmean(m["ttft_p90_s"])),
                float(np.nanmean(m["throughput_rps"])),
                float(np.nanmean(m["slo_attainment"])),
            )
        )
    rows.sort(key=lambda r: r[1])
    best = rows[0]
    p90s = [r[1] for r in rows]
    print(
        f"{s.split:9s} {s.name:28s} best {best[0]} P90 {best[1]:.2f} s (SLO {best[3]:.1%}); "
        f"second x{p90s[1] / best[1]:.2f} ({rows[1][0]}), median x{np.median(p90s) / best[1]:.2f}, "
        f"worst x{p90s[-1] / best[1]:.2f}"
    )
    for name, p90, rps, slo in rows:
        print(f"    {name:20s} P90 {p90:9.2f} s  {rps:8.3f} req/s  SLO {slo:6.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", default="default")
    ap.add_argument("--scenarios", default="", help="comma-separated names (default: all)")
    ap.add_argument("--policies", default="mooncake,lmetric,prfaas_threshold")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--decisions", type=int, default=1000)
    ap.add_argument("--spread", action="store_true", help="compare every heuristic instead")
    args = ap.parse_args()
    suite = load_suite(args.suite)
    chosen = [suite.get(n) for n in args.scenarios.split(",")] if args.scenarios else None
    seeds = list(range(args.seeds))
    for s in chosen or suite.scenarios:
        if args.spread:
            spread(s, seeds, args.decisions)
        else:
            capacity(s, args.policies.split(","), seeds, args.decisions)


if __name__ == "__main__":
    main()
