"""The environment in other RL stacks: Gymnasium wrappers, TorchRL, RLlib, a plain PPO loop."""

from __future__ import annotations

import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

import prfaas_env  # noqa: F401  (registers PrfaaS-v0)
from prfaas_env.env.single import PrfaaSEnv
from prfaas_env.env.vector import PrfaaSVectorEnv
from prfaas_env.integrations import AutoresetModeError
from tests.sim_scenarios import base

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))


@pytest.fixture
def short(tmp_path: Path) -> str:
    """The paper scenario with 30-decision episodes, as a file."""
    d = base()
    d["env"] = {"max_decisions": 30}
    p = tmp_path / "short.yaml"
    p.write_text(yaml.safe_dump(d))
    return str(p)


# ---- Gymnasium wrappers -------------------------------------------------------------------------
def test_vector_wrappers_normalise_flatten_and_record(short: str) -> None:
    env = PrfaaSVectorEnv(4, short, dict_observation=True)
    env = gym.wrappers.vector.FlattenObservation(env)
    assert env.single_observation_space.shape == (27 + 2,)  # observation + action mask
    env = gym.wrappers.vector.RecordEpisodeStatistics(env)
    env = gym.wrappers.vector.NormalizeObservation(env)
    obs, _ = env.reset(seed=0)
    episodes, seen = [], []
    for _ in range(200):
        obs, *_, info = env.step(env.action_space.sample())
        seen.append(obs)
        if "episode" in info:
            episodes += list(info["episode"]["l"][info["_episode"]])
    assert episodes and set(episodes) == {30}  # every episode ran its 30 decisions
    late = np.concatenate(seen[100:])
    assert np.isfinite(late).all()
    varying = late.std(0) > 0  # normalised features have roughly zero mean, unit spread
    assert np.abs(late.mean(0)[varying]).max() < 1.0


def test_single_env_wrappers(short: str) -> None:
    env = PrfaaSEnv(short, dict_observation=True)
    env = gym.wrappers.FlattenObservation(env)
    env = gym.wrappers.RecordEpisodeStatistics(env)
    env = gym.wrappers.NormalizeObservation(env)
    env.reset(seed=1)
    for _ in range(30):
        obs, _, _, trunc, info = env.step(env.action_space.sample())
    assert trunc and info["episode"]["l"] == 30 and obs.shape == (29,)


# ---- TorchRL ------------------------------------------------------------------------------------
def test_torchrl_wrapper_passes_its_spec_check(short: str) -> None:
    pytest.importorskip("torchrl")  # extra [torchrl]; the set-up command installs it
    from torchrl.envs.utils import check_env_specs

    from prfaas_env.integrations.torchrl import make_env, wrap

    env = make_env(3, short, dict_observation=True)
    check_env_specs(env)
    td = env.rollout(max_steps=40, break_when_any_done=False)  # TorchRL resets finished envs
    assert td.batch_size == (3, 40)
    assert td["observation"].shape == (3, 40, 27) and td["action_mask"].shape == (3, 40, 2)
    # every env truncates at its 30th decision and, reset by TorchRL, goes on from there
    steps = td["next", "truncated"][..., 0].nonzero()[:, 1]
    assert sorted(set(steps.tolist())) == [29] and len(steps) == 3
    assert not td["truncated"][:, 30:].any()
    with pytest.raises(
        AutoresetModeError, match=r"TorchRL .* autoreset_mode=DISABLED, got NEXT_STEP"
    ):
        wrap(PrfaaSVectorEnv(2, short))


# ---- RLlib --------------------------------------------------------------------------------------
def test_rllib_trains_with_masking_on_the_vector_env(short: str) -> None:
    ray = pytest.importorskip("ray")  # extra [rllib]; the set-up command installs it
    from ray.rllib.core.columns import Columns

    from prfaas_env.integrations.rllib import env_config, ppo_config

    with pytest.raises(AutoresetModeError, match=r"autoreset_mode=NEXT_STEP .*got SAME_STEP"):
        env_config(short, autoreset_mode="SAME_STEP")
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        # every node advertises loopback (tests/conftest.py), not the machine's address
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        algo = ppo_config(
            env_config(short),
            num_envs_per_env_runner=4,
            training={"train_batch_size_per_learner": 256, "minibatch_size": 64, "num_epochs": 1},
        ).build_algo()
        for _ in range(2):
            result = algo.train()
        runners = result["env_runners"]
        assert runners["num_env_steps_sampled_lifetime"] >= 512
        assert np.isfinite(runners["episode_return_mean"])  # 30-decision episodes finished
        # the mask reaches the logits: a forbidden action gets (almost) no probability
        module = algo.get_module()
        obs = torch.rand(2, 27)
        mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        out = module.forward_inference({Columns.OBS: {"observation": obs, "action_mask": mask}})[
            Columns.ACTION_DIST_INPUTS
        ]
        probs = torch.softmax(out, dim=1)
        assert probs[0, 1] < 1e-6 and probs[1, 0] < 1e-6
        algo.stop()
    finally:
        ray.shutdown()


def test_rllib_example_settings_are_checked(tmp_path: Path) -> None:
    import rllib_ppo  # reads YAML only; Ray is imported when training starts

    s = rllib_ppo.load_settings(rllib_ppo.DEFAULT_FILE, ["env_runners.num_env_runners=4"])
    assert s["env_runners"]["num_env_runners"] == 4 and s["env"]["masked"] is True
    s = rllib_ppo.load_settings(rllib_ppo.DEFAULT_FILE, ["training.lr=3e-5", "env.config=x"])
    assert s["training"]["lr"] == 3e-5 and s["env"]["config"] == "x"  # 3e-5 is a number
    with pytest.raises(SystemExit, match=r"expected SECTION\.KEY=VALUE"):
        rllib_ppo.load_settings(rllib_ppo.DEFAULT_FILE, ["nope=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: {}\n")
    with pytest.raises(SystemExit, match="unknown section"):
        rllib_ppo.load_settings(bad, [])


def test_route_scorer_module_masks_routes_and_shares_weights_with_route_scorer() -> None:
    """Differential: the RLlib module's logits are RouteScorer's scores on the allowed routes
    and no probability elsewhere (padding included); its value is RouteScorer's value; its
    network's state_dict loads into a RouteScorer of the same width and back."""
    pytest.importorskip("ray")
    from ray.rllib.core.columns import Columns

    from prfaas_env.env.suite_env import PrfaaSSuiteEnv
    from prfaas_env.integrations.rllib import RouteScorerModule
    from prfaas_env.observation.per_route import GLOBAL_FEATURES, ROUTE_FEATURES
    from prfaas_env.policies.route_scorer import RouteScorer

    env = PrfaaSSuiteEnv(split="all", max_episode_steps=50)
    torch.manual_seed(0)
    module = RouteScorerModule(
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config={"hidden": 16},
    )
    net = RouteScorer(len(ROUTE_FEATURES), len(GLOBAL_FEATURES), 16)
    net.load_state_dict(module.scorer.state_dict())  # the library's class loads it as is
    obs = [env.reset(seed=s)[0] for s in range(12)]  # several topologies, 2 to 72 routes
    batch = {k: torch.from_numpy(np.stack([o[k] for o in obs])) for k in obs[0]}
    mask = batch["action_mask"] > 0
    with torch.no_grad():
        logits = module.forward_exploration({Columns.OBS: batch})[Columns.ACTION_DIST_INPUTS]
        scores = net.scores(batch["routes"], batch["global"])
        value = module.compute_values({Columns.OBS: batch})
        np.testing.assert_allclose(logits[mask], scores[mask], rtol=1e-6)
        assert torch.softmax(logits, 1)[~mask].max() == 0.0
        assert torch.isfinite(torch.log_softmax(logits, 1)).all()  # PPO's KL stays a number
        np.testing.assert_allclose(value, net.value(batch["routes"], batch["global"], mask))
    with pytest.raises(ValueError, match="expected the suite env's Dict observation"):
        RouteScorerModule(
            observation_space=gym.spaces.Box(0, 1, (3,)), action_space=env.action_space
        )
    # a residual imitation run (the shipped generalist's form) loads into a residual module
    from prfaas_env.policies.route_scorer import anchor_in, residual_anchor

    residual = RouteScorer(len(ROUTE_FEATURES), len(GLOBAL_FEATURES), 16, residual_anchor())
    state = residual.state_dict()
    assert anchor_in(state) == residual_anchor() and anchor_in(net.state_dict()) is None
    spaces = {"observation_space": env.observation_space, "action_space": env.action_space}
    anchored = RouteScorerModule(**spaces, model_config={"hidden": 16, "anchor": anchor_in(state)})
    anchored.scorer.load_state_dict(state)
    with pytest.raises(RuntimeError, match="anchor_weight"):
        RouteScorerModule(**spaces, model_config={"hidden": 16}).scorer.load_state_dict(state)


def test_rllib_suite_ppo_on_a_two_node_local_cluster() -> None:
    """RLlib PPO across the suite on a Ray cluster of two nodes on loopback: one env runner on
    each node, weights sent to both, episodes of several scenarios completed and reported
    per scenario."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from prfaas_env.integrations.rllib import (
        get_scorer_state,
        set_scorer_state,
        suite_env_config,
        suite_ppo_config,
    )
    from prfaas_env.observation.per_route import GLOBAL_FEATURES, ROUTE_FEATURES
    from prfaas_env.policies.route_scorer import RouteScorer
    from prfaas_env.suite import load_suite

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the learner runs here: one thread on the shared cores
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        assert len(nodes) == 2
        # every node advertises loopback (tests/conftest.py), not the machine's address
        assert {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}
        env = suite_env_config(max_episode_steps=40, max_routes=11)
        algo = suite_ppo_config(
            env,
            num_env_runners=2,  # one CPU each, one CPU per node: one runner per node
            num_envs_per_env_runner=2,
            hidden=16,
            training={"train_batch_size_per_learner": 320, "minibatch_size": 80, "num_epochs": 1},
        ).build_algo()
        runners = algo.env_runner_group
        where = runners.foreach_env_runner(
            lambda r: ray.get_runtime_context().get_node_id(), local_env_runner=False
        )
        assert sorted(where) == sorted(n["NodeID"] for n in nodes)
        torch.manual_seed(1)
        start = RouteScorer(len(ROUTE_FEATURES), len(GLOBAL_FEATURES), 16).state_dict()
        set_scorer_state(algo, start)  # e.g. an imitation run's model.pt
        heads = runners.foreach_env_runner(
            lambda r: r.module.scorer.head.weight.detach().clone(), local_env_runner=False
        )
        assert all(torch.equal(h, start["head.weight"]) for h in heads)
        for _ in range(2):
            result = algo.train()
        stats = result["env_runners"]
        assert stats["num_env_steps_sampled_lifetime"] >= 640
        assert np.isfinite(stats["episode_return_mean"])  # 40-decision episodes finished
        train = {s.name for s in load_suite("default").train}
        assert stats["suite"] and set(stats["suite"]) <= train
        trained = get_scorer_state(algo)
        assert not torch.equal(trained["head.weight"], start["head.weight"])  # PPO updated it
        RouteScorer(len(ROUTE_FEATURES), len(GLOBAL_FEATURES), 16).load_state_dict(trained)
        wider = RouteScorer(len(ROUTE_FEATURES), len(GLOBAL_FEATURES), 32).state_dict()
        with pytest.raises(RuntimeError, match="size mismatch"):
            set_scorer_state(algo, wider)
        algo.stop()
    finally:
        ray.shutdown()
        cluster.shutdown()
        torch.set_num_threads(threads)


def test_rllib_suite_example_checks_its_settings() -> None:
    import rllib_suite  # reads YAML only; Ray is imported when training starts

    s = rllib_suite.load_settings(rllib_suite.DEFAULT_FILE, [], rllib_suite.SECTIONS)
    assert s["env"]["suite"] == "default" and s["network"]["hidden"] == 64
    assert rllib_suite.env_settings(s)["max_routes"] == 72  # the suite's largest topology
    with pytest.raises(SystemExit, match=r"env: unknown key\(s\) \['nope'\]; allowed"):
        rllib_suite.env_settings({"env": {"nope": 1}})
    # what every env runner receives: plain values, a suite folder as an absolute path
    folder = rllib_suite.env_settings({"env": {"suite": "configs/suite/default"}})
    assert folder["suite"] == str((ROOT / "configs/suite/default").resolve())
    with pytest.raises(ValueError, match=r"rate_range: expected two numbers"):
        rllib_suite.env_settings({"env": {"rate_range": 5}})


# ---- a plain PyTorch PPO loop -------------------------------------------------------------------
def test_plain_ppo_advantages_under_next_step_autoreset() -> None:
    """Hand-computed GAE for one env: steps 0-1 of an episode truncated at step 1, the reset
    step 2 (no transition), then step 3 of the next episode; gamma 0.5, lambda 0.5."""
    from plain_ppo import advantages

    rewards = torch.tensor([[1.0], [2.0], [0.0], [4.0]])
    values = torch.tensor([[10.0], [20.0], [30.0], [40.0], [50.0]])
    terminated = torch.zeros(4, 1)
    resets = torch.tensor([[0.0], [0.0], [1.0], [0.0], [0.0]])
    adv = advantages(rewards, values, terminated, resets, 0.5, 0.5)
    d3 = 4 + 0.5 * 50 - 40  # bootstraps from the state after the rollout
    d2 = 0 + 0.5 * 40 - 30  # the reset step (left out of the loss by the loop)
    d1 = 2 + 0.5 * 30 - 20  # truncated: bootstraps from the final observation's value
    d0 = 1 + 0.5 * 20 - 10
    expected = [d0 + 0.25 * d1, d1, d2 + 0.25 * d3, d3]  # no chaining across the reset
    assert adv[:, 0].tolist() == pytest.approx(expected)
    terminated[1] = 1.0  # a termination: no bootstrap, no chaining
    adv = advantages(rewards, values, terminated, resets, 0.5, 0.5)
    assert adv[1, 0].item() == pytest.approx(2 - 20)


def test_plain_ppo_refuses_other_autoreset_modes(
    short: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import plain_ppo

    real = plain_ppo.PrfaaSVectorEnv
    monkeypatch.setattr(
        plain_ppo, "PrfaaSVectorEnv", lambda *a, **k: real(*a, autoreset_mode="SAME_STEP", **k)
    )
    with pytest.raises(AutoresetModeError, match="NEXT_STEP"):
        plain_ppo.make_env(plain_ppo.Args(config=short, num_envs=2))


def test_plain_ppo_loop_runs_and_times_itself(short: str) -> None:
    import plain_ppo

    out = plain_ppo.train(
        plain_ppo.Args(
            config=short, timesteps=2 * 8 * 32, num_envs=8, num_steps=32, minibatch_size=64
        ),
        log=lambda s: None,
    )
    assert out["timesteps"] == 512
    assert out["env_s"] > 0 and out["inference_s"] > 0 and out["update_s"] > 0
    assert np.isfinite(out["last_p90_ttft_s"])  # 30-decision episodes finished and were read
