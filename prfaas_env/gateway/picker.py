"""The endpoint picker's decision: a request in, endpoints (or an HTTP status) out.

For one request the picker

1. builds the live state from its datastore (scraped metrics, its own bookkeeping, the
   prefix LRUs; :mod:`.datastore`) and the prompt's estimated tokens and block hashes;
2. asks the router (a bundle's :class:`~prfaas_env.router.Router` or a
   :class:`~prfaas_env.router.heuristic.HeuristicRouter`) for a route, i.e. a
   (prefill cluster, decode cluster) pair;
3. checks the route has eligible endpoints (inside the proxy's subset hint, not known down);
   when it has none it takes the router's next-best route that has, and says so;
4. picks the decode instance with the fewest sequences (running + waiting + sent there and
   not yet visible) as the destination, the next ones as fallbacks, and the prefill
   instance of the route's prefill cluster that can start soonest; the prefill header names
   it unless it is the destination itself (a co-located instance);
5. records the request (prefix blocks, the prefill instance's queue, link transfers).

A route label ``reject`` (a policy trained with admission control) sheds the request
(429); no eligible endpoint anywhere gives 503.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

from prfaas_env.gateway.datastore import Datastore, EndpointState
from prfaas_env.gateway.inventory import Inventory, parse_endpoint_address
from prfaas_env.gateway.prompt import PromptInfo
from prfaas_env.sim.costs import MAX_PROMPT_TOKENS
from prfaas_env.sim.topology import REJECT_LABEL

__all__ = ["Pick", "Picker", "RouterLike"]


class RouterLike(Protocol):
    labels: list[str]

    def decide(self, state: Any) -> Any: ...


@dataclass(frozen=True)
class Pick:
    """A decision: ``status`` 200 with the endpoints, or the HTTP status to answer and why.

    Attributes:
        destination: chosen decode endpoint ``ip:port``.
        fallbacks: next decode endpoints of the same cluster, best first.
        prefill: prefill endpoint for the ``x-prefiller-host-port`` header (None when the
            destination prefills for itself).
        route: route label (``prfaas->pd``); ``reject`` or ``none`` when shed or unroutable.
        source: ``model``, ``fallback`` or ``heuristic`` (the router's), or ``picker``.
        reason: why the router fell back or the picker changed its choice (None: neither).
        seconds: time spent deciding, wall seconds.
    """

    status: int
    destination: str | None = None
    fallbacks: tuple[str, ...] = ()
    prefill: str | None = None
    route: str = "none"
    source: str = "picker"
    reason: str | None = None
    message: str | None = None
    seconds: float = 0.0


class Picker:
    """Decides requests for one inventory with one router (see the module docstring)."""

    def __init__(self, inventory: Inventory, router: RouterLike, datastore: Datastore) -> None:
        self.inv = inventory
        self.router = router
        self.store = datastore
        self.topo = inventory.topology
        labels = list(router.labels)
        want = self.topo.action_labels(False)
        if labels[: len(want)] != want:
            raise ValueError(f"router actions {labels} do not match the inventory's routes {want}")
        self.labels = labels
        self.route_pools = [
            (self.topo.clusters[r.prefill].name, self.topo.clusters[r.decode].name)
            for r in self.topo.routes
        ]
        self._rr = 0

    # ---- eligibility ----------------------------------------------------------------------
    def _eligible(
        self, cluster: str, role: str, subset: set[str] | None, now: float
    ) -> list[EndpointState]:
        pool = self.store.usable(cluster, role, now)
        pool = [st for st in pool if not self._down(st, now)]
        if subset is not None and role == "decode":
            pool = [st for st in pool if st.endpoint.address in subset]
        return pool

    def _down(self, st: EndpointState, now: float) -> bool:
        """Known down: stale, and the last three scrapes could not even connect (a server
        whose metrics are slow or garbled is busy or broken, not gone: it stays eligible)."""
        return (
            not st.fresh(now, self.inv.picker.stale_after_s)
            and st.failures >= 3
            and (st.last_error or "").startswith("connect")
        )

    @staticmethod
    def parse_subset(raw: list[str] | None) -> set[str] | None:
        if raw is None:
            return None
        out = set()
        for a in raw:
            try:
                out.add(parse_endpoint_address(a, "subset"))
            except ValueError:
                continue  # an entry that is no address cannot be picked
        return out

    # ---- decisions ------------------------------------------------------------------------
    def pick(self, prompt: PromptInfo, subset_raw: list[str] | None = None) -> Pick:
        """Decide one request (see the module docstring)."""
        t0 = time.perf_counter()
        if self.inv.models is not None and prompt.model not in self.inv.models:
            return Pick(
                404,
                message=f"model {prompt.model!r} is not served here; served: "
                + ", ".join(self.inv.models),
                seconds=time.perf_counter() - t0,
            )
        now = self.store.clock()
        subset = self.parse_subset(subset_raw)
        tokens = prompt.input_tokens
        notes = []
        if tokens > MAX_PROMPT_TOKENS:
            notes.append(f"prompt of {tokens} tokens routed as {MAX_PROMPT_TOKENS}")
        state = self.store.live_state(tokens, prompt.hashes, now)
        d = self.router.decide(state)
        label, action = d.label, d.action
        if label == REJECT_LABEL:
            return Pick(
                429,
                route=label,
                source=d.source,
                reason=d.reason,
                message="the cluster is overloaded: the routing policy shed this request",
                seconds=time.perf_counter() - t0,
            )
        order = self._route_order(d, state)
        chosen = None
        for r in order:
            pc, dc = self.route_pools[r]
            pre = self._eligible(pc, "prefill", None, now)
            dec = self._eligible(dc, "decode", subset, now)
            if pre and dec:
                chosen = (r, pre, dec)
                break
        if chosen is None:
            where = " in the subset hint" if subset is not None else ""
            return Pick(
                503,
                route="none",
                source=d.source,
                reason=d.reason,
                message=f"no ready model server{where} can serve this request",
                seconds=time.perf_counter() - t0,
            )
        r, pre, dec = chosen
        if action < 0 or r != action:
            first = self.labels[action] if action >= 0 else "none"
            notes.append(f"route {first} has no eligible endpoint; took {self.labels[r]}")
        pc, dc = self.route_pools[r]
        allowed = {id(st) for st in pre}
        p_state, _ = min(
            (
                (
                    st,
                    self.store._instance_load(
                        st, now, st.fresh(now, self.inv.picker.stale_after_s)
                    )[0],
                )
                for st in self.store.pools[(pc, "prefill")]
                if id(st) in allowed
            ),
            key=lambda x: x[1],
        )
        ok = {id(st) for st in dec}
        ranked = [st for st in self.store.decode_ranking(dc, now) if id(st) in ok]
        d_state = ranked[0]
        fallbacks = tuple(st.endpoint.address for st in ranked[1 : 1 + self.inv.picker.fallbacks])
        self.store.record(r, p_state, d_state, tokens, prompt.hashes, state, now)
        prefill = p_state.endpoint.address
        reason = "; ".join([x for x in [d.reason, *notes] if x]) or None
        return Pick(
            200,
            destination=d_state.endpoint.address,
            fallbacks=fallbacks,
            prefill=None if prefill == d_state.endpoint.address else prefill,
            route=self.labels[r],
            source=d.source if not notes else "picker",
            reason=reason,
            seconds=time.perf_counter() - t0,
        )

    def _route_order(self, d: Any, state: dict[str, Any]) -> list[int]:
        """Routes to try: the router's choice first, then by its scores (the model's, higher
        is better; a heuristic's costs, lower is better), then in action order."""
        n = len(self.topo.routes)
        first = [d.action] if 0 <= d.action < n else []
        rest = [i for i in range(n) if i not in first and not self._link_down(i, state)]
        scores = getattr(d, "scores", None)
        if scores is not None:
            rest.sort(key=lambda i: -float(scores[i]) if math.isfinite(scores[i]) else math.inf)
        elif hasattr(self.router, "route_scores") and len(rest) > 1:
            costs = self.router.route_scores(state)
            if costs is not None:
                rest.sort(key=lambda i: costs[i])
        return first + rest

    def _link_down(self, route: int, state: dict[str, Any]) -> bool:
        """Whether the route crosses a link the state reports down (the router's mask)."""
        ch = self.topo.routes[route].channel
        if ch < 0:
            return False
        name = f"{self.topo.channels[ch][1]}->{self.topo.channels[ch][2]}"
        return state["channels"].get(name, {}).get("bandwidth_gbps") == 0

    def pick_without_body(self, subset_raw: list[str] | None = None) -> Pick:
        """A request with no body (``GET /v1/models`` and the like): any ready decode
        endpoint, in turn."""
        t0 = time.perf_counter()
        now = self.store.clock()
        subset = self.parse_subset(subset_raw)
        pool = [
            st
            for c in self.store.decode_clusters
            for st in self._eligible(c, "decode", subset, now)
        ]
        if not pool:
            return Pick(503, message="no ready model server", seconds=time.perf_counter() - t0)
        self._rr += 1
        st = pool[self._rr % len(pool)]
        return Pick(
            200,
            destination=st.endpoint.address,
            route="none",
            source="picker",
            reason="no body",
            seconds=time.perf_counter() - t0,
        )
