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

The agent acts through the same :class:`~prfaas_env.env.features.ObservationEncoder` the
environment uses, so a policy evaluated here sees exactly what it saw in training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from stable_baselines3.common.base_class import BaseAlgorithm

from agents.algos import algo_class
from prfaas_env.env.config import EnvConfig, resolve_config
from prfaas_env.env.features import ObservationEncoder
from prfaas_env.env.spaces import check_spaces
from prfaas_env.errors import ConfigError, load_folder_json
from prfaas_env.policies import Policy, RouteTable
from prfaas_env.sim.scenario import Scenario

RUN_FORMAT = 1


@dataclass(frozen=True)
class ObsNormalizer:
    """``clip((obs - mean) / sqrt(var + epsilon), -clip, clip)``, as SB3's VecNormalize does.

    Identity when ``mean`` is None (a run trained without observation normalisation).
    """

    mean: NDArray[np.float64] | None
    var: NDArray[np.float64] | None
    epsilon: float = 1e-8
    clip: float = 10.0

    @classmethod
    def of(cls, vn: Any | None) -> ObsNormalizer:
        """The normaliser of an optional ``VecNormalize`` (identity when None)."""
        return cls(None, None) if vn is None else cls.from_vecnormalize(vn)

    @classmethod
    def from_vecnormalize(cls, vn: Any) -> ObsNormalizer:
        """Copy the statistics out of a ``VecNormalize`` wrapper."""
        if not vn.norm_obs:
            return cls(None, None, float(vn.epsilon), float(vn.clip_obs))
        rms = vn.obs_rms["observation"] if isinstance(vn.obs_rms, dict) else vn.obs_rms
        return cls(rms.mean.copy(), rms.var.copy(), float(vn.epsilon), float(vn.clip_obs))

    def apply(self, obs: NDArray[np.float32]) -> NDArray[np.float32]:
        if self.mean is None or self.var is None:
            return obs.astype(np.float32)
        z = (obs - self.mean) / np.sqrt(self.var + self.epsilon)
        return np.clip(z, -self.clip, self.clip).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": None if self.mean is None else self.mean.tolist(),
            "var": None if self.var is None else self.var.tolist(),
            "epsilon": self.epsilon,
            "clip": self.clip,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObsNormalizer:
        mean = None if d.get("mean") is None else np.asarray(d["mean"], np.float64)
        var = None if d.get("var") is None else np.asarray(d["var"], np.float64)
        return cls(mean, var, float(d["epsilon"]), float(d["clip"]))


def policy_scores(model: BaseAlgorithm, obs: Any) -> NDArray[np.float64]:
    """``[row, action]`` scores of a model on model inputs: log-probabilities (policy-gradient
    models, as their categorical distribution holds them) or Q-values (DQN)."""
    policy = model.policy
    with torch.no_grad():
        obs_t, _ = policy.obs_to_tensor(obs)
        if hasattr(policy, "q_net"):
            scores = policy.q_net(obs_t)
        else:
            scores = policy.get_distribution(obs_t).distribution.logits
    return scores.cpu().numpy().astype(np.float64)


def masked_greedy(model: BaseAlgorithm, obs: Any, mask: NDArray[np.bool_]) -> NDArray[np.int64]:
    """The highest-scoring allowed action per row (:func:`policy_scores` among those ``mask``
    allows). This is how the runtime applies the action mask to a model that was trained
    without one."""
    s = policy_scores(model, obs)
    if mask.shape[1] < s.shape[1]:  # a route mask without the always-allowed reject column
        mask = np.pad(mask, ((0, 0), (0, s.shape[1] - mask.shape[1])), constant_values=True)
    s = np.where(mask[:, : s.shape[1]], s, -np.inf)
    return np.argmax(s, axis=1).astype(np.int64)


class AgentPolicy(Policy):
    """A trained model acting greedily as a router (masked actions are never chosen)."""

    name = "agent"

    def __init__(
        self,
        model: BaseAlgorithm,
        normalizer: ObsNormalizer,
        topology: Any,
        routes: RouteTable,
        dict_observation: bool = False,
        label: str = "agent",
    ) -> None:
        super().__init__(routes, topology)
        self.model = model
        self.normalizer = normalizer
        self.encoder = ObservationEncoder(topology)
        self.dict_observation = dict_observation
        self.name = label

    def observe(self, view: dict[str, NDArray], mask: NDArray[np.bool_]) -> Any:
        """The model's input for a view: encoded by the environment's encoder, normalised."""
        obs = self.normalizer.apply(self.encoder.encode(view))
        if self.dict_observation:
            return {"observation": obs, "action_mask": mask.astype(np.float32)}
        return obs

    def act(self, view: dict[str, NDArray], mask: NDArray[np.bool_]) -> NDArray[np.int64]:
        return masked_greedy(self.model, self.observe(view, mask), mask)


@dataclass
class TrainedRun:
    """A run folder read back: its metadata, model and normaliser."""

    path: Path
    meta: dict[str, Any]
    model: BaseAlgorithm
    normalizer: ObsNormalizer

    def policy(self, scenario: Scenario, env_cfg: EnvConfig, label: str = "agent") -> AgentPolicy:
        """The agent as a router on ``scenario`` (ConfigError if the spaces differ)."""
        check_spaces(self.meta["spaces"], scenario, env_cfg, str(self.path))
        routes = RouteTable.from_topology(scenario.topology, env_cfg.admission_control)
        return AgentPolicy(
            self.model,
            self.normalizer,
            scenario.topology,
            routes,
            bool(self.meta["spaces"].get("dict_observation")),
            label,
        )


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
    normalizer = ObsNormalizer.from_dict(json.loads(norm_path.read_text()))
    return TrainedRun(root, meta, model, normalizer)
