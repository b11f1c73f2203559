"""Evaluate routing policies on the same requests: metrics per seed, intervals, rate sweeps.

Every policy runs on the same seeds: env ``i`` of a run is seeded ``seed0 + i``, and a seed
fixes the request stream and the bandwidth series independently of routing, so all policies
see identical requests. A run routes ``decisions`` requests per seed from an empty system and
then finishes the requests in flight; metrics cover the whole run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from prfaas_env.errors import ConfigError, NotApplicableError
from prfaas_env.observation.simulated import SimObserver
from prfaas_env.policies import PLANNERS, Policy, RouteTable, make_policy, policy_names
from prfaas_env.sim.engine import RESULT_METRICS, VecSimulator, routes_from_actions
from prfaas_env.sim.scenario import Scenario

METRICS = RESULT_METRICS
# Two-sided 95 % Student t quantiles for 1..30 degrees of freedom (standard tables).
_T95 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)

PolicyFactory = Callable[[Scenario], Policy]

# A router keeps up when it completes at least this share of the best throughput on the same
# requests (the best heuristic of a scenario is chosen among those that keep up).
KEEP_UP = 0.99
# Metrics a router can be ranked on, and whether lower is better.
LOWER_IS_BETTER = {
    "ttft_p90_s": True,
    "ttft_p99_s": True,
    "ttft_mean_s": True,
    "slo_attainment": False,
}

# Seed ranges kept apart: training evaluates checkpoints on validation seeds and reports
# final tables on test seeds; exports record on validation seeds.
VALIDATION_SEED = 10_000
TEST_SEED = 20_000


def seed_range(first: int, count: int) -> list[int]:
    """``count`` consecutive seeds from ``first``."""
    return list(range(first, first + count))


@dataclass
class Run:
    """Per-seed metrics of one policy on one scenario, and per-request TTFTs of every seed."""

    policy: str
    seeds: list[int]
    metrics: dict[str, NDArray[np.float64]]
    ttft_s: NDArray[np.float64]

    def records(self) -> list[dict[str, Any]]:
        """One record per seed with the keys of ``results.json``."""
        out = []
        for i, s in enumerate(self.seeds):
            rec: dict[str, Any] = {"policy": self.policy, "seed": s}
            rec.update({k: _json_float(self.metrics[k][i]) for k in METRICS})
            out.append(rec)
        return out


def _json_float(x: float) -> float | None:
    return None if not math.isfinite(float(x)) else float(x)


def policy_params(sc: Scenario, name: str) -> dict[str, Any]:
    """The parameters the scenario file sets for policy ``name`` (its ``policies:`` section,
    ``{policy name: {parameter: value}}``); ConfigError for an unknown policy name."""
    section = check_policies_section((sc.raw or {}).get("policies") or {}, f"{sc.source}: policies")
    return dict(section.get(name) or {})


def check_policies_section(section: Any, where: str) -> dict[str, dict[str, Any]]:
    """A ``policies:`` mapping ``{policy name: {parameter: value}}``, checked (ConfigError
    naming ``where`` and the key for an unknown policy or a value that is not a mapping)."""
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: expected a mapping of policy name -> parameters")
    known = [*policy_names(), *PLANNERS]
    for key, value in section.items():
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown policy; known: {', '.join(known)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{where}.{key}: expected a mapping of parameter -> value")
    return section


def heuristic_params(sc: Scenario, name: str) -> dict[str, Any]:
    """The parameters policy ``name`` runs with on ``sc``: the scenario's objectives it reads
    (the TTFT SLO for ``mooncake``; the TPOT SLO and mean output for ``prfaas_optimised``),
    overridden by the scenario's ``policies:`` section."""
    extra: dict[str, Any] = {}
    if name == "mooncake":
        extra["ttft_slo_s"] = sc.ttft_slo_s
    if name == "prfaas_optimised":
        extra["tpot_slo_s"] = sc.tpot_slo_s
        extra["output_tokens"] = sc.workload.mean_output_tokens()
    return {**extra, **policy_params(sc, name)}


def planner_params(sc: Scenario, params: dict[str, Any]) -> dict[str, Any]:
    """A planner's ``params`` with its base heuristics' parameters (``base_params``, and
    ``also_params`` for each of ``also``) as the scenario sets them, unless given."""
    out = dict(params)
    if "base_params" not in out:
        out["base_params"] = heuristic_params(sc, out.get("base", "mooncake"))
    also = out.get("also") or []
    if also and "also_params" not in out and isinstance(also, (list, tuple)):
        out["also_params"] = {str(n): heuristic_params(sc, str(n)) for n in also}
    return out


def heuristic(name: str, **params: Any) -> PolicyFactory:
    """A factory for the built-in policy ``name`` on any scenario; parameters come from the
    scenario's ``policies:`` section, overridden by ``params``."""

    def build(sc: Scenario) -> Policy:
        routes = RouteTable.from_topology(sc.topology)
        chosen = {**heuristic_params(sc, name), **params}
        if name in PLANNERS:
            chosen = planner_params(sc, chosen)
        try:
            return make_policy(name, routes, sc.topology, **chosen)
        except NotApplicableError:
            raise
        except ConfigError as exc:
            raise ConfigError(f"{sc.source}: policies.{name}: {exc}") from exc

    build.__name__ = name
    return build


def run_policy(
    scenario: Scenario,
    factory: PolicyFactory,
    name: str,
    seeds: Sequence[int],
    decisions: int,
    progress: Callable[[int], None] | None = None,
    staleness_s: float = 0.0,
) -> Run:
    """Route ``decisions`` requests per seed with the policy ``factory`` builds, then drain.

    ``staleness_s``: the link bandwidth policies see is the one measured at the last multiple
    of this many seconds (the scenario's ``env.observation.bandwidth_staleness_s``)."""
    n = len(seeds)
    sim = VecSimulator(scenario, n, record=decisions)
    policy = factory(scenario)
    policy.reset(n, seed=int(seeds[0]))
    policy.attach(sim)
    observer = SimObserver(sim, policy.routes.num_routes, staleness_s)
    sim.reset(seed=list(seeds))
    for step in range(decisions):
        actions = policy.act(observer.observe_view(), observer.mask)
        sim.step(routes_from_actions(actions, policy.routes.num_routes))
        if progress is not None and (step + 1) % 100 == 0:
            progress(100)
    if progress is not None:
        progress(decisions % 100)
    sim.drain()
    metrics = sim.metrics()
    ttft = []
    for e in range(n):  # exact percentiles from the per-request records
        rec = sim.records(e)
        t = rec["first_token_s"] - rec["arrival_s"]
        ttft.append(t)
        done = t[np.isfinite(t)]
        for q in (50, 90, 99):
            metrics[f"ttft_p{q}_s"][e] = np.percentile(done, q) if done.size else np.nan
    return Run(name, list(seeds), metrics, np.concatenate(ttft))


@dataclass
class Sweep:
    """Outcome of a max-sustainable-throughput search."""

    max_rps: float
    multiplier: float
    points: list[tuple[float, float, float]]  # (arrival rate req/s, goodput req/s, SLO)


def sweep_max_rate(
    scenario: Scenario,
    factory: PolicyFactory,
    name: str,
    seeds: Sequence[int],
    decisions: int,
    staleness_s: float = 0.0,
    target: float = 0.9,
    iterations: int = 7,
) -> Sweep:
    """Bisection on the arrival-rate multiplier for the highest load at which the mean SLO
    attainment over seeds stays at or above ``target``; ``max_rps`` is the completed
    requests/s there."""
    points: list[tuple[float, float, float]] = []
    base_rate = scenario.workload.mean_rate_rps()

    def holds(m: float) -> tuple[bool, float]:
        run = run_policy(
            scenario.with_rate(m), factory, name, seeds, decisions, staleness_s=staleness_s
        )
        slo = float(np.nanmean(run.metrics["slo_attainment"]))
        rps = float(np.nanmean(run.metrics["throughput_rps"]))
        points.append((base_rate * m, rps * slo, slo))
        return slo >= target, rps

    lo, hi = 0.0, 1.0
    ok, rps_lo = holds(hi)
    best = rps_lo if ok else 0.0
    while ok and hi < 64:  # grow until the SLO breaks
        lo, hi = hi, hi * 2
        ok, rps = holds(hi)
        if ok:
            best = rps
    if ok:
        return Sweep(best, hi, sorted(points))
    if lo == 0.0:
        lo = hi / 64
        ok_lo, rps = holds(lo)
        if not ok_lo:
            return Sweep(0.0, 0.0, sorted(points))
        best = rps
    for _ in range(iterations):
        mid = math.sqrt(lo * hi)
        ok, rps = holds(mid)
        if ok:
            lo, best = mid, rps
        else:
            hi = mid
    return Sweep(best, lo, sorted(points))


def interval(values: NDArray[np.float64]) -> tuple[float, float]:
    """Mean and half-width of the 95 % Student t interval (0 for a single value)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan
    if v.size == 1:
        return float(v[0]), 0.0
    t = _T95[min(v.size - 1, len(_T95)) - 1] if v.size - 1 <= len(_T95) else 1.96
    return float(v.mean()), float(t * v.std(ddof=1) / math.sqrt(v.size))


def best_baseline(scores: dict[str, dict[str, float]], metric: str) -> str:
    """The router with the best ``metric`` (:data:`LOWER_IS_BETTER`) among those whose
    throughput is within 1 % of the highest (a router cannot win on latency by serving fewer
    requests); ties go to the first name in sorted order."""
    top = max(s["throughput_rps"] for s in scores.values())
    ok = {n: s for n, s in scores.items() if s["throughput_rps"] >= KEEP_UP * top}
    lower = LOWER_IS_BETTER[metric]
    key = (lambda n: ok[n][metric]) if lower else (lambda n: -ok[n][metric])
    return min(sorted(ok), key=key)
