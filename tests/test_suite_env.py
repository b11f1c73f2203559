"""The suite environment (one scenario of a suite per episode, padded per-route observations)
and the simulator's episode conditions it relies on (rate and link bandwidth changed without
rebuilding)."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

import prfaas_env  # noqa: F401  (registers PrfaaSSuite-v0)
from prfaas_env.env.single import PrfaaSEnv
from prfaas_env.env.suite_env import PrfaaSSuiteEnv
from prfaas_env.errors import ConfigError
from prfaas_env.observation.per_route import GLOBAL_FEATURES, ROUTE_FEATURES
from prfaas_env.sim.engine import VecSimulator
from prfaas_env.sim.scenario import parse_scenario
from prfaas_env.suite import load_suite
from tests.sim_scenarios import base, starved

SUITE = load_suite("default")
MOST_ROUTES = max(len(s.scenario.topology.routes) for s in SUITE.scenarios)


def _run(sim: VecSimulator, steps: int, seed: int) -> dict[str, np.ndarray]:
    """Step ``sim`` with a fixed pseudo-random choice of routes; its metrics and clocks."""
    rng = np.random.default_rng(seed)
    sim.reset(seed=seed)
    for _ in range(steps):
        sim.step(rng.integers(0, sim.num_routes, sim.num_envs))
    return {**sim.metrics(), "now": sim.now.copy()}


# ---- the simulator's episode conditions ---------------------------------------------------------
@settings(max_examples=6)
@given(m=st.floats(0.3, 3.0))
def test_a_rate_change_equals_a_simulator_built_at_that_rate(m: float) -> None:
    """Differential: set_rate_multiplier(m) on a built simulator gives the very episodes of a
    simulator built from Scenario.with_rate(m); setting 1 again gives the original ones."""
    sc = parse_scenario(base(), "paper")
    sim = VecSimulator(sc, 2)
    original = _run(sim, 150, seed=3)
    sim.set_rate_multiplier(m)
    changed = _run(sim, 150, seed=3)
    built = _run(VecSimulator(sc.with_rate(m), 2), 150, seed=3)
    for k in built:
        np.testing.assert_array_equal(changed[k], built[k], err_msg=k)
    sim.set_rate_multiplier(1.0)
    again = _run(sim, 150, seed=3)
    for k in original:
        np.testing.assert_array_equal(again[k], original[k], err_msg=k)
    # the same requests, closer together at a higher rate: the 150th arrives sooner
    np.testing.assert_array_equal(np.sign(original["now"] - changed["now"]), np.sign(m - 1.0))


def test_bandwidth_scale_scales_the_drawn_series_and_is_checked() -> None:
    sc = parse_scenario(starved(), "starved")
    sim = VecSimulator(sc, 2)
    sim.reset(seed=5)
    full = sim.state.l_series.copy()
    sim.set_bandwidth_scale([0.25])
    sim.reset(seed=5)
    np.testing.assert_allclose(sim.state.l_series, 0.25 * full)
    assert (full == 0).any()  # the outage stays an outage
    for bad in ([0.0], [1.5], [0.5, 0.5], [float("nan")]):
        with pytest.raises(ValueError, match=r"bandwidth scale: expected 1 numbers in \(0, 1\]"):
            sim.set_bandwidth_scale(bad)
    with pytest.raises(ValueError, match="rate multiplier: expected a positive number"):
        sim.set_rate_multiplier(0.0)


# ---- the suite env ------------------------------------------------------------------------------
def test_gymnasium_checker_passes_and_make_builds_it() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no render fps: rendering is text
        check_env(PrfaaSSuiteEnv(max_episode_steps=20, bandwidth_range=(0.5, 1.0)))
    env = gym.make("PrfaaSSuite-v0", split="held_out", scenarios=["large_poisson"])
    obs, info = env.reset(seed=0)
    assert obs["routes"].shape == (MOST_ROUTES, len(ROUTE_FEATURES))
    assert info["scenario"] == "large_poisson"


def test_every_topology_fits_one_padded_space_and_padding_is_never_allowed() -> None:
    """Whatever the scenario, the observation has max_routes rows: the scenario's own rows
    (equal to its env's per-route observation) then zero rows, which the mask forbids."""
    env = PrfaaSSuiteEnv(split="all", max_episode_steps=40)
    assert env.max_routes == MOST_ROUTES == 72
    rng = np.random.default_rng(1)
    seen = set()
    for seed in range(40):
        obs, info = env.reset(seed=seed)
        seen.add(info["scenario"])
        inner = env.env_of(info["scenario"])
        for _ in range(5):
            assert env.observation_space.contains(obs)
            r = len(inner.action_meanings)
            own = inner.vector._obs()  # the unpadded per-route observation of the same state
            np.testing.assert_array_equal(obs["routes"][:r], own["routes"][0])
            np.testing.assert_array_equal(obs["global"], own["global"][0])
            np.testing.assert_array_equal(obs["action_mask"][:r], own["action_mask"][0])
            assert not obs["routes"][r:].any() and not obs["action_mask"][r:].any()
            np.testing.assert_array_equal(env.action_masks(), obs["action_mask"] > 0)
            a = rng.choice(np.flatnonzero(obs["action_mask"]))
            obs, *_ = env.step(a)
    assert seen == {s.name for s in SUITE.scenarios}  # 40 draws met all 13 scenarios


def test_draws_come_from_the_seed_and_cover_the_set_and_the_load_range() -> None:
    env = PrfaaSSuiteEnv(rate_range=(0.7, 1.15), max_episode_steps=10)
    draws = []
    for seed in range(60):
        _, info = env.reset(seed=seed)
        draws.append((info["scenario"], info["rate_multiplier"]))
    again = PrfaaSSuiteEnv(rate_range=(0.7, 1.15), max_episode_steps=10)
    assert [again.reset(seed=s)[1]["scenario"] for s in range(60)] == [d[0] for d in draws]
    assert {d[0] for d in draws} == {s.name for s in SUITE.train}
    rates = np.array([d[1] for d in draws])
    assert rates.min() >= 0.7 and rates.max() <= 1.15 and rates.std() > 0.05
    # one env per scenario, kept across episodes (its simulator is not rebuilt)
    assert set(env._envs) == {s.name for s in SUITE.train}
    sims = {n: e.sim for n, e in env._envs.items()}
    for seed in range(60, 80):
        env.reset(seed=seed)
    assert all(env._envs[n].sim is sims[n] for n in sims)


def test_an_episode_equals_the_scenario_env_built_at_its_rate() -> None:
    """Differential: the suite env's episode on a cached, re-rated simulator equals a fresh
    PrfaaSEnv of that scenario built with that rate multiplier and seeded the same way."""
    env = PrfaaSSuiteEnv(max_episode_steps=60)
    obs, info = env.reset(seed=11, options={"scenario": "region3_mixed_ramp"})
    obs, info = env.reset(seed=12, options={"scenario": "paper_poisson", "rate_multiplier": 1.1})
    assert info["rate_multiplier"] == 1.1
    obs, info = env.reset(seed=13, options={"scenario": "region3_mixed_ramp"})
    m = info["rate_multiplier"]
    fresh = PrfaaSEnv(
        str(SUITE.get("region3_mixed_ramp").path),
        max_episode_steps=60,
        rate_multiplier=m,
        observation_form="routes",
    )
    # the inner env was reset with the next draw of the suite env's generator after its own
    rng = np.random.default_rng(13)
    rng.integers(len(SUITE.train))
    rng.uniform(0.7, 1.15)
    f_obs, _ = fresh.reset(seed=int(rng.integers(2**63 - 1)))
    r = len(fresh.action_meanings)
    done = False
    while not done:
        np.testing.assert_array_equal(obs["routes"][:r], f_obs["routes"])
        a = int(np.argmax(f_obs["action_mask"] * np.arange(1, r + 1)))  # the last allowed
        obs, rew, _, done, info = env.step(a)
        f_obs, f_rew, _, f_done, f_info = fresh.step(a)
        assert rew == f_rew and done == f_done
    np.testing.assert_equal(info["episode_summary"], f_info["episode_summary"])


def test_a_padding_action_is_carried_out_as_a_real_route_and_flagged() -> None:
    a = PrfaaSSuiteEnv(scenarios=["paper_poisson"], max_episode_steps=30)
    b = PrfaaSSuiteEnv(scenarios=["paper_poisson"], max_episode_steps=30)
    a.reset(seed=4)
    b.reset(seed=4)
    for _ in range(10):
        oa, ra, _, _, ia = a.step(5)  # 5 mod 2 routes = route 1
        ob, rb, _, _, ib = b.step(1)
        assert ia["padding_action"] and "padding_action" not in ib
        np.testing.assert_array_equal(oa["routes"], ob["routes"])
        assert ra == rb
    with pytest.raises(ValueError, match=r"action: 72 is not an action; allowed: 0\.\.71 \(0 = "):
        a.step(72)


def test_bad_arguments_name_what_is_allowed() -> None:
    with pytest.raises(ConfigError, match="split: 'test' is not allowed; allowed: train, held_o"):
        PrfaaSSuiteEnv(split="test")
    with pytest.raises(ConfigError, match=r"scenarios: 'large_poisson' not in the train set"):
        PrfaaSSuiteEnv(scenarios=["large_poisson"])
    with pytest.raises(ValueError, match=r"rate_range: expected 0\.0 < low <= high"):
        PrfaaSSuiteEnv(rate_range=(1.2, 0.8))
    with pytest.raises(ValueError, match=r"bandwidth_range: expected 0 < low <= high <= 1"):
        PrfaaSSuiteEnv(bandwidth_range=(0.5, 2.0))
    with pytest.raises(ValueError, match="max_routes: 4 is fewer than the 11 routes"):
        PrfaaSSuiteEnv(max_routes=4)
    env = PrfaaSSuiteEnv(max_routes=11)
    assert env.observation_space["routes"].shape == (11, len(ROUTE_FEATURES))
    assert env.observation_space["global"].shape == (len(GLOBAL_FEATURES),)
    with pytest.raises(ValueError, match="'large_poisson' has 72 routes, more than max_routes"):
        env.reset(seed=0, options={"scenario": "large_poisson"})
    with pytest.raises(ValueError, match="options: unknown key"):
        env.reset(seed=0, options={"load": 2})
    with pytest.raises(RuntimeError, match="call reset"):
        PrfaaSSuiteEnv().step(0)
