"""TorchRL: the native vector env as a TorchRL environment.

TorchRL's collectors reset finished envs themselves, through
``reset(options={"reset_mask": ...})``, which :class:`~prfaas_env.env.vector.PrfaaSVectorEnv`
implements in ``DISABLED`` autoreset mode; :func:`wrap` refuses any other mode. With the
Dict observation, TensorDicts carry ``"observation"`` and ``"action_mask"``.
"""

from __future__ import annotations

from typing import Any

from gymnasium.vector import AutoresetMode
from torchrl.envs import GymWrapper

from prfaas_env.env.vector import PrfaaSVectorEnv
from prfaas_env.integrations import require_autoreset


def wrap(env: PrfaaSVectorEnv, **kwargs: Any) -> GymWrapper:
    """``GymWrapper`` over ``env`` (built with ``autoreset_mode="DISABLED"``; anything else
    raises AutoresetModeError), with categorical (index) actions."""
    require_autoreset(env, AutoresetMode.DISABLED, "TorchRL (GymWrapper)")
    return GymWrapper(env, categorical_action_encoding=True, **kwargs)


def make_env(num_envs: int = 8, config: Any = "paper_prfaas", **env_kwargs: Any) -> GymWrapper:
    """A TorchRL env over ``num_envs`` copies of ``config`` (``env_kwargs``: more arguments of
    PrfaaSVectorEnv, e.g. ``rate_multiplier`` or ``dict_observation``)."""
    return wrap(PrfaaSVectorEnv(num_envs, config, autoreset_mode="DISABLED", **env_kwargs))
