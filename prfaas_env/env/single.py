"""PrfaaSEnv: one copy of a scenario as a ``gymnasium.Env`` (one step per arriving request)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from numpy.typing import NDArray

from prfaas_env.env.vector import PrfaaSVectorEnv


class PrfaaSEnv(gym.Env):
    """A single environment; same arguments as :class:`PrfaaSVectorEnv` minus ``num_envs``.

    Episodes end by truncation (``env.max_decisions`` or ``env.max_seconds`` of the config),
    never by termination. ``action_masks()`` returns the allowed actions (the form sb3-contrib's
    MaskablePPO reads); ``info["action_mask"]`` carries the same.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"]}

    def __init__(
        self,
        config: str | Path | dict[str, Any] | None = None,
        render_mode: str | None = None,
        max_episode_steps: int | None = None,
        dict_observation: bool | None = None,
    ) -> None:
        self._vec = PrfaaSVectorEnv(
            1,
            config,
            autoreset_mode=AutoresetMode.DISABLED,
            render_mode=render_mode,
            max_episode_steps=max_episode_steps,
            parallel=False,
            dict_observation=dict_observation,
        )
        self.render_mode = render_mode
        self.observation_space = self._vec.single_observation_space
        self.action_space = self._vec.single_action_space
        self.action_meanings = self._vec.action_meanings
        self.encoder = self._vec.encoder
        self.scenario = self._vec.scenario

    @property
    def sim(self) -> Any:
        """The underlying one-env simulator."""
        return self._vec.sim

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        self._vec._rngs[0] = self.np_random  # every draw comes from this env's generator
        self._vec._reset_envs(np.ones(1, np.bool_))
        self._vec._autoreset[:] = False
        mask = self._vec.action_masks()
        return _first(self._vec._obs(mask)), _unbatch(self._vec._info(mask, {}))

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self._vec.step(np.array([int(action)]))
        return (
            _first(obs),
            float(reward[0]),
            bool(terminated[0]),
            bool(truncated[0]),
            _unbatch(info),
        )

    def action_masks(self) -> NDArray[np.bool_]:
        """Allowed actions now (True = allowed)."""
        return self._vec.action_masks()[0]

    def render(self) -> str | None:
        return self._vec.render()


def _first(obs: Any) -> Any:
    if isinstance(obs, dict):
        return {k: v[0] for k, v in obs.items()}
    return obs[0]


def _unbatch(info: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in info.items():
        if k.startswith("_"):
            continue
        mask = info.get(f"_{k}")
        if mask is not None and not bool(np.asarray(mask)[0]):
            continue
        if isinstance(v, dict):
            out[k] = {kk: _scalar(vv) for kk, vv in v.items()}
        else:
            out[k] = _scalar(v)
    return out


def _scalar(v: Any) -> Any:
    a = np.asarray(v)
    if a.dtype == object:
        return a[0]
    x = a[0]
    return x.item() if np.ndim(x) == 0 else x
