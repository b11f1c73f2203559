"""Gymnasium environments over the simulator: ``PrfaaSEnv`` and ``PrfaaSVectorEnv``.

Registered as ``PrfaaS-v0`` when :mod:`prfaas_env` is imported::

    env = gymnasium.make("PrfaaS-v0", config="paper_prfaas")
    envs = gymnasium.make_vec("PrfaaS-v0", num_envs=64, vectorization_mode="vector_entry_point")

The classes load on first use, so ``prfaas_env.env.config`` (scenario and ``env:`` parsing)
can be read without importing Gymnasium.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PrfaaSEnv", "PrfaaSVectorEnv"]


def __getattr__(name: str) -> Any:
    if name == "PrfaaSEnv":
        from prfaas_env.env.single import PrfaaSEnv

        return PrfaaSEnv
    if name == "PrfaaSVectorEnv":
        from prfaas_env.env.vector import PrfaaSVectorEnv

        return PrfaaSVectorEnv
    raise AttributeError(f"module 'prfaas_env.env' has no attribute {name!r}")
