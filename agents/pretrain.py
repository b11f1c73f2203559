"""Behaviour cloning from a heuristic before reinforcement learning (an agent config's
``pretrain:`` section).

A policy that starts from random weights spends most of its budget rediscovering what a good
heuristic already knows. Cloning one first (Mooncake's conductor, say) starts PPO from the
heuristic's behaviour, and PPO then has only to improve on it:

1. the heuristic routes ``decisions`` requests through the training environment stack (the
   same ``VecNormalize`` wrapper, whose statistics it warms up), and every observation (as
   the wrapper normalised it at that moment), action mask, heuristic action and raw reward
   is kept; rewards are normalised afterwards with the final statistics, the scale PPO's
   value targets start on. Observations stay as they were seen: normalising them all with
   the final statistics instead fitted the training data more tightly but generalised worse
   (Mooncake trace, one seed: cloned policy 2.35 s P90 on the held-out window against
   Mooncake's 2.16 s, and 2.49 s against 2.26 s after PPO, where this way gives 2.27 s);
2. for ``epochs`` passes over nine tenths of those decisions, the policy network is fitted
   to the heuristic's actions (cross-entropy; masked for MaskablePPO) and the value network
   to the discounted returns the heuristic obtained (squared error, only where no episode
   or rollout end comes within ``TAIL`` steps, since episodes end by truncation and their
   returns continue), with the model's own optimiser;
3. the agreement with the heuristic is measured on the held-out tenth, masks applied.

Only actor-critic algorithms (PPO, MaskablePPO) are supported: DQN has no policy network to
clone into.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from stable_baselines3.common.vec_env import unwrap_vec_normalize

from agents.algos import PretrainSettings
from agents.scoring import masked_greedy
from prfaas_env.policies import Policy

TAIL = 300  # value targets need this many steps before an episode or rollout end (0.99^300 =
# 5 % of the return is cut off there); at most half the rollout


def _discounted_returns(
    rewards: NDArray[np.float64], dones: NDArray[np.bool_], gamma: float
) -> NDArray[np.float64]:
    """``[step, env]`` returns summed up to each episode's end or the rollout's end."""
    out = np.zeros_like(rewards)
    running = np.zeros(rewards.shape[1])
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running * (~dones[t])
        out[t] = running
    return out


def _full_horizon(dones: NDArray[np.bool_], horizon: int) -> NDArray[np.bool_]:
    """``[step, env]`` True where no episode end and no rollout end comes within ``horizon``
    steps: there the return summed to the episode's end is close to the bootstrapped one
    (episodes end by truncation, so the value after an end is not zero)."""
    steps = len(dones)
    left = np.full(dones.shape[1], steps, np.int64)  # steps to the next end, per env
    out = np.zeros_like(dones)
    for t in range(steps - 1, -1, -1):
        left = np.where(dones[t], 0, left + 1)
        out[t] = (left >= horizon) & (steps - t >= horizon)
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
    Returns figures for run.json: decisions routed, decisions fitted, final loss, and the
    agreement with the heuristic on a held-out tenth of the decisions (masks applied)."""
    policy = model.policy
    if not hasattr(policy, "evaluate_actions"):
        raise ValueError("pretraining needs an actor-critic policy (ppo or maskable_ppo)")
    maskable = "action_masks" in inspect.signature(policy.evaluate_actions).parameters
    vecnorm = unwrap_vec_normalize(venv)
    n = venv.num_envs
    steps = max(settings.decisions // n, 2)
    heuristic.reset(n, seed=0)
    obs = venv.reset()
    seen_obs = [obs]
    actions, masks = [], []
    rewards = np.zeros((steps, n))
    dones = np.zeros((steps, n), np.bool_)
    for t in range(steps):
        view = native.view()
        mask = native.action_masks()
        actions.append(np.asarray(heuristic.act(view, mask), np.int64))
        masks.append(mask)
        obs, rew, dones[t], _ = venv.step(actions[-1])
        # raw rewards, normalised afterwards with the final statistics (the value network
        # starts PPO on that scale); observations as the policy saw them, normalised with
        # the statistics of the moment
        rewards[t] = vecnorm.get_original_reward() if vecnorm is not None else rew
        seen_obs.append(obs)
    obs_all = _stack(seen_obs[:steps])
    if vecnorm is not None:
        rewards = vecnorm.normalize_reward(rewards)
    gamma = float(getattr(model, "gamma", 0.99))
    returns = _discounted_returns(rewards, dones, gamma).reshape(-1)
    value_ok = _full_horizon(dones, min(TAIL, steps // 2)).reshape(-1)
    act_all = np.concatenate(actions)
    mask_all = np.concatenate(masks)
    count = len(act_all)
    rng = np.random.default_rng(0)
    order = rng.permutation(count)
    held_out, fit = order[: count // 10], order[count // 10 :]
    echo(
        f"pretraining: cloning {heuristic.name} on {len(fit):,} of {count:,} decisions "
        f"({int(value_ok[fit].sum()):,} with full-horizon value targets), "
        f"{settings.epochs} epochs"
    )
    vf_coef = float(getattr(model, "vf_coef", 0.5))
    loss_value = float("nan")
    policy.set_training_mode(True)
    for _ in range(settings.epochs):
        rng.shuffle(fit)
        for start in range(0, len(fit), settings.batch_size):
            idx = fit[start : start + settings.batch_size]
            obs_t, _ = policy.obs_to_tensor(_take(obs_all, idx))
            act_t = torch.as_tensor(act_all[idx])
            extra = {"action_masks": mask_all[idx]} if maskable else {}
            values, log_prob, _ = policy.evaluate_actions(obs_t, act_t, **extra)
            use = torch.as_tensor(value_ok[idx])
            err = (values.flatten() - torch.as_tensor(returns[idx], dtype=torch.float32)) ** 2
            value_loss = err[use].mean() if bool(use.any()) else err.sum() * 0.0
            loss = -log_prob.mean() + vf_coef * value_loss
            policy.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), model.max_grad_norm)
            policy.optimizer.step()
            loss_value = float(loss.detach())
    policy.set_training_mode(False)
    greedy = masked_greedy(model, _take(obs_all, held_out), mask_all[held_out])
    agreement = float(np.mean(greedy == act_all[held_out]))
    echo(
        f"pretraining: agreement with {heuristic.name} {agreement:.3f} on {len(held_out):,} "
        f"held-out decisions, loss {loss_value:.4f}"
    )
    return {
        "decisions": float(count),
        "fitted": float(len(fit)),
        "loss": loss_value,
        "agreement": agreement,
    }


def _stack(obs: list[Any]) -> Any:
    if isinstance(obs[0], dict):
        return {k: np.concatenate([o[k] for o in obs]) for k in obs[0]}
    return np.concatenate(obs)


def _take(obs: Any, idx: NDArray[np.int64]) -> Any:
    return {k: v[idx] for k, v in obs.items()} if isinstance(obs, dict) else obs[idx]
