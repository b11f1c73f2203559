"""Router policies: heuristic baselines behind one interface (see :mod:`.base`)."""

from __future__ import annotations

from typing import Any

from prfaas_env.errors import UnknownNameError
from prfaas_env.policies.base import Policy, RouteTable, View, masked_argmin
from prfaas_env.policies.heuristics import HEURISTICS
from prfaas_env.sim.topology import Topology

# Policies that plan with the simulator and see the future: bounds and teachers, never
# compared against as heuristics nor used as fallbacks (loaded on demand: they need the
# simulator's engine, which a deployed router never loads).
PLANNERS = ("rollout_oracle",)


def policy_names() -> list[str]:
    """Names of the built-in heuristics (the routers a deployment can run)."""
    return sorted(HEURISTICS)


def make_policy(
    name: str, routes: RouteTable, topology: Topology | None = None, **params: Any
) -> Policy:
    """The built-in policy called ``name`` (a heuristic, or a planner of :data:`PLANNERS`)
    with ``params`` (UnknownNameError lists names).

    ``topology`` is required by the policies that model costs (``mooncake``,
    ``prfaas_optimised``, ``rollout_oracle``).
    """
    if name == "rollout_oracle":
        from prfaas_env.policies.oracle import RolloutOracle

        return RolloutOracle(routes, topology=topology, **params)
    if name not in HEURISTICS:
        raise UnknownNameError("policy", name, [*HEURISTICS, *PLANNERS])
    return HEURISTICS[name](routes, topology=topology, **params)


__all__ = [
    "PLANNERS",
    "Policy",
    "RouteTable",
    "View",
    "make_policy",
    "masked_argmin",
    "policy_names",
]
