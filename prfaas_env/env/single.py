"""PrfaaSEnv: one copy of a scenario as a ``gymnasium.Env`` (one step per arriving request)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from numpy.typing import NDArray

from prfaas_env.env.actions import check_action
from prfaas_env.env.vector import PrfaaSVectorEnv


class PrfaaSEnv(gym.Env):
    """A single environment: the MDP of :class:`PrfaaSVectorEnv` (whose docstring specifies
    it) with one env, and the same arguments minus ``num_envs``.

    ``step`` takes one whole number in ``[0, actions)`` (ValueError otherwise, naming the
    value and the allowed actions). Episodes end by truncation, never by termination.
    ``action_masks()`` returns the allowed actions (the form sb3-contrib's MaskablePPO
    reads); ``info["action_mask"]`` carries the same. All randomness comes from
    ``np_random``: an env reset with ``seed=s`` equals env ``i`` of a vector env reset with
    ``seed=s - i``.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"]}

    def __init__(
        self,
        config: str | Path | dict[str, Any] | None = None,
        render_mode: str | None = None,
        max_episode_steps: int | None = None,
        dict_observation: bool | None = None,
        rate_multiplier: float | None = None,
        observation_form: str | None = None,
    ) -> None:
        self.vector = PrfaaSVectorEnv(
            1,
            config,
            autoreset_mode=AutoresetMode.DISABLED,
            render_mode=render_mode,
            max_episode_steps=max_episode_steps,
            parallel=False,
            rate_multiplier=rate_multiplier,
            dict_observation=dict_observation,
            observation_form=observation_form,
        )
        self.render_mode = render_mode
        self.observation_space = self.vector.single_observation_space
        self.action_space = self.vector.single_action_space
        self.action_meanings = self.vector.action_meanings
        self.encoder = self.vector.encoder
        self.scenario = self.vector.scenario
        self._action = np.zeros(1, np.int64)
        self._all = np.ones(1, np.bool_)

    @property
    def sim(self) -> Any:
        """The underlying one-env simulator."""
        return self.vector.sim

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        # every draw comes from this env's generator
        obs, info = self.vector.reset_envs(self._all, [self.np_random])
        return _first(obs), _first_info(info)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        self._action[0] = check_action(action, self.action_meanings)
        obs, reward, terminated, truncated, info = self.vector.step(self._action)
        return (
            _first(obs),
            float(reward[0]),
            bool(terminated[0]),
            bool(truncated[0]),
            _first_info(info),
        )

    def action_masks(self) -> NDArray[np.bool_]:
        """Allowed actions now (True = allowed)."""
        return self.vector.action_masks()[0]

    def render(self) -> str | None:
        return self.vector.render()


def _first(obs: Any) -> Any:
    if isinstance(obs, dict):
        return {k: v[0] for k, v in obs.items()}
    return obs[0]


def _first_info(info: dict[str, Any]) -> dict[str, Any]:
    """The one env's info from a vector env's (every entry is present for env 0)."""
    out: dict[str, Any] = {
        "action_mask": info["action_mask"][0],
        "sim_time_s": float(info["sim_time_s"][0]),
    }
    terms = info.get("reward_terms")
    if terms is not None:
        out["reward_terms"] = {k: float(v[0]) for k, v in terms.items()}
    summary = info.get("episode_summary")
    if summary is not None and info["_episode_summary"][0]:
        out["episode_summary"] = {k: float(v[0]) for k, v in summary.items()}
    return out
