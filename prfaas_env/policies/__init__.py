"""Router policies: heuristic baselines behind one interface (see :mod:`.base`)."""

from __future__ import annotations

from typing import Any

from prfaas_env.errors import UnknownNameError
from prfaas_env.policies.base import Policy, RouteTable, View, masked_argmin
from prfaas_env.policies.heuristics import HEURISTICS
from prfaas_env.sim.topology import Topology


def policy_names() -> list[str]:
    """Names of the built-in policies."""
    return sorted(HEURISTICS)


def make_policy(
    name: str, routes: RouteTable, topology: Topology | None = None, **params: Any
) -> Policy:
    """The built-in policy called ``name`` with ``params`` (UnknownNameError lists names).

    ``topology`` is required by the policies that model costs (``mooncake``,
    ``prfaas_optimised``).
    """
    if name not in HEURISTICS:
        raise UnknownNameError("policy", name, HEURISTICS)
    return HEURISTICS[name](routes, topology=topology, **params)


__all__ = ["Policy", "RouteTable", "View", "make_policy", "masked_argmin", "policy_names"]
