"""prfaas-env: learning where LLM requests should be prefilled (Prefill-as-a-Service).

Importing the package registers the Gymnasium environments ``PrfaaS-v0`` and
``PrfaaSSuite-v0`` without importing Gymnasium itself: if Gymnasium is already imported it
registers at once, otherwise right after Gymnasium's own import. So a process that only
routes requests (``prfaas_env.router``) never loads Gymnasium or the simulator's event loop.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.metadata as _metadata
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType

try:
    __version__ = _metadata.version("prfaas-env")
except _metadata.PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

ENV_ID = "PrfaaS-v0"
SUITE_ENV_ID = "PrfaaSSuite-v0"  # an episode per scenario drawn from a suite (env/suite_env.py)


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


def register_envs() -> None:
    """Register ``PrfaaS-v0`` and ``PrfaaSSuite-v0`` with Gymnasium (once; importing the
    package does it)."""
    import gymnasium

    if ENV_ID not in gymnasium.registry:
        gymnasium.register(
            id=ENV_ID,
            entry_point="prfaas_env.env.single:PrfaaSEnv",
            vector_entry_point="prfaas_env.env.vector:PrfaaSVectorEnv",
        )
    if SUITE_ENV_ID not in gymnasium.registry:
        gymnasium.register(id=SUITE_ENV_ID, entry_point="prfaas_env.env.suite_env:PrfaaSSuiteEnv")


class _RegisterAfterGymnasium(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``gymnasium`` is first imported, it lets the normal finders
    locate it and runs :func:`register_envs` once the module has executed."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "gymnasium":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)  # the finders after this one
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            register_envs()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if "gymnasium" in sys.modules:
    register_envs()
elif not any(isinstance(f, _RegisterAfterGymnasium) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterGymnasium())
