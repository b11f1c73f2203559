"""PrfaaSVectorEnv: a natively vectorised Gymnasium environment over the batched simulator.

One step routes one arriving request in every env. See docs/environment.md for the MDP (action
meanings, observation table, reward terms) and the autoreset modes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from numpy.typing import NDArray

from prfaas_env.env.config import EnvConfig, resolve_config
from prfaas_env.env.features import (
    OBS_HIGH,
    ObservationEncoder,
    mean_output_tokens,
    view_from_sim,
)
from prfaas_env.sim.engine import RESULT_METRICS, VecSimulator, routes_from_actions

MODES = {m.value: m for m in AutoresetMode} | {m.name: m for m in AutoresetMode}
SUMMARY_KEYS = (*RESULT_METRICS, "cache_hit_fraction", "rejected", "completed")


def parse_autoreset(mode: AutoresetMode | str) -> AutoresetMode:
    """An AutoresetMode from itself or its name/value (error lists the allowed ones)."""
    if isinstance(mode, AutoresetMode):
        return mode
    if mode in MODES:
        return MODES[mode]
    raise ValueError(
        f"autoreset_mode: {mode!r} is not allowed; allowed: "
        f"{', '.join(m.name for m in AutoresetMode)}"
    )


class PrfaaSVectorEnv(VectorEnv):
    """``num_envs`` copies of a scenario stepped together (one compiled call per step).

    Args:
        num_envs: copies.
        config: a scenario file path, the name of a shipped config (``configs/NAME.yaml``) or a
            mapping; default the paper's case study.
        autoreset_mode: ``NEXT_STEP`` (default), ``SAME_STEP`` or ``DISABLED`` (then reset
            finished envs with ``reset(options={"reset_mask": mask})``).
        render_mode: ``"ansi"`` or None.
        max_episode_steps: overrides ``env.max_decisions`` of the config.
        parallel: split envs over numba's threads (default: from 256 envs up).
        rate_multiplier: scales the scenario's arrival rate (e.g. to train under heavy load).
        dict_observation: overrides ``env.observation.dict`` of the config (the
            ``{"observation", "action_mask"}`` form, for libraries that mask actions).
    """

    metadata: ClassVar[dict[str, Any]] = {
        "render_modes": ["ansi"],
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }

    def __init__(
        self,
        num_envs: int = 1,
        config: str | Path | dict[str, Any] | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        render_mode: str | None = None,
        max_episode_steps: int | None = None,
        parallel: bool | None = None,
        rate_multiplier: float | None = None,
        dict_observation: bool | None = None,
    ) -> None:
        self.scenario, cfg = resolve_config(config)
        if rate_multiplier is not None:
            self.scenario = self.scenario.with_rate(float(rate_multiplier))
        if max_episode_steps is not None:
            cfg = replace(cfg, max_decisions=int(max_episode_steps))
        if dict_observation is not None:
            cfg = replace(cfg, dict_observation=bool(dict_observation))
        self.config: EnvConfig = cfg
        self.autoreset_mode = parse_autoreset(autoreset_mode)
        self.metadata = {**type(self).metadata, "autoreset_mode": self.autoreset_mode}
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode: {render_mode!r} is not allowed; allowed: ansi, None")
        self.render_mode = render_mode
        self.num_envs = int(num_envs)
        self.sim = VecSimulator(self.scenario, self.num_envs, parallel=parallel)
        self.encoder = ObservationEncoder(self.scenario.topology)
        topo = self.scenario.topology
        self.route_labels = topo.route_labels()
        self.action_meanings = topo.action_labels(cfg.admission_control)
        self.num_actions = len(self.action_meanings)
        box = gym.spaces.Box(0.0, OBS_HIGH, (self.encoder.size,), np.float32)
        if cfg.dict_observation:
            self.single_observation_space: gym.Space = gym.spaces.Dict(
                {
                    "observation": box,
                    "action_mask": gym.spaces.Box(0.0, 1.0, (self.num_actions,), np.float32),
                }
            )
        else:
            self.single_observation_space = box
        self.single_action_space = gym.spaces.Discrete(self.num_actions)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gym.spaces.MultiDiscrete(np.full(self.num_envs, self.num_actions))
        self._rngs: list[np.random.Generator] = [
            seeding.np_random(None)[0] for _ in range(self.num_envs)
        ]
        self._steps = np.zeros(self.num_envs, np.int64)
        self._autoreset = np.zeros(self.num_envs, np.bool_)
        self._last_totals: dict[str, NDArray] = {}
        self._ttft_slo = self.scenario.ttft_slo_s
        self._mean_output = mean_output_tokens(self.scenario.workload)

    # ---- spaces and masks -------------------------------------------------------------------
    def action_masks(self) -> NDArray[np.bool_]:
        """``[env, action]`` True where the action is allowed now: a route whose link is down
        (usable bandwidth 0) is not; reject always is."""
        ok = self.sim.route_mask()
        if self.config.admission_control:
            ok = np.concatenate([ok, np.ones((self.num_envs, 1), np.bool_)], axis=1)
        return ok

    def _obs(self, mask: NDArray[np.bool_]) -> Any:
        """Observations of the current state (``mask``: its :meth:`action_masks`)."""
        view = view_from_sim(self.sim, self.config.bandwidth_staleness_s, self._mean_output)
        obs = self.encoder.encode(view)
        if self.config.dict_observation:
            return {"observation": obs, "action_mask": mask.astype(np.float32)}
        return obs

    def _totals(self) -> dict[str, NDArray]:
        st = self.sim.state
        return {
            "done": st.m_done.astype(float),
            "slo_ok": st.m_slo_ok.astype(float),
            "ttft": st.m_ttft_sum.copy(),
            "waiting": st.w_area.copy(),
            "tokens": st.m_out_tokens.copy(),
            "rejected": st.m_rejected.astype(float),
        }

    # ---- reset and step --------------------------------------------------------------------
    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset all envs, or those in ``options["reset_mask"]``; env ``i`` of ``seed=s`` is
        seeded ``s + i`` (so it equals a single ``PrfaaSEnv`` reset with ``seed=s + i``)."""
        mask = np.ones(self.num_envs, np.bool_)
        if options and "reset_mask" in options:
            mask = np.asarray(options["reset_mask"], np.bool_)
            if mask.shape != (self.num_envs,):
                raise ValueError(
                    f"options['reset_mask']: expected shape ({self.num_envs},), got {mask.shape}"
                )
        if seed is not None:
            seeds = (
                [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else list(seed)
            )
            if len(seeds) != self.num_envs:
                raise ValueError(f"seed: expected {self.num_envs} seeds, got {len(seeds)}")
            for i in np.flatnonzero(mask):
                self._rngs[i] = seeding.np_random(seeds[i])[0]
        self._reset_envs(mask)
        self._autoreset[mask] = False
        mask = self.action_masks()
        return self._obs(mask), self._info(mask, {})

    def _reset_envs(self, mask: NDArray[np.bool_]) -> None:
        if not mask.any():
            return
        sim_seeds = [
            int(self._rngs[i].integers(0, 2**63 - 1)) if mask[i] else 0
            for i in range(self.num_envs)
        ]
        self.sim.reset(seed=sim_seeds, mask=mask)
        self._steps[mask] = 0
        totals = self._totals()
        for k, v in totals.items():
            self._last_totals.setdefault(k, v.copy())[mask] = v[mask]

    def step(self, actions: Any) -> tuple[Any, NDArray, NDArray, NDArray, dict[str, Any]]:
        """Route every env's pending request (see the class docstring for autoreset)."""
        a = np.asarray(actions).reshape(-1)
        if a.shape != (self.num_envs,) or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"actions: expected {self.num_envs} integer actions, got {actions!r}")
        if a.min() < 0 or a.max() >= self.num_actions:
            raise ValueError(f"actions: must be in [0, {self.num_actions}), got {a}")
        resetting = (
            self._autoreset.copy()
            if self.autoreset_mode == AutoresetMode.NEXT_STEP
            else (np.zeros(self.num_envs, np.bool_))
        )
        routes = routes_from_actions(a, len(self.route_labels))
        self.sim.step(routes, active=~resetting)
        self._steps[~resetting] += 1
        totals = self._totals()
        delta = {k: totals[k] - self._last_totals[k] for k in totals}
        self._last_totals = totals
        w = self.config.reward
        terms = {
            "slo": delta["slo_ok"],
            "ttft": -delta["ttft"] / self._ttft_slo,
            "waiting": -delta["waiting"] / self._ttft_slo,
            "throughput": delta["tokens"] / 1000.0,
            "reject": -delta["rejected"],
        }
        reward = sum(w[k] * v for k, v in terms.items())
        truncated = np.zeros(self.num_envs, np.bool_)
        if self.config.max_decisions is not None:
            truncated |= self._steps >= self.config.max_decisions
        if self.config.max_seconds is not None:
            truncated |= self.sim.now >= self.config.max_seconds
        truncated &= ~resetting
        terminated = np.zeros(self.num_envs, np.bool_)
        reward = np.where(resetting, 0.0, reward)
        for k in terms:
            terms[k] = np.where(resetting, 0.0, terms[k])
        summary = self._summary(truncated)
        if resetting.any():
            self._reset_envs(resetting)
        mask = self.action_masks()
        info = self._info(mask, terms, summary, truncated)
        if self.autoreset_mode == AutoresetMode.SAME_STEP and truncated.any():
            final_obs = self._obs(mask)
            final_info = info
            self._reset_envs(truncated)
            mask = self.action_masks()
            obs = self._obs(mask)
            info = self._info(mask, terms)
            info["final_obs"] = _masked(final_obs, truncated)
            info["_final_obs"] = truncated.copy()
            info["final_info"] = final_info
            info["_final_info"] = truncated.copy()
        else:
            obs = self._obs(mask)
        self._autoreset = truncated.copy()
        return obs, reward.astype(np.float64), terminated, truncated, info

    def _summary(self, done: NDArray[np.bool_]) -> dict[str, NDArray] | None:
        if not done.any():
            return None
        m = self.sim.metrics()
        return {k: np.where(done, m[k], np.nan) for k in SUMMARY_KEYS}

    def _info(
        self,
        mask: NDArray[np.bool_],
        terms: dict[str, NDArray],
        summary: dict[str, NDArray] | None = None,
        done: NDArray[np.bool_] | None = None,
    ) -> dict[str, Any]:
        n = self.num_envs
        info: dict[str, Any] = {
            "action_mask": mask,
            "_action_mask": np.ones(n, np.bool_),
            "sim_time_s": self.sim.now.copy(),
            "_sim_time_s": np.ones(n, np.bool_),
        }
        if terms:
            info["reward_terms"] = {k: v.copy() for k, v in terms.items()}
            info["_reward_terms"] = np.ones(n, np.bool_)
        if summary is not None and done is not None:
            info["episode_summary"] = summary
            info["_episode_summary"] = done.copy()
        return info

    def render(self) -> str | None:
        """A text summary of every env (``render_mode="ansi"``)."""
        if self.render_mode != "ansi":
            return None
        m = self.sim.metrics()
        lines = []
        for e in range(self.num_envs):
            lines.append(
                f"env {e}: t={self.sim.now[e]:.1f}s decisions={int(m['decisions'][e])} "
                f"done={int(m['completed'][e])} TTFT p90={m['ttft_p90_s'][e]:.2f}s "
                f"SLO={m['slo_attainment'][e]:.2f} offload={m['offload_fraction'][e]:.2f} "
                f"link={m['link_utilisation'][e]:.2f}"
            )
        return "\n".join(lines)


def _masked(obs: Any, mask: NDArray[np.bool_]) -> Any:
    """Per-env final observations as an object array (None where the env did not finish)."""
    out = np.empty(len(mask), dtype=object)
    for i in range(len(mask)):
        if mask[i]:
            out[i] = {k: v[i] for k, v in obs.items()} if isinstance(obs, dict) else obs[i]
    return out
