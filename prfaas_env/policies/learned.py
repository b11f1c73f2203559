"""A learned router as a :class:`~prfaas_env.policies.Policy`: the best allowed action of a
scoring function of the observation (greedy; masked actions are never chosen)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from prfaas_env.observation.encoder import ObservationEncoder
from prfaas_env.observation.per_route import RouteForm, route_features
from prfaas_env.policies.base import Policy, RouteTable, View
from prfaas_env.sim.topology import Topology

Scores = Callable[[NDArray[np.float32], NDArray[np.bool_]], NDArray[np.float64]]


class ScoredPolicy(Policy):
    """Routes by ``scores(observation, mask)`` (higher is better) of the encoder's output.

    The mask a policy receives may lack the always-allowed reject column (evaluation runs
    mask routes only); it is padded with True to the route table's width.
    """

    name = "learned"

    def __init__(
        self, routes: RouteTable, topology: Topology, scores: Scores, label: str = "learned"
    ) -> None:
        super().__init__(routes, topology)
        self.encoder = ObservationEncoder(topology)
        self.score_fn = scores
        self.name = label

    def full_mask(self, mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
        """``mask`` padded with allowed columns up to the number of actions."""
        missing = self.routes.num_actions - mask.shape[1]
        if missing > 0:
            mask = np.pad(mask, ((0, 0), (0, missing)), constant_values=True)
        return mask

    def act(self, view: View, mask: NDArray[np.bool_]) -> NDArray[np.int64]:
        full = self.full_mask(mask)
        s = self.score_fn(self.encoder.encode(view), full)
        s = np.where(full[:, : s.shape[1]], s, -np.inf)
        return np.argmax(s, axis=1).astype(np.int64)


RouteScores = Callable[
    [NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]], NDArray[np.float64]
]


class RoutePolicy(Policy):
    """Routes by ``scores(route_features, global_features, mask)`` (higher is better) of the
    per-route form (:mod:`prfaas_env.observation.per_route`): one scoring function serves
    any topology. ``ttft_slo_s`` scales the features' times (the scenario's TTFT SLO)."""

    name = "learned"

    def __init__(
        self,
        routes: RouteTable,
        topology: Topology,
        scores: RouteScores,
        ttft_slo_s: float,
        label: str = "learned",
    ) -> None:
        super().__init__(routes, topology)
        self.form = RouteForm.of(topology, ttft_slo_s)
        self.score_fn = scores
        self.name = label

    def features(
        self, view: View, mask: NDArray[np.bool_]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]]:
        """The per-route form of ``view`` and the route mask it is scored with."""
        allowed = np.ascontiguousarray(mask[:, : self.routes.num_routes])
        routes, glob = route_features(self.form, view, allowed)
        return routes, glob, allowed

    def act(self, view: View, mask: NDArray[np.bool_]) -> NDArray[np.int64]:
        routes, glob, allowed = self.features(view, mask)
        s = np.where(allowed, self.score_fn(routes, glob, allowed), -np.inf)
        return np.argmax(s, axis=1).astype(np.int64)
