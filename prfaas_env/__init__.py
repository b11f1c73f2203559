"""prfaas-env: learning where LLM requests should be prefilled (Prefill-as-a-Service).

Importing the package registers the Gymnasium environment ``PrfaaS-v0``.
"""

import importlib.metadata as _metadata

import gymnasium as _gym

try:
    __version__ = _metadata.version("prfaas-env")
except _metadata.PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"


def package_versions(*distributions: str) -> dict[str, str]:
    """Python's version, this package's, and each installed distribution's (``"not
    installed"`` otherwise), for the records runs and bundles keep of what made them."""
    import platform

    out = {"python": platform.python_version(), "prfaas-env": __version__}
    for name in distributions:
        try:
            out[name] = _metadata.version(name)
        except _metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


if "PrfaaS-v0" not in _gym.registry:
    _gym.register(
        id="PrfaaS-v0",
        entry_point="prfaas_env.env.single:PrfaaSEnv",
        vector_entry_point="prfaas_env.env.vector:PrfaaSVectorEnv",
    )
