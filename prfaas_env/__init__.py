"""prfaas-env: learning where LLM requests should be prefilled (Prefill-as-a-Service).

Importing the package registers the Gymnasium environment ``PrfaaS-v0``.
"""

import gymnasium as _gym

if "PrfaaS-v0" not in _gym.registry:
    _gym.register(
        id="PrfaaS-v0",
        entry_point="prfaas_env.env.single:PrfaaSEnv",
        vector_entry_point="prfaas_env.env.vector:PrfaaSVectorEnv",
    )
