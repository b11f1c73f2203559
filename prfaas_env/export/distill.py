"""Knob distillation: settings of knobs existing routers already have that imitate a policy.

A learned policy can reach production with no code at all if a router's own knobs can be set
to behave like it. For each knob family below, every setting on a grid is scored by its
*agreement* (the share of recorded decisions where the heuristic picks the policy's action)
and the best one is kept (ties: the setting closest to the router's default). Each distilled
heuristic is then evaluated on the test seeds next to its default setting and the policy.

Knobs searched:

- ``prfaas_threshold``: the PrfaaS offload threshold ``t`` and its cache rule;
- ``dynamo``: conditional disaggregation's ``max_local_prefill_tokens`` and
  ``max_local_fraction``;
- ``llm_d``: the non-cached-token threshold ``pd_threshold_tokens`` and the scorer weights
  (queue, KV utilisation, prefix cache).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from prfaas_env.env.config import EnvConfig
from prfaas_env.evaluation import (
    METRICS,
    TEST_SEED,
    heuristic,
    heuristic_params,
    run_policy,
    seed_range,
)
from prfaas_env.export.record import Recording
from prfaas_env.observation.live import LiveState
from prfaas_env.policies import make_policy
from prfaas_env.sim.scenario import Scenario

SUMMARY = ("throughput_rps", "ttft_p90_s", "ttft_p99_s", "ttft_mean_s", "slo_attainment")
_TOKENS = [float(x) for x in np.unique(np.round(np.geomspace(16, 131072, 53)))]


def _prfaas_grid() -> Iterator[dict[str, Any]]:
    for rule in ("auto", "scarce", "plentiful"):
        for t in _TOKENS:
            yield {"threshold_tokens": t, "cache_rule": rule}


def _dynamo_grid() -> Iterator[dict[str, Any]]:
    for t in _TOKENS:
        for f in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
            yield {"max_local_prefill_tokens": t, "max_local_fraction": f}


def _llmd_grid() -> Iterator[dict[str, Any]]:
    for q, kv, px in itertools.product((0.0, 1.0, 2.0, 3.0), repeat=3):
        if q == kv == px == 0.0:
            continue
        for t in _TOKENS:
            yield {
                "pd_threshold_tokens": t,
                "queue_weight": q,
                "kv_weight": kv,
                "prefix_weight": px,
            }


KNOBS: dict[str, Callable[[], Iterator[dict[str, Any]]]] = {
    "prfaas_threshold": _prfaas_grid,
    "dynamo": _dynamo_grid,
    "llm_d": _llmd_grid,
}


def _distance(params: dict[str, Any], defaults: dict[str, Any]) -> float:
    """How far a setting is from the defaults (log scale for token thresholds)."""
    d = 0.0
    for k, v in params.items():
        base = defaults.get(k)
        if isinstance(v, str) or base is None:
            d += 0.0 if v == base else 1.0
        elif "tokens" in k:
            d += abs(np.log2(max(float(v), 1.0)) - np.log2(max(float(base), 1.0)))
        else:
            d += abs(float(v) - float(base))
    return d


def best_knobs(
    name: str, scenario: Scenario, live: LiveState, rec: Recording
) -> tuple[dict[str, Any], float, float]:
    """(best setting, its agreement, the default setting's agreement) for knob family
    ``name`` on the recorded decisions."""
    routes = live.routes
    base = heuristic_params(scenario, name)
    defaults = _defaults(name)
    target = rec.actions

    def agreement(params: dict[str, Any]) -> float:
        policy = make_policy(name, routes, scenario.topology, **{**base, **params})
        policy.reset(len(target))
        return float(np.mean(policy.act(rec.view, rec.mask) == target))

    best: tuple[float, float, dict[str, Any]] | None = None
    for params in KNOBS[name]():
        score = agreement(params)
        key = (score, -_distance(params, defaults))
        if best is None or key > best[:2]:
            best = (key[0], key[1], params)
    assert best is not None
    return best[2], best[0], agreement({})


def _defaults(name: str) -> dict[str, Any]:
    import inspect

    from prfaas_env.policies.heuristics import HEURISTICS

    sig = inspect.signature(HEURISTICS[name].__init__)
    return {
        k: p.default
        for k, p in sig.parameters.items()
        if p.default is not inspect.Parameter.empty and k != "topology"
    }


def distill_knobs(
    scenario: Scenario,
    live: LiveState,
    rec: Recording,
    agent: Any,
    env_cfg: EnvConfig,
    seeds: int,
    decisions: int,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Distil every knob family of :data:`KNOBS` from ``rec`` (the policy's recorded
    decisions) and evaluate each result, its default and ``agent`` on ``seeds`` test seeds
    x ``decisions`` requests."""
    eval_seeds = seed_range(TEST_SEED, seeds)
    stale = env_cfg.bandwidth_staleness_s

    def evaluate(factory: Any, label: str) -> dict[str, float | None]:
        run = run_policy(scenario, factory, label, eval_seeds, decisions, staleness_s=stale)
        return {k: _num(np.nanmean(run.metrics[k])) for k in SUMMARY if k in METRICS}

    out: dict[str, Any] = {
        "eval_seeds": eval_seeds,
        "decisions": decisions,
        "recorded_decisions": len(rec),
        "agent": evaluate(lambda _sc: agent, agent.name),
        "policies": {},
        "distillation": {},
    }
    for name in KNOBS:
        params, agree, default_agree = best_knobs(name, scenario, live, rec)
        echo(f"  {name}: agreement {agree:.3f} (default settings {default_agree:.3f}) {params}")
        out["policies"][name] = params
        out["distillation"][name] = {
            "agreement": round(agree, 4),
            "evaluation": evaluate(heuristic(name, **params), name),
            "default_agreement": round(default_agree, 4),
            "default_evaluation": evaluate(heuristic(name), name),
        }
    return out


def _num(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 4)


def write_distilled(path: Path, result: dict[str, Any], run: dict[str, Any]) -> None:
    """``distilled.yaml``: the ``policies:`` section (readable by ``evaluate.py
    --policy-params``) and, per knob family, agreement and evaluation figures."""
    header = (
        "# Settings of existing routers' knobs that best imitate the learned policy.\n"
        "# agreement: share of the policy's recorded decisions (validation seeds) the\n"
        "# heuristic reproduces; evaluation: evaluate.py metrics on the test seeds.\n"
        f"# Re-evaluate: python evaluate.py --config {run['config']} --policy-params "
        f"{path.name} --policies {','.join(result['policies'])}"
        + (f" --rate-multiplier {run['rate_multiplier']}" if run.get("rate_multiplier") else "")
        + "\n"
    )
    body = {"run": run, **result}
    path.write_text(header + yaml.safe_dump(body, sort_keys=False))
