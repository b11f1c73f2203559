"""A training run on disk, and a trained agent as a routing :class:`~prfaas_env.policies.Policy`.

A run folder (``train.py --out runs/NAME``) holds::

    run.json                 what was trained: algorithm, seed, scenario, observation features,
                             action meanings, agent settings, versions, timing
    model.zip                the final SB3 model
    obs_normalization.json   the observation normaliser (mean, var, epsilon, clip) as plain data
    vecnormalize.pkl         SB3's VecNormalize statistics (for --resume)
    best/                    the checkpoint that scored best in periodic evaluation
    best.json                its step and evaluation scores
    checkpoints/             periodic checkpoints (latest.* is what --resume continues from)
    tb/                      TensorBoard logs
    baselines.json           the heuristics' scores on the evaluation seeds (cached)
    final_eval.json          the final table's records (same keys as evaluate.py's results.json)

A :class:`TrainedRun` is what export needs of a trained policy
(:class:`prfaas_env.export.policy.TrainedPolicy`), and it routes as a
:class:`~prfaas_env.policies.learned.ScoredPolicy`: through the same encoder the environment
uses, so a policy evaluated here sees exactly what it saw in training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from stable_baselines3.common.base_class import BaseAlgorithm

from agents.algos import algo_class
from agents.scoring import ScoringModule, policy_scores, score_kind
from prfaas_env.env.config import EnvConfig, resolve_config
from prfaas_env.env.spaces import check_spaces
from prfaas_env.errors import ConfigError, load_folder_json
from prfaas_env.export.policy import Normalizer
from prfaas_env.policies import RouteTable
from prfaas_env.policies.learned import ScoredPolicy
from prfaas_env.sim.scenario import Scenario

RUN_FORMAT = 1


def normalizer_of(vn: Any | None) -> Normalizer:
    """The observation normaliser of an optional SB3 ``VecNormalize`` (identity when None)."""
    if vn is None:
        return Normalizer(None, None)
    if not vn.norm_obs:
        return Normalizer(None, None, float(vn.epsilon), float(vn.clip_obs))
    rms = vn.obs_rms["observation"] if isinstance(vn.obs_rms, dict) else vn.obs_rms
    return Normalizer(rms.mean.copy(), rms.var.copy(), float(vn.epsilon), float(vn.clip_obs))


@dataclass
class TrainedRun:
    """A run folder read back: its metadata, model and normaliser (``checkpoint``: which
    weights). Implements what export needs of a trained policy
    (:class:`prfaas_env.export.policy.TrainedPolicy`) for the scenario it was trained on."""

    path: Path
    meta: dict[str, Any]
    model: BaseAlgorithm
    normalizer: Normalizer
    checkpoint: str = "final"

    @property
    def name(self) -> str:
        return f"agent:{self.path.name}"

    @property
    def spaces(self) -> dict[str, Any]:
        return dict(self.meta["spaces"])

    @property
    def dict_observation(self) -> bool:
        return bool(self.meta["spaces"].get("dict_observation"))

    @property
    def score_kind(self) -> str:
        return score_kind(self.model)

    @cached_property
    def _trained_on(self) -> tuple[Scenario, EnvConfig]:
        return run_scenario(self.meta)

    @property
    def scenario(self) -> Scenario:
        """The scenario the run was trained on (at its rate multiplier)."""
        return self._trained_on[0]

    @property
    def env_config(self) -> EnvConfig:
        return self._trained_on[1]

    @property
    def provenance(self) -> dict[str, Any]:
        m = self.meta
        return {
            "path": str(self.path),
            "checkpoint": self.checkpoint,
            "algo": m["algo"],
            "seed": m["seed"],
            "config": m["config"],
            "rate_multiplier": m.get("rate_multiplier"),
            "timesteps": m.get("timesteps_done"),
        }

    def model_input(self, observation: NDArray[np.float32], mask: NDArray[np.bool_]) -> Any:
        """The model's input for encoder outputs: normalised, in the Dict form if trained so."""
        obs = self.normalizer.apply(observation)
        if self.dict_observation:
            return {"observation": obs, "action_mask": mask.astype(np.float32)}
        return obs

    def scores(
        self, observation: NDArray[np.float32], mask: NDArray[np.bool_]
    ) -> NDArray[np.float64]:
        """``[row, action]`` scores of encoder outputs (see ``TrainedPolicy.scores``)."""
        return policy_scores(self.model, self.model_input(observation, mask))

    def scoring_module(self) -> ScoringModule:
        """The model's scoring network on normalised observations, for export."""
        return ScoringModule(self.model)

    def policy(self, scenario: Scenario, env_cfg: EnvConfig, label: str = "agent") -> ScoredPolicy:
        """The agent as a router on ``scenario`` (ConfigError if the spaces differ)."""
        check_spaces(self.meta["spaces"], scenario, env_cfg, str(self.path))
        routes = RouteTable.from_topology(scenario.topology, env_cfg.admission_control)
        return ScoredPolicy(routes, scenario.topology, self.scores, label)


def read_meta(root: Path) -> dict[str, Any]:
    """``run.json`` of a run folder (ConfigError naming what is missing or unreadable)."""
    meta_path = root / "run.json"
    meta = load_folder_json(root, "run.json", "run", "train.py --out")
    if meta.get("format") != RUN_FORMAT:
        raise ConfigError(
            f"{meta_path}: format {meta.get('format')!r}; this version reads {RUN_FORMAT}"
        )
    return meta


def run_scenario(meta: dict[str, Any]) -> tuple[Scenario, EnvConfig]:
    """The scenario a run was trained on (its config at its rate multiplier) and its env
    settings, from the run's ``run.json``."""
    scenario, env_cfg = resolve_config(meta["config"])
    rate = meta.get("rate_multiplier")
    return (scenario.with_rate(rate) if rate is not None else scenario), env_cfg


def load_run(path: str | Path, which: str = "final") -> TrainedRun:
    """Read a run folder; ``which`` is ``final`` (model.zip), ``best`` (the best/ checkpoint)
    or ``selected`` (best/ when the run has one, else final).

    Raises ConfigError naming the missing file or the unreadable field.
    """
    root = Path(path)
    meta = read_meta(root)
    if which == "selected":
        which = "best" if (root / "best" / "model.zip").is_file() else "final"
    folder = root if which == "final" else root / which
    model_path = folder / "model.zip"
    norm_path = folder / "obs_normalization.json"
    for p in (model_path, norm_path):
        if not p.is_file():
            raise ConfigError(f"{root}: {p.relative_to(root)} is missing (was training finished?)")
    model = algo_class(meta["algo"]).load(model_path, device="cpu")
    normalizer = Normalizer.from_dict(json.loads(norm_path.read_text()))
    return TrainedRun(root, meta, model, normalizer, which)
