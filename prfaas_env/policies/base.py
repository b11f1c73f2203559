"""The interface every router policy implements, and the route table policies reason over.

A policy sees what a real router sees: the *view* of cluster state in physical units (see
:func:`prfaas_env.env.features.view_from_sim`; a deployed router builds the same view from
live metrics) and the action mask. It returns one action per env. The same policy objects run
inside the environment, in ``evaluate.py`` and behind the exported router.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from prfaas_env.errors import ConfigError
from prfaas_env.sim.observe import allowed
from prfaas_env.sim.topology import Topology

View = dict[str, NDArray[Any]]


@dataclass(frozen=True)
class RouteTable:
    """What each action means, as indices into a view's entity axes.

    Attributes:
        prefill: per route, index of its prefill cluster among the view's prefill entities.
        decode: per route, index of its decode cluster among the view's decode entities.
        channel: per route, index among the view's channel entities, -1 for RDMA.
        offload: per route, prefill and decode are in different datacenters.
        reject: index of the reject action, or -1 when admission control is off.
    """

    labels: tuple[str, ...]
    prefill: NDArray[np.int64]
    decode: NDArray[np.int64]
    channel: NDArray[np.int64]
    offload: NDArray[np.bool_]
    reject: int

    @property
    def num_routes(self) -> int:
        return len(self.prefill)

    @property
    def num_actions(self) -> int:
        return self.num_routes + (1 if self.reject >= 0 else 0)

    @classmethod
    def from_topology(cls, topo: Topology, admission_control: bool = False) -> RouteTable:
        """The route table of ``topo`` in the environment's action order."""
        pre = [topo.prefill_index.index(r.prefill) for r in topo.routes]
        dec = [topo.decode_index.index(r.decode) for r in topo.routes]
        ch = topo.route_channel_positions()
        off = [
            topo.clusters[r.prefill].datacenter != topo.clusters[r.decode].datacenter
            for r in topo.routes
        ]
        return cls(
            labels=tuple(topo.action_labels(admission_control)),
            prefill=np.array(pre, np.int64),
            decode=np.array(dec, np.int64),
            channel=np.array(ch, np.int64),
            offload=np.array(off, np.bool_),
            reject=len(topo.routes) if admission_control else -1,
        )

    def allowed(self, view: View) -> NDArray[np.bool_]:
        """``[env, action]`` the environment's rule on a view: a route over a link whose
        measured bandwidth is 0 cannot be used; reject (when present) always can."""
        bw = np.asarray(view["bandwidth"], np.float64)
        ok = np.empty((bw.shape[0], self.num_actions), np.bool_)
        allowed(bw, self.channel, ok)
        return ok

    def per_route(self, view: View, key: str) -> NDArray[np.float64]:
        """``[env, route]`` values of a per-prefill-cluster, per-decode-cluster or per-channel
        view entry (channel entries are 0 on RDMA routes)."""
        a = np.asarray(view[key], dtype=np.float64)
        if key in _PREFILL_KEYS:
            return a[:, self.prefill]
        if key in _DECODE_KEYS:
            return a[:, self.decode]
        out = np.zeros((a.shape[0], self.num_routes))
        remote = self.channel >= 0
        out[:, remote] = a[:, self.channel[remote]]
        return out


_PREFILL_KEYS = {
    "cached_tokens",
    "uncached_tokens",
    "prefill_s",
    "queued_requests",
    "queued_tokens",
    "wait_s",
    "busy_fraction",
}
_DECODE_KEYS = {"free_slots", "kv_used", "admission_queue", "admission_wait_s"}


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
