"""What export needs of a trained policy: the interface a training library implements.

The exporter knows nothing of how a policy was trained. A trained policy gives it

- its **spaces signature** (``spaces``: the observation features in order, the action labels,
  whether it reads the Dict form; :func:`prfaas_env.env.spaces.spaces_signature`) and the
  scenario it was trained on (``scenario``, ``env_config``), which the bundle records and
  checks;
- its **observation normaliser** (:class:`Normalizer`), folded into the exported graph;
- its **scores from observations**: :meth:`TrainedPolicy.scores` on the encoder's output
  (the reference the exported graph must agree with), and :meth:`TrainedPolicy.scoring_module`,
  the same function as a torch module on normalised observations (what is exported);
- ``score_kind`` (``"log_probabilities"`` or ``"q_values"``) and ``provenance`` (what made
  it: algorithm, seed, run folder, ...; copied into the manifest).

``agents.run.TrainedRun`` implements it for stable-baselines3 runs; another library's policy
needs only these members to become a bundle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from prfaas_env.env.config import EnvConfig
from prfaas_env.sim.scenario import Scenario

SCORE_KINDS = ("log_probabilities", "q_values")


@dataclass(frozen=True)
class Normalizer:
    """``clip((obs - mean) / sqrt(var + epsilon), -clip, clip)``, the running normalisation
    RL libraries apply to observations (SB3's VecNormalize, Gymnasium's NormalizeObservation).

    Identity when ``mean`` is None (a policy trained without observation normalisation).
    """

    mean: NDArray[np.float64] | None
    var: NDArray[np.float64] | None
    epsilon: float = 1e-8
    clip: float = 10.0

    def apply(self, obs: NDArray[np.float32]) -> NDArray[np.float32]:
        """Normalised observations (float32)."""
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
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        mean = None if d.get("mean") is None else np.asarray(d["mean"], np.float64)
        var = None if d.get("var") is None else np.asarray(d["var"], np.float64)
        return cls(mean, var, float(d["epsilon"]), float(d["clip"]))


class TrainedPolicy(Protocol):
    """A trained routing policy, as export sees it (see the module docstring)."""

    scenario: Scenario
    env_config: EnvConfig
    spaces: dict[str, Any]
    normalizer: Normalizer
    score_kind: str
    provenance: dict[str, Any]
    name: str

    def scores(
        self, observation: NDArray[np.float32], mask: NDArray[np.bool_]
    ) -> NDArray[np.float64]:
        """``[row, action]`` scores (higher is better) of encoder outputs (before the
        policy's normalisation) with their action masks."""
        ...

    def scoring_module(self) -> Any:
        """A ``torch.nn.Module`` mapping normalised observations (a ``[batch, features]``
        tensor, or with the Dict form a mapping with ``observation`` and ``action_mask``
        tensors) to the scores of :meth:`scores`."""
        ...
