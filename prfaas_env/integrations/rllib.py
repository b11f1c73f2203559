"""Ray RLlib (new API stack): PPO on the native vector env, with action masking.

RLlib builds the environment itself, with ``gym.make_vec("PrfaaS-v0", num_envs,
vectorization_mode=VECTOR_ENTRY_POINT, **env_config)``, so each env runner steps one
:class:`~prfaas_env.env.vector.PrfaaSVectorEnv` (one compiled call per step for all its envs)
rather than a Python loop over single envs. RLlib's env runner treats the step after a
finished episode as the next episode's reset, i.e. it needs ``NEXT_STEP`` autoreset (the
env's default); :func:`env_config` refuses any other mode.

Action masking uses the Dict observation ``{"observation", "action_mask"}``:
:class:`MaskedPPOModule` is RLlib's action-masking PPO module, reading this environment's key
names (RLlib's example module expects ``"observations"``).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from gymnasium.vector import AutoresetMode
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.examples.rl_modules.classes.action_masking_rlm import (
    ActionMaskingTorchRLModule,
)

import prfaas_env  # noqa: F401  (registers PrfaaS-v0 with its vector entry point)
from prfaas_env.env.vector import parse_autoreset
from prfaas_env.integrations import AutoresetModeError

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
    cfg = (
        PPOConfig()
        .environment(env=ENV_ID, env_config=env)
        .env_runners(
            num_env_runners=num_env_runners,
            num_envs_per_env_runner=num_envs_per_env_runner,
            gym_env_vectorize_mode=gym.VectorizeMode.VECTOR_ENTRY_POINT,
        )
        .learners(num_learners=num_learners)
        .training(**(training or {}))
    )
    model = {"fcnet_hiddens": list(hidden), "fcnet_activation": "tanh", "head_fcnet_hiddens": []}
    if env.get("dict_observation"):
        spec = RLModuleSpec(module_class=MaskedPPOModule, model_config=model)
    else:
        spec = RLModuleSpec(model_config=model)
    return cfg.rl_module(rl_module_spec=spec)
