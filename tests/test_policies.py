"""Heuristic routers: masks respected, rules applied as specified, runs reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from prfaas_env.env import PrfaaSVectorEnv
from prfaas_env.errors import UnknownNameError
from prfaas_env.policies import RouteTable, make_policy, policy_names
from tests.sim_scenarios import base, mooncake, starved


def _run(cfg: dict, name: str, steps: int, seed: int = 0, **params: object) -> PrfaaSVectorEnv:
    env = PrfaaSVectorEnv(2, cfg)
    routes = RouteTable.from_topology(env.scenario.topology, env.config.admission_control)
    policy = make_policy(name, routes, env.scenario.topology, **params)
    policy.reset(2, seed)
    env.reset(seed=seed)
    for _ in range(steps):
        mask = env.action_masks()
        a = policy.act(env.view(), mask)
        assert mask[np.arange(2), a].all()
        env.step(a)
    return env


@pytest.mark.parametrize("name", policy_names())
def test_every_policy_respects_masks_and_repeats(name: str) -> None:
    d = starved()  # the link goes down for 20 s: masks close the remote route
    d["env"] = {"max_decisions": 10_000}
    a = _run(d, name, 150)
    b = _run(d, name, 150)
    np.testing.assert_array_equal(a.sim.state.rf, b.sim.state.rf)


def test_always_local_and_always_remote() -> None:
    d = base()
    d["env"] = {"max_decisions": 10_000}
    assert _run(d, "always_local", 60).sim.metrics()["offload_fraction"].max() == 0
    assert _run(d, "always_remote", 60).sim.metrics()["offload_fraction"].min() == 1


def test_prfaas_threshold_offloads_exactly_the_long_prompts() -> None:
    d = base()
    d["env"] = {"max_decisions": 10_000}
    env = PrfaaSVectorEnv(1, d)
    routes = RouteTable.from_topology(env.scenario.topology)
    pol = make_policy("prfaas_threshold", routes, threshold_tokens=20_000)
    pol.reset(1, 0)
    env.reset(seed=0)
    for _ in range(100):
        view = env.view()
        a = pol.act(view, env.action_masks())
        assert routes.offload[a[0]] == (view["input_tokens"][0] > 20_000)
        env.step(a)
    with pytest.raises(Exception, match="cache_rule: 'sometimes'"):
        make_policy("prfaas_threshold", routes, cache_rule="sometimes")


def test_cache_rules_differ_when_the_remote_cache_is_warmer() -> None:
    """A prompt fully cached remotely but not locally: 'plentiful' keeps it local (it would
    copy the cache), 'scarce' offloads it."""
    routes = RouteTable.from_topology(PrfaaSVectorEnv(1, base()).scenario.topology)
    view = {
        "input_tokens": np.array([50_000.0]),
        "cached_tokens": np.array([[49_000.0, 0.0]]),  # prefill clusters: prfaas, pd
        "bandwidth": np.array([[1.0]]),
        "free_slots": np.array([[1.0]]),
    }
    mask = np.ones((1, 2), np.bool_)
    local = routes.labels.index("pd->pd")
    for rule, expect_local in (("plentiful", True), ("scarce", False)):
        pol = make_policy("prfaas_threshold", routes, threshold_tokens=8000, cache_rule=rule)
        pol.reset(1, 0)
        assert (pol.act(view, mask)[0] == local) == expect_local, rule


def test_sglang_prefers_cache_hits_when_balanced() -> None:
    env = _run(mooncake(), "sglang_cache_aware", 300)
    assert env.sim.metrics()["cache_hit_fraction"].mean() > 0.05


def test_unknown_policy_lists_the_known_ones() -> None:
    routes = RouteTable.from_topology(PrfaaSVectorEnv(1, base()).scenario.topology)
    with pytest.raises(UnknownNameError, match=r"known policies: .*lmetric"):
        make_policy("oracle", routes)


def test_mooncake_picks_the_lowest_estimated_ttft_and_rejects_hopeless_requests() -> None:
    d = base()
    d["workload"]["arrival"]["rate_rps"] = 4.0  # overload: estimates grow past the SLO
    d["env"] = {"max_decisions": 10_000, "admission_control": True}
    env = PrfaaSVectorEnv(1, d)
    topo = env.scenario.topology
    routes = RouteTable.from_topology(topo, admission_control=True)
    pol = make_policy("mooncake", routes, topo, ttft_slo_s=10.0)
    pol.reset(1, 0)
    env.reset(seed=0)
    for _ in range(300):
        view = env.view()
        a = pol.act(view, env.action_masks())
        est = pol.scores(view)[0]
        if a[0] != routes.reject:
            assert est[a[0]] == est.min()
        else:
            assert est.min() > 10.0
        env.step(a)
    assert env.sim.state.m_rejected[0] > 0
    with pytest.raises(Exception, match="needs the topology"):
        make_policy("mooncake", routes)


def test_dynamo_prefills_locally_only_short_mostly_cached_prompts() -> None:
    """Local iff uncached < 2048 and < 70 % of the prompt (prefill clusters: prfaas, pd)."""
    routes = RouteTable.from_topology(PrfaaSVectorEnv(1, base()).scenario.topology)
    pol = make_policy("dynamo", routes)
    pol.reset(3, 0)
    zeros = np.zeros((3, 2))
    view = {
        "input_tokens": np.array([1500.0, 1500.0, 30_000.0]),
        "cached_tokens": np.array([[0.0, 1000.0], [0.0, 0.0], [0.0, 29_000.0]]),
        "uncached_tokens": np.array([[1500.0, 500.0], [1500.0, 1500.0], [30_000.0, 1000.0]]),
        "queued_tokens": zeros,
        "queued_requests": zeros,
        "kv_used": np.zeros((3, 1)),
        "free_slots": np.ones((3, 1)),
    }
    a = pol.act(view, np.ones((3, 2), np.bool_))
    assert [routes.labels[i] for i in a] == ["pd->pd", "prfaas->pd", "pd->pd"]


def _paper_lengths(n: int = 20_000) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = np.exp(rng.normal(9.9, 1.0, 3 * n))
    return x[(x >= 128) & (x <= 131_072)][:n]


def test_analytic_model_optimum_dominates_and_bandwidth_moves_the_threshold() -> None:
    from dataclasses import replace

    from prfaas_env.policies.analytic import PaperSystem, capacities, optimise

    topo = PrfaaSVectorEnv(1, base()).scenario.topology
    system = PaperSystem.from_topology(topo, tpot_slo_s=0.025)
    lengths = _paper_lengths()
    best = optimise(system, lengths, 1024)
    for t in (0.0, 4096.0, 16_384.0, 65_536.0, 200_000.0):
        assert capacities(system, lengths, 1024, t).lambda_max <= best.lambda_max + 1e-12
    assert 0 < best.offload_probability < 1
    # the two prefill paths are what bind at the optimum, not decode
    assert best.lambda_max < best.theta_pdd
    starved_system = replace(system, bandwidth_bps=system.bandwidth_bps / 500)  # 0.2 Gbps
    starved_best = optimise(starved_system, lengths, 1024)
    assert starved_best.threshold_tokens > best.threshold_tokens
    assert starved_best.lambda_max < best.lambda_max


def test_prfaas_optimised_rechooses_its_threshold() -> None:
    d = base()
    d["env"] = {"max_decisions": 10_000}
    env = PrfaaSVectorEnv(4, d)
    topo = env.scenario.topology
    routes = RouteTable.from_topology(topo)
    pol = make_policy("prfaas_optimised", routes, topo, reoptimise_every=128)
    pol.reset(4, 0)
    env.reset(seed=0)
    for _ in range(100):
        env.step(pol.act(env.view(), env.action_masks()))
    assert len(pol.history) >= 3
    assert 4_000 < pol.history[-1] < 60_000
