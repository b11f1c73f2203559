"""Scores of a stable-baselines3 model: what its policy network prefers, as arrays and as a
torch module (the part of the model a router bundle exports)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from stable_baselines3.common.base_class import BaseAlgorithm
from torch import nn


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


def score_kind(model: BaseAlgorithm) -> str:
    """``"q_values"`` for DQN, ``"log_probabilities"`` for the actor-critic algorithms."""
    return "q_values" if hasattr(model.policy, "q_net") else "log_probabilities"


class ScoringModule(nn.Module):
    """A copy of a model's scoring network on normalised observations: Q-values (DQN) or
    log-probabilities (log-softmax of the actor's logits, as SB3's categorical
    distribution computes them)."""

    def __init__(self, model: BaseAlgorithm) -> None:
        super().__init__()
        policy = copy.deepcopy(model.policy).cpu().eval()
        self.q_values = hasattr(policy, "q_net")
        if self.q_values:
            self.q_net = policy.q_net
        else:
            self.features = policy.pi_features_extractor
            self.mlp = policy.mlp_extractor
            self.head = policy.action_net

    def forward(self, x: Any) -> torch.Tensor:
        if self.q_values:
            return self.q_net(x)
        return torch.log_softmax(self.head(self.mlp.forward_actor(self.features(x))), dim=1)
