"""Behaviour cloning from a heuristic before reinforcement learning (an agent config's
``pretrain:`` section).

A policy that starts from random weights spends most of its budget rediscovering what a good
heuristic already knows. Cloning one first (Mooncake's conductor, say) starts PPO from the
heuristic's behaviour, and PPO then has only to improve on it:

1. the heuristic routes ``decisions`` requests through the training environment stack (the
   same ``VecNormalize`` wrapper, whose statistics it warms up), and every normalised
   observation, heuristic action and normalised reward is kept;
2. for ``epochs`` passes over those decisions, the policy network is fitted to the
   heuristic's actions (cross-entropy) and the value network to the discounted returns the
   heuristic obtained (squared error), with the model's own optimiser.

Only actor-critic algorithms (PPO, MaskablePPO) are supported: DQN has no policy network to
clone into.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from prfaas_env.env.features import mean_output_tokens, view_from_sim
from prfaas_env.policies import Policy
from prfaas_env.sim.kernel import REJECT

TAIL = 300  # steps at the end of the rollout whose returns are cut short (0.99^300 = 5 %):
# not fitted (at most half the rollout)


@dataclass(frozen=True)
class PretrainSettings:
    """The ``pretrain:`` section: heuristic to clone (None: no pretraining), decisions
    routed by it, passes over them, minibatch size."""

    policy: str | None = None
    decisions: int = 200_000
    epochs: int = 5
    batch_size: int = 1024


def _discounted_returns(
    rewards: NDArray[np.float64], dones: NDArray[np.bool_], gamma: float
) -> NDArray[np.float64]:
    """``[step, env]`` returns, reset at episode ends (0 beyond the last step)."""
    out = np.zeros_like(rewards)
    running = np.zeros(rewards.shape[1])
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running * (~dones[t])
        out[t] = running
    return out


def behaviour_clone(
    model: Any,
    venv: Any,
    native: Any,
    heuristic: Policy,
    settings: PretrainSettings,
    echo: Callable[[str], None] = print,
) -> dict[str, float]:
    """Clone ``heuristic`` into ``model`` (see the module docstring). ``venv`` is the SB3
    environment stack the model trains on, ``native`` the PrfaaSVectorEnv at its bottom.
    Returns figures for run.json: decisions, final loss, agreement with the heuristic."""
    policy = model.policy
    if not hasattr(policy, "evaluate_actions"):
        raise ValueError("pretraining needs an actor-critic policy (ppo or maskable_ppo)")
    n = venv.num_envs
    steps = max(settings.decisions // n, 2)
    tail = min(TAIL, steps // 2)
    staleness = native.config.bandwidth_staleness_s
    mean_out = mean_output_tokens(native.scenario.workload)
    heuristic.reset(n, seed=0)
    obs = venv.reset()
    observations, actions = [], []
    rewards = np.zeros((steps, n))
    dones = np.zeros((steps, n), np.bool_)
    reject = heuristic.routes.num_routes
    for t in range(steps):
        view = view_from_sim(native.sim, staleness, mean_out)
        a = np.asarray(heuristic.act(view, native.action_masks()), np.int64)
        a = np.where(a == REJECT, reject, a)
        observations.append(obs)
        actions.append(a)
        obs, rewards[t], dones[t], _ = venv.step(a)
    gamma = float(getattr(model, "gamma", 0.99))
    returns = _discounted_returns(rewards, dones, gamma)[: steps - tail].reshape(-1)
    obs_all = _stack(observations[: steps - tail])
    act_all = np.concatenate(actions[: steps - tail])
    count = len(act_all)
    echo(f"pretraining: cloning {heuristic.name} on {count:,} decisions, {settings.epochs} epochs")
    rng = np.random.default_rng(0)
    vf_coef = float(getattr(model, "vf_coef", 0.5))
    loss_value = float("nan")
    policy.set_training_mode(True)
    for _ in range(settings.epochs):
        order = rng.permutation(count)
        for start in range(0, count, settings.batch_size):
            idx = order[start : start + settings.batch_size]
            obs_t, _ = policy.obs_to_tensor(_take(obs_all, idx))
            act_t = torch.as_tensor(act_all[idx])
            ret_t = torch.as_tensor(returns[idx], dtype=torch.float32)
            values, log_prob, _ = policy.evaluate_actions(obs_t, act_t)
            loss = -log_prob.mean() + vf_coef * torch.mean((values.flatten() - ret_t) ** 2)
            policy.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), model.max_grad_norm)
            policy.optimizer.step()
            loss_value = float(loss.detach())
    policy.set_training_mode(False)
    with torch.no_grad():
        sample = rng.choice(count, size=min(count, 20_000), replace=False)
        obs_t, _ = policy.obs_to_tensor(_take(obs_all, sample))
        greedy = policy.get_distribution(obs_t).distribution.logits.argmax(1).numpy()
    agreement = float(np.mean(greedy == act_all[sample]))
    echo(f"pretraining: agreement with {heuristic.name} {agreement:.3f}, loss {loss_value:.4f}")
    return {"decisions": float(steps * n), "loss": loss_value, "agreement": agreement}


def _stack(obs: list[Any]) -> Any:
    if isinstance(obs[0], dict):
        return {k: np.concatenate([o[k] for o in obs]) for k in obs[0]}
    return np.concatenate(obs)


def _take(obs: Any, idx: NDArray[np.int64]) -> Any:
    return {k: v[idx] for k, v in obs.items()} if isinstance(obs, dict) else obs[idx]
