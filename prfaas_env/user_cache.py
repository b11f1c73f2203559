"""The one folder on the user's machine where prfaas-env keeps what it computes once.

``$PRFAAS_ENV_CACHE`` when set, else ``$XDG_CACHE_HOME/prfaas-env``, else
``~/.cache/prfaas-env``. Inside it: ``numba-<digest>/`` (compiled simulator code, see
:mod:`prfaas_env.sim.jit`) and ``backend_tables/`` (cost tables tabulated from a kernel
database, see :mod:`prfaas_env.costmodel.aic`). Everything in it can be deleted; it is
rebuilt on demand.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "PRFAAS_ENV_CACHE"


def cache_root() -> Path:
    """The cache folder (not created here)."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prfaas-env"
