"""Gymnasium environments over the simulator: ``PrfaaSEnv`` and ``PrfaaSVectorEnv``.

Registered as ``PrfaaS-v0`` when :mod:`prfaas_env` is imported::

    env = gymnasium.make("PrfaaS-v0", config="paper_prfaas")
    envs = gymnasium.make_vec("PrfaaS-v0", num_envs=64, vectorization_mode="vector_entry_point")
"""

from prfaas_env.env.single import PrfaaSEnv
from prfaas_env.env.vector import PrfaaSVectorEnv

__all__ = ["PrfaaSEnv", "PrfaaSVectorEnv"]
