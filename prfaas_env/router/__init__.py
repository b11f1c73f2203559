"""The reference router: load a policy bundle, decide on live cluster state, fall back safely.

In process::

    from prfaas_env.router import open_router
    router = open_router("bundles/quickstart")          # a bundle exported from a run
    router = open_router("pretrained:generalist", topology=..., ttft_slo_s=10.0,
                         expected_output_tokens=1024)   # a per-route bundle, any topology
    decision = router.decide(state)   # state: plain JSON-like data, see prfaas_env.observation.live

As an HTTP sidecar: ``python -m prfaas_env.router serve --bundle DIR --port 8080`` (see
:mod:`prfaas_env.router.server`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prfaas_env.observation.live import LiveStateError
from prfaas_env.router.bundle import Bundle, BundleError, load_bundle
from prfaas_env.router.core import Decision, Router
from prfaas_env.router.pretrained import pretrained_names, resolve_bundle


def open_router(spec: str | Path, threads: int = 1, **deployment: Any) -> Any:
    """A router for the bundle at ``spec`` (a folder or ``pretrained:NAME``): a
    :class:`Router` for a bundle exported from one scenario's run, a
    :class:`~prfaas_env.router.routes.RouteRouter` for a per-route bundle, which needs the
    deployment's ``topology``, ``ttft_slo_s`` and ``expected_output_tokens`` keywords."""
    from prfaas_env.router.routes import RouteRouter, is_route_bundle

    path = resolve_bundle(spec)
    if is_route_bundle(path):
        missing = [
            k for k in ("topology", "ttft_slo_s", "expected_output_tokens") if k not in deployment
        ]
        if missing:
            raise BundleError(
                f"{spec}: a per-route bundle serves any topology; give the deployment's "
                f"{', '.join(missing)}"
            )
        return RouteRouter(path, threads=threads, **deployment)
    if deployment:
        raise BundleError(f"{spec}: this bundle fixes its topology; drop {', '.join(deployment)}")
    return Router(path, threads)


__all__ = [
    "Bundle",
    "BundleError",
    "Decision",
    "LiveStateError",
    "Router",
    "load_bundle",
    "open_router",
    "pretrained_names",
    "resolve_bundle",
]
