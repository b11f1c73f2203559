"""A generalist router: one network for any topology, trained across a suite's scenarios.

The policy scores each candidate route from its own row of the per-route observation
(:mod:`prfaas_env.observation.per_route`) and the decision's global features, with one shared
network, and picks the best allowed route; a value head (pooled over routes) serves
reinforcement-learning fine-tuning. The same weights therefore route the paper's two-route
deployment, a multi-region layout and a seventy-route one.

Training (``train.py --suite NAME``) is imitation of the rollout oracle by DAgger:

1. for every train scenario of the suite, its best heuristic (validation seeds);
2. per iteration, per train scenario, with a load multiplier and an output-length multiplier
   drawn per iteration (domain randomisation): warm the system up with the best heuristic,
   then route with a mix of the oracle (probability ``beta``, halved each iteration) and
   the learner, and label every visited decision with the oracle's cost (``cost``) of each
   candidate route (the oracle plans around the scenario's best heuristic and sees the
   future; it is the teacher only);
3. fit the network to the aggregated labels: cross-entropy against a softmax of the
   candidates' negative cost gaps over ``tau`` x the TTFT SLO (decisions where the routes
   cost the same teach nothing; decisions where one route is far better teach most);
4. evaluate greedily on the train scenarios' validation seeds against each best heuristic
   (TensorBoard ``eval/<scenario>/...``; with ``validate_long`` also on each train scenario
   at the longest outputs of the range) and keep the best iteration. With ``oracle_eval``
   (default 1) the rollout oracle runs once on the same seeds, so TensorBoard shows the
   learner's P90 beside the oracle's and the share of the oracle's gain it reaches.

The trained policy's inputs keep, per feature, the range the training data covered: a
deployed router falls back to a heuristic for a decision outside it (the guard).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from prfaas_env.errors import ConfigError, NotApplicableError
from prfaas_env.evaluation import (
    KEEP_UP,
    METRICS,
    VALIDATION_SEED,
    best_baseline,
    heuristic,
    heuristic_params,
    run_policy,
    seed_range,
)
from prfaas_env.observation.per_route import (
    GLOBAL_FEATURES,
    ROUTE_FEATURES,
    RouteForm,
    route_features,
)
from prfaas_env.observation.simulated import SimObserver
from prfaas_env.policies import RouteTable, make_policy, policy_names
from prfaas_env.policies.learned import RoutePolicy
from prfaas_env.policies.oracle import NONDETERMINISTIC, RolloutOracle, check_base
from prfaas_env.policies.route_scorer import (
    RouteScorer,
    ScorerEnsemble,
    residual_anchor,
    score_fn,
)
from prfaas_env.sim.engine import VecSimulator, routes_from_actions
from prfaas_env.sim.scenario import INSTANCE_KEYS, Scenario
from prfaas_env.suite import SuiteScenario, load_suite

GENERALIST_FORMAT = 1
# oracle costs in seconds (soft labels divide them)
LABEL_COSTS = ("ttft", "tail", "ttft_slo", "e2e_slo")


@dataclass(frozen=True)
class GeneralistSettings:
    """Everything the generalist's training takes (``train.py --suite``)."""

    hidden: int = 64
    horizon: int = 64  # the oracle's lookahead while labelling
    tau: float = 0.25  # soft-label temperature, as a share of the TTFT SLO
    iterations: int = 5
    beta0: float = 1.0  # probability the oracle acts in the first iteration (halved each)
    envs: int = 16  # envs per scenario while collecting
    warmup: int = 150  # decisions routed by the best heuristic before labelling
    decisions: int = 250  # labelled decisions per env, scenario and iteration
    rate_low: float = 0.7  # load multipliers drawn per scenario and iteration
    rate_high: float = 1.15
    out_low: float = 1.0  # output-length multipliers drawn per scenario and iteration
    out_high: float = 1.0  # (log-uniform; 1, 1: the scenarios' own lengths)
    link_low: float = 1.0  # link bandwidth multipliers drawn per scenario and iteration
    link_high: float = 1.0  # (log-uniform; 1, 1: the scenarios' own links)
    link_fluctuate: float = 0.0  # probability that a scenario's steady links fluctuate
    pool_low: float = 1.0  # instance-count multipliers drawn per cluster, pool and iteration
    pool_high: float = 1.0  # (log-uniform; 1, 1: the scenarios' own pool sizes)
    members: int = 1  # scorers fitted to the same labels; the policy is their mean score
    cost: str = "ttft"  # the oracle's cost while labelling (RolloutOracle's costs)
    also: str = ""  # more bases for the oracle's rollouts (comma-separated; parallel rollout)
    epochs: int = 4
    batch: int = 512
    lr: float = 1e-3
    eval_seeds: int = 3
    eval_decisions: int = 1000
    oracle_eval: int = 1  # 1: the oracle's P90 on the validation seeds beside the learner's
    residual: int = 0  # 1: the network adjusts Mooncake's rule (minus estimated TTFT)
    validate_long: int = 0  # 1: validate at the longest outputs of the range as well
    validate_variants: int = 0  # randomised variants of each train scenario validated too
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type in ("str", str):
                continue
            if f.type in ("int", int) and (isinstance(v, bool) or not isinstance(v, int)):
                raise ConfigError(f"{f.name}: expected a whole number, got {v!r}")
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise ConfigError(f"{f.name}: expected a number, got {v!r}")
        positive = (
            "hidden",
            "members",
            "iterations",
            "envs",
            "decisions",
            "epochs",
            "batch",
            "eval_seeds",
            "eval_decisions",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected at least 1, got {getattr(self, name)}")
        for name in ("horizon", "warmup", "seed", "validate_variants"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: expected at least 0, got {getattr(self, name)}")
        for name in ("oracle_eval", "residual", "validate_long"):
            if getattr(self, name) not in (0, 1):
                raise ConfigError(f"{name}: expected 0 or 1, got {getattr(self, name)}")
        if not 0 <= self.beta0 <= 1:
            raise ConfigError(f"beta0: expected a probability in [0, 1], got {self.beta0}")
        if not self.tau > 0 or not self.lr > 0:
            raise ConfigError(f"tau and lr: expected positive numbers, got {self.tau}, {self.lr}")
        for name in self.also_bases():
            check_base(name, "also")
        if self.cost not in LABEL_COSTS:
            raise ConfigError(
                f"cost: {self.cost!r} is not allowed; allowed: {', '.join(LABEL_COSTS)}"
            )
        if not 0 < self.out_low <= self.out_high <= 100:
            raise ConfigError(
                f"out_low, out_high: expected 0 < low <= high <= 100, got {self.out_low}, "
                f"{self.out_high}"
            )
        if not 0 < self.link_low <= self.link_high <= 100:
            raise ConfigError(
                f"link_low, link_high: expected 0 < low <= high <= 100, got {self.link_low}, "
                f"{self.link_high}"
            )
        if not 0 < self.pool_low <= self.pool_high <= 100:
            raise ConfigError(
                f"pool_low, pool_high: expected 0 < low <= high <= 100, got {self.pool_low}, "
                f"{self.pool_high}"
            )
        if not 0 <= self.link_fluctuate <= 1:
            raise ConfigError(
                f"link_fluctuate: expected a probability in [0, 1], got {self.link_fluctuate}"
            )
        if not 0 < self.rate_low <= self.rate_high:
            raise ConfigError(
                f"rate_low, rate_high: expected 0 < low <= high, got {self.rate_low}, "
                f"{self.rate_high}"
            )

    def also_bases(self) -> list[str]:
        """The names in ``also`` (empty: the oracle plans around one base)."""
        return [n.strip() for n in self.also.split(",") if n.strip()]

    def oracle(self, sc: Scenario, best: str) -> dict[str, Any]:
        """The teacher's parameters on ``sc``: it plans around ``best`` (the scenario's best
        heuristic) and, with ``also``, around each further base too (parallel rollout: a
        candidate's cost is its lowest over the bases)."""
        also = [n for n in self.also_bases() if n != best]
        return {
            "horizon": self.horizon,
            "base": best,
            "base_params": heuristic_params(sc, best),
            "cost": self.cost,
            "also": also,
            "also_params": {n: heuristic_params(sc, n) for n in also},
        }


def settings_from(pairs: list[str], **values: Any) -> GeneralistSettings:
    """:class:`GeneralistSettings` from ``values`` overridden by ``NAME=VALUE`` pairs (each
    value read as a YAML scalar), as ``train.py --suite ... --set`` gives them. ConfigError
    names a malformed pair or an unknown name (listing the fields), or a value out of its
    range."""
    import yaml

    names = [f.name for f in fields(GeneralistSettings)]
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or key not in names:
            raise ConfigError(f"{item!r}: expected NAME=VALUE with NAME one of {', '.join(names)}")
        values[key] = yaml.safe_load(value)
    return GeneralistSettings(**values)


@dataclass
class Labels:
    """Labelled decisions of one scenario: route rows, global rows, masks, oracle costs."""

    routes: list[NDArray[np.float32]] = field(default_factory=list)
    glob: list[NDArray[np.float32]] = field(default_factory=list)
    mask: list[NDArray[np.bool_]] = field(default_factory=list)
    costs: list[NDArray[np.float64]] = field(default_factory=list)
    slo: float = 1.0

    def arrays(self) -> tuple[NDArray[np.float32], ...]:
        return (
            np.concatenate(self.routes),
            np.concatenate(self.glob),
            np.concatenate(self.mask),
            np.concatenate(self.costs),
        )

    def __len__(self) -> int:
        return sum(len(x) for x in self.mask)


VARIANT_SEED = 20_260  # the variants' draws: the same for every run with the same ranges


def validation_scenarios(
    scenarios: list[SuiteScenario], s: GeneralistSettings, variant_seed: int = VARIANT_SEED
) -> list[SuiteScenario]:
    """What the iterations are validated on: the train scenarios as they are and, with
    ``validate_long`` and randomised outputs (``out_high`` > 1), each once more with outputs
    ``out_high`` times longer (named ``NAME@out<x>``): the top of the training range, where
    decode pools fill up, so that an iteration that loses throughput there is not the one
    kept. Off by default: on 3 seeds x 1,000 requests the throughput of long-output runs is
    noisy, and its +100 % penalty then decides the selection (docs/generalist.md)."""
    out = list(scenarios)
    if s.validate_long and s.out_high > 1.0:
        for sc in scenarios:
            longer = sc.scenario.with_output(s.out_high)
            out.append(replace(sc, name=f"{sc.name}@out{s.out_high:g}", scenario=longer))
    out += validation_variants(scenarios, s, variant_seed)
    return out


def validation_variants(
    scenarios: list[SuiteScenario], s: GeneralistSettings, seed: int = VARIANT_SEED
) -> list[SuiteScenario]:
    """``s.validate_variants`` randomised variants of each train scenario (named
    ``NAME@v<k>``), drawn as training draws them (:func:`randomised`: load, output lengths,
    links, pools) from a generator of their own (``seed``), so that every run with the same
    ranges is validated on the same variants and training's random stream is unchanged.
    Traffic the train scenarios' validation seeds never show, from the training
    distribution: a selection signal for unseen traffic (the train scenarios alone are one
    point each of it)."""
    rng = np.random.default_rng(seed)
    return [
        replace(sc, name=f"{sc.name}@v{k}", scenario=randomised(sc.scenario, s, rng))
        for sc in scenarios
        for k in range(s.validate_variants)
    ]


def best_heuristics(
    scenarios: list[SuiteScenario], seeds: list[int], decisions: int
) -> dict[str, str]:
    """Each scenario's best deterministic heuristic on ``seeds`` (lowest P90 TTFT at >= 99 %
    of the best throughput): the teacher warms up with it and the oracle plans around it,
    which needs a base whose copies act alike (not ``random``)."""
    out = {}
    for sc in scenarios:
        scores = {}
        for name in policy_names():
            if name in NONDETERMINISTIC:
                continue
            try:
                run = run_policy(sc.scenario, heuristic(name), name, seeds, decisions)
            except NotApplicableError:
                continue
            scores[name] = {k: float(np.nanmean(run.metrics[k])) for k in METRICS}
        out[sc.name] = best_baseline(scores, "ttft_p90_s")
    return out


FLUCTUATION = {  # ranges of the drawn fluctuating process (bandwidth.py's parameters)
    "mean_fraction": (0.5, 0.9),
    "volatility": (0.2, 0.6),
    "correlation_s": (10.0, 60.0),
}


def randomised(sc: Scenario, s: GeneralistSettings, rng: np.random.Generator) -> Scenario:
    """``sc`` with a load multiplier drawn uniformly in [``rate_low``, ``rate_high``], an
    output-length multiplier drawn log-uniformly in [``out_low``, ``out_high``] (longer
    outputs fill the decode pools: their batches grow, steps slow down, and at the top of the
    range decode admission queues; the train scenarios alone never do) and the link process:
    every link's bandwidth scaled by a log-uniform draw in [``link_low``, ``link_high``] and,
    with probability ``link_fluctuate``, steady links made fluctuating with parameters drawn
    uniformly in :data:`FLUCTUATION`; and every pool's instance count (prefill, decode,
    co-located) scaled by its own log-uniform draw in [``pool_low``, ``pool_high``] (rounded,
    at least 1): the same topology with capacity shifted between its clusters, so that
    routes differ in prefill and decode speed as they do in deployments the suite does not
    train on. A multiplier range of 1-1 draws nothing (the random stream of a run without it
    is unchanged)."""
    rate = float(rng.uniform(s.rate_low, s.rate_high))
    out = sc
    if not s.out_high == s.out_low == 1.0:
        out = out.with_output(float(np.exp(rng.uniform(np.log(s.out_low), np.log(s.out_high)))))
    if not s.link_high == s.link_low == 1.0 or s.link_fluctuate > 0:
        bw = float(np.exp(rng.uniform(np.log(s.link_low), np.log(s.link_high))))
        shake = None
        if rng.random() < s.link_fluctuate:
            shake = {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in FLUCTUATION.items()}
        out = out.with_links(bw, shake)
    if not s.pool_high == s.pool_low == 1.0:
        lo, hi = np.log(s.pool_low), np.log(s.pool_high)
        pools = {
            name: {key: float(np.exp(rng.uniform(lo, hi))) for key in INSTANCE_KEYS if key in c}
            for name, c in (out.raw or {})["topology"]["clusters"].items()
        }
        out = out.with_instances(pools)
    return out.with_rate(rate)


def collect(
    sc: Scenario,
    best: str,
    net: RouteScorer | ScorerEnsemble | None,
    s: GeneralistSettings,
    beta: float,
    rng: np.random.Generator,
    labels: Labels,
) -> None:
    """One DAgger round on one scenario (see the module docstring)."""
    topo = sc.topology
    routes = RouteTable.from_topology(topo)
    sim = VecSimulator(sc, s.envs)
    observer = SimObserver(sim, routes.num_routes)
    teacher = make_policy(best, routes, topo, **heuristic_params(sc, best))
    teacher.reset(s.envs, seed=int(rng.integers(2**31)))
    oracle = RolloutOracle(routes, topo, **s.oracle(sc, best))
    oracle.reset(s.envs)
    oracle.attach(sim)
    form = RouteForm.of(topo, sc.ttft_slo_s)
    sim.reset(seed=int(rng.integers(2**31)))
    for _ in range(s.warmup):
        sim.step(
            routes_from_actions(
                teacher.act(observer.observe_view(), observer.mask), routes.num_routes
            )
        )
    for _ in range(s.decisions):
        view = observer.observe_view()
        mask = observer.mask.copy()
        feats, glob = route_features(form, view, mask)
        costs = oracle.candidate_costs()
        labels.routes.append(feats)
        labels.glob.append(glob)
        labels.mask.append(mask)
        labels.costs.append(costs)
        expert = np.argmin(np.where(mask, costs, np.inf), axis=1)
        if net is None or beta >= 1.0:
            a = expert
        else:
            learner = np.argmax(np.where(mask, score_fn(net)(feats, glob, mask), -np.inf), axis=1)
            a = np.where(rng.random(s.envs) < beta, expert, learner)
        sim.step(routes_from_actions(a, routes.num_routes))
    labels.slo = sc.ttft_slo_s


def soft_targets(
    costs: NDArray[np.float64], mask: NDArray[np.bool_], temperature_s: float
) -> NDArray[np.float32]:
    """``softmax(-(cost - lowest allowed cost) / temperature)`` over the allowed routes."""
    c = np.where(mask, costs, np.inf)
    gap = (c - c.min(axis=1, keepdims=True)) / temperature_s
    w = np.where(mask, np.exp(-np.minimum(gap, 50.0)), 0.0)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def fit(
    net: RouteScorer | ScorerEnsemble,
    data: dict[str, Labels],
    s: GeneralistSettings,
    optimisers: list[torch.optim.Optimizer],
    rng: np.random.Generator,
) -> float:
    """Per member of ``net`` (one optimiser each), ``s.epochs`` passes of minibatches over
    every scenario's labels in the member's own order (a minibatch holds one scenario's
    decisions: their route counts match); returns the members' mean last loss."""
    per = {}
    for name, lab in data.items():
        routes, glob, mask, costs = lab.arrays()
        keep = mask.any(axis=1)  # a decision with no allowed route teaches nothing
        per[name] = (routes[keep], glob[keep], mask[keep], costs[keep])
    targets = {name: soft_targets(a[3], a[2], s.tau * data[name].slo) for name, a in per.items()}
    batches = []
    for name, a in per.items():
        n = len(a[0])
        for start in range(0, n, s.batch):
            batches.append((name, start))
    net.train()
    last = []
    for member, optimiser in zip(members_of(net), optimisers, strict=True):
        for _ in range(s.epochs):
            order = {name: rng.permutation(len(a[0])) for name, a in per.items()}
            losses = []
            for k in rng.permutation(len(batches)):
                name, start = batches[k]
                idx = order[name][start : start + s.batch]
                routes, glob, mask, _ = per[name]
                scores = member.scores(torch.from_numpy(routes[idx]), torch.from_numpy(glob[idx]))
                m = torch.from_numpy(mask[idx])
                logp = torch.log_softmax(
                    torch.where(m, scores, torch.full_like(scores, -1e9)), dim=1
                )
                p = torch.from_numpy(targets[name][idx])
                loss = -(p * torch.where(m, logp, torch.zeros_like(logp))).sum(1).mean()
                optimiser.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(member.parameters(), 1.0)
                optimiser.step()
                losses.append(float(loss.detach()))
        last.append(float(np.mean(losses)))
    net.eval()
    return float(np.mean(last))


def members_of(net: RouteScorer | ScorerEnsemble) -> list[RouteScorer]:
    """The scorers a network is made of (itself for a single scorer)."""
    return list(net.members) if isinstance(net, ScorerEnsemble) else [net]


def make_scorer(hidden: int, residual: int, members: int) -> RouteScorer | ScorerEnsemble:
    """A fresh generalist network: one scorer, or an ensemble of ``members`` of them."""
    nets = [
        RouteScorer(len(ROUTE_FEATURES), len(GLOBAL_FEATURES), hidden, anchor_of(residual))
        for _ in range(members)
    ]
    return nets[0] if members == 1 else ScorerEnsemble(nets)


def evaluate(
    net: RouteScorer | ScorerEnsemble,
    scenarios: list[SuiteScenario],
    best: dict[str, str],
    s: GeneralistSettings,
    baselines: dict[str, dict[str, float]] | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """The learner (greedy) and each scenario's best heuristic on the validation seeds:
    per scenario the learner's P90 relative to the heuristic's and the throughput ratio.
    ``baselines`` (the heuristics' means, computed once) is returned for reuse."""
    seeds = seed_range(VALIDATION_SEED, s.eval_seeds)
    out: dict[str, dict[str, float]] = {}
    base = dict(baselines or {})
    for sc in scenarios:
        topo = sc.scenario.topology
        pol = RoutePolicy(
            RouteTable.from_topology(topo),
            topo,
            score_fn(net),
            sc.scenario.ttft_slo_s,
            "generalist",
        )
        run = run_policy(sc.scenario, lambda _sc, p=pol: p, "generalist", seeds, s.eval_decisions)
        mine = {k: float(np.nanmean(run.metrics[k])) for k in METRICS}
        if sc.name not in base:
            b = run_policy(
                sc.scenario, heuristic(best[sc.name]), best[sc.name], seeds, s.eval_decisions
            )
            base[sc.name] = {k: float(np.nanmean(b.metrics[k])) for k in METRICS}
        ref = base[sc.name]
        out[sc.name] = {
            "p90_rel": mine["ttft_p90_s"] / ref["ttft_p90_s"] - 1.0,
            "rps_ratio": mine["throughput_rps"] / ref["throughput_rps"],
            "p90_s": mine["ttft_p90_s"],
            "best_p90_s": ref["ttft_p90_s"],
            "slo_attainment": mine["slo_attainment"],
        }
    return out, base


def oracle_reference(
    scenarios: list[SuiteScenario],
    best: dict[str, str],
    s: GeneralistSettings,
    baselines: dict[str, dict[str, float]],
) -> dict[str, dict[str, float]]:
    """The rollout oracle (the teacher: planning around each scenario's best heuristic and
    ``s.also``, lookahead ``s.horizon``; it sees the future) on the validation seeds, once:
    per scenario its P90 relative to the best heuristic's (``baselines``) and its throughput
    ratio."""
    seeds = seed_range(VALIDATION_SEED, s.eval_seeds)
    out: dict[str, dict[str, float]] = {}
    for sc in scenarios:
        oracle = heuristic("rollout_oracle", **s.oracle(sc.scenario, best[sc.name]))
        run = run_policy(sc.scenario, oracle, "rollout_oracle", seeds, s.eval_decisions)
        mine = {k: float(np.nanmean(run.metrics[k])) for k in METRICS}
        ref = baselines[sc.name]
        out[sc.name] = {
            "p90_rel": mine["ttft_p90_s"] / ref["ttft_p90_s"] - 1.0,
            "rps_ratio": mine["throughput_rps"] / ref["throughput_rps"],
            "p90_s": mine["ttft_p90_s"],
        }
    return out


def oracle_share(learner: float, oracle: float) -> float:
    """The share of the oracle's gain over the best heuristic the learner reaches (relative
    P90s, negative = better); NaN where the oracle gains nothing."""
    return learner / oracle if oracle < 0 else math.nan


def selection_score(result: dict[str, dict[str, float]]) -> float:
    """Lower is better: the mean relative P90, with a scenario that does not keep up with its
    best heuristic's throughput counted as +100 %."""
    vals = [r["p90_rel"] if r["rps_ratio"] >= KEEP_UP else 1.0 for r in result.values()]
    return float(np.mean(vals))


def train_generalist(
    suite: str, out: Path, s: GeneralistSettings, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Train on the train set of ``suite`` into folder ``out`` (see the module docstring);
    returns the summary written to ``out/run.json``."""
    from torch.utils.tensorboard import SummaryWriter

    loaded = load_suite(suite)
    scenarios = list(loaded.train)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(s.seed)
    torch.manual_seed(s.seed)
    writer = SummaryWriter(str(out / "tb"))
    t0 = time.perf_counter()
    checks = validation_scenarios(scenarios, s)
    echo(f"best heuristics of the {len(checks)} validation scenarios (validation seeds) ...")
    best = best_heuristics(checks, seed_range(VALIDATION_SEED, s.eval_seeds), s.eval_decisions)
    echo("  " + ", ".join(f"{k}: {v}" for k, v in best.items()))
    net = make_scorer(s.hidden, s.residual, s.members)
    optimisers = [torch.optim.Adam(m.parameters(), lr=s.lr) for m in members_of(net)]
    data: dict[str, Labels] = {sc.name: Labels() for sc in scenarios}
    history = []
    baselines: dict[str, dict[str, float]] | None = None
    oracle: dict[str, dict[str, float]] | None = None
    best_score, best_iteration = math.inf, -1
    for it in range(s.iterations):
        beta = s.beta0 * 0.5**it
        t = time.perf_counter()
        for sc in scenarios:
            collect(
                randomised(sc.scenario, s, rng),
                best[sc.name],
                net if it else None,
                s,
                beta,
                rng,
                data[sc.name],
            )
        collect_s = time.perf_counter() - t
        if it == 0:
            allr = np.concatenate(
                [
                    np.concatenate(lab.routes).reshape(-1, len(ROUTE_FEATURES))
                    for lab in data.values()
                ]
            )
            allg = np.concatenate([np.concatenate(lab.glob) for lab in data.values()])
            net.set_statistics(allr, allg)
        loss = fit(net, data, s, optimisers, rng)
        result, baselines = evaluate(net, checks, best, s, baselines)
        if oracle is None and s.oracle_eval:
            echo("the rollout oracle on the validation seeds (once, a reference) ...")
            oracle = oracle_reference(checks, best, s, baselines)
            echo(
                "  oracle P90 vs best heuristic: "
                + ", ".join(f"{k} {v['p90_rel']:+.0%}" for k, v in oracle.items())
            )
        score = selection_score(result)
        labels = sum(len(lab) for lab in data.values())
        for name, r in result.items():
            writer.add_scalar(f"eval/{name}/p90_vs_best_heuristic", r["p90_rel"], it)
            writer.add_scalar(f"eval/{name}/throughput_ratio", r["rps_ratio"], it)
            if oracle is not None:
                o = oracle[name]["p90_rel"]
                writer.add_scalar(f"eval/{name}/oracle_p90_vs_best_heuristic", o, it)
                writer.add_scalar(
                    f"eval/{name}/share_of_oracle_gain", oracle_share(r["p90_rel"], o), it
                )
        # the selection score counts a scenario under 99 % of the throughput +100 %
        writer.add_scalar("eval/selection_score", score, it)
        mean_rel = float(np.mean([v["p90_rel"] for v in result.values()]))
        writer.add_scalar("eval/mean_p90_vs_best_heuristic", mean_rel, it)
        if oracle is not None:
            mean_o = float(np.mean([v["p90_rel"] for v in oracle.values()]))
            writer.add_scalar("eval/mean_oracle_p90_vs_best_heuristic", mean_o, it)
            writer.add_scalar("eval/share_of_oracle_gain", oracle_share(mean_rel, mean_o), it)
        writer.add_scalar("train/loss", loss, it)
        writer.add_scalar("train/labels", labels, it)
        echo(
            f"iteration {it}: beta {beta:.2f}, {labels:,} labels ({collect_s:.0f} s to collect), "
            f"loss {loss:.4f}, validation score {score:+.1%} ("
            + ", ".join(f"{k} {v['p90_rel']:+.0%}" for k, v in result.items())
            + ")"
        )
        history.append(
            {
                "iteration": it,
                "beta": beta,
                "labels": labels,
                "loss": loss,
                "eval": result,
                "score": score,
            }
        )
        # every iteration's weights, for re-selection or averaging after the run
        (out / "iterations").mkdir(exist_ok=True)
        torch.save(net.state_dict(), out / "iterations" / f"{it}.pt")
        if score < best_score:
            best_score, best_iteration = score, it
            torch.save(net.state_dict(), out / "model.pt")
    writer.close()
    net.load_state_dict(torch.load(out / "model.pt"))
    ranges = feature_ranges(data)
    summary = {
        "format": GENERALIST_FORMAT,
        "kind": "generalist",
        "suite": loaded.name,
        "train_scenarios": [sc.name for sc in scenarios],
        "best_heuristics": best,
        "settings": asdict(s),
        "route_features": [n for n, _ in ROUTE_FEATURES],
        "global_features": [n for n, _ in GLOBAL_FEATURES],
        "selected_iteration": best_iteration,
        "history": history,
        "oracle": oracle,
        "ranges": ranges,
        "wall_s": time.perf_counter() - t0,
        "commit": _commit(),
        "command": " ".join(["python", *sys.argv]) if sys.argv and sys.argv[0] else None,
    }
    (out / "run.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    return summary


def _commit() -> str | None:
    """The repository's commit (with "+dirty" when files differ from it), or None."""
    import subprocess

    here = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return rev + ("+dirty" if dirty else "")


def feature_ranges(data: dict[str, Labels], q: float = 0.001) -> dict[str, list[list[float]]]:
    """Per feature the ``[q, 1 - q]`` quantiles of the training rows (allowed routes only):
    the range a deployed router trusts the policy in."""
    rows = []
    globs = []
    for lab in data.values():
        r, g, m, _ = lab.arrays()
        rows.append(r[m])
        globs.append(g)
    r = np.concatenate(rows)
    g = np.concatenate(globs)
    return {
        "routes": np.quantile(r, [q, 1 - q], axis=0).T.tolist(),
        "global": np.quantile(g, [q, 1 - q], axis=0).T.tolist(),
    }


def anchor_of(residual: int) -> int | None:
    """The route feature a residual network adjusts (the estimated TTFT), or None."""
    return residual_anchor() if residual else None


def load_generalist(path: str | Path) -> tuple[RouteScorer | ScorerEnsemble, dict[str, Any]]:
    """The network and run summary of a ``train.py --suite`` run folder (ConfigError naming
    what is missing)."""
    from prfaas_env.errors import ConfigError, load_folder_json

    root = Path(path)
    summary = load_folder_json(root, "run.json", "run", "train.py --suite")
    if summary.get("kind") != "generalist" or summary.get("format") != GENERALIST_FORMAT:
        raise ConfigError(f"{root}/run.json: not a generalist run of format {GENERALIST_FORMAT}")
    if not (root / "model.pt").is_file():
        raise ConfigError(f"{root}: model.pt is missing (was training finished?)")
    settings = summary["settings"]
    net = make_scorer(
        int(settings["hidden"]), int(settings.get("residual", 0)), int(settings.get("members", 1))
    )
    net.load_state_dict(torch.load(root / "model.pt"))
    net.eval()
    return net, summary


def generalist_policy(scenario: Scenario, path: str, label: str | None = None) -> RoutePolicy:
    """A generalist run as a router on any ``scenario`` (suite evaluation's builder)."""
    net, _ = load_generalist(path)
    topo = scenario.topology
    return RoutePolicy(
        RouteTable.from_topology(topo),
        topo,
        score_fn(net),
        scenario.ttft_slo_s,
        label or f"generalist:{Path(path).name}",
    )


def export_generalist(
    run: str | Path, out: str | Path, force: bool = False, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """A generalist run as a per-route bundle (golden lines from every scenario of its
    suite; the guard from its training data's ranges; Mooncake's router as fallback)."""
    from prfaas_env.export.route_bundle import export_route_bundle

    net, summary = load_generalist(run)
    suite = load_suite(summary["suite"])
    provenance = {
        "summary": {
            "kind": "generalist",
            "suite": summary["suite"],
            "train_scenarios": summary["train_scenarios"],
            "settings": summary["settings"],
            "selected_iteration": summary["selected_iteration"],
            "commit": summary.get("commit"),
            "command": summary.get("command"),
        },
        "run": summary,
    }
    return export_route_bundle(
        net,
        score_fn(net),
        [(s.name, s.scenario) for s in suite.scenarios],
        out,
        summary["ranges"],
        provenance,
        seeds=2,
        decisions=300,
        golden=24,
        force=force,
        echo=echo,
    )
