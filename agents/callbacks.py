"""Training callbacks: environment metrics, periodic evaluation, checkpoints, progress, timing.

All of them log through SB3's logger, so they land in the same TensorBoard run as SB3's own
losses.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnvWrapper, VecNormalize

from agents.run import normalizer_of

# episode_summary keys logged under env/ (the environment's own metrics)
ENV_METRICS = (
    "ttft_p90_s",
    "ttft_mean_s",
    "slo_attainment",
    "throughput_rps",
    "output_tps",
    "offload_fraction",
    "link_utilisation",
    "cache_hit_fraction",
)


class TimedVecEnv(VecEnvWrapper):
    """Counts the wall time spent inside ``step``/``reset`` of the wrapped env (simulation,
    observation encoding and normalisation), for the training-throughput split."""

    def __init__(self, venv: Any) -> None:
        super().__init__(venv)
        self.env_seconds = 0.0

    def reset(self) -> Any:
        t = time.perf_counter()
        obs = self.venv.reset()
        self.env_seconds += time.perf_counter() - t
        return obs

    def step_wait(self) -> Any:
        t = time.perf_counter()
        out = self.venv.step_wait()
        self.env_seconds += time.perf_counter() - t
        return out


class EnvMetricsCallback(BaseCallback):
    """Logs the mean of each finished episode's ``episode_summary`` under ``env/``."""

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            summary = info.get("episode_summary")
            if summary:
                for k in ENV_METRICS:
                    v = summary.get(k)
                    if v is not None and np.isfinite(v):
                        self.logger.record_mean(f"env/{k}", v)
        return True


class TimingCallback(BaseCallback):
    """Splits wall time into environment steps, policy inference during rollouts, and
    gradient updates; logs steps/s and the shares under ``time/``."""

    def __init__(self, timed: TimedVecEnv) -> None:
        super().__init__()
        self.timed = timed
        self.rollout_s = 0.0
        self._t_rollout = 0.0
        self._t_start = 0.0
        self._steps0 = 0

    def _on_training_start(self) -> None:
        self._t_start = time.perf_counter()
        self._steps0 = self.num_timesteps
        self._env0 = self.timed.env_seconds

    def _on_rollout_start(self) -> None:
        self._t_rollout = time.perf_counter()

    def _on_rollout_end(self) -> None:
        self.rollout_s += time.perf_counter() - self._t_rollout

    def _on_step(self) -> bool:
        return True

    def split(self, exclude_s: float = 0.0) -> dict[str, float]:
        """Wall time shares so far (``exclude_s``: time spent in evaluation/checkpoints,
        which happens inside rollouts and is subtracted from them)."""
        wall = time.perf_counter() - self._t_start
        env_s = self.timed.env_seconds - self._env0
        steps = self.num_timesteps - self._steps0
        rollout = max(self.rollout_s - exclude_s, 0.0)
        train_wall = max(wall - exclude_s, 1e-9)
        return {
            "steps": float(steps),
            "wall_s": wall,
            "train_wall_s": train_wall,
            "steps_per_s": steps / train_wall,
            "env_s": env_s,
            "policy_s": max(rollout - env_s, 0.0),
            "update_s": max(train_wall - rollout, 0.0),
        }


class ProgressCallback(BaseCallback):
    """A tqdm bar over the run's timesteps, showing the last evaluation."""

    def __init__(self, total: int, disable: bool = False) -> None:
        super().__init__()
        self.total = total
        self.disable = disable
        self.bar: Any = None
        self.postfix: dict[str, str] = {}

    def _on_training_start(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=self.total,
            initial=self.num_timesteps,
            unit="step",
            desc="training",
            disable=self.disable,
            dynamic_ncols=True,
        )

    def _on_step(self) -> bool:
        n = self.model.num_timesteps
        if self.bar is not None and n > self.bar.n:
            self.bar.update(n - self.bar.n)
        return True

    def set_postfix(self, **kv: str) -> None:
        self.postfix.update(kv)
        if self.bar is not None:
            self.bar.set_postfix(self.postfix, refresh=False)

    def write(self, msg: str) -> None:
        if self.bar is not None and not self.disable:
            self.bar.write(msg)

    def _on_training_end(self) -> None:
        if self.bar is not None:
            self.bar.close()


def save_snapshot(model: Any, vecnorm: VecNormalize | None, folder: Path, stem: str) -> None:
    """Write ``stem.zip`` (model), ``stem_vecnormalize.pkl`` and the plain normaliser
    ``stem_obs_normalization.json`` (``model``, ``vecnormalize`` and ``obs_normalization``
    when ``stem`` is ``model``)."""
    folder.mkdir(parents=True, exist_ok=True)
    pre = "" if stem == "model" else f"{stem}_"
    model.save(folder / f"{stem}.zip")
    if vecnorm is not None:
        vecnorm.save(str(folder / f"{pre}vecnormalize.pkl"))
    norm = normalizer_of(vecnorm)
    (folder / f"{pre}obs_normalization.json").write_text(json.dumps(norm.to_dict()) + "\n")


class PeriodicCallback(BaseCallback):
    """Every ``every`` timesteps calls ``action(num_timesteps)`` (and once before the first
    step when ``at_start``); the time it takes is counted in ``spent_s`` (so throughput
    figures can leave it out)."""

    def __init__(self, every: int, action: Callable[[int], None], at_start: bool = False) -> None:
        super().__init__()
        self.every = every
        self.action = action
        self.at_start = at_start
        self.spent_s = 0.0
        self._next = every

    def _on_training_start(self) -> None:
        self._next = (self.num_timesteps // self.every + 1) * self.every
        if self.at_start:
            t = time.perf_counter()
            self.action(self.num_timesteps)
            self.spent_s += time.perf_counter() - t

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            t = time.perf_counter()
            self.action(self.num_timesteps)
            self.spent_s += time.perf_counter() - t
            self._next = (self.num_timesteps // self.every + 1) * self.every
        return True
