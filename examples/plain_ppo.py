"""PPO in one file, in plain PyTorch, on the native vector environment (no RL library).

    python examples/plain_ppo.py --config paper_prfaas --rate-multiplier 2.7 --timesteps 300000

The loop drives :class:`~prfaas_env.env.vector.PrfaaSVectorEnv` directly in its default
``NEXT_STEP`` autoreset mode (the step after a finished one returns the next episode's first
observation and ignores its action), under Gymnasium's own vector wrappers for observation
and reward normalisation and episode statistics (which need that mode). Settings match
``configs/agents/ppo.yaml`` (64 envs x 64 steps per rollout, 64 x 64 tanh MLPs, 4 epochs of
1024-sample minibatches, clip 0.2, entropy 0.01; written out below, not read from the file) so
that its training throughput can be compared with stable-baselines3's
(``benchmarks/training_throughput.py``). One difference: SB3's ``VecNormalize`` clips
normalised observations and rewards to [-10, 10], Gymnasium's wrappers do not.

Episodes end only by truncation (the decision limit), which is not terminal: the last step of
an episode bootstraps from the value of its final observation, and the reset step that
follows is left out of the loss.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from torch import nn
from torch.distributions import Categorical

from prfaas_env.env.vector import PrfaaSVectorEnv
from prfaas_env.integrations import require_autoreset


@dataclass
class Args:
    config: str = "paper_prfaas"
    rate_multiplier: float | None = None
    timesteps: int = 300_000
    num_envs: int = 64
    num_steps: int = 64
    learning_rate: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    minibatch_size: int = 1024
    update_epochs: int = 4
    clip_coef: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    seed: int = 0
    threads: int = 1


def layer(n_in: int, n_out: int, std: float = float(np.sqrt(2))) -> nn.Linear:
    lin = nn.Linear(n_in, n_out)
    nn.init.orthogonal_(lin.weight, std)
    nn.init.constant_(lin.bias, 0.0)
    return lin


class Agent(nn.Module):
    """Separate 64 x 64 tanh actor and critic, as SB3's MlpPolicy builds them."""

    def __init__(self, obs_size: int, actions: int) -> None:
        super().__init__()
        self.critic = nn.Sequential(
            layer(obs_size, 64), nn.Tanh(), layer(64, 64), nn.Tanh(), layer(64, 1, 1.0)
        )
        self.actor = nn.Sequential(
            layer(obs_size, 64), nn.Tanh(), layer(64, 64), nn.Tanh(), layer(64, actions, 0.01)
        )

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x).squeeze(-1)

    def act(
        self, x: torch.Tensor, action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        dist = Categorical(logits=self.actor(x))
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action), dist.entropy(), self.value(x)


def advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    terminated: torch.Tensor,
    resets: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """Generalised advantage estimates ``[step, env]`` under NEXT_STEP autoreset.

    ``values`` and ``resets`` have one more row than ``rewards`` (the state after the
    rollout); ``resets[t]`` marks a step that only reset its env. After a truncation the next
    observation is the episode's final one, so the truncated step bootstraps from its value;
    the chain stops there (the reset step that follows is no transition) and at termination.
    """
    steps = len(rewards)
    adv = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[1])
    for t in reversed(range(steps)):
        delta = rewards[t] + gamma * values[t + 1] * (1 - terminated[t]) - values[t]
        keep = (1 - terminated[t]) * (1 - resets[t + 1])
        last = delta + gamma * lam * keep * last
        adv[t] = last
    return adv


def make_env(args: Args) -> gym.vector.VectorEnv:
    """The native vector env under Gymnasium's vector wrappers."""
    env = PrfaaSVectorEnv(args.num_envs, args.config, rate_multiplier=args.rate_multiplier)
    require_autoreset(env, AutoresetMode.NEXT_STEP, "this loop (and Gymnasium's vector wrappers)")
    env = gym.wrappers.vector.RecordEpisodeStatistics(env)
    env = gym.wrappers.vector.NormalizeObservation(env)
    return gym.wrappers.vector.NormalizeReward(env, gamma=args.gamma)


def train(args: Args, log: Any = print) -> dict[str, float]:
    """Train for ``args.timesteps`` decisions; returns throughput figures and the mean P90
    TTFT of the last episodes (s)."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    env = make_env(args)
    n, steps = args.num_envs, args.num_steps
    obs_size = env.single_observation_space.shape[0]
    agent = Agent(obs_size, int(env.single_action_space.n))
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)

    obs_buf = torch.zeros((steps, n, obs_size))
    act_buf = torch.zeros((steps, n), dtype=torch.long)
    logp_buf = torch.zeros((steps, n))
    rew_buf = torch.zeros((steps, n))
    term_buf = torch.zeros((steps, n))  # the step ended its episode by termination
    reset_buf = torch.zeros((steps, n))  # the step only reset its env (action ignored)
    val_buf = torch.zeros((steps, n))

    next_obs = torch.as_tensor(env.reset(seed=args.seed)[0], dtype=torch.float32)
    next_reset = torch.zeros(n)
    iterations = max(args.timesteps // (n * steps), 1)
    env_s = infer_s = update_s = 0.0
    p90: list[float] = []
    start = time.perf_counter()
    for it in range(iterations):
        for t in range(steps):
            obs_buf[t], reset_buf[t] = next_obs, next_reset
            t0 = time.perf_counter()
            with torch.no_grad():
                action, logp, _, value = agent.act(next_obs)
            t1 = time.perf_counter()
            obs, reward, term, trunc, info = env.step(action.numpy())
            t2 = time.perf_counter()
            infer_s, env_s = infer_s + (t1 - t0), env_s + (t2 - t1)
            act_buf[t], logp_buf[t], val_buf[t] = action, logp, value
            rew_buf[t] = torch.as_tensor(reward, dtype=torch.float32)
            term_buf[t] = torch.as_tensor(term, dtype=torch.float32)
            summary = info.get("episode_summary")
            if summary is not None:
                p90 += [float(x) for x in np.asarray(summary["ttft_p90_s"])[term | trunc]]
            next_obs = torch.as_tensor(obs, dtype=torch.float32)
            next_reset = torch.as_tensor(term | trunc, dtype=torch.float32)
        t0 = time.perf_counter()
        with torch.no_grad():
            values = torch.cat([val_buf, agent.value(next_obs)[None]])
            resets = torch.cat([reset_buf, next_reset[None]])
            adv = advantages(rew_buf, values, term_buf, resets, args.gamma, args.gae_lambda)
            returns = adv + val_buf
        valid = (reset_buf.reshape(-1) == 0).nonzero().squeeze(1).numpy()
        b_obs, b_act = obs_buf.reshape(-1, obs_size), act_buf.reshape(-1)
        b_logp, b_adv = logp_buf.reshape(-1), adv.reshape(-1)
        b_ret = returns.reshape(-1)
        order = valid.copy()
        rng = np.random.default_rng(args.seed + it)
        for _ in range(args.update_epochs):
            rng.shuffle(order)
            for s in range(0, len(order), args.minibatch_size):
                mb = torch.as_tensor(order[s : s + args.minibatch_size])
                if len(mb) < 2:  # the advantage normalisation needs two samples
                    continue
                _, logp, entropy, value = agent.act(b_obs[mb], b_act[mb])
                ratio = (logp - b_logp[mb]).exp()
                a = b_adv[mb]
                a = (a - a.mean()) / (a.std() + 1e-8)
                pg = torch.max(-a * ratio, -a * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef))
                loss = (
                    pg.mean()
                    + args.vf_coef * ((value - b_ret[mb]) ** 2).mean()
                    - args.ent_coef * entropy.mean()
                )
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()
        update_s += time.perf_counter() - t0
        if p90 and (it + 1) % 10 == 0:
            log(f"step {(it + 1) * n * steps:>9,}: episode P90 TTFT {np.mean(p90[-n:]):.2f} s")
    wall = time.perf_counter() - start
    done = iterations * n * steps
    return {
        "timesteps": float(done),
        "seconds": wall,
        "steps_per_s": done / wall,
        "env_s": env_s,
        "inference_s": infer_s,
        "update_s": update_s,
        "last_p90_ttft_s": float(np.mean(p90[-n:])) if p90 else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=Args.config)
    ap.add_argument("--rate-multiplier", type=float, default=None)
    ap.add_argument("--timesteps", type=int, default=Args.timesteps)
    ap.add_argument("--num-envs", type=int, default=Args.num_envs)
    ap.add_argument("--seed", type=int, default=Args.seed)
    ns = ap.parse_args()
    out = train(
        Args(
            config=ns.config,
            rate_multiplier=ns.rate_multiplier,
            timesteps=ns.timesteps,
            num_envs=ns.num_envs,
            seed=ns.seed,
        )
    )
    print(
        f"trained {out['timesteps']:,.0f} steps in {out['seconds']:.0f} s "
        f"({out['steps_per_s']:,.0f} steps/s; environment {out['env_s']:.0f} s, inference "
        f"{out['inference_s']:.0f} s, updates {out['update_s']:.0f} s)"
    )


if __name__ == "__main__":
    main()
