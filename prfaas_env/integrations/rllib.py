"""Ray RLlib (new API stack): PPO on the native vector env with action masking, and PPO of
the per-route network across a suite (:func:`suite_ppo_config`).

RLlib builds the environment itself, with ``gym.make_vec("PrfaaS-v0", num_envs,
vectorization_mode=VECTOR_ENTRY_POINT, **env_config)``, so each env runner steps one
:class:`~prfaas_env.env.vector.PrfaaSVectorEnv` (one compiled call per step for all its envs)
rather than a Python loop over single envs. RLlib's env runner treats the step after a
finished episode as the next episode's reset, i.e. it needs ``NEXT_STEP`` autoreset (the
env's default); :func:`env_config` refuses any other mode.

Action masking uses the Dict observation ``{"observation", "action_mask"}``:
:class:`MaskedPPOModule` is RLlib's action-masking PPO module, reading this environment's key
names (RLlib's example module expects ``"observations"``).

Across a suite, each env runner steps :class:`~prfaas_env.env.suite_env.PrfaaSSuiteEnv`
copies (a scenario, load and link draw per episode, one padded observation space for every
topology) and :class:`RouteScorerModule` wraps the same ``RouteScorer`` the imitation
training fits, so weights go both ways (:func:`get_scorer_state`, :func:`set_scorer_state`).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis import ValueFunctionAPI
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.examples.rl_modules.classes.action_masking_rlm import (
    ActionMaskingTorchRLModule,
)
from ray.rllib.utils.torch_utils import FLOAT_MIN
from ray.tune.registry import register_env

import prfaas_env  # noqa: F401  (registers PrfaaS-v0 with its vector entry point)
from prfaas_env.env.suite_env import DEFAULT_RATE_RANGE, PrfaaSSuiteEnv
from prfaas_env.env.vector import parse_autoreset
from prfaas_env.integrations import AutoresetModeError
from prfaas_env.observation.per_route import GLOBAL_FEATURES, ROUTE_FEATURES
from prfaas_env.policies.route_scorer import RouteScorer
from prfaas_env.suite import resolve_suite, suite_names

ENV_ID = "PrfaaS-v0"
_THEIRS = "observations"  # the key RLlib's example module reads
_OURS = "observation"


class MaskedPPOModule(ActionMaskingTorchRLModule):
    """RLlib's action-masking PPO module on this environment's Dict observation
    ``{"observation": Box, "action_mask": Box}`` (masked actions get -inf logits)."""

    def __init__(self, *, observation_space: gym.Space | None = None, **kwargs: Any) -> None:
        if isinstance(observation_space, gym.spaces.Dict) and _OURS in observation_space.spaces:
            observation_space = gym.spaces.Dict(
                {"action_mask": observation_space["action_mask"], _THEIRS: observation_space[_OURS]}
            )
        super().__init__(observation_space=observation_space, **kwargs)

    def _preprocess_batch(self, batch: dict[str, Any], **kwargs: Any) -> Any:
        obs = batch[Columns.OBS]
        if isinstance(obs, dict) and _OURS in obs:
            obs[_THEIRS] = obs.pop(_OURS)
        return super()._preprocess_batch(batch, **kwargs)


def env_config(
    config: str | dict[str, Any] = "paper_prfaas",
    rate_multiplier: float | None = None,
    max_episode_steps: int | None = None,
    autoreset_mode: str = "NEXT_STEP",
    masked: bool = True,
) -> dict[str, Any]:
    """The keyword arguments RLlib hands to the vector env (AutoresetModeError unless the
    autoreset mode is NEXT_STEP, the one RLlib's env runner assumes)."""
    mode = parse_autoreset(autoreset_mode)
    if mode != AutoresetMode.NEXT_STEP:
        raise AutoresetModeError(
            f"RLlib needs a vector env with autoreset_mode=NEXT_STEP (its env runner takes the "
            f"step after a finished episode as the reset), got {mode.name}"
        )
    out: dict[str, Any] = {
        "config": config,
        "autoreset_mode": mode.value,
        "dict_observation": masked,
    }
    if rate_multiplier is not None:
        out["rate_multiplier"] = float(rate_multiplier)
    if max_episode_steps is not None:
        out["max_episode_steps"] = int(max_episode_steps)
    return out


def _ppo(
    env_id: str,
    env: dict[str, Any],
    num_env_runners: int,
    num_envs_per_env_runner: int,
    num_learners: int,
    training: dict[str, Any] | None,
    vectorize: Any,
) -> PPOConfig:
    """PPO on ``env_id`` with ``env`` as its config: runners, envs per runner (vectorised
    by ``vectorize``), learners and the ``training`` arguments."""
    return (
        PPOConfig()
        .environment(env=env_id, env_config=env)
        .env_runners(
            num_env_runners=num_env_runners,
            num_envs_per_env_runner=num_envs_per_env_runner,
            gym_env_vectorize_mode=vectorize,
        )
        .learners(num_learners=num_learners)
        .training(**(training or {}))
    )


def ppo_config(
    env: dict[str, Any],
    num_env_runners: int = 0,
    num_envs_per_env_runner: int = 64,
    num_learners: int = 0,
    hidden: tuple[int, ...] = (64, 64),
    training: dict[str, Any] | None = None,
) -> PPOConfig:
    """A PPO configuration on the native vector env (``env``: from :func:`env_config`), with
    the action-masking module when ``env["dict_observation"]`` is set."""
    cfg = _ppo(
        ENV_ID,
        env,
        num_env_runners,
        num_envs_per_env_runner,
        num_learners,
        training,
        gym.VectorizeMode.VECTOR_ENTRY_POINT,
    )
    model = {"fcnet_hiddens": list(hidden), "fcnet_activation": "tanh", "head_fcnet_hiddens": []}
    if env.get("dict_observation"):
        spec = RLModuleSpec(module_class=MaskedPPOModule, model_config=model)
    else:
        spec = RLModuleSpec(model_config=model)
    return cfg.rl_module(rl_module_spec=spec)


# ---- one policy across a suite: the per-route network on RLlib --------------------------------
SUITE_ENV_KEYS = (
    "suite",
    "split",
    "scenarios",
    "rate_range",
    "bandwidth_range",
    "max_routes",
    "max_episode_steps",
)
SUITE_ENV_NAME = "prfaas-suite"  # the env creator's name in Ray's registry
SUITE_METRICS = ("ttft_p90_s", "slo_attainment", "throughput_rps")  # logged per scenario


class RouteScorerModule(TorchRLModule, ValueFunctionAPI):
    """An RLlib module (new API stack, torch) around
    :class:`~prfaas_env.policies.route_scorer.RouteScorer`, the per-route network the
    imitation training (``agents/generalist.py``) trains too.

    Reads the suite env's Dict observation (``routes`` ``[B, R, 18]``, ``global`` ``[B, 6]``,
    ``action_mask`` ``[B, R]``). The action logits are the network's route scores, those of
    routes the mask does not allow (padding rows included) at the lowest float32 (no
    probability, and finite, so PPO's KL term stays a number); the value is the network's
    value head (pooled over the allowed routes). ``model_config``: ``hidden`` (width of the
    network, default 64). The network is ``module.scorer``: its ``state_dict`` loads into a
    ``RouteScorer`` of the same width and back (:func:`get_scorer_state`,
    :func:`set_scorer_state`).
    """

    def setup(self) -> None:
        cfg = dict(self.model_config or {})  # RLlib adds keys of its own; only hidden is read
        space = self.observation_space
        want = {"routes", "global", "action_mask"}
        if not isinstance(space, gym.spaces.Dict) or set(space.spaces) != want:
            raise ValueError(
                "RouteScorerModule: expected the suite env's Dict observation with keys "
                f"{sorted(want)}, got {space}"
            )
        f = space["routes"].shape[-1]
        g = space["global"].shape[-1]
        if (f, g) != (len(ROUTE_FEATURES), len(GLOBAL_FEATURES)):
            raise ValueError(
                f"RouteScorerModule: the observation has {f} route and {g} global features; "
                f"the per-route form has {len(ROUTE_FEATURES)} and {len(GLOBAL_FEATURES)}"
            )
        anchor = cfg.get("anchor")  # a residual scorer (RouteScorer's ``anchor``)
        self.scorer = RouteScorer(f, g, int(cfg.get("hidden", 64)), anchor)

    @staticmethod
    def _inputs(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        obs = batch[Columns.OBS]
        return obs["routes"], obs["global"], obs["action_mask"] > 0.5

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        routes, glob, mask = self._inputs(batch)
        scores = self.scorer.scores(routes, glob)
        logits = torch.where(mask, scores, torch.full_like(scores, FLOAT_MIN))
        return {Columns.ACTION_DIST_INPUTS: logits}

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        routes, glob, mask = self._inputs(batch)
        return self.scorer.value(routes, glob, mask)


def suite_env_config(
    suite: str = "default",
    split: str = "train",
    scenarios: list[str] | None = None,
    rate_range: tuple[float, float] | list[float] = DEFAULT_RATE_RANGE,
    bandwidth_range: tuple[float, float] | list[float] | None = None,
    max_routes: int | None = None,
    max_episode_steps: int | None = None,
) -> dict[str, Any]:
    """The ``env_config`` of :func:`suite_ppo_config`: the arguments of
    :class:`~prfaas_env.env.suite_env.PrfaaSSuiteEnv`, checked here by building one (a bad
    argument fails in the driver, not in every env runner) and written out in full (plain
    lists and numbers; a suite folder as an absolute path; ``max_routes`` resolved), so every
    env runner builds the same spaces. A suite folder must exist at that path on every
    machine of the cluster; a shipped suite's name always resolves."""
    name = str(suite)
    if name not in suite_names():
        name = str(resolve_suite(name).resolve())
    env = PrfaaSSuiteEnv(
        name,
        split,
        None if scenarios is None else list(scenarios),
        rate_range,
        bandwidth_range,
        max_routes,
        max_episode_steps,
    )
    return {
        "suite": name,
        "split": split,
        "scenarios": None if scenarios is None else env.scenario_names,
        "rate_range": list(env.rate_range),
        "bandwidth_range": None if env.bandwidth_range is None else list(env.bandwidth_range),
        "max_routes": env.max_routes,
        "max_episode_steps": None if max_episode_steps is None else int(max_episode_steps),
    }


def make_suite_env(config: dict[str, Any]) -> PrfaaSSuiteEnv:
    """RLlib's env creator: a :class:`PrfaaSSuiteEnv` from ``env_config`` (RLlib adds
    keys of its own, e.g. ``num_envs``; they are ignored)."""
    return PrfaaSSuiteEnv(**{k: config[k] for k in SUITE_ENV_KEYS if k in config})


def log_suite_episode(*, episode: Any, metrics_logger: Any = None, **kwargs: Any) -> None:
    """RLlib ``on_episode_end`` callback: per scenario, the episode's return and summary
    metrics (:data:`SUITE_METRICS`) under ``suite/<scenario>/...`` of the env runners'
    results (means over the last 20 episodes of that scenario)."""
    if metrics_logger is None:
        return
    info = episode.get_infos(-1)
    name = info.get("scenario") if isinstance(info, dict) else None
    if not name:
        return
    metrics_logger.log_value(
        ("suite", name, "episode_return"), float(episode.get_return()), reduce="mean", window=20
    )
    summary = info.get("episode_summary") or {}
    for key in SUITE_METRICS:
        value = summary.get(key)
        if value is not None and np.isfinite(value):
            metrics_logger.log_value(("suite", name, key), float(value), reduce="mean", window=20)


def suite_ppo_config(
    env: dict[str, Any],
    num_env_runners: int = 0,
    num_envs_per_env_runner: int = 8,
    num_learners: int = 0,
    hidden: int = 64,
    training: dict[str, Any] | None = None,
    anchor: int | None = None,
) -> PPOConfig:
    """PPO on :class:`PrfaaSSuiteEnv` (``env``: from :func:`suite_env_config`) with
    :class:`RouteScorerModule`: each of the ``num_env_runners`` env runners (one process
    each, anywhere in the Ray cluster) steps ``num_envs_per_env_runner`` suite envs in a
    Gymnasium ``SyncVectorEnv``, each env drawing its own scenario per episode; per-scenario
    episode metrics go to the results under ``env_runners/suite/<scenario>/``. ``anchor``
    makes the scorer residual (see :class:`RouteScorer`; ``anchor_in(state)`` of the
    network it starts from)."""
    register_env(SUITE_ENV_NAME, make_suite_env)  # in Ray's registry: every node finds it
    return (
        _ppo(
            SUITE_ENV_NAME,
            env,
            num_env_runners,
            num_envs_per_env_runner,
            num_learners,
            training,
            gym.VectorizeMode.SYNC,
        )
        .callbacks(on_episode_end=log_suite_episode)
        .rl_module(
            rl_module_spec=RLModuleSpec(
                module_class=RouteScorerModule,
                model_config={"hidden": int(hidden), "anchor": anchor},
            )
        )
    )


def get_scorer_state(algo: Any) -> dict[str, torch.Tensor]:
    """The learner's network as a ``RouteScorer`` ``state_dict`` (CPU tensors): what
    ``torch.save`` writes for ``agents/generalist.py`` to load."""
    results = algo.learner_group.foreach_learner(
        lambda learner: {
            k: v.detach().cpu().clone()
            for k, v in learner.module[DEFAULT_MODULE_ID].scorer.state_dict().items()
        }
    )
    return next(iter(results)).get()


def set_scorer_state(algo: Any, state: dict[str, torch.Tensor]) -> None:
    """Load a ``RouteScorer`` ``state_dict`` (e.g. an imitation run's ``model.pt``) into every
    learner and env runner (RL fine-tuning after imitation). Raises RuntimeError naming the
    mismatched keys when the widths differ."""

    def load(learner: Any) -> None:
        learner.module[DEFAULT_MODULE_ID].scorer.load_state_dict(state)

    results = algo.learner_group.foreach_learner(load)
    for r in results:
        if not r.ok:
            raise r.get()
    algo.env_runner_group.sync_weights(
        from_worker_or_learner_group=algo.learner_group, inference_only=True
    )


def fresh_scorer(
    env: dict[str, Any], hidden: int = 64, decisions: int = 300, seed: int = 0
) -> RouteScorer:
    """A new ``RouteScorer`` whose input standardisation (``set_statistics``) comes from
    ``decisions`` decisions of every scenario of the suite env ``env`` under uniformly random
    allowed routes (real routes only, not padding): the start of RL without imitation."""
    e = make_suite_env(env)
    rng = np.random.default_rng(seed)
    rows, globs = [], []
    for i, name in enumerate(e.scenario_names):
        obs, _ = e.reset(seed=seed + i, options={"scenario": name})
        routes = len(e.current.scenario.topology.routes)
        for _ in range(decisions):
            rows.append(obs["routes"][:routes])
            globs.append(obs["global"])
            obs, _, terminated, truncated, _ = e.step(
                int(rng.choice(np.flatnonzero(obs["action_mask"])))
            )
            if terminated or truncated:
                obs, _ = e.reset(options={"scenario": name})
    torch.manual_seed(seed)
    net = RouteScorer(len(ROUTE_FEATURES), len(GLOBAL_FEATURES), hidden)
    net.set_statistics(np.concatenate(rows), np.stack(globs))
    return net
