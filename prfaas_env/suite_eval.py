"""Every router on every scenario of a suite, on the same requests, and the table that ranks them.

Each scenario is run with every router on the same seeds (env ``i`` of a run seeded
``seed0 + i``: identical requests and link bandwidth for every router). For each scenario the
**best heuristic** is the one with the lowest P90 TTFT among the heuristics that complete at
least 99 % of the best throughput (:func:`prfaas_env.evaluation.best_baseline`); every router
is then reported relative to it. Planners (the rollout oracle, which sees the future) and
learned policies are never candidates for the best heuristic.

Work runs in units of (scenario, router, seeds); units run in worker processes (``workers``)
or as Ray tasks on a cluster (``ray_address``). A router is rebuilt in each worker from a
:class:`PolicySpec` (a builder function named by its import path and its arguments), so
anything importable in the workers can be evaluated: on a Ray cluster every node needs the
project installed, and for trained agents the repository on its path (agents/ is not part of
the installed package), e.g. ``ray start`` from a checkout.
"""

from __future__ import annotations

import importlib
import math
import multiprocessing
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from prfaas_env.env.config import parse_env_config
from prfaas_env.errors import ConfigError, NotApplicableError
from prfaas_env.evaluation import KEEP_UP, METRICS, PolicyFactory, best_baseline, run_policy
from prfaas_env.suite import Suite, SuiteScenario, load_suite

KINDS = ("heuristic", "planner", "learned")


@dataclass(frozen=True)
class PolicySpec:
    """A router to evaluate, as data a worker process can rebuild it from.

    ``builder`` is ``"module:function"``; ``function(scenario, **kwargs)`` returns the
    policy for that scenario, or raises :class:`NotApplicableError` when the router does not
    apply to it (the scenario is then skipped for this router, with the reason). ``kind`` is
    ``heuristic``, ``planner`` or ``learned``.
    """

    label: str
    builder: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    kind: str = "heuristic"

    def build(self, scenario: Any) -> Any:
        module, _, name = self.builder.partition(":")
        fn: Callable[..., Any] = getattr(importlib.import_module(module), name)
        return fn(scenario, **self.kwargs)


def build_builtin(scenario: Any, name: str, **params: Any) -> Any:
    """A built-in policy (heuristic or planner) on ``scenario``, with the scenario's own
    ``policies:`` parameters overridden by ``params`` (:func:`prfaas_env.evaluation.heuristic`)."""
    from prfaas_env.evaluation import heuristic, planner_params
    from prfaas_env.policies import PLANNERS

    if name in PLANNERS:
        params = planner_params(scenario, params)
    return heuristic(name, **params)(scenario)


def builtin_spec(name: str, params: dict[str, Any] | None = None) -> PolicySpec:
    """The :class:`PolicySpec` of a built-in heuristic or planner."""
    from prfaas_env.policies import PLANNERS

    kind = "planner" if name in PLANNERS else "heuristic"
    if kind == "planner":  # plan around each scenario's best heuristic unless told otherwise
        params = {"base": "best", **(params or {})}
    return PolicySpec(
        name, "prfaas_env.suite_eval:build_builtin", {"name": name, **(params or {})}, kind
    )


@dataclass(frozen=True)
class Unit:
    """One run: a scenario of a suite, a router, the seeds."""

    suite: str
    scenario: str
    spec: PolicySpec
    seeds: tuple[int, ...]
    decisions: int


_SUITES: dict[str, Suite] = {}  # loaded once per worker process


def _suite(spec: str) -> Suite:
    if spec not in _SUITES:
        _SUITES[spec] = load_suite(spec)
    return _SUITES[spec]


def run_unit(unit: Unit) -> dict[str, Any]:
    """Run one unit (in any process); returns its per-seed records, or the reason the
    router does not apply to the scenario."""
    sc = _suite(unit.suite).get(unit.scenario)
    base = {
        "scenario": sc.name,
        "split": sc.split,
        "policy": unit.spec.label,
        "kind": unit.spec.kind,
    }
    try:
        policy = unit.spec.build(sc.scenario)
    except NotApplicableError as exc:
        return {**base, "skipped": str(exc)}
    env_cfg = parse_env_config((sc.scenario.raw or {}).get("env"), f"{sc.path}: env")
    factory: PolicyFactory = lambda _sc: policy  # noqa: E731
    run = run_policy(
        sc.scenario,
        factory,
        unit.spec.label,
        list(unit.seeds),
        unit.decisions,
        staleness_s=env_cfg.bandwidth_staleness_s,
    )
    stats = policy.stats() if hasattr(policy, "stats") else {}  # e.g. how often a guard fired
    return {**base, "records": [{**r, **base, **stats} for r in run.records()]}


@dataclass
class SuiteResult:
    """Per-seed records of every (scenario, router) that ran, and why others were skipped."""

    suite: Suite
    records: list[dict[str, Any]]
    skipped: dict[tuple[str, str], str]
    seeds: list[int]
    decisions: int

    def means(self) -> dict[tuple[str, str], dict[str, float]]:
        """``{(scenario, policy): {metric: mean over seeds}}``."""
        acc: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in self.records:
            acc.setdefault((r["scenario"], r["policy"]), []).append(r)
        out = {}
        for key, recs in acc.items():
            # a seed without the metric (no completion) makes the mean unknown rather than
            # dropping that seed for this router only: the routers stay on the same requests
            out[key] = {
                m: float(np.mean([np.nan if x[m] is None else x[m] for x in recs])) for m in METRICS
            }
        return out

    def kinds(self) -> dict[str, str]:
        return {r["policy"]: r["kind"] for r in self.records}

    def best_heuristics(self, metric: str = "ttft_p90_s") -> dict[str, str]:
        """Per scenario, the best heuristic (see the module docstring)."""
        means, kinds = self.means(), self.kinds()
        out = {}
        for sc in self.suite.scenarios:
            scores = {
                p: v for (s, p), v in means.items() if s == sc.name and kinds[p] == "heuristic"
            }
            if scores:
                out[sc.name] = best_baseline(scores, metric)
        return out

    def relative(self, metric: str = "ttft_p90_s") -> dict[str, dict[str, dict[str, float]]]:
        """``{policy: {scenario: {...}}}``: the metric over the best heuristic's minus 1
        (``rel``), throughput over the best heuristic's (``rps_ratio``), whether it keeps
        up (``keeps_up``: at least 99 % of that throughput) and its SLO attainment."""
        means, best = self.means(), self.best_heuristics(metric)
        out: dict[str, dict[str, dict[str, float]]] = {}
        for (scenario, policy), v in means.items():
            b = best.get(scenario)
            if b is None:
                continue
            ref = means[(scenario, b)]
            ratio = (
                v["throughput_rps"] / ref["throughput_rps"] if ref["throughput_rps"] else math.nan
            )
            out.setdefault(policy, {})[scenario] = {
                "rel": v[metric] / ref[metric] - 1.0 if ref[metric] else math.nan,
                "value": v[metric],
                "best": ref[metric],
                "rps_ratio": ratio,
                "keeps_up": float(ratio >= KEEP_UP),
                "slo_attainment": v["slo_attainment"],
            }
        return out


def evaluate_suite(
    suite: str | Path,
    specs: Iterable[PolicySpec],
    seeds: list[int],
    decisions: int,
    workers: int = 1,
    ray_address: str | None = None,
    scenarios: list[str] | None = None,
    progress: Callable[[int], None] | None = None,
    echo: Callable[[str], None] = print,
) -> SuiteResult:
    """Run every router of ``specs`` on every scenario of ``suite`` (or those named in
    ``scenarios``) on ``seeds`` x ``decisions`` requests. ``progress(n)`` is called with the
    decisions done as units finish."""
    loaded = load_suite(suite)
    names = [s.name for s in loaded.scenarios]
    if scenarios:
        for n in scenarios:
            loaded.get(n)  # ConfigError listing the suite's scenarios
        names = [n for n in names if n in scenarios]
    spec_list = list(specs)
    if len({s.label for s in spec_list}) != len(spec_list):
        raise ConfigError("two routers have the same label")
    suite_arg = str(suite)
    # large scenarios first, so the long units start early
    order = sorted(names, key=lambda n: -_weight(loaded.get(n)))
    # planners whose base is "best" wait for the heuristics: their base is then each
    # scenario's best heuristic
    later = [s for s in spec_list if s.kind == "planner" and s.kwargs.get("base") == "best"]
    first = [s for s in spec_list if s not in later]
    if later and not any(s.kind == "heuristic" for s in first):
        raise ConfigError("a planner with base 'best' needs heuristics to pick the best from")
    units = [Unit(suite_arg, n, spec, tuple(seeds), decisions) for n in order for spec in first]
    runner = _Runner(workers, ray_address, progress)
    try:
        return _evaluate(loaded, runner, units, later, order, suite_arg, seeds, decisions)
    finally:
        runner.close()


def _evaluate(
    loaded: Suite,
    runner: _Runner,
    units: list[Unit],
    later: list[PolicySpec],
    order: list[str],
    suite_arg: str,
    seeds: list[int],
    decisions: int,
) -> SuiteResult:
    result = _collect(loaded, runner.run(units), seeds, decisions)
    if later:
        best = result.best_heuristics()
        units = [
            Unit(
                suite_arg,
                n,
                replace(spec, kwargs={**spec.kwargs, "base": best[n]}),
                tuple(seeds),
                decisions,
            )
            for n in order
            if n in best
            for spec in later
        ]
        more = _collect(loaded, runner.run(units), seeds, decisions)
        result.records += more.records
        result.skipped.update(more.skipped)
    return result


def _collect(
    suite: Suite, results: list[dict[str, Any]], seeds: list[int], decisions: int
) -> SuiteResult:
    records: list[dict[str, Any]] = []
    skipped: dict[tuple[str, str], str] = {}
    for r in results:
        if "skipped" in r:
            skipped[(r["scenario"], r["policy"])] = r["skipped"]
        else:
            records += r["records"]
    return SuiteResult(suite, records, skipped, list(seeds), decisions)


class _Runner:
    """Runs units in this process, in worker processes (kept for the whole evaluation) or
    on Ray."""

    def __init__(
        self, workers: int, ray_address: str | None, progress: Callable[[int], None] | None
    ) -> None:
        self.progress = progress
        self.ray_address = ray_address
        self.pool: ProcessPoolExecutor | None = None
        if ray_address is None and workers > 1:
            ctx = multiprocessing.get_context("spawn")  # numba's threads and fork do not mix
            self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)

    def _done(self, u: Unit) -> None:
        if self.progress is not None:
            self.progress(u.decisions * len(u.seeds))

    def run(self, units: list[Unit]) -> list[dict[str, Any]]:
        if self.ray_address is not None:
            return _run_on_ray(units, self.ray_address, self._done)
        if self.pool is None:
            out = []
            for u in units:
                out.append(run_unit(u))
                self._done(u)
            return out
        futures = {self.pool.submit(run_unit, u): u for u in units}
        results = []
        for f in as_completed(futures):
            results.append(f.result())
            self._done(futures[f])
        return results

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def _weight(sc: SuiteScenario) -> float:
    """A rough cost of a scenario per decision: its number of routes."""
    return float(len(sc.scenario.topology.routes))


def _run_on_ray(
    units: list[Unit], address: str, done: Callable[[Unit], None]
) -> list[dict[str, Any]]:
    import ray

    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    task = ray.remote(run_unit)
    pending = {task.remote(u): u for u in units}
    out = []
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            u = pending.pop(ref)
            out.append(ray.get(ref))
            done(u)
    return out


def default_workers() -> int:
    """Worker processes for this machine (its cores)."""
    return max(1, os.cpu_count() or 1)
