"""What each action means, as indices into a view's entity axes (the route table).

Routers, the environment and policies share it: an action is a route (a prefill cluster, a
decode cluster and the channel the KV crosses, if any) in the topology's action order, then
``reject`` when admission control is on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from prfaas_env.observation.derive import allowed
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
