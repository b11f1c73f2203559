"""Agent settings (``configs/agents/ALGO.yaml``) and the model factories for PPO, DQN and
MaskablePPO.

An agent file has these sections::

    num_envs: 64                      # copies of the scenario stepped together
    normalize: {observation: true, reward: true, clip: 10.0}
    network: {net_arch: [64, 64], activation: tanh}
    hyperparameters: {...}            # keyword arguments of the SB3 algorithm class
    evaluation: {every_steps: 50000, seeds: 3, decisions: 2000, metric: ttft_p90_s}
    checkpoint_every_steps: 100000
    pretrain: {policy: mooncake, decisions: 200000, epochs: 5}   # optional (agents/pretrain.py)

Every hyperparameter is checked against the algorithm's constructor, so a misspelt key is an
error naming the file, the key and the allowed keys rather than a crash inside SB3.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from prfaas_env.env.config import CONFIG_DIR
from prfaas_env.errors import ConfigError, UnknownNameError, check_keys, load_yaml_mapping, number
from prfaas_env.evaluation import LOWER_IS_BETTER
from prfaas_env.policies import policy_names

AGENT_CONFIG_DIR = CONFIG_DIR / "agents"  # shipped inside the package (configs/agents/)
ACTIVATIONS: dict[str, type[torch.nn.Module]] = {
    "tanh": torch.nn.Tanh,
    "relu": torch.nn.ReLU,
    "elu": torch.nn.ELU,
}
# Evaluation metrics a run can select its best checkpoint on, and whether lower is better.
EVAL_METRICS = LOWER_IS_BETTER
# Keyword arguments train.py sets itself; an agent file may not.
_MANAGED = {"policy", "env", "seed", "verbose", "tensorboard_log", "device", "policy_kwargs"}


def _maskable_ppo() -> type[BaseAlgorithm]:
    from sb3_contrib import MaskablePPO

    return MaskablePPO


ALGOS: dict[str, Any] = {"ppo": lambda: PPO, "dqn": lambda: DQN, "maskable_ppo": _maskable_ppo}


def algo_class(name: str) -> type[BaseAlgorithm]:
    """The SB3 class for ``name`` (UnknownNameError lists ppo, dqn, maskable_ppo)."""
    if name not in ALGOS:
        raise UnknownNameError("algorithm", name, ALGOS)
    return ALGOS[name]()


@dataclass(frozen=True)
class PretrainSettings:
    """The ``pretrain:`` section (behaviour cloning, agents/pretrain.py): heuristic to clone
    (None: no pretraining), decisions routed by it, passes over them, minibatch size."""

    policy: str | None = None
    decisions: int = 200_000
    epochs: int = 5
    batch_size: int = 1024


@dataclass(frozen=True)
class EvalSettings:
    """Periodic evaluation during training (on held-out seeds or trace windows)."""

    every_steps: int = 50_000
    seeds: int = 3
    decisions: int = 2000
    metric: str = "ttft_p90_s"


@dataclass(frozen=True)
class AgentConfig:
    """One algorithm's settings (see the module docstring)."""

    algo: str
    source: str
    num_envs: int = 64
    normalize_observation: bool = True
    normalize_reward: bool = True
    clip: float = 10.0
    net_arch: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    evaluation: EvalSettings = EvalSettings()
    checkpoint_every_steps: int = 100_000
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data (written to ``run.json``)."""
        return {
            "algo": self.algo,
            "source": self.source,
            "num_envs": self.num_envs,
            "normalize": {
                "observation": self.normalize_observation,
                "reward": self.normalize_reward,
                "clip": self.clip,
            },
            "network": {"net_arch": list(self.net_arch), "activation": self.activation},
            "hyperparameters": dict(self.hyperparameters),
            "evaluation": self.evaluation.__dict__.copy(),
            "checkpoint_every_steps": self.checkpoint_every_steps,
            "pretrain": self.pretrain.__dict__.copy(),
        }


def agent_config_path(algo: str, path: str | Path | None = None) -> Path:
    """``path``, or the shipped ``configs/agents/ALGO.yaml`` when None."""
    return Path(path) if path is not None else AGENT_CONFIG_DIR / f"{algo}.yaml"


def load_agent_config(algo: str, path: str | Path | None = None) -> AgentConfig:
    """Read ``path`` (default ``configs/agents/ALGO.yaml``) and validate it for ``algo``."""
    cls = algo_class(algo)
    p = agent_config_path(algo, path)
    return parse_agent_config(algo, load_yaml_mapping(p), str(p), cls)


def parse_agent_config(
    algo: str, raw: dict[str, Any], where: str, cls: type[BaseAlgorithm] | None = None
) -> AgentConfig:
    """Validate an agent mapping (see the module docstring); errors name ``where`` and the key."""
    cls = cls or algo_class(algo)
    check_keys(
        raw,
        where,
        [],
        [
            "algo",
            "num_envs",
            "normalize",
            "network",
            "hyperparameters",
            "evaluation",
            "checkpoint_every_steps",
            "pretrain",
        ],
    )
    if raw.get("algo", algo) != algo:
        raise ConfigError(f"{where}: algo: file is for {raw['algo']!r}, not {algo!r}")
    norm = _section(raw, "normalize", where, ["observation", "reward", "clip"])
    net = _section(raw, "network", where, ["net_arch", "activation"])
    ev = _section(raw, "evaluation", where, ["every_steps", "seeds", "decisions", "metric"])
    hyper = _section(raw, "hyperparameters", where, None)
    allowed = sorted(set(inspect.signature(cls.__init__).parameters) - _MANAGED - {"self"})
    for key in hyper:
        if key not in allowed:
            raise ConfigError(
                f"{where}: hyperparameters.{key}: not a {cls.__name__} argument; allowed: "
                f"{', '.join(allowed)}"
            )
    arch = net.get("net_arch", [64, 64])
    if (
        not isinstance(arch, list)
        or not arch
        or not all(isinstance(x, int) and x > 0 for x in arch)
    ):
        raise ConfigError(f"{where}: network.net_arch: expected a list of positive layer widths")
    act = net.get("activation", "tanh")
    if act not in ACTIVATIONS:
        raise ConfigError(
            f"{where}: network.activation: {act!r} is not allowed; allowed: "
            f"{', '.join(ACTIVATIONS)}"
        )
    metric = ev.get("metric", "ttft_p90_s")
    if metric not in EVAL_METRICS:
        raise ConfigError(
            f"{where}: evaluation.metric: {metric!r} is not allowed; allowed: "
            f"{', '.join(EVAL_METRICS)}"
        )
    pre = _section(raw, "pretrain", where, ["policy", "decisions", "epochs", "batch_size"])
    teacher = pre.get("policy")
    if teacher is not None:
        if teacher not in policy_names():
            raise ConfigError(
                f"{where}: pretrain.policy: {teacher!r} is not a heuristic; allowed: "
                f"{', '.join(policy_names())}"
            )
        if algo == "dqn":
            raise ConfigError(
                f"{where}: pretrain: behaviour cloning needs an actor-critic algorithm "
                f"(ppo or maskable_ppo), not dqn"
            )
    for flag in ("observation", "reward"):
        if not isinstance(norm.get(flag, True), bool):
            raise ConfigError(f"{where}: normalize.{flag}: expected true or false")
    return AgentConfig(
        algo=algo,
        source=where,
        num_envs=number(raw, "num_envs", where, minimum=1, integer=True, default=64),
        normalize_observation=norm.get("observation", True),
        normalize_reward=norm.get("reward", True),
        clip=number(
            norm, "clip", f"{where}: normalize", minimum=0, exclusive_minimum=True, default=10.0
        ),
        net_arch=tuple(arch),
        activation=act,
        hyperparameters=hyper,
        evaluation=EvalSettings(
            every_steps=number(
                ev, "every_steps", f"{where}: evaluation", minimum=1, integer=True, default=50_000
            ),
            seeds=number(ev, "seeds", f"{where}: evaluation", minimum=1, integer=True, default=3),
            decisions=number(
                ev, "decisions", f"{where}: evaluation", minimum=1, integer=True, default=2000
            ),
            metric=metric,
        ),
        checkpoint_every_steps=number(
            raw, "checkpoint_every_steps", where, minimum=1, integer=True, default=100_000
        ),
        pretrain=PretrainSettings(
            policy=teacher,
            decisions=number(
                pre, "decisions", f"{where}: pretrain", minimum=1, integer=True, default=200_000
            ),
            epochs=number(pre, "epochs", f"{where}: pretrain", minimum=1, integer=True, default=5),
            batch_size=number(
                pre, "batch_size", f"{where}: pretrain", minimum=1, integer=True, default=1024
            ),
        ),
    )


def _section(
    raw: dict[str, Any], key: str, where: str, allowed: list[str] | None
) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {key}: expected a mapping")
    if allowed is not None:
        check_keys(value, f"{where}: {key}", [], allowed)
    return dict(value)


def make_model(
    cfg: AgentConfig,
    env: VecEnv,
    seed: int,
    tensorboard_log: str | None = None,
    verbose: int = 0,
) -> BaseAlgorithm:
    """A fresh model of ``cfg.algo`` on ``env`` (an MLP policy over the Box observation, or
    SB3's multi-input policy over the Dict form)."""
    cls = algo_class(cfg.algo)
    policy = "MultiInputPolicy" if isinstance(env.observation_space, spaces.Dict) else "MlpPolicy"
    arch = list(cfg.net_arch)
    kwargs: dict[str, Any] = {
        # DQN has one Q-network; the actor-critic algorithms a policy and a value network
        "net_arch": arch if cfg.algo == "dqn" else {"pi": arch, "vf": arch},
        "activation_fn": ACTIVATIONS[cfg.activation],
    }
    return cls(
        policy,
        env,
        seed=seed,
        verbose=verbose,
        tensorboard_log=tensorboard_log,
        device="cpu",
        policy_kwargs=kwargs,
        **cfg.hyperparameters,
    )
