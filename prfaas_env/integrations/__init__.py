"""Adapters for other RL libraries (``sb3``, ``rllib``, ``torchrl``), and the check every
adapter makes at construction.

Libraries handle finished episodes of a vector environment in different ways, and each
needs the matching Gymnasium autoreset mode of :class:`~prfaas_env.env.vector.PrfaaSVectorEnv`:

| library | mode | why |
|---|---|---|
| stable-baselines3 | ``SAME_STEP`` | a finished env is reset inside the step that finished it |
| RLlib (new API stack) | ``NEXT_STEP`` | the step after a finished one is the reset |
| TorchRL | ``DISABLED`` | the collector resets finished envs itself |
"""

from __future__ import annotations

from typing import Any

from gymnasium.vector import AutoresetMode


class AutoresetModeError(ValueError):
    """A vector environment was handed to a library in an autoreset mode it cannot use."""


def require_autoreset(env: Any, mode: AutoresetMode, library: str) -> None:
    """AutoresetModeError naming ``mode`` unless ``env`` (a vector env) autoresets that way."""
    got = getattr(env, "autoreset_mode", None) or env.metadata.get("autoreset_mode")
    if got != mode:
        name = getattr(got, "name", got)
        raise AutoresetModeError(
            f"{library} needs a vector env with autoreset_mode={mode.name}, got {name}; "
            f'build it with PrfaaSVectorEnv(..., autoreset_mode="{mode.name}")'
        )
