"""Heuristic routers: the rules real systems use (sources in docs and DOMAIN brief).

Each reads only the view (what a router can observe) and the action mask. Where a rule picks
a prefill cluster but the topology offers several decode clusters for it, the decode cluster
with the most free slots is taken (the decode side's own load balancing).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from prfaas_env.errors import ConfigError
from prfaas_env.policies.analytic import PaperSystem, optimise
from prfaas_env.policies.base import Policy, RouteTable, View, masked_argmin

_EPS = 1e-9  # tie-break weight: prefer decode clusters with more free slots


def _decode_tiebreak(routes: RouteTable, view: View) -> NDArray[np.float64]:
    return -_EPS * routes.per_route(view, "free_slots")


class RandomPolicy(Policy):
    """Uniform over the allowed routes."""

    name = "random"

    def act(self, view: View, mask: NDArray[np.bool_]) -> NDArray[np.int64]:
        allowed = mask[:, : self.routes.num_routes]
        u = self.rng.random(allowed.shape)
        return masked_argmin(-u, allowed)


class RoundRobinPolicy(Policy):
    """Cycles through the routes per env, skipping masked ones."""

    name = "round_robin"

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        super().reset(num_envs, seed)
        self.next = np.zeros(num_envs, np.int64)

    def act(self, view: View, mask: NDArray[np.bool_]) -> NDArray[np.int64]:
        n = self.routes.num_routes
        order = (self.next[:, None] + np.arange(n)[None, :]) % n
        allowed = np.take_along_axis(mask[:, :n], order, axis=1)
        pick = np.take_along_axis(order, np.argmax(allowed, axis=1)[:, None], axis=1)[:, 0]
        self.next = (pick + 1) % n
        return pick.astype(np.int64)


class LeastLoadedPolicy(Policy):
    """The route whose prefill cluster can start soonest (then the fewest queued tokens)."""

    name = "least_loaded"

    def scores(self, view: View) -> NDArray[np.float64]:
        r = self.routes
        return (
            r.per_route(view, "wait_s")
            + 1e-12 * r.per_route(view, "queued_tokens")
            + _decode_tiebreak(r, view)
        )


class AlwaysLocalPolicy(Policy):
    """Homogeneous PD: prefill in the decode cluster's own datacenter."""

    name = "always_local"

    def scores(self, view: View) -> NDArray[np.float64]:
        r = self.routes
        return np.where(r.offload, 1.0, 0.0)[None, :] + _decode_tiebreak(r, view)


class AlwaysRemotePolicy(Policy):
    """Naive heterogeneous: every prefill on a prefill cluster in another datacenter."""

    name = "always_remote"

    def scores(self, view: View) -> NDArray[np.float64]:
        r = self.routes
        return np.where(r.offload, 0.0, 1.0)[None, :] + _decode_tiebreak(r, view)


class PrfaaSThresholdPolicy(Policy):
    """PrfaaS (arXiv 2604.15039): offload iff the incremental prefill length exceeds ``t``.

    Parameters:
        threshold_tokens: ``t``.
        cache_rule: ``scarce`` judges each cluster by its own cache (local iff
            ``L - cached_local <= t``); ``plentiful`` uses the best cache anywhere (local iff
            ``L - max(cached_local, cached_remote) <= t``, the cache being copied across);
            ``auto`` applies ``scarce`` while the measured bandwidth of the offload link is
            below ``scarce_below`` of nominal, ``plentiful`` otherwise.
    """

    name = "prfaas_threshold"
    RULES = ("scarce", "plentiful", "auto")

    def __init__(
        self,
        routes: RouteTable,
        threshold_tokens: float = 16384,
        cache_rule: str = "auto",
        scarce_below: float = 0.5,
        **params: Any,
    ) -> None:
        super().__init__(routes, **params)
        if cache_rule not in self.RULES:
            raise ConfigError(
                f"{self.name}.cache_rule: {cache_rule!r} is not allowed; allowed: "
                f"{', '.join(self.RULES)}"
            )
        self.threshold = float(threshold_tokens)
        self.cache_rule = cache_rule
        self.scarce_below = float(scarce_below)

    def scores(self, view: View) -> NDArray[np.float64]:
        r = self.routes
        length = np.asarray(view["input_tokens"], float)[:, None]
        cached = r.per_route(view, "cached_tokens")
        local = ~r.offload[None, :]
        own_local = np.where(local, cached, -np.inf).max(1, keepdims=True)
        best_any = cached.max(1, keepdims=True)
        if self.cache_rule == "scarce":
            scarce = np.ones_like(length, np.bool_)
        elif self.cache_rule == "plentiful":
            scarce = np.zeros_like(length, np.bool_)
        else:
            bw = r.per_route(view, "bandwidth")
            link_bw = np.where(r.offload[None, :], bw, np.inf).min(1, keepdims=True)
            scarce = link_bw < self.scarce_below
        incremental = length - np.where(scarce, own_local, best_any)
        go_local = incremental <= self.threshold
        prefer = np.where(go_local, ~r.offload[None, :], r.offload[None, :])
        return np.where(prefer, 0.0, 1.0) + _decode_tiebreak(r, view)


class LMetricPolicy(Policy):
    """LMetric: the minimum of ``uncached_tokens x (load + 1)``, load = queued requests."""

    name = "lmetric"

    def scores(self, view: View) -> NDArray[np.float64]:
        r = self.routes
        unc = r.per_route(view, "uncached_tokens")
        load = r.per_route(view, "queued_requests")
        return unc * (load + 1.0) + _decode_tiebreak(r, view)


class SGLangCacheAwarePolicy(Policy):
    """SGLang's cache-aware router: least loaded when load is imbalanced (max - min >
    ``balance_abs`` and max > ``balance_rel`` x min); otherwise the best prefix match if its
    match rate exceeds ``cache_threshold``, else the least loaded. Load = queued requests."""

    name = "sglang_cache_aware"

    def __init__(
        self,
        routes: RouteTable,
        balance_abs: float = 64,
        balance_rel: float = 1.5,
        cache_threshold: float = 0.3,
        **params: Any,
    ) -> None:
        super().__init__(routes, **params)
        self.balance_abs = float(balance_abs)
        self.balance_rel = float(balance_rel)
        self.cache_threshold = float(cache_threshold)

    def act(self, view: View, mask: NDArray[np.bool_]) -> NDArray[np.int64]:
        r = self.routes
        allowed = mask[:, : r.num_routes]
        load = r.per_route(view, "queued_requests")
        tie = _decode_tiebreak(r, view)
        least = masked_argmin(load + tie, allowed)
        lo = np.where(allowed, load, np.inf).min(1)
        hi = np.where(allowed, load, -np.inf).max(1)
        imbalanced = (hi - lo > self.balance_abs) & (hi > self.balance_rel * lo)
        rate = r.per_route(view, "cached_tokens") / np.asarray(view["input_tokens"], float)[
            :, None
        ].clip(1)
        best = masked_argmin(-rate + tie, allowed)
        best_rate = np.take_along_axis(rate, best[:, None], axis=1)[:, 0]
        use_cache = ~imbalanced & (best_rate > self.cache_threshold)
        return np.where(use_cache, best, least).astype(np.int64)


HEURISTICS: dict[str, type[Policy]] = {
    p.name: p
    for p in (
        RandomPolicy,
        RoundRobinPolicy,
        LeastLoadedPolicy,
        AlwaysLocalPolicy,
        AlwaysRemotePolicy,
        PrfaaSThresholdPolicy,
        LMetricPolicy,
        SGLangCacheAwarePolicy,
    )
}


class CostAware(Policy):
    """A policy that estimates prefill times with the clusters' cost models.

    ``prefill_estimate``: ``cost_model`` (default: the exact cost model, as a router
    computes its own estimate) or ``tables`` (the view's ``prefill_s``, from the simulator's
    interpolated cost tables, within 0.2 % of the exact model (worst 0.12 % on the default
    suite) and far cheaper: what the rollout oracle's simulated futures use).
    """

    def __init__(
        self, routes: RouteTable, prefill_estimate: str = "cost_model", **params: Any
    ) -> None:
        super().__init__(routes, **params)
        if prefill_estimate not in ("cost_model", "tables"):
            raise ConfigError(
                f"{self.name}: prefill_estimate: {prefill_estimate!r}; allowed: cost_model, tables"
            )
        self.prefill_estimate = prefill_estimate
        topo = self.require_topology()
        models = topo.cost_models()
        self._models = [models[i] for i in topo.prefill_index]

    def prefill_s(self, view: View) -> NDArray[np.float64]:
        """``[env, route]`` prefill seconds of the pending request on each route's cluster
        (see ``prefill_estimate``)."""
        r = self.routes
        if self.prefill_estimate == "tables":
            return r.per_route(view, "prefill_s")
        cached = np.asarray(view["cached_tokens"], float)
        unc = np.asarray(view["uncached_tokens"], float)
        per_cluster = np.stack(
            [
                m.prefill_time_continuous_s(unc[:, i], cached[:, i])
                for i, m in enumerate(self._models)
            ],
            axis=1,
        )
        return per_cluster[:, r.prefill]


class MooncakePolicy(CostAware):
    """Mooncake's conductor (FAST'25): the route with the lowest estimated TTFT = queue wait +
    prefill of the uncached tokens + KV transfer; with admission control, reject when even the
    best estimate exceeds ``reject_above_s`` (default: the TTFT SLO given as ``ttft_slo_s``)."""

    name = "mooncake"

    def __init__(
        self,
        routes: RouteTable,
        ttft_slo_s: float | None = None,
        reject_above_s: float | None = None,
        **params: Any,
    ) -> None:
        super().__init__(routes, **params)
        self.reject_above = reject_above_s if reject_above_s is not None else ttft_slo_s

    def scores(self, view: View) -> NDArray[np.float64]:
        r = self.routes
        transfer = r.per_route(view, "transfer_s")  # 0 on RDMA routes
        return r.per_route(view, "wait_s") + self.prefill_s(view) + transfer

    def act(self, view: View, mask: NDArray[np.bool_]) -> NDArray[np.int64]:
        s = self.scores(view)
        a = masked_argmin(s, mask[:, : self.routes.num_routes])
        if self.routes.reject >= 0 and self.reject_above is not None:
            best = np.take_along_axis(s, a[:, None], axis=1)[:, 0]
            a = np.where(best > self.reject_above, self.routes.reject, a)
        return a


class DynamoPolicy(Policy):
    """NVIDIA Dynamo: KV-router cost per route, ``prefill_load_scale x max(0, (queued prefill
    tokens + ISL) / block - overlap blocks) + decode blocks in use + active_weight x active
    requests``, restricted by conditional disaggregation: prefill locally when the uncached
    tokens are below ``max_local_prefill_tokens`` and below ``max_local_fraction`` of the
    prompt, remotely otherwise."""

    name = "dynamo"

    def __init__(
        self,
        routes: RouteTable,
        prefill_load_scale: float = 1.0,
        active_weight: float = 1.0,
        max_local_prefill_tokens: float = 2048,
        max_local_fraction: float = 0.7,
        block_tokens: int = 512,
        **params: Any,
    ) -> None:
        super().__init__(routes, **params)
        self.scale = float(prefill_load_scale)
        self.active_weight = float(active_weight)
        self.max_local = float(max_local_prefill_tokens)
        self.max_fraction = float(max_local_fraction)
        self.block = float(block_tokens)

    def scores(self, view: View) -> NDArray[np.float64]:
        r = self.routes
        length = np.asarray(view["input_tokens"], float)[:, None]
        queued = r.per_route(view, "queued_tokens")
        overlap = r.per_route(view, "cached_tokens") / self.block
        prefill_cost = np.maximum(0.0, (queued + length) / self.block - overlap)
        decode_blocks = r.per_route(view, "kv_used")
        active = r.per_route(view, "queued_requests")
        cost = self.scale * prefill_cost + decode_blocks + self.active_weight * active
        unc = r.per_route(view, "uncached_tokens")
        best_local = np.where(~r.offload[None, :], unc, np.inf).min(1, keepdims=True)
        go_local = (best_local < self.max_local) & (best_local < self.max_fraction * length)
        wrong_side = np.where(go_local, r.offload[None, :], ~r.offload[None, :])
        return cost + 1e12 * wrong_side


class LlmdPolicy(Policy):
    """llm-d: the decode cluster with the best weighted score (queue ``queue_weight``, KV
    utilisation ``kv_weight``, prefix cache ``prefix_weight``; each scorer in [0, 1]), then
    disaggregate (prefill remotely) iff the prompt's uncached tokens at that decode cluster's
    own prefill pool reach ``pd_threshold_tokens``."""

    name = "llm_d"

    def __init__(
        self,
        routes: RouteTable,
        queue_weight: float = 2.0,
        kv_weight: float = 2.0,
        prefix_weight: float = 3.0,
        pd_threshold_tokens: float = 16,
        **params: Any,
    ) -> None:
        super().__init__(routes, **params)
        self.w = (float(queue_weight), float(kv_weight), float(prefix_weight))
        self.threshold = float(pd_threshold_tokens)

    def scores(self, view: View) -> NDArray[np.float64]:
        r = self.routes
        length = np.asarray(view["input_tokens"], float)[:, None]
        queue = np.asarray(view["admission_queue"], float)
        kv = np.asarray(view["kv_used"], float)
        queue_score = 1.0 - queue / np.maximum(queue.max(1, keepdims=True), 1.0)
        kv_score = 1.0 - np.clip(kv, 0.0, 1.0)
        # prefix score of a decode cluster: the match rate at its own (local) prefill pool
        cached = r.per_route(view, "cached_tokens")
        local_cached = np.zeros_like(queue)
        for route in np.flatnonzero(~r.offload):
            d = r.decode[route]
            local_cached[:, d] = np.maximum(local_cached[:, d], cached[:, route])
        prefix_score = local_cached / np.maximum(length, 1.0)
        total = self.w[0] * queue_score + self.w[1] * kv_score + self.w[2] * prefix_score
        best_decode = np.argmax(total, axis=1)
        uncached_local = length[:, 0] - local_cached[np.arange(len(best_decode)), best_decode]
        disaggregate = uncached_local >= self.threshold
        on_decode = r.decode[None, :] == best_decode[:, None]
        side = np.where(disaggregate[:, None], ~r.offload[None, :], r.offload[None, :])
        return np.where(on_decode, 0.0, 2.0) + np.where(side, 1.0, 0.0)


HEURISTICS.update({p.name: p for p in (MooncakePolicy, DynamoPolicy, LlmdPolicy)})


class PrfaaSOptimisedPolicy(PrfaaSThresholdPolicy):
    """PrfaaS with its threshold chosen by the paper's throughput model (see
    :mod:`prfaas_env.policies.analytic`) and re-chosen every ``reoptimise_every`` decisions
    from the last ``window`` observed uncached lengths and the currently measured egress
    bandwidth (averaged over envs), as the paper re-picks ``t`` when lengths or egress change.

    Parameters (besides those of ``prfaas_threshold``): ``output_tokens`` (mean output length
    for the decode path; default 1024), ``tpot_slo_s`` (default 0.025), ``lengths`` (initial
    length samples; without them ``threshold_tokens`` is used until the first re-choice).
    """

    name = "prfaas_optimised"

    def __init__(
        self,
        routes: RouteTable,
        reoptimise_every: int = 256,
        window: int = 4096,
        output_tokens: float = 1024,
        tpot_slo_s: float = 0.025,
        lengths: Any = None,
        **params: Any,
    ) -> None:
        super().__init__(routes, **params)
        self.every = int(reoptimise_every)
        self.window = int(window)
        self.output_tokens = float(output_tokens)
        self.tpot_slo_s = float(tpot_slo_s)
        self._system = PaperSystem.from_topology(self.require_topology(), 1.0, self.tpot_slo_s)
        self.history: list[float] = []
        if lengths is not None and len(lengths):
            self._choose(np.asarray(lengths, float), 1.0)

    def _choose(self, lengths: NDArray[np.float64], bandwidth_fraction: float) -> None:
        system = replace(
            self._system, bandwidth_bps=self._system.bandwidth_bps * bandwidth_fraction
        )
        self.threshold = optimise(system, lengths, self.output_tokens).threshold_tokens

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        super().reset(num_envs, seed)
        self._seen = 0
        self._recent: list[NDArray[np.float64]] = []

    def act(self, view: View, mask: NDArray[np.bool_]) -> NDArray[np.int64]:
        unc = np.asarray(view["input_tokens"], float) - np.asarray(
            view["cached_tokens"], float
        ).max(1)
        self._recent.append(unc)
        self._seen += len(unc)
        if self._seen >= self.every:
            lengths = np.concatenate(self._recent)[-self.window :]
            self._recent = [lengths]
            bw = self.routes.per_route(view, "bandwidth")
            remote = self.routes.offload
            fraction = float(bw[:, remote].mean()) if remote.any() else 1.0
            self._choose(lengths, fraction)
            self.history.append(self.threshold)
            self._seen = 0
        return super().act(view, mask)


HEURISTICS[PrfaaSOptimisedPolicy.name] = PrfaaSOptimisedPolicy
