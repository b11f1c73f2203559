"""The SB3 adapter, agent settings, train.py runs (resume, determinism) and agents as routers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor, VecNormalize

import train as train_cli
from agents.algos import load_agent_config, parse_agent_config
from agents.run import load_run
from agents.training import TrainArgs, train
from prfaas_env.env.config import resolve_config
from prfaas_env.env.single import PrfaaSEnv
from prfaas_env.env.vector import PrfaaSVectorEnv
from prfaas_env.errors import ConfigError, replaceable_out
from prfaas_env.evaluation import METRICS
from prfaas_env.integrations import AutoresetModeError
from prfaas_env.integrations.sb3 import SB3VecEnv
from prfaas_env.policies.learned import ScoredPolicy
from tests.sim_scenarios import base

SHORT_EPISODES = 40


def small_config(tmp_path: Path, name: str = "small.yaml", **env: Any) -> str:
    """The paper scenario with short episodes, written to a file."""
    d = base()
    d["env"] = {"max_decisions": SHORT_EPISODES, **env}
    p = tmp_path / name
    p.write_text(yaml.safe_dump(d))
    return str(p)


# ---- the VecEnv adapter ---------------------------------------------------------------------
def test_adapter_matches_dummy_vec_env_over_single_envs(tmp_path: Path) -> None:
    """SB3's own DummyVecEnv over single envs is the reference for every VecEnv rule: same
    observations, rewards, dones, terminal observations and TimeLimit.truncated flags."""
    cfg = small_config(tmp_path)
    n = 3
    ours = SB3VecEnv.from_config(cfg, n)
    ref = DummyVecEnv([lambda: PrfaaSEnv(cfg) for _ in range(n)])
    ours.seed(7)
    ref.seed(7)
    o1, o2 = ours.reset(), ref.reset()
    np.testing.assert_array_equal(o1, o2)
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(2 * SHORT_EPISODES + 5):
        a = rng.integers(0, 2, n)
        o1, r1, d1, i1 = ours.step(a)
        o2, r2, d2, i2 = ref.step(a)
        np.testing.assert_array_equal(o1, o2)
        np.testing.assert_allclose(r1, r2, rtol=1e-6)
        np.testing.assert_array_equal(d1, d2)
        for e in np.flatnonzero(d1):
            ends += 1
            np.testing.assert_array_equal(
                i1[e]["terminal_observation"], i2[e]["terminal_observation"]
            )
            assert i1[e]["TimeLimit.truncated"] is True
            assert i2[e]["TimeLimit.truncated"] is True
            assert "ttft_p90_s" in i1[e]["episode_summary"]
    assert ends == 2 * n


def test_adapter_refuses_other_autoreset_modes(tmp_path: Path) -> None:
    env = PrfaaSVectorEnv(2, small_config(tmp_path), autoreset_mode="NEXT_STEP")
    with pytest.raises(AutoresetModeError, match="SAME_STEP"):
        SB3VecEnv(env)


def test_adapter_attribute_access_and_masks(tmp_path: Path) -> None:
    venv = VecNormalize(VecMonitor(SB3VecEnv.from_config(small_config(tmp_path), 4)))
    masks = venv.env_method("action_masks")
    assert len(masks) == 4 and masks[0].shape == (2,) and masks[0].dtype == np.bool_
    assert venv.has_attr("action_masks")
    assert venv.get_attr("num_actions", [1, 2]) == [2, 2]
    assert venv.env_is_wrapped(VecMonitor) == [False] * 4
    venv.reset()
    _, _, dones, infos = venv.step(np.zeros(4, np.int64))
    assert dones.shape == (4,) and len(infos) == 4


def test_maskable_ppo_trains_on_the_adapter(tmp_path: Path) -> None:
    from sb3_contrib import MaskablePPO

    venv = SB3VecEnv.from_config(small_config(tmp_path), 4)
    model = MaskablePPO("MlpPolicy", venv, n_steps=16, batch_size=32, n_epochs=1, seed=0)
    model.learn(128)
    assert model.num_timesteps >= 128


# ---- agent settings ----------------------------------------------------------------------------
@pytest.mark.parametrize("algo", ["ppo", "dqn", "maskable_ppo"])
def test_shipped_agent_configs_parse(algo: str) -> None:
    cfg = load_agent_config(algo)
    assert cfg.algo == algo and cfg.num_envs >= 1


def test_agent_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"f\.yaml: hyperparameters\.n_step: not a PPO argument"):
        parse_agent_config("ppo", {"hyperparameters": {"n_step": 8}}, "f.yaml")
    with pytest.raises(ConfigError, match=r"network.activation.*allowed: tanh"):
        parse_agent_config("ppo", {"network": {"activation": "gelu"}}, "f.yaml")
    with pytest.raises(ConfigError, match=r"evaluation.metric"):
        parse_agent_config("dqn", {"evaluation": {"metric": "reward"}}, "f.yaml")
    with pytest.raises(ConfigError, match="unknown key"):
        parse_agent_config("dqn", {"learning_rate": 1e-3}, "f.yaml")
    with pytest.raises(ConfigError, match=r"pretrain.policy: 'oracle' is not a heuristic"):
        parse_agent_config("ppo", {"pretrain": {"policy": "oracle"}}, "f.yaml")
    with pytest.raises(ConfigError, match=r"pretrain: behaviour cloning needs an actor-critic"):
        parse_agent_config("dqn", {"pretrain": {"policy": "mooncake"}}, "f.yaml")


def test_unknown_algorithm_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        train_cli.parse_args(["--algo", "sac", "--out", "x"])
    assert exc.value.code == 2
    assert "known algorithms: dqn, maskable_ppo, ppo" in capsys.readouterr().err


# ---- train.py runs ------------------------------------------------------------------------------
def quick_args(tmp_path: Path, out: str, **kw: Any) -> TrainArgs:
    cfg = small_config(tmp_path)
    overrides = {
        "hyperparameters.n_steps": 16,
        "hyperparameters.batch_size": 64,
        "hyperparameters.n_epochs": 2,
        "evaluation.every_steps": 256,
        "evaluation.seeds": 1,
        "evaluation.decisions": 60,
        "checkpoint_every_steps": 256,
        "pretrain.policy": None,  # behaviour cloning has its own test
    }
    defaults: dict[str, Any] = {
        "out": tmp_path / out,
        "config": cfg,
        "algo": "ppo",
        "timesteps": 512,
        "seed": 3,
        "num_envs": 8,
        "final_seeds": 2,
        "final_decisions": 60,
        "progress": False,
        "overrides": overrides,
    }
    defaults.update(kw)
    return TrainArgs(**defaults)


def params(run: Path) -> list[np.ndarray]:
    model = PPO.load(run / "model.zip", device="cpu")
    return [p.detach().numpy().copy() for p in model.policy.parameters()]


def test_train_writes_a_complete_run_and_is_reproducible(tmp_path: Path) -> None:
    out = tmp_path / "a"
    meta = train(quick_args(tmp_path, "a"), echo=lambda s: None)
    for f in (
        "run.json",
        "model.zip",
        "vecnormalize.pkl",
        "obs_normalization.json",
        "final_eval.json",
        "baselines.json",
        "best/model.zip",
        "checkpoints/latest.zip",
    ):
        assert (out / f).is_file(), f
    assert meta["status"] == "finished" and meta["timesteps_done"] >= 512
    records = json.loads((out / "final_eval.json").read_text())
    assert {r["policy"] for r in records} >= {"agent", "mooncake", "prfaas_threshold"}
    assert set(records[0]) == {"policy", "seed", *METRICS}
    assert list((out / "tb").iterdir()) == [out / "tb" / "run_1"]
    # --force replaces a run folder, never another folder
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="only replaces a run folder"):
        train(quick_args(tmp_path, "other", force=True), echo=lambda s: None)
    assert (tmp_path / "other" / "notes.txt").is_file()
    # the same seed reproduces the same run
    train(quick_args(tmp_path, "b"), echo=lambda s: None)
    for p, q in zip(params(out), params(tmp_path / "b"), strict=True):
        np.testing.assert_array_equal(p, q)


def test_interrupted_run_resumes_into_the_same_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agents.callbacks as cb

    calls = {"n": 0}
    original = cb.EnvMetricsCallback._on_step

    def interrupting(self: Any) -> bool:
        calls["n"] += 1
        if calls["n"] == 40:  # 40 vector steps = 320 decisions: after the first checkpoint
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(cb.EnvMetricsCallback, "_on_step", interrupting)
    out = tmp_path / "r"
    meta = train(quick_args(tmp_path, "r"), echo=lambda s: None)
    assert meta["status"] == "interrupted"
    assert not (out / "model.zip").exists() and (out / "checkpoints/latest.zip").is_file()
    stopped = meta["timesteps_done"]
    monkeypatch.setattr(cb.EnvMetricsCallback, "_on_step", original)
    with pytest.raises(ConfigError, match=r"not empty.*--resume"):
        train(quick_args(tmp_path, "r"), echo=lambda s: None)
    with pytest.raises(ConfigError, match="--algo 'dqn' differs"):
        train(quick_args(tmp_path, "r", resume=True, algo="dqn"), echo=lambda s: None)
    meta = train(
        TrainArgs(out=out, resume=True, timesteps=768, progress=False), echo=lambda s: None
    )
    assert meta["status"] == "finished" and meta["timesteps_done"] >= 768 > stopped
    assert [h["started_at_step"] for h in meta["history"]] == [0, stopped]
    assert list((out / "tb").iterdir()) == [out / "tb" / "run_1"]  # logs continue, not restart


def test_agent_policy_acts_like_the_model_on_environment_observations(tmp_path: Path) -> None:
    """The router path (view -> shared encoder -> saved normaliser -> masked greedy) picks
    what the trained model picks on the environment's own normalised observation."""
    train(quick_args(tmp_path, "p"), echo=lambda s: None)
    run = load_run(tmp_path / "p")
    sc, cfg = resolve_config(small_config(tmp_path))
    pol = run.policy(sc, cfg)
    assert isinstance(pol, ScoredPolicy)
    vn = VecNormalize.load(
        str(tmp_path / "p" / "vecnormalize.pkl"), SB3VecEnv.from_config(sc.source, 5)
    )
    vn.training = False
    env = PrfaaSVectorEnv(5, sc.source)
    obs, _ = env.reset(seed=11)
    for _ in range(30):
        expected, _ = run.model.predict(vn.normalize_obs(obs), deterministic=True)
        got = pol.act(env.view(), env.action_masks())
        np.testing.assert_array_equal(got, expected)
        obs, *_ = env.step(got)


def test_run_on_other_spaces_is_refused(tmp_path: Path) -> None:
    train(quick_args(tmp_path, "s"), echo=lambda s: None)
    run = load_run(tmp_path / "s")
    sc, cfg = resolve_config("multi_region")
    with pytest.raises(ConfigError, match=r"observation has 27 features in the run and \d+ in"):
        run.policy(sc, cfg)
    sc, cfg = resolve_config(small_config(tmp_path, "ac.yaml", admission_control=True))
    with pytest.raises(ConfigError, match=r"run has 2 actions .* config 3"):
        run.policy(sc, cfg)
    with pytest.raises(ConfigError, match=r"run.json is missing"):
        load_run(tmp_path)


def test_evaluate_py_compares_an_agent_with_the_heuristics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import evaluate

    train(quick_args(tmp_path, "e"), echo=lambda s: None)
    cfg = small_config(tmp_path)
    out = tmp_path / "ev"
    argv = ["--config", cfg, "--policies", "mooncake", "--agent", str(tmp_path / "e")]
    argv += ["--seeds", "2", "--decisions", "50", "--out", str(out), "--no-progress"]
    assert evaluate.main(argv) == 0
    records = json.loads((out / "results.json").read_text())
    assert [r["policy"] for r in records] == ["mooncake", "mooncake", "agent:e", "agent:e"]
    assert "agent:e" in capsys.readouterr().out
    bad = ["--config", "multi_region", "--policies", "none", "--agent", str(tmp_path / "e")]
    assert evaluate.main(bad) == 2
    assert "observation has 27 features in the run and" in capsys.readouterr().err
    assert evaluate.main(["--policies", "none"]) == 2
    assert evaluate.main(["--policies", "none", "--agent", f"{tmp_path / 'e'}:last"]) == 2
    assert "only 'final'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("algo", "extra"),
    [
        ("maskable_ppo", {}),
        (
            "dqn",
            {
                "hyperparameters.learning_starts": 64,
                "hyperparameters.buffer_size": 2000,
                "hyperparameters.batch_size": 32,
                "hyperparameters.target_update_interval": 100,
            },
        ),
    ],
)
def test_other_algorithms_train_and_evaluate(tmp_path: Path, algo: str, extra: dict) -> None:
    args = quick_args(tmp_path, algo, algo=algo, rate_multiplier=1.5)
    if algo == "dqn":
        args.overrides = {
            k: v for k, v in args.overrides.items() if not k.startswith("hyperparameters.")
        } | extra
    meta = train(args, echo=lambda s: None)
    assert meta["status"] == "finished" and meta["algo"] == algo
    assert meta["rate_multiplier"] == 1.5 and "(rate x1.5)" in meta["eval_source"]
    run = load_run(tmp_path / algo)
    sc, cfg = resolve_config(small_config(tmp_path))
    env = PrfaaSVectorEnv(3, sc.source)
    env.reset(seed=0)
    a = run.policy(sc, cfg).act(env.view(), env.action_masks())
    assert a.shape == (3,) and set(a.tolist()) <= {0, 1}


def test_checkpoint_selection_puts_throughput_before_latency() -> None:
    from agents.training import _improves
    from prfaas_env.evaluation import best_baseline

    p90 = "ttft_p90_s"
    assert _improves(True, 9.0, 2.0, False, 1.0, 2.0, p90)  # keeps up beats a backlog
    assert not _improves(False, 1.0, 2.0, True, 9.0, 2.0, p90)
    assert _improves(True, 1.0, 2.0, True, 2.0, 2.0, p90)
    assert _improves(True, 0.9, 2.0, True, 0.8, 2.0, "slo_attainment")
    # neither keeps up: the one that serves more wins, whatever its latency ...
    assert _improves(False, 9.0, 2.5, False, 6.0, 2.2, p90)
    assert not _improves(False, 6.0, 2.2, False, 9.0, 2.5, p90)
    # ... unless throughputs are within 1 %: then the metric decides
    assert _improves(False, 6.0, 2.49, False, 9.0, 2.5, p90)
    scores = {
        "fast_but_drops": {"throughput_rps": 1.0, "ttft_p90_s": 0.5},
        "a": {"throughput_rps": 2.0, "ttft_p90_s": 3.0},
        "b": {"throughput_rps": 1.99, "ttft_p90_s": 2.0},
    }
    assert best_baseline(scores, "ttft_p90_s") == "b"


def test_pretraining_clones_the_heuristic(tmp_path: Path) -> None:
    """Behaviour cloning a threshold rule (a function of the prompt length alone, so a small
    MLP can represent it) makes the untrained agent act like it before PPO starts."""
    overrides = {
        **quick_args(tmp_path, "x").overrides,
        "pretrain.policy": "prfaas_threshold",
        "pretrain.decisions": 6000,
        "pretrain.epochs": 8,
        "pretrain.batch_size": 256,
    }
    meta = train(quick_args(tmp_path, "bc", timesteps=16 * 8, overrides=overrides), echo=print)
    assert meta["pretrain"]["agreement"] >= 0.9  # on held-out decisions; the commonest
    assert meta["pretrain"]["decisions"] == 6000  # action alone would be right 56 % of the time
    assert meta["pretrain"]["fitted"] == 5400
    assert json.loads((tmp_path / "bc" / "run.json").read_text())["pretrain"] == meta["pretrain"]
    # the cloned policy itself was evaluated before PPO's first step
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (tb,) = (tmp_path / "bc" / "tb").iterdir()
    events = EventAccumulator(str(tb))
    events.Reload()
    assert events.Scalars("eval/ttft_p90_s")[0].step == 0


def test_replaceable_out_refuses_to_replace_a_foreign_folder(tmp_path: Path) -> None:
    """--out may be absent or empty; a non-empty one is replaced only with --force and only
    when it is the right kind of folder (its marker file is there)."""
    out = tmp_path / "out"
    assert replaceable_out(out, False, "run.json", "run") is False
    out.mkdir()
    assert replaceable_out(out, False, "run.json", "run") is False
    (out / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match=r"--out .*not empty; continue it.*--force"):
        replaceable_out(out, False, "run.json", "run", "continue it with --resume, or ")
    with pytest.raises(ConfigError, match=r"only replaces a run folder \(one with run\.json\)"):
        replaceable_out(out, True, "run.json", "run")
    (out / "run.json").write_text("{}")
    assert replaceable_out(out, True, "run.json", "run") is True
    assert (out / "notes.txt").is_file()  # checking never deletes
