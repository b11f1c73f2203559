"""The scenario suite (every file loads, every heuristic runs on every scenario, errors list what
exists) and the workload pieces it brought: client mixes, empirical and mixed lengths, rate
shapes (properties of the sampler; the engine against the reference simulator on them is in
test_sim_engine.py through tests/sim_scenarios.py)."""

from __future__ import annotations

import copy
import itertools
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from prfaas_env.errors import ConfigError, NotApplicableError
from prfaas_env.evaluation import heuristic, run_policy
from prfaas_env.policies import policy_names
from prfaas_env.sim import workload as wl
from prfaas_env.sim.empirical import RateShape, shipped_clients
from prfaas_env.sim.engine import VecSimulator
from prfaas_env.sim.scenario import parse_scenario
from prfaas_env.suite import SUITE_DIR, SuiteScenario, load_suite, suite_names
from tests.sim_scenarios import base, scenario

SUITE = load_suite("default")


def _workload(**changes: object) -> wl.Workload:
    d = base()
    d["workload"].update(changes)
    return parse_scenario(d, "test").workload


# ---- the suite ---------------------------------------------------------------------------------
def test_default_suite_loads_with_both_sets_and_a_header_on_every_file() -> None:
    assert "default" in suite_names()
    assert len(SUITE.scenarios) >= 12 and SUITE.train and SUITE.held_out
    for s in SUITE.scenarios:
        assert s.path.read_text().startswith("# "), s.path  # what it models, which set, load
        assert s.description, s.path


def test_train_and_held_out_differ_in_workload_and_topology() -> None:
    """The held-out set has topologies and workloads the train set lacks, and no held-out
    scenario repeats a train scenario's pair (rates aside)."""

    def topo(s: SuiteScenario) -> str:
        return yaml.safe_dump(s.scenario.raw["topology"], sort_keys=True)

    def work(s: SuiteScenario) -> str:
        w = copy.deepcopy(s.scenario.raw["workload"])
        w.pop("rate_multiplier", None)
        if isinstance(w.get("arrival"), dict):
            w["arrival"].pop("rate_rps", None)
        return yaml.safe_dump(w, sort_keys=True)

    assert {topo(s) for s in SUITE.held_out} - {topo(s) for s in SUITE.train}
    assert {work(s) for s in SUITE.held_out} - {work(s) for s in SUITE.train}
    pairs = {(topo(s), work(s)) for s in SUITE.train}
    assert not [s.name for s in SUITE.held_out if (topo(s), work(s)) in pairs]


def test_default_suite_spans_the_required_sizes() -> None:
    def shape(s: SuiteScenario) -> tuple[int, int, int]:
        t = s.scenario.topology
        pd = sum(c.role == "pd" for c in t.clusters)
        return pd, sum(c.role == "prefill" for c in t.clusters), len(t.datacenters)

    shapes = [shape(s) for s in SUITE.scenarios]
    assert (1, 1, 2) in shapes  # the paper's
    assert any(pd >= 3 and pf >= 2 for pd, pf, _ in shapes)  # multi-region
    assert any(pd >= 8 and pf >= 4 and dc >= 4 for pd, pf, dc in shapes)  # large


@pytest.mark.parametrize("name", [s.name for s in SUITE.scenarios])
def test_every_heuristic_runs_on_every_suite_scenario(name: str) -> None:
    s = SUITE.get(name)
    for policy in policy_names():
        try:
            run = run_policy(s.scenario, heuristic(policy), policy, [0], 200)
        except NotApplicableError:  # the paper's analytic model needs the paper's shape
            assert policy == "prfaas_optimised" and len(s.scenario.topology.clusters) > 2
            continue
        assert run.metrics["decisions"][0] == 200, policy
        assert np.isfinite(run.ttft_s).any(), policy


def test_unknown_suite_lists_the_shipped_ones() -> None:
    with pytest.raises(ConfigError, match="shipped suites: default"):
        load_suite("no-such-suite")


def test_suite_folder_errors_name_the_folder_and_the_file(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(ConfigError, match=r"missing folder held_out/.*folders found: train/"):
        load_suite(tmp_path)
    (tmp_path / "held_out").mkdir()
    with pytest.raises(ConfigError, match=r"train/ holds no scenario files"):
        load_suite(tmp_path)
    src = SUITE_DIR / "default" / "train" / "paper_poisson.yaml"
    shutil.copy(src, tmp_path / "train" / "a.yaml")
    shutil.copy(src, tmp_path / "held_out" / "b.yaml")
    assert [s.name for s in load_suite(tmp_path).scenarios] == ["a", "b"]
    shutil.copy(src, tmp_path / "held_out" / "a.yaml")
    with pytest.raises(ConfigError, match="two scenarios are called 'a'"):
        load_suite(tmp_path)
    (tmp_path / "held_out" / "a.yaml").unlink()
    bad = yaml.safe_load(src.read_text())
    bad["workload"]["arrival"]["process"] = "fractal"
    (tmp_path / "held_out" / "c.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=r"c\.yaml.*workload\.arrival\.process.*clients"):
        load_suite(tmp_path)
    (tmp_path / "held_out" / "c.yaml").write_text("topology: [unclosed\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:\d+: invalid YAML"):
        load_suite(tmp_path)
    with pytest.raises(ConfigError, match="file, not a suite folder"):
        load_suite(src)
    with pytest.raises(ConfigError, match="has no scenario 'nope'; it has: "):
        SUITE.get("nope")


# ---- workload pieces: the sampler's properties -------------------------------------------------
def test_client_mix_keeps_its_rate_shares_and_client_lengths() -> None:
    clients = [
        {"share": 3, "family": "gamma", "shape": 0.5, "input": [[0, 100], [1, 200]]},
        {"share": 1, "family": "weibull", "shape": 0.7, "input": [[0, 5000], [1, 6000]]},
        {"share": 1, "input": [[0, 20000], [0.5, 20000], [1, 30000]]},
    ]
    w = _workload(
        arrival={"process": "clients", "rate_rps": 40.0, "clients": clients},
        input={"distribution": "clients"},
    )
    s = wl.sample(w, 60_000, seed=4)
    t, c, inp = s["arrival_s"], s["client"], s["input_tokens"]
    assert np.all(np.diff(t) >= 0)
    assert len(t) / t[-1] == pytest.approx(40.0, rel=0.05)
    np.testing.assert_allclose(np.bincount(c) / len(c), [0.6, 0.2, 0.2], atol=0.02)
    for k, (lo, hi) in enumerate([(100, 200), (5000, 6000), (20000, 30000)]):
        assert inp[c == k].min() >= lo and inp[c == k].max() <= hi
    gaps = np.diff(t[c == 0])
    assert gaps.std() / gaps.mean() == pytest.approx(math.sqrt(2), rel=0.1)  # gamma k = 0.5
    assert w.input.mean() == pytest.approx(0.6 * 150 + 0.2 * 5500 + 0.2 * 22500)


@pytest.mark.parametrize("table", ["servegen/language", "servegen/reason"])
def test_shipped_client_mixes_keep_the_configured_rate(table: str) -> None:
    """Over many envs the mean rate matches, even with ServeGen's heavy-tailed clients."""
    w = _workload(
        arrival={"process": "clients", "rate_rps": 5.0, "clients": table},
        input={"distribution": "clients"},
        output={"distribution": "clients"},
    )
    counts, spans, means = [], [], []
    for seed in range(40):
        s = wl.sample(w, 2000, seed=seed)
        counts.append(len(s["arrival_s"]))
        spans.append(s["arrival_s"][-1])
        means.append(s["input_tokens"].mean())
    assert sum(counts) / sum(spans) == pytest.approx(5.0, rel=0.1)
    assert len(shipped_clients(table)) == int(w.clients and len(w.clients))
    assert np.mean(means) == pytest.approx(w.input.mean(), rel=0.15)


def test_empirical_lengths_follow_their_quantiles() -> None:
    q = [[0.0, 10], [0.25, 100], [0.5, 1000], [0.9, 10000], [1.0, 50000]]
    w = _workload(input={"distribution": "empirical", "quantiles": q})
    inp = wl.sample(w, 40_000, seed=1)["input_tokens"]
    assert inp.min() >= 10 and inp.max() <= 50000
    for p, tokens in q[1:-1]:
        assert (inp <= tokens).mean() == pytest.approx(p, abs=0.01)
    assert inp.mean() == pytest.approx(w.input.mean(), rel=0.03)


def test_mixture_draws_each_component_with_its_weight() -> None:
    w = _workload(
        input={
            "distribution": "mixture",
            "weight": 0.3,
            "components": [
                {"distribution": "fixed", "tokens": 70000},
                {"distribution": "empirical", "table": "servegen/language"},
            ],
        }
    )
    inp = wl.sample(w, 40_000, seed=2)["input_tokens"]
    assert (inp == 70000).mean() == pytest.approx(0.3, abs=0.01)
    assert w.input.mean() == pytest.approx(inp.mean(), rel=0.05)
    assert w.input.longest() == 89964  # the language table's longest prompt


shapes = st.one_of(
    st.builds(
        lambda a, b, d: RateShape("ramp", start=a, end=b, duration_s=d),
        st.floats(0.05, 5),
        st.floats(0.05, 5),
        st.floats(1, 1000),
    ),
    st.builds(
        lambda a, p, ph: RateShape("sinusoid", amplitude=a, period_s=p, phase=ph),
        st.floats(0, 0.95),
        st.floats(1, 1000),
        st.floats(-6, 6),
    ),
    st.builds(
        lambda s, m: RateShape("steps", step_s=s, multipliers=tuple(m)),
        st.floats(0.5, 100),
        st.lists(st.floats(0.05, 5), min_size=1, max_size=30),
    ),
)


@settings(max_examples=200, deadline=None)
@given(shape=shapes, tau=st.floats(0, 1e5))
def test_time_warp_inverts_the_rate_integral(shape: RateShape, tau: float) -> None:
    """warp (compiled) is the inverse of RateShape.integral (plain Python, written apart)."""
    p = wl._shape_params(shape)
    t = wl.warp(p["shape_kind"], p["shape"], p["shape_knots"], tau)
    assert t >= 0
    assert shape.integral(t) == pytest.approx(tau, rel=1e-9, abs=1e-6)


@pytest.mark.parametrize(
    "shape",
    [
        {"kind": "ramp", "start": 0.2, "end": 2.0, "duration_s": 200},
        {"kind": "sinusoid", "amplitude": 0.8, "period_s": 100, "phase": 1.0},
        {"kind": "steps", "step_s": 20, "table": "servegen/reason"},
    ],
)
@pytest.mark.parametrize(
    "arrival",
    [
        {"process": "poisson", "rate_rps": 20.0},
        {
            "process": "clients",
            "rate_rps": 20.0,
            "clients": [{"share": 1, "family": "gamma", "shape": 2}],
        },
    ],
)
def test_rate_shape_scales_the_arrivals_over_time(shape: dict, arrival: dict) -> None:
    """Arrivals in each window match rate x the multiplier's integral over it."""
    w = _workload(arrival=arrival, rate_shape=shape)
    rs = w.rate_shape
    assert rs is not None
    times = np.concatenate([wl.sample(w, 16_000, seed=s)["arrival_s"] for s in range(5)])
    assert np.all(np.diff(wl.sample(w, 8000, seed=9)["arrival_s"]) >= 0)
    edges = np.linspace(0, 300, 7)
    counts = np.histogram(times, edges)[0] / 5
    expected = [20.0 * (rs.integral(b) - rs.integral(a)) for a, b in itertools.pairwise(edges)]
    np.testing.assert_allclose(counts, expected, rtol=0.12)


def test_requests_do_not_depend_on_routing_and_match_the_sampler() -> None:
    sc = scenario("servegen_mix")
    recs = []
    for route in range(len(sc.topology.routes)):
        sim = VecSimulator(sc, 1, record=300)
        sim.reset(seed=8)
        for _ in range(300):
            sim.step(np.array([route]))
        recs.append(sim.records(0))
    s = wl.sample(sc.workload, 300, seed=8)
    for rec in recs:
        np.testing.assert_array_equal(rec["arrival_s"], s["arrival_s"])
        np.testing.assert_array_equal(rec["input_tokens"], s["input_tokens"])
        np.testing.assert_array_equal(rec["output_tokens"], s["output_tokens"])


def test_new_workload_keys_give_errors_that_name_the_key() -> None:
    def err(**changes: object) -> str:
        with pytest.raises(ConfigError) as info:
            _workload(**changes)
        return str(info.value)

    assert "servegen/language" in err(arrival={"process": "clients", "rate_rps": 1})
    assert "arrival.clients[0].family" in err(
        arrival={"process": "clients", "rate_rps": 1, "clients": [{"share": 1, "family": "x"}]}
    )
    assert "input.distribution: clients needs the clients arrival" in err(
        input={"distribution": "clients"}
    )
    assert "needs an input table for every client" in err(
        arrival={"process": "clients", "rate_rps": 1, "clients": [{"share": 1}]},
        input={"distribution": "clients"},
    )
    assert "input.quantiles[1]: probabilities must increase" in err(
        input={"distribution": "empirical", "quantiles": [[0, 1], [0, 2], [1, 3]]}
    )
    assert "input.table: 'nope' is not a shipped table" in err(
        input={"distribution": "empirical", "table": "nope"}
    )
    assert "components[1].distribution: 'mixture' is not allowed" in err(
        input={
            "distribution": "mixture",
            "weight": 0.5,
            "components": [{"distribution": "fixed", "tokens": 1}, {"distribution": "mixture"}],
        }
    )
    assert "rate_shape.amplitude" in err(
        rate_shape={"kind": "sinusoid", "amplitude": 1.5, "period_s": 10}
    )
    assert "rate_shape.kind: 'cosine' is not allowed" in err(rate_shape={"kind": "cosine"})
    assert "rate_shape: give either multipliers" in err(rate_shape={"kind": "steps", "step_s": 1})


clients_lists = st.lists(
    st.fixed_dictionaries(
        {
            "share": st.floats(0.01, 10),
            "family": st.sampled_from(["gamma", "weibull"]),
            "shape": st.floats(0.15, 5),
            "input": st.tuples(st.integers(1, 1000), st.integers(0, 5000)).map(
                lambda t: [[0, t[0]], [0.5, t[0] + t[1] // 2], [1, t[0] + t[1]]]
            ),
        }
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=25, deadline=None)
@given(clients=clients_lists, seed=st.integers(0, 2**31))
def test_client_mix_arrivals_increase_and_lengths_stay_in_their_tables(
    clients: list[dict], seed: int
) -> None:
    w = _workload(
        arrival={"process": "clients", "rate_rps": 3.0, "clients": clients},
        input={"distribution": "clients"},
        rate_shape={"kind": "sinusoid", "amplitude": 0.5, "period_s": 30},
    )
    s = wl.sample(w, 500, seed=seed)
    assert np.all(np.diff(s["arrival_s"]) >= 0) and np.all(np.isfinite(s["arrival_s"]))
    assert s["client"].min() >= 0 and s["client"].max() < len(clients)
    for k, c in enumerate(clients):
        mine = s["input_tokens"][s["client"] == k]
        if mine.size:
            assert mine.min() >= c["input"][0][1] and mine.max() <= c["input"][-1][1]
