"""The reference router: load a policy bundle, decide on live cluster state, fall back safely.

In process::

    from prfaas_env.router import Router
    router = Router("bundles/quickstart")
    decision = router.decide(state)   # state: plain JSON-like data, see prfaas_env.observation.live

As an HTTP sidecar: ``python -m prfaas_env.router serve --bundle DIR --port 8080`` (see
:mod:`prfaas_env.router.server`).
"""

from prfaas_env.observation.live import LiveStateError
from prfaas_env.router.bundle import Bundle, BundleError, load_bundle
from prfaas_env.router.core import Decision, Router

__all__ = ["Bundle", "BundleError", "Decision", "LiveStateError", "Router", "load_bundle"]
