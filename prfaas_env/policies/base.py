"""The interface every router policy implements, and the route table policies reason over.

A policy sees what a real router sees: the *view* of cluster state in physical units (the
simulator's, :class:`prfaas_env.observation.simulated.SimObserver`; a deployed router builds
the same view from live metrics, :class:`prfaas_env.observation.live.LiveState`) and the action
mask. It returns one action per env. The same policy objects run
inside the environment, in ``evaluate.py`` and behind the exported router.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from prfaas_env.errors import ConfigError
from prfaas_env.observation.routes import RouteTable, View
from prfaas_env.sim.topology import Topology

__all__ = ["Policy", "RouteTable", "View", "masked_argmin"]


class Policy:
    """A router: ``act(view, mask)`` returns one action index per env (the environment's
    action space: a route, or the reject action when the route table has one).

    ``topology`` is given to every policy; those that model costs need it. Subclasses set
    ``name`` and implement :meth:`scores` (lower is better; the allowed route
    with the lowest score wins, ties to the lowest index) or override :meth:`act`.
    """

    name = "policy"

    def __init__(self, routes: RouteTable, topology: Topology | None = None, **params: Any) -> None:
        if params:
            raise ConfigError(
                f"{self.name}: unknown parameter(s) {', '.join(sorted(params))}; see "
                f"{type(self).__name__}'s docstring for its parameters"
            )
        self.routes = routes
        self.topology = topology

    def require_topology(self) -> Topology:
        """The topology, for policies that model costs (ConfigError when none was given)."""
        if self.topology is None:
            raise ConfigError(f"{self.name}: needs the topology (to model the clusters' costs)")
        return self.topology

    def attach(self, sim: Any) -> None:
        """Called with the simulator whose decisions the policy will make. Routers ignore
        it (they see only views); policies that plan by simulation (the rollout oracle) use
        it. The default does nothing."""

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        """Start a new run of ``num_envs`` envs (stateful policies clear their state)."""
        self.rng = np.random.default_rng(seed)
        self.num_envs = num_envs

    def scores(self, view: View) -> NDArray[np.float64]:
        """``[env, route]`` cost of each route (lower is better)."""
        raise NotImplementedError

    def act(self, view: View, mask: NDArray[np.bool_]) -> NDArray[np.int64]:
        """One allowed action per env (``mask``: ``[env, action]``, True = allowed)."""
        s = self.scores(view)
        return masked_argmin(s, mask[:, : self.routes.num_routes])


def masked_argmin(scores: NDArray[np.float64], allowed: NDArray[np.bool_]) -> NDArray[np.int64]:
    """Per row, the allowed column with the lowest score (first on ties); a row with nothing
    allowed gets column 0 (the environment never produces one: reject or RDMA routes stay
    open)."""
    s = np.where(allowed, scores, np.inf)
    return np.argmin(s, axis=1).astype(np.int64)
