"""The per-route scoring network: one set of weights for any topology (torch).

:class:`RouteScorer` scores each candidate route from its row of the per-route form
(:mod:`prfaas_env.observation.per_route`) and the decision's global features with one shared
MLP, so it applies to any number of routes; a value head pools the route embeddings (mean and
max) with the global features. The generalist's imitation training (``agents/generalist.py``)
and the RLlib module (:mod:`prfaas_env.integrations.rllib`) both train it; a bundle exports it
to ONNX. Loaded only by whoever trains or exports (a deployed router runs the ONNX graph).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from prfaas_env.observation.per_route import ROUTE_FEATURES

RESIDUAL_FEATURE = "estimated_ttft"  # what a residual scorer adjusts: Mooncake's rule


def residual_anchor() -> int:
    """The index of :data:`RESIDUAL_FEATURE` among the per-route features."""
    return [n for n, _ in ROUTE_FEATURES].index(RESIDUAL_FEATURE)


def anchor_in(state: dict[str, torch.Tensor]) -> int | None:
    """The anchor of the scorer whose ``state_dict`` is ``state`` (None: not residual)."""
    return residual_anchor() if "anchor_weight" in state else None


def best_allowed(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per decision the index of the highest-scoring allowed route (``[batch, routes]``)."""
    return torch.argmax(torch.where(mask, scores, torch.full_like(scores, float("-inf"))), dim=1)


class _Scoring(nn.Module):
    """What a deployable scorer's graph computes: ``(routes, global, mask) -> (action,
    scores)``, from the subclass's :meth:`scores`."""

    def scores(self, routes: torch.Tensor, glob: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, routes: torch.Tensor, glob: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.scores(routes, glob)
        return best_allowed(s, mask), s


class RouteScorer(_Scoring):
    """Scores every route from its row and the global features with one shared MLP.

    Inputs ``routes`` ``[batch, routes, F]``, ``global`` ``[batch, G]``, ``mask`` ``[batch,
    routes]`` (bool); :meth:`forward` returns ``(action, scores)`` (scores before masking;
    the action is the best allowed one), :meth:`value` a value per decision (mean and max
    of the route embeddings with the global features) for RL fine-tuning. Inputs are
    standardised inside with fixed statistics (``set_statistics``). With ``anchor`` (a route
    feature's index) it is residual: a learned weight times minus that raw feature, plus the
    network's output, which starts at zero.
    """

    def __init__(
        self, route_dim: int, global_dim: int, hidden: int = 64, anchor: int | None = None
    ) -> None:
        super().__init__()
        self.embed = nn.Sequential(
            nn.Linear(route_dim + global_dim, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
        )
        self.head = nn.Linear(hidden, 1)
        # residual form: the score is a heuristic's (minus ``anchor_weight`` x the route's raw
        # feature ``anchor``, e.g. its estimated TTFT: Mooncake's rule) plus what the network
        # adds, which starts at zero, so the untrained network routes as the heuristic does
        if anchor is not None and not 0 <= anchor < route_dim:
            raise ValueError(f"anchor: a route feature index in [0, {route_dim}), got {anchor}")
        self.anchor = anchor
        if anchor is not None:
            self.anchor_weight = nn.Parameter(torch.tensor(4.0))
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.critic = nn.Sequential(
            nn.Linear(2 * hidden + global_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1)
        )
        self.register_buffer("r_mean", torch.zeros(route_dim))
        self.register_buffer("r_std", torch.ones(route_dim))
        self.register_buffer("g_mean", torch.zeros(global_dim))
        self.register_buffer("g_std", torch.ones(global_dim))

    def set_statistics(self, routes: NDArray[np.float32], glob: NDArray[np.float32]) -> None:
        """Standardise inputs with the mean and spread of training rows (``[rows, F]``)."""
        for mean, std, x in ((self.r_mean, self.r_std, routes), (self.g_mean, self.g_std, glob)):
            mean.copy_(torch.as_tensor(x.mean(0), dtype=torch.float32))
            std.copy_(torch.as_tensor(np.maximum(x.std(0), 1e-3), dtype=torch.float32))

    def _hidden(
        self, routes: torch.Tensor, glob: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r = (routes - self.r_mean) / self.r_std
        g = (glob - self.g_mean) / self.g_std
        x = torch.cat([r, g.unsqueeze(1).expand(-1, r.shape[1], -1)], dim=2)
        return self.embed(x), g

    def scores(self, routes: torch.Tensor, glob: torch.Tensor) -> torch.Tensor:
        h, _ = self._hidden(routes, glob)
        s = self.head(h).squeeze(2)
        if self.anchor is not None:
            s = s - self.anchor_weight * routes[:, :, self.anchor]
        return s

    def value(self, routes: torch.Tensor, glob: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h, g = self._hidden(routes, glob)
        m = mask.unsqueeze(2).float()
        mean = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        top = torch.where(mask.unsqueeze(2), h, torch.full_like(h, -1e9)).max(1).values
        return self.critic(torch.cat([mean, top, g], dim=1)).squeeze(1)


class ScorerEnsemble(_Scoring):
    """Several :class:`RouteScorer` members acting as one: a route's score (and a decision's
    value) is the mean of the members'. Members fitted to the same labels from different
    initialisations and minibatch orders disagree where the labels say little, and the mean
    damps each member's idiosyncratic departures; its inputs and outputs are a scorer's, so
    it scores, exports and serves as one."""

    def __init__(self, members: list[RouteScorer]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def set_statistics(self, routes: NDArray[np.float32], glob: NDArray[np.float32]) -> None:
        """The same input statistics for every member (see :meth:`RouteScorer.set_statistics`)."""
        for m in self.members:
            m.set_statistics(routes, glob)

    def scores(self, routes: torch.Tensor, glob: torch.Tensor) -> torch.Tensor:
        # a plain sum (not stack + mean): the ONNX exporter keeps it at the bundle's opset
        total = self.members[0].scores(routes, glob)
        for m in self.members[1:]:
            total = total + m.scores(routes, glob)
        return total / len(self.members)

    def value(self, routes: torch.Tensor, glob: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return sum(m.value(routes, glob, mask) for m in self.members) / len(self.members)


def score_fn(net: RouteScorer | ScorerEnsemble) -> Callable[..., NDArray[np.float64]]:
    """NumPy scoring function of ``net`` (what :class:`RoutePolicy` calls)."""

    def scores(
        routes: NDArray[np.float32], glob: NDArray[np.float32], mask: NDArray[np.bool_]
    ) -> NDArray[np.float64]:
        with torch.no_grad():
            return (
                net.scores(torch.from_numpy(routes), torch.from_numpy(glob))
                .numpy()
                .astype(np.float64)
            )

    return scores
