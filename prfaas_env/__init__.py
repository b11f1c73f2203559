"""prfaas-env: learning where LLM requests should be prefilled (Prefill-as-a-Service).

Importing the package registers the Gymnasium environment ``PrfaaS-v0``.
"""

import importlib.metadata as _metadata

import gymnasium as _gym

try:
    __version__ = _metadata.version("prfaas-env")
except _metadata.PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

if "PrfaaS-v0" not in _gym.registry:
    _gym.register(
        id="PrfaaS-v0",
        entry_point="prfaas_env.env.single:PrfaaSEnv",
        vector_entry_point="prfaas_env.env.vector:PrfaaSVectorEnv",
    )
