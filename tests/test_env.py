"""The Gymnasium environments: API compliance, autoreset modes, masks, rewards, determinism."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import prfaas_env  # noqa: F401  (registers PrfaaS-v0)
from prfaas_env.env import PrfaaSEnv, PrfaaSVectorEnv
from prfaas_env.env.config import shipped_configs
from prfaas_env.errors import ConfigError
from tests.sim_scenarios import ROOT, base, starved


def _cfg(**env: object) -> dict:
    d = base()
    d["env"] = {"max_decisions": 12, **env}
    return d


def test_gymnasium_and_sb3_checkers_pass() -> None:
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no render fps: rendering is text
        check_env(PrfaaSEnv(_cfg()))
        check_env(PrfaaSEnv(_cfg(observation={"dict": True})))
        sb3_check_env(PrfaaSEnv(_cfg()))


def test_make_and_make_vec_with_shipped_config() -> None:
    env = gym.make("PrfaaS-v0", config="paper_prfaas")
    obs, info = env.reset(seed=1)
    assert env.observation_space.contains(obs)
    assert info["action_mask"].tolist() == [True, True]
    venv = gym.make_vec("PrfaaS-v0", num_envs=3, vectorization_mode="vector_entry_point")
    obs, _ = venv.reset(seed=1)
    assert obs.shape == (3, env.observation_space.shape[0])
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    with pytest.raises(ConfigError, match=r"shipped configs: .*paper_prfaas"):
        PrfaaSEnv("no_such_config")


def _rollout(env: gym.vector.VectorEnv, steps: int, seed: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    out = []
    obs, _ = env.reset(seed=seed)
    out.append((obs.copy(),))
    for _ in range(steps):
        a = rng.integers(2, size=env.num_envs)
        obs, r, term, trunc, _ = env.step(a)
        out.append((obs.copy(), r.copy(), term.copy(), trunc.copy()))
    return out


def test_native_vector_env_equals_sync_vector_env_of_single_envs() -> None:
    """Same seeds, same actions, across several autoresets (NEXT_STEP)."""
    cfg = _cfg()
    native = PrfaaSVectorEnv(3, cfg)
    sync = SyncVectorEnv([lambda: PrfaaSEnv(cfg) for _ in range(3)])
    a, b = _rollout(native, 40, seed=7), _rollout(sync, 40, seed=7)
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            np.testing.assert_array_equal(u, v)
    assert sum(t[3].sum() for t in a[1:]) >= 6  # episodes of 12 decisions really ended


def test_same_step_autoreset_reports_final_observation() -> None:
    env = PrfaaSVectorEnv(2, _cfg(), autoreset_mode="SAME_STEP")
    env.reset(seed=0)
    trunc = np.zeros(2, np.bool_)
    for _ in range(12):
        assert not trunc.any()
        obs, _, _, trunc, info = env.step(np.zeros(2, np.int64))
    assert trunc.all()
    assert info["_final_obs"].all() and info["final_obs"][0].shape == obs[0].shape
    assert set(info["final_info"]["episode_summary"]) >= {"ttft_p90_s", "throughput_rps"}
    assert (env.sim.state.seq == 0).all()  # already reset: the returned obs starts a new episode


def test_disabled_autoreset_resets_only_the_masked_envs() -> None:
    env = PrfaaSVectorEnv(2, _cfg(), autoreset_mode=AutoresetMode.DISABLED)
    assert env.metadata["autoreset_mode"] == AutoresetMode.DISABLED
    env.reset(seed=0)
    for _ in range(5):
        env.step(np.zeros(2, np.int64))
    env.reset(options={"reset_mask": np.array([True, False])})
    assert env.sim.state.seq.tolist() == [0, 5]
    with pytest.raises(ValueError, match="autoreset_mode: 'sometimes'"):
        PrfaaSVectorEnv(1, _cfg(), autoreset_mode="sometimes")


def test_reward_is_the_weighted_sum_of_its_terms_and_seeds_repeat() -> None:
    weights = {"slo": 1.0, "ttft": 0.5, "waiting": 0.3, "throughput": 0.1, "reject": 2.0}
    env = PrfaaSVectorEnv(2, _cfg(max_decisions=200, reward=weights, admission_control=True))
    assert env.action_meanings == ["prfaas->pd", "pd->pd", "reject"]
    env.reset(seed=3)
    total = np.zeros(2)
    for i in range(150):
        _, r, _, _, info = env.step(np.array([i % 3, 1]))
        terms = info["reward_terms"]
        np.testing.assert_allclose(r, sum(weights[k] * terms[k] for k in weights))
        total += r
    assert env.sim.state.m_rejected.tolist() == [50, 0]
    again = PrfaaSVectorEnv(2, _cfg(max_decisions=200, reward=weights, admission_control=True))
    again.reset(seed=3)
    total2 = np.zeros(2)
    for i in range(150):
        total2 += again.step(np.array([i % 3, 1]))[1]
    np.testing.assert_array_equal(total, total2)


def test_masks_close_a_route_while_its_link_is_down() -> None:
    d = starved()  # link outage from 50 s to 70 s
    d["env"] = {"max_decisions": 500, "observation": {"dict": True}}
    env = PrfaaSVectorEnv(1, d)
    obs, _ = env.reset(seed=0)
    seen_down = False
    for _ in range(300):
        mask = env.action_masks()[0]
        np.testing.assert_array_equal(obs["action_mask"][0], mask.astype(np.float32))
        down = env.sim.state.l_bw[0, 0] == 0
        assert mask[0] == (not down) and mask[1]
        seen_down |= down
        obs, *_ = env.step(np.array([1]))
    assert seen_down


def test_stale_bandwidth_observation_lags_the_live_value() -> None:
    d = starved()
    d["env"] = {"max_decisions": 500, "observation": {"bandwidth_staleness_s": 30}}
    live, stale = PrfaaSVectorEnv(1, starved()), PrfaaSVectorEnv(1, d)
    col = [f.name for f in live.encoder.features()].index("channel[remote->local].bandwidth")
    live.reset(seed=0)
    stale.reset(seed=0)
    differ = 0
    for _ in range(200):
        a, b = live.step(np.array([1]))[0], stale.step(np.array([1]))[0]
        differ += a[0, col] != b[0, col]
    assert differ > 20


def test_single_env_render_and_episode_summary() -> None:
    env = PrfaaSEnv(_cfg(), render_mode="ansi")
    env.reset(seed=0)
    for _ in range(12):
        _, _, terminated, truncated, info = env.step(1)
    assert truncated and not terminated
    assert info["episode_summary"]["completed"] >= 0
    assert "TTFT p90" in env.render()
    assert env.action_masks().tolist() == [True, True]


def test_docs_hold_the_current_mdp_and_observation_table() -> None:
    """docs/environment.md ends with what the docstrings generate (the MDP, the reward
    terms, the default scenario's tables)."""
    from prfaas_env.env.describe import environment_doc

    doc = (ROOT / "docs" / "environment.md").read_text()
    assert doc.endswith(environment_doc())


def test_episodes_can_end_by_simulated_time() -> None:
    env = PrfaaSVectorEnv(2, _cfg(max_decisions=None, max_seconds=20.0))
    env.reset(seed=5)
    for _ in range(200):
        _, _, _, trunc, info = env.step(np.ones(2, np.int64))
        if trunc.any():
            break
    assert trunc.any()
    assert (info["sim_time_s"][trunc] >= 20.0).all()
    with pytest.raises(ConfigError, match="max_decisions or max_seconds"):
        PrfaaSEnv(_cfg(max_decisions=None))


@pytest.mark.parametrize("name", shipped_configs())
def test_every_shipped_config_runs(name: str) -> None:
    env = PrfaaSVectorEnv(2, name)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(40):
        mask = env.action_masks()
        a = np.array([rng.choice(np.flatnonzero(m)) for m in mask])
        obs, *_ = env.step(a)
        assert env.observation_space.contains(obs)


def test_the_vector_envs_docstring_holds_the_current_feature_table() -> None:
    from prfaas_env.env.describe import feature_table

    doc = "\n".join(line[4:] for line in (PrfaaSVectorEnv.__doc__ or "").splitlines())
    assert feature_table() in doc


def test_env_settings_have_one_default_each() -> None:
    """The reward defaults the env uses are the reward module's, and the MDP docstring names
    the same non-zero weights."""
    from prfaas_env.env.config import EnvConfig
    from prfaas_env.env.reward import DEFAULT_WEIGHTS, REWARD_TERMS

    assert EnvConfig().reward == DEFAULT_WEIGHTS and tuple(DEFAULT_WEIGHTS) == REWARD_TERMS
    doc = " ".join((PrfaaSVectorEnv.__doc__ or "").split())
    for term, weight in DEFAULT_WEIGHTS.items():
        if weight:
            assert f"``{term}`` {weight:g}" in doc


@pytest.mark.parametrize(
    ("actions", "message"),
    [
        (np.array([1.5, 0.0]), r"actions: env 0: 1\.5 is not a whole number; allowed: 0\.\.1 "),
        (np.array([0.0, np.nan]), r"actions: env 1: .*nan is not a whole number"),
        (np.array([0, 2]), r"actions: env 1: .*2 is not an action; allowed: 0\.\.1 \(0 = prfaas"),
        (np.array([-1, 0]), r"actions: env 0: .*-1 is not an action"),
        (np.array([0, 1, 1]), r"actions: expected one action per env, shape \(2,\); got shape"),
        (np.array([[0, 1]]), r"got shape \(1, 2\)"),
        (np.array([True, False]), r"expected whole numbers, got dtype bool"),
        (np.array(["a", "b"]), r"expected whole numbers, got dtype <U1"),
    ],
)
def test_bad_actions_are_refused_with_the_value_and_what_is_allowed(
    actions: np.ndarray, message: str
) -> None:
    env = PrfaaSVectorEnv(2, _cfg())
    env.reset(seed=0)
    before = env.sim.state.seq.copy()
    with pytest.raises(ValueError, match=message):
        env.step(actions)
    np.testing.assert_array_equal(env.sim.state.seq, before)  # nothing was stepped


def test_whole_float_actions_and_column_vectors_are_accepted() -> None:
    env = PrfaaSVectorEnv(2, _cfg())
    env.reset(seed=0)
    env.step(np.array([1.0, 0.0]))
    env.step(np.array([[1], [0]]))
    assert env.sim.state.seq.tolist() == [2, 2]


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (
            1.5,
            r"action: 1\.5 is not a whole number; allowed: 0\.\.1 \(0 = prfaas->pd, 1 = pd->pd\)",
        ),
        (float("nan"), r"action: nan is not a whole number"),
        (2, r"action: 2 is not an action; allowed: 0\.\.1"),
        ([0, 1], r"action: expected one whole number, got shape \(2,\)"),
        (True, r"action: expected whole numbers, got dtype bool"),
        (None, r"action: expected whole numbers, got dtype object"),
    ],
)
def test_single_env_refuses_bad_actions(action: object, message: str) -> None:
    env = PrfaaSEnv(_cfg())
    env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        env.step(action)
    assert env.step(np.int64(1))[3] is False and env.step(1.0)[3] is False


@pytest.mark.parametrize(
    "path",
    [
        "configs/suite/default/train/paper_poisson.yaml",
        "configs/suite/default/held_out/large_poisson.yaml",
    ],
)
def test_the_per_route_form_describes_every_route_of_any_topology(path: str) -> None:
    """env.observation.form routes: one row of bounded features per route; the checkers
    pass; rows follow the routes' own state (a route whose link is down says so)."""
    import yaml

    from prfaas_env.observation.per_route import GLOBAL_FEATURES, ROUTE_FEATURES

    d = yaml.safe_load((ROOT / path).read_text())
    d["env"] = {"max_decisions": 12, "observation": {"form": "routes"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(PrfaaSEnv(d))
    env = PrfaaSVectorEnv(3, d)
    routes = len(env.scenario.topology.routes)
    obs, _ = env.reset(seed=2)
    rng = np.random.default_rng(0)
    for _ in range(40):
        assert obs["routes"].shape == (3, routes, len(ROUTE_FEATURES))
        assert obs["global"].shape == (3, len(GLOBAL_FEATURES))
        assert env.observation_space.contains(obs)
        remote = [f for f, _ in ROUTE_FEATURES].index("remote")
        crosses = [r.channel >= 0 for r in env.scenario.topology.routes]
        np.testing.assert_array_equal(obs["routes"][0, :, remote], np.array(crosses, np.float32))
        mask = obs["action_mask"] > 0
        a = np.array([rng.choice(np.flatnonzero(m)) for m in mask])
        obs, *_ = env.step(a)
    with pytest.raises(ConfigError, match="form routes describes routes only"):
        PrfaaSEnv({**d, "env": {"observation": {"form": "routes"}, "admission_control": True}})
    with pytest.raises(
        ConfigError, match=r"observation\.form: 'tree' is not allowed; allowed: flat, routes"
    ):
        PrfaaSEnv({**d, "env": {"observation": {"form": "tree"}}})
