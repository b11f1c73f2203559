"""A stable-baselines3 ``VecEnv`` over the native vector environment.

SB3 does not accept a Gymnasium ``VectorEnv``: it wants its own ``VecEnv`` interface, which
resets finished envs inside ``step`` (Gymnasium's ``SAME_STEP`` autoreset), returns one
``done`` flag per env and a list of info dicts, and puts the last observation of a finished
episode in ``info["terminal_observation"]``. :class:`SB3VecEnv` translates one
:class:`~prfaas_env.env.vector.PrfaaSVectorEnv` in ``SAME_STEP`` mode into that interface
without a Python loop over envs on the step path (info dicts are filled only where an episode
ended).

Episodes here end by truncation only, so every finished episode carries
``info["TimeLimit.truncated"] = True`` and SB3 bootstraps its value (as it must: the
simulated system keeps running). ``info["episode_summary"]`` holds the episode's metrics
(P90 TTFT, SLO attainment, throughput, offload fraction, ...), which the training callbacks
log. ``env_method("action_masks")`` returns one mask row per env, the form sb3-contrib's
MaskablePPO reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from numpy.typing import NDArray
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices

from prfaas_env.env.vector import PrfaaSVectorEnv
from prfaas_env.integrations import require_autoreset


class SB3VecEnv(VecEnv):
    """stable-baselines3 view of a :class:`PrfaaSVectorEnv`.

    Args:
        env: a ``PrfaaSVectorEnv`` built with ``autoreset_mode="SAME_STEP"`` (anything else
            raises :class:`~prfaas_env.integrations.AutoresetModeError`, since SB3 expects
            finished envs to be reset within the step that finished them). Use
            :meth:`from_config` to build both.
    """

    def __init__(self, env: PrfaaSVectorEnv) -> None:
        require_autoreset(env, AutoresetMode.SAME_STEP, "stable-baselines3 (SB3VecEnv)")
        self.env = env
        self._actions: NDArray[np.int64] | None = None
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)

    @classmethod
    def from_config(
        cls,
        config: str | Path | dict[str, Any] | None = None,
        num_envs: int = 1,
        **kwargs: Any,
    ) -> SB3VecEnv:
        """Build the native vector env in ``SAME_STEP`` mode and wrap it (``kwargs`` go to
        :class:`PrfaaSVectorEnv`)."""
        return cls(PrfaaSVectorEnv(num_envs, config, autoreset_mode="SAME_STEP", **kwargs))

    # ---- the VecEnv protocol ----------------------------------------------------------------
    def reset(self) -> Any:
        """Reset every env; seeds set with :meth:`seed` apply to this reset only."""
        seeds = None if self._seeds[0] is None else [int(s) for s in self._seeds]  # type: ignore[arg-type]
        options = self._options[0] or None
        obs, _ = self.env.reset(seed=seeds, options=options)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return obs

    def step_async(self, actions: NDArray[Any]) -> None:
        self._actions = np.asarray(actions).reshape(self.num_envs).astype(np.int64)

    def step_wait(self) -> tuple[Any, NDArray[np.float32], NDArray[np.bool_], list[dict]]:
        if self._actions is None:
            raise RuntimeError("step_wait() called without a pending step_async()")
        obs, reward, terminated, truncated, info = self.env.step(self._actions)
        self._actions = None
        dones = terminated | truncated
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if dones.any():
            final_obs = info["final_obs"]
            summary = info["final_info"].get("episode_summary", {})
            for i in np.flatnonzero(dones):
                infos[i]["terminal_observation"] = final_obs[i]
                infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
                infos[i]["episode_summary"] = {k: float(v[i]) for k, v in summary.items()}
        return obs, reward.astype(np.float32), dones, infos

    def close(self) -> None:
        self.env.close()

    # ---- attribute access: the wrapped env is one object shared by every index -------------
    def _indices(self, indices: VecEnvIndices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        if isinstance(indices, int):
            return [indices]
        return list(indices)  # type: ignore[arg-type]

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """``getattr`` on the vector env, repeated once per requested index."""
        value = getattr(self.env, attr_name)
        return [value for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """``setattr`` on the vector env (it applies to every index at once)."""
        setattr(self.env, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **kwargs: Any
    ) -> list[Any]:
        """Call a vector-env method once. A result with one row per env (``action_masks``)
        is split into the requested rows; any other result is repeated per index."""
        out = getattr(self.env, method_name)(*method_args, **kwargs)
        idx = self._indices(indices)
        if isinstance(out, np.ndarray) and out.ndim >= 1 and out.shape[0] == self.num_envs:
            return [out[i] for i in idx]
        return [out for _ in idx]

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        """The native env carries no Gymnasium wrappers."""
        return [False for _ in self._indices(indices)]

    def action_masks(self) -> NDArray[np.bool_]:
        """``[env, action]`` allowed actions (also reachable through ``env_method``)."""
        return self.env.action_masks()

    def get_images(self) -> Sequence[NDArray[Any] | None]:
        raise NotImplementedError("PrfaaS renders text only (render_mode='ansi')")

    def render(self, mode: str | None = None) -> Any:
        return self.env.render()
