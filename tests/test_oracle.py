"""The rollout oracle: candidate costs are paired and exact, it improves on its base policy,
it runs on every suite scenario, and it is refused where it cannot plan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from prfaas_env.errors import ConfigError
from prfaas_env.evaluation import heuristic, run_policy
from prfaas_env.observation.simulated import SimObserver
from prfaas_env.policies import RouteTable, make_policy
from prfaas_env.policies.oracle import RolloutOracle
from prfaas_env.sim.engine import VecSimulator
from prfaas_env.sim.scenario import Scenario
from prfaas_env.suite import load_suite

SUITE = load_suite("default")


def test_candidate_costs_are_what_each_action_then_the_base_policy_gives() -> None:
    """The oracle's cost of an action equals the summed TTFT of a separate simulation that
    takes the action, routes the next H arrivals with the base heuristic and drains."""
    sc = SUITE.get("paper_poisson").scenario
    topo = sc.topology
    routes = RouteTable.from_topology(topo)
    sim = VecSimulator(sc, 2)
    observer = SimObserver(sim, routes.num_routes)
    sim.reset(seed=4)
    base = make_policy(
        "mooncake", routes, topo, ttft_slo_s=sc.ttft_slo_s, prefill_estimate="tables"
    )
    base.reset(2)
    for _ in range(150):
        sim.step(base.act(observer.observe_view(), observer.mask))
    oracle = RolloutOracle(
        routes, topo, horizon=12, base="mooncake", base_params={"ttft_slo_s": sc.ttft_slo_s}
    )
    oracle.reset(2)
    oracle.attach(sim)
    costs = oracle.candidate_costs()
    for action in range(routes.num_routes):
        alone = VecSimulator(sc, 2)
        look = SimObserver(alone, routes.num_routes)
        alone.copy_envs(sim, [0, 1], [0, 1])
        before = alone.counters()[:, 2]
        alone.step(np.full(2, action))
        for _ in range(12):
            alone.step(base.act(look.observe_view(), look.mask))
        alone.drain()
        np.testing.assert_array_equal(costs[:, action], alone.counters()[:, 2] - before)
    assert (costs[:, 0] != costs[:, 1]).any()  # the choice matters on these requests


def _warmed(sc: Scenario, envs: int, seed: int, decisions: int) -> tuple[VecSimulator, SimObserver]:
    """``envs`` envs of ``sc`` after ``decisions`` decisions routed by Mooncake's router."""
    routes = RouteTable.from_topology(sc.topology)
    sim = VecSimulator(sc, envs)
    observer = SimObserver(sim, routes.num_routes)
    sim.reset(seed=seed)
    base = make_policy("mooncake", routes, sc.topology, prefill_estimate="tables")
    base.reset(envs)
    for _ in range(decisions):
        sim.step(base.act(observer.observe_view(), observer.mask))
    return sim, observer


def test_a_shortlist_costs_exactly_what_the_full_oracle_costs_on_its_candidates() -> None:
    """With ``candidates`` = K the oracle simulates the K routes its base scores lowest: the
    same costs as the full oracle on those, infinity elsewhere, K copies per env."""
    sc = SUITE.get("region3_prefix_bursty").scenario
    topo = sc.topology
    routes = RouteTable.from_topology(topo)
    sim, observer = _warmed(sc, 3, seed=2, decisions=60)
    view, mask = observer.observe_view(), observer.mask
    full, short = (RolloutOracle(routes, topo, horizon=6, candidates=c) for c in (None, 3))
    for o in (full, short):
        o.reset(3)
        o.attach(sim)
    assert short._scratch is not None and short._scratch.num_envs == 9
    everything, some = full.candidate_costs(view, mask), short.candidate_costs(view, mask)
    picked = short.shortlist(view, mask)
    scores = np.where(mask[:, : routes.num_routes], short.base.scores(view), np.inf)
    for e in range(3):  # the shortlist is the base's three lowest-scored allowed routes
        assert set(picked[e]) == set(np.argsort(scores[e], kind="stable")[:3])
        np.testing.assert_array_equal(some[e, picked[e]], everything[e, picked[e]])
    assert np.isinf(some).sum() == 3 * (routes.num_actions - 3)
    with pytest.raises(ValueError, match="needs view and mask"):
        short.candidate_costs()
    with pytest.raises(ValueError, match=r"mask: expected shape \(envs, <= 11\)"):
        short.shortlist(view, np.ones((3, 13), np.bool_))
    nan_first = RolloutOracle(routes, topo, horizon=6, candidates=3)
    nan_first.ranker = type("NaNScores", (), {"scores": lambda self, v: np.full((3, 11), np.nan)})()
    only = np.zeros((3, 11), np.bool_)
    only[:, 4] = True  # one allowed route whose score is NaN still comes before masked ones
    assert (nan_first.shortlist(view, only)[:, 0] == 4).all()


def test_a_base_without_scores_and_an_inner_oracle_shortlist_by_mooncakes_scores() -> None:
    """round_robin does not score routes, nor does an inner oracle: Mooncake's router ranks
    the shortlist instead, and the nested oracle runs with it (it used to be refused, which
    ended a whole suite run where round_robin was a scenario's best heuristic)."""
    sc = SUITE.get("region3_prefix_bursty").scenario
    routes = RouteTable.from_topology(sc.topology)
    rr = RolloutOracle(routes, sc.topology, horizon=2, base="round_robin", candidates=2)
    assert rr.ranker.name == "mooncake"
    full = RolloutOracle(routes, sc.topology, horizon=2, base="round_robin")
    assert full.ranker is full.base  # no shortlist: nothing else is built
    kwargs = {"horizon": 2, "iterations": 1, "candidates": 2}
    run = run_policy(sc, heuristic("rollout_oracle", **kwargs), "o", [0], 12)
    assert run.metrics["decisions"][0] == 12
    nested = RolloutOracle(routes, sc.topology, **kwargs)
    assert nested.ranker.name == "mooncake" and nested.base.candidates == 2


@pytest.mark.parametrize("name", ["paper_poisson", "region3_prefix_bursty"])
def test_the_oracle_never_does_worse_than_its_base_policy(name: str) -> None:
    """Policy improvement with common random numbers: on fixed seeds the oracle's mean TTFT
    (what its default cost sums) is at most its base heuristic's, seed by seed."""
    sc = SUITE.get(name).scenario
    seeds, decisions = [0, 1], 300
    base = run_policy(sc, heuristic("mooncake"), "mooncake", seeds, decisions)
    oracle = run_policy(
        sc, heuristic("rollout_oracle", horizon=16, base="mooncake"), "oracle", seeds, decisions
    )
    b, o = base.metrics, oracle.metrics
    np.testing.assert_array_equal(o["decisions"], b["decisions"])
    assert (o["ttft_mean_s"] <= b["ttft_mean_s"]).all(), (o["ttft_mean_s"], b["ttft_mean_s"])
    assert o["ttft_mean_s"].sum() < b["ttft_mean_s"].sum()  # and it does gain


@pytest.mark.parametrize("name", [s.name for s in SUITE.scenarios])
def test_the_oracle_runs_on_every_suite_scenario(name: str) -> None:
    sc = SUITE.get(name).scenario
    run = run_policy(sc, heuristic("rollout_oracle", horizon=4, cost="tail"), "oracle", [0], 40)
    assert run.metrics["decisions"][0] == 40


def test_the_ttft_slo_cost_is_the_ttft_cost_plus_one_slo_per_missed_request() -> None:
    """``ttft_slo`` = ``ttft`` + SLO x (requests that miss an SLO): against the ``ttft`` and
    ``goodput`` oracles on the same state, the difference is an SLO times the completed
    requests (the same for every candidate: all drain) less those meeting both SLOs. The
    scenario's outputs are lengthened so that some candidates break the TPOT SLO."""
    sc = SUITE.get("paper_mixture_overload").scenario.with_output(3.0)
    topo = sc.topology
    routes = RouteTable.from_topology(topo)
    sim, _ = _warmed(sc, 3, seed=5, decisions=120)
    costs = {}
    for cost in ("ttft", "goodput", "ttft_slo"):
        o = RolloutOracle(routes, topo, horizon=10, cost=cost)
        o.reset(3)
        o.attach(sim)
        costs[cost] = o.candidate_costs()
    missed = (costs["ttft_slo"] - costs["ttft"]) / sc.ttft_slo_s
    np.testing.assert_allclose(missed, np.round(missed), atol=1e-6)
    completed = missed + costs["goodput"]  # missed = completed - met, goodput = -met
    np.testing.assert_allclose(completed, completed[:, :1].repeat(completed.shape[1], 1))
    assert (missed > 0).any()  # some requests miss an SLO here, so the costs differ


def test_the_e2e_slo_cost_adds_the_decode_durations_the_ttft_slo_cost_leaves_out() -> None:
    """``e2e_slo`` - ``ttft_slo`` on the same state is each candidate's summed decode
    duration: positive, and different between candidates (a crowded decode pool slows every
    request in it; the counter itself is checked in the simulator's tests)."""
    sc = SUITE.get("paper_mixture_overload").scenario.with_output(3.0)
    topo = sc.topology
    routes = RouteTable.from_topology(topo)
    sim, _ = _warmed(sc, 3, seed=5, decisions=120)
    costs = {}
    for cost in ("ttft_slo", "e2e_slo"):
        o = RolloutOracle(routes, topo, horizon=10, cost=cost)
        o.reset(3)
        o.attach(sim)
        costs[cost] = o.candidate_costs()
    decode = costs["e2e_slo"] - costs["ttft_slo"]
    assert (decode > 0).all()
    assert (np.ptp(decode, axis=1) > 0).any()


def test_a_parallel_rollout_costs_each_candidate_its_lowest_over_the_bases() -> None:
    """With ``also`` a candidate costs the lowest of its rollouts under each base: exactly
    the elementwise minimum of the single-base oracles' costs on the same state (shortlist
    and all); the scenario's parameters reach the extra base (suite evaluation's builder)."""
    from prfaas_env.evaluation import heuristic_params, planner_params

    sc = SUITE.get("region3_prefix_bursty").scenario
    topo = sc.topology
    routes = RouteTable.from_topology(topo)
    sim, observer = _warmed(sc, 3, seed=7, decisions=80)
    view, mask = observer.observe_view(), observer.mask
    threshold = {"threshold_tokens": 4096.0}
    kinds = {
        "mooncake": {},
        "threshold": {"base": "prfaas_threshold", "base_params": threshold},
        "both": {"also": ["prfaas_threshold"], "also_params": {"prfaas_threshold": threshold}},
    }
    costs = {}
    for name, kw in kinds.items():
        o = RolloutOracle(routes, topo, horizon=8, candidates=4, **kw)
        o.reset(3)
        o.attach(sim)
        costs[name] = o.candidate_costs(view, mask)
    # the shortlist is ranked by the main base (Mooncake's) in "mooncake" and "both" alike
    finite = np.isfinite(costs["mooncake"])
    np.testing.assert_array_equal(np.isfinite(costs["both"]), finite)
    want = np.minimum(costs["mooncake"], costs["threshold"])[finite]
    np.testing.assert_array_equal(costs["both"][finite], want)
    assert (costs["threshold"][finite] != costs["mooncake"][finite]).any()  # bases differ
    same = RolloutOracle(routes, topo, also=["mooncake"])  # the base again: no extra rollout
    assert same.also == []
    filled = planner_params(sc, {"also": ["mooncake"]})
    assert filled["also_params"] == {"mooncake": heuristic_params(sc, "mooncake")}
    with pytest.raises(ConfigError, match="also: 'random' is not a deterministic heuristic"):
        RolloutOracle(routes, topo, also=["random"])
    with pytest.raises(ConfigError, match="also and iterations cannot be combined"):
        RolloutOracle(routes, topo, also=["mooncake"], iterations=1)
    with pytest.raises(ConfigError, match="also_params: lmetric not among also"):
        RolloutOracle(routes, topo, also=["mooncake"], also_params={"lmetric": {}})


def test_costs_and_iterations() -> None:
    sc = SUITE.get("paper_poisson").scenario
    for kwargs in ({"cost": "goodput"}, {"iterations": 1, "horizon": 3}):
        run = run_policy(sc, heuristic("rollout_oracle", **kwargs), "o", [0], 30)
        assert run.metrics["decisions"][0] == 30


def test_bad_parameters_and_no_simulator_are_refused() -> None:
    topo = SUITE.get("paper_poisson").scenario.topology
    routes = RouteTable.from_topology(topo)
    allowed = "ttft, tail, goodput, ttft_slo, e2e_slo"
    with pytest.raises(ConfigError, match=f"cost: 'median'; allowed: {allowed}"):
        make_policy("rollout_oracle", routes, topo, cost="median")
    with pytest.raises(
        ConfigError, match=r"base: 'best_guess' is not a deterministic heuristic; allowed: .*moon"
    ):
        make_policy("rollout_oracle", routes, topo, base="best_guess")
    with pytest.raises(ConfigError, match=r"base: 'random' is not a deterministic heuristic"):
        make_policy("rollout_oracle", routes, topo, base="random")
    with pytest.raises(ConfigError, match=r"horizon: expected an integer >= 0, got -1"):
        make_policy("rollout_oracle", routes, topo, horizon=-1)
    with pytest.raises(ConfigError, match=r"candidates: expected an integer >= 1, got 0"):
        make_policy("rollout_oracle", routes, topo, candidates=0)
    oracle = make_policy("rollout_oracle", routes, topo)
    with pytest.raises(RuntimeError, match="plans with the simulator"):
        oracle.act({}, np.ones((1, 2), np.bool_))


def test_suite_evaluation_ranks_routers_and_writes_its_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """evaluate.py --suite: every router on the same requests of each scenario, the table
    relative to each scenario's best heuristic (the oracle planning around it), outputs."""
    import json

    from tests.test_evaluate import _main

    out = tmp_path / "suite"
    code = _main()(
        [
            "--suite",
            "default",
            "--scenarios",
            "paper_poisson,reason_starved",
            "--policies",
            "mooncake,least_loaded,prfaas_optimised,rollout_oracle",
            "--policy-params",
            str(_params(tmp_path)),
            "--seeds",
            "2",
            "--decisions",
            "120",
            "--workers",
            "1",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0, text
    assert "rollout_oracle (future)" in text and "best heuristic: [0]" in text
    summary = json.loads((out / "summary.json").read_text())
    best = summary["best_heuristic"]
    assert set(best) == {"paper_poisson", "reason_starved"}
    for scenario, name in best.items():
        assert summary["relative"][name][scenario]["rel"] == 0.0
    recs = json.loads((out / "results.json").read_text())
    assert {r["policy"] for r in recs} == {
        "mooncake",
        "least_loaded",
        "prfaas_optimised",
        "rollout_oracle",
    }
    assert len(recs) == 4 * 2 * 2
    assert (out / "heatmap.png").stat().st_size > 1000
    assert "| `paper_poisson` | train |" in (out / "headroom.md").read_text()
    assert "headroom: the planner against the best heuristic" in text
    assert _main()(["--suite", "no_such_suite", "--no-progress"]) == 2
    assert "shipped suites: default" in capsys.readouterr().err
    assert _main()(["--suite", "default", "--scenarios", "nope", "--no-progress"]) == 2
    assert "has no scenario 'nope'; it has: " in capsys.readouterr().err


def test_the_headroom_table_pairs_seeds_and_shares_the_oracles_gain() -> None:
    """Known per-seed figures: the paired interval, the throughput star, both means and the
    learned router's share of the oracle's gain."""
    from prfaas_env.evaluation import METRICS
    from prfaas_env.report import headroom_table, paired_relative
    from prfaas_env.suite_eval import SuiteResult

    def rec(policy: str, kind: str, scenario: str, seed: int, p90: float, rps: float) -> dict:
        r = {m: 1.0 for m in METRICS}
        r.update(ttft_p90_s=p90, throughput_rps=rps, slo_attainment=0.9)
        split = SUITE.get(scenario).split
        return {**r, "policy": policy, "kind": kind, "scenario": scenario, "seed": seed,
                "split": split}  # fmt: skip

    recs = []
    for seed, base in enumerate((10.0, 20.0)):
        recs += [
            rec("mooncake", "heuristic", "paper_poisson", seed, base, 2.0),
            rec("rollout_oracle", "planner", "paper_poisson", seed, base * 0.8, 2.0),
            rec("agent", "learned", "paper_poisson", seed, base * (0.9, 0.94)[seed], 2.0),
            rec("mooncake", "heuristic", "large_poisson", seed, base, 2.0),
            rec("rollout_oracle", "planner", "large_poisson", seed, base * 0.6, 2.0),
            rec("agent", "learned", "large_poisson", seed, base * 0.5, 1.5),
        ]
    result = SuiteResult(SUITE, recs, {}, [0, 1], 100)
    mean, half, used = paired_relative(result, "agent", "paper_poisson", "mooncake")
    assert used == 2
    assert mean == pytest.approx(-0.08) and half == pytest.approx(12.706 * 0.04 / 2, 1e-3)
    text = headroom_table(result)
    assert "| `paper_poisson` | train | mooncake | 15 s | -20.0% ± 0.0% | -8.0% ± 25.4% |" in text
    assert "-50.0% ± 0.0%* |" in text  # the agent fell behind on throughput there
    assert "| mean, all | | | | -30.0% | -29.0% |" in text
    assert "| mean, all (* counted +100 %) | | | | -30.0% | +46.0% |" in text
    assert "on the 2 scenarios both ran: 97% as measured, -153% with agent's * counted" in text
    one_seed = SuiteResult(SUITE, [r for r in recs if r["seed"] == 0], {}, [0], 100)
    assert "| -10.0% |" in headroom_table(one_seed)  # one seed: no interval to give
    skipped = [r for r in recs if not (r["policy"] == "agent" and r["scenario"] == "large_poisson")]
    text = headroom_table(SuiteResult(SUITE, skipped, {}, [0, 1], 100))
    assert "| mean, all | | | | -30.0% | -8.0% (1 of 2) |" in text and "nan" not in text
    assert "on the 1 scenarios both ran: 40% as measured" in text
    assert headroom_table(SuiteResult(SUITE, [r for r in recs if r["kind"] != "planner"], {},
                                      [0, 1], 100)) == ""  # fmt: skip


def _params(tmp_path: Path) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text("policies:\n  rollout_oracle: {horizon: 8}\n")
    return p


class _StubRay:
    """Just enough of Ray's task API to drive ``evaluate_suite(ray_address=...)`` in this
    process: tasks run when submitted and ``wait`` hands them back newest first, so the loop
    must match results to units by reference, not by order."""

    def __init__(self) -> None:
        self.started: str | None = None
        self.waits = 0

    def is_initialized(self) -> bool:
        return self.started is not None

    def init(self, address: str, **_: object) -> None:
        self.started = address

    def remote(self, fn):  # type: ignore[no-untyped-def]
        class Ref:  # an object reference: hashable, holds the finished task's result
            def __init__(self, value: object) -> None:
                self.value = value

        class Task:
            def remote(self, *args: object) -> Ref:
                return Ref(fn(*args))

        return Task()

    def wait(self, refs: list, num_returns: int = 1):  # type: ignore[no-untyped-def]
        self.waits += 1
        return refs[-num_returns:], refs[:-num_returns]

    def get(self, ref):  # type: ignore[no-untyped-def]
        return ref.value


def test_the_ray_loop_returns_what_local_workers_do(monkeypatch: pytest.MonkeyPatch) -> None:
    """Units sent to a Ray cluster come back complete, each counted once for the progress
    bar, and give the same table as running them in this process."""
    import sys

    from prfaas_env.suite_eval import builtin_spec, evaluate_suite

    specs = [builtin_spec("mooncake"), builtin_spec("least_loaded")]
    kw = dict(seeds=[0, 1], decisions=80, scenarios=["paper_poisson", "reason_starved"])
    local = evaluate_suite("default", specs, workers=1, echo=lambda _: None, **kw)
    stub = _StubRay()
    monkeypatch.setitem(sys.modules, "ray", stub)
    done: list[int] = []
    remote = evaluate_suite(
        "default",
        specs,
        ray_address="ray://stub:10001",
        progress=done.append,
        echo=lambda _: None,
        **kw,
    )
    assert stub.started == "ray://stub:10001" and stub.waits == 4
    assert sum(done) == 4 * 2 * 80
    key = lambda r: (r["scenario"], r["policy"], r["seed"])  # noqa: E731
    assert sorted(remote.records, key=key) == sorted(local.records, key=key)


@pytest.mark.parametrize("name", ["paper_poisson", "hetero_mixture_bursty", "reason_starved"])
def test_table_prefill_estimates_stay_within_a_fifth_of_a_percent_of_the_cost_model(
    name: str,
) -> None:
    """The rollouts' cheap prefill estimate (the simulator's interpolated tables) against the
    exact cost model a deployed router uses, on every route of 4 envs x 200 decisions."""
    from prfaas_env.sim.engine import routes_from_actions
    from prfaas_env.suite import load_suite

    sc = load_suite("default").get(name).scenario
    policy = heuristic("mooncake")(sc)
    policy.reset(4, seed=0)
    sim = VecSimulator(sc, 4)
    observer = SimObserver(sim, policy.routes.num_routes)
    sim.reset(seed=0)
    worst, compared = 0.0, 0
    for _ in range(200):
        view = observer.observe_view()
        policy.prefill_estimate = "tables"
        tables = policy.prefill_s(view)
        policy.prefill_estimate = "cost_model"
        exact = policy.prefill_s(view)
        ok = np.isfinite(exact) & (exact > 0)
        compared += int(ok.sum())
        worst = max(worst, float(np.max(np.abs(tables[ok] / exact[ok] - 1.0), initial=0.0)))
        sim.step(routes_from_actions(policy.act(view, observer.mask), policy.routes.num_routes))
    assert compared > 500 and worst < 2e-3


def test_suite_evaluation_warns_before_a_full_oracle_on_a_large_topology(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_evaluate import _main

    argv = ["--suite", "default", "--scenarios", "large_poisson", "--policies"]
    argv += ["mooncake,rollout_oracle", "--seeds", "1", "--decisions", "3", "--no-progress"]
    assert _main()([*argv, "--policy-params", str(_params(tmp_path))]) == 0
    assert "large_poisson (72 routes): expect hours" in capsys.readouterr().err
    p = tmp_path / "short.yaml"
    p.write_text("policies:\n  rollout_oracle: {horizon: 2, candidates: 4}\n")
    assert _main()([*argv, "--policy-params", str(p)]) == 0
    assert "expect hours" not in capsys.readouterr().err
