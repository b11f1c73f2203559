"""The rollout oracle: a reference for what routing can win, and a teacher. It sees the future.

At each decision it copies every env's simulator state (:meth:`VecSimulator.copy_envs`) once
per candidate action, applies the candidate, routes the next ``horizon`` arrivals with a base
heuristic, finishes every request in flight (no further arrivals), and takes the candidate
with the lowest cost. The copies share the workload stream and the link's bandwidth series
(common random numbers): every candidate meets the same future requests, so the comparison
is paired. Costs (``cost``):

- ``ttft`` (default): the summed TTFT of every request that completes (in flight at the
  decision, the decided one and the next ``horizon``; requests before are common to all
  candidates and cancel out);
- ``tail``: the summed time above the TTFT SLO of those requests (from the TTFT histogram,
  20 bins per decade: within about 12 % of each request's excess);
- ``goodput``: minus the number of those requests that meet both SLOs;
- ``ttft_slo``: the ``ttft`` cost plus one TTFT SLO (s) for each of those requests that
  misses either SLO: TTFT as long as every request meets its SLOs, and a penalty the ``ttft``
  cost does not see when a decode pool is so full that its steps break the TPOT SLO.
- ``e2e_slo``: the ``ttft_slo`` cost plus the decode duration of each of those requests
  (first decode step to last token): their summed end-to-end latency plus the SLO penalty.
  It sees what ``ttft_slo`` leaves free while every request meets its TPOT SLO: a route
  that wins a little TTFT by crowding a decode pool slows every request decoding there,
  and the run's last completions end later (lower throughput over a fixed set of requests).

With ``candidates`` = K the oracle simulates only the K allowed routes its base policy
scores best at each decision (Mooncake's router scores them when the base does not score
routes, e.g. ``round_robin`` or an inner oracle); the rest cost infinity: K copies per env
instead of one per route, for scenarios with dozens of routes. Its answer is then the best
of those K, no longer of every route; say K where its results are reported.

With ``also`` (more base heuristics) the oracle is a *parallel rollout* (Chang, Givan and
Chong 2004; Bertsekas, *Rollout, Policy Iteration, and Distributed Reinforcement Learning*,
2020): each candidate is rolled out once per base, and its cost is the lowest over the bases.
Its choice is then at least as good, over the horizon, as every base's own would have been,
so it can teach departures that pay off only under a base other than the scenario's best
(e.g. length-threshold offloading where Mooncake's router is the best single heuristic).
It costs one rollout per base.

With ``iterations`` > 0 the base policy of the rollouts is itself a rollout oracle (with one
iteration fewer): slower by a factor of about ``(actions x horizon)`` per iteration. Inside
the rollouts a cost-aware base (Mooncake's router) reads prefill times from the simulator's
cost tables (within 0.2 % of the exact model it uses as a router, tested on suite
scenarios; the exact model costs about half the oracle's time).

**Not a deployable router**: it reads the simulator's state and the requests that have not
arrived yet. It is a non-causal reference, not a strict bound (it looks one decision ahead
with a fixed base policy and a finite horizon; a router could in principle do better), and it
labels decisions for imitation learning; it never appears among the heuristics a learned
policy is compared to or falls back to. The base policy must be deterministic (not
``random``) and is reset before every decision's rollouts, so the copies of an env differ only
by the candidate action; route tables with a reject action are refused (rejecting a request
would cost it no TTFT).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from prfaas_env.errors import ConfigError
from prfaas_env.observation.simulated import SimObserver
from prfaas_env.policies.base import Policy, RouteTable, View
from prfaas_env.policies.heuristics import HEURISTICS
from prfaas_env.sim.engine import VecSimulator, hist_centres, routes_from_actions
from prfaas_env.sim.topology import Topology
from prfaas_env.sim.view import COUNTERS

COSTS = ("ttft", "tail", "goodput", "ttft_slo", "e2e_slo")
NONDETERMINISTIC = ("random",)  # bases whose copies would draw different numbers
_TTFT = COUNTERS.index("ttft_sum_s")
_SLO = COUNTERS.index("slo_met")
_DONE = COUNTERS.index("completed")
_DECODE = COUNTERS.index("decode_sum_s")


def deterministic_bases() -> list[str]:
    """The heuristics a rollout can follow: every built-in one whose copies act alike."""
    return sorted(h for h in HEURISTICS if h not in NONDETERMINISTIC)


def check_base(name: str, where: str) -> None:
    """ConfigError naming ``where`` unless ``name`` is one of :func:`deterministic_bases`."""
    bases = deterministic_bases()
    if name not in bases:
        raise ConfigError(
            f"{where}: {name!r} is not a deterministic heuristic; allowed: {', '.join(bases)}"
        )


def _rollout_params(name: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """A rollout base's parameters: cost-aware Mooncake estimates prefill times from the
    simulator's tables inside rollouts (within 0.2 % of its exact model, twice as fast)."""
    out = dict(params or {})
    if name == "mooncake":
        out.setdefault("prefill_estimate", "tables")
    return out


class RolloutOracle(Policy):
    """Lookahead routing by simulation (see the module docstring). NOT deployable: it sees
    the future.

    Parameters (a scenario's ``policies: {rollout_oracle: {...}}`` or ``make_policy``):
        horizon: arrivals routed by the base policy after each candidate (default 128).
        base: the base heuristic's name (default ``mooncake``).
        base_params: the base heuristic's parameters (default: none).
        cost: ``ttft`` (default), ``tail``, ``goodput``, ``ttft_slo`` or ``e2e_slo``.
        iterations: rollouts whose base is the oracle itself, this many times (default 0).
        ttft_slo_s: the TTFT SLO of the ``tail``, ``ttft_slo`` and ``e2e_slo`` costs, s
            (default: the simulator's).
        candidates: simulate only the base policy's best-scored routes, this many (default:
            every route); an inner oracle (``iterations``) shortlists as many.
        also: more base heuristics (names); a candidate costs the lowest over every base's
            rollout (parallel rollout; default: none; not with ``iterations``); the base's
            own name, with its parameters, adds no rollout.
        also_params: their parameters, by name (default: none).
    """

    name = "rollout_oracle"
    deployable = False

    def __init__(
        self,
        routes: RouteTable,
        topology: Topology | None = None,
        horizon: int = 128,
        base: str = "mooncake",
        base_params: dict[str, Any] | None = None,
        cost: str = "ttft",
        iterations: int = 0,
        ttft_slo_s: float | None = None,
        candidates: int | None = None,
        also: list[str] | tuple[str, ...] | None = None,
        also_params: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(routes, topology)
        if candidates is not None and (
            not isinstance(candidates, int) or isinstance(candidates, bool) or candidates < 1
        ):
            raise ConfigError(
                f"rollout_oracle: candidates: expected an integer >= 1, got {candidates!r}"
            )
        if not isinstance(horizon, int) or isinstance(horizon, bool) or horizon < 0:
            raise ConfigError(f"rollout_oracle: horizon: expected an integer >= 0, got {horizon!r}")
        if cost not in COSTS:
            raise ConfigError(f"rollout_oracle: cost: {cost!r}; allowed: {', '.join(COSTS)}")
        whole = isinstance(iterations, int) and not isinstance(iterations, bool)
        if not whole or not 0 <= iterations <= 3:
            raise ConfigError(
                f"rollout_oracle: iterations: expected an integer in [0, 3], got {iterations!r}"
            )
        if isinstance(also, str):
            raise ConfigError(f"rollout_oracle: also: expected a list of names, got {also!r}")
        also = list(also or [])
        for key, name in [("base", base)] + [("also", n) for n in also]:
            check_base(name, f"rollout_oracle: {key}")
        if also and iterations:
            raise ConfigError("rollout_oracle: also and iterations cannot be combined")
        unknown = set(also_params or {}) - set(also)
        if unknown:
            raise ConfigError(
                f"rollout_oracle: also_params: {', '.join(sorted(unknown))} not among also "
                f"({', '.join(also) or 'none'})"
            )
        if routes.reject >= 0:
            raise ConfigError(
                "rollout_oracle: the route table has a reject action; the oracle's costs "
                "cannot weigh a rejection (turn admission control off)"
            )
        self.horizon = horizon
        self.cost = cost
        self.iterations = iterations
        self.ttft_slo_s = ttft_slo_s
        k = routes.num_actions
        self.candidates = k if candidates is None else min(candidates, k)
        base_routes = RouteTable.from_topology(topology) if topology is not None else routes
        # the rollouts' base: a heuristic, or this oracle once more with one iteration fewer;
        # cost-aware heuristics estimate prefill times from the simulator's tables there
        params = _rollout_params(base, base_params)
        try:
            self.base: Policy = (
                RolloutOracle(
                    base_routes,
                    topology,
                    horizon,
                    base,
                    params,
                    cost,
                    iterations - 1,
                    ttft_slo_s,
                    candidates,
                )
                if iterations > 0
                else HEURISTICS[base](base_routes, topology=topology, **params)
            )
        except ConfigError as exc:
            raise ConfigError(f"rollout_oracle: base {base!r}: {exc}") from exc
        self.also: list[Policy] = []
        for name in also:
            given = (also_params or {}).get(name, {})
            if name == base and given in ({}, dict(base_params or {})):
                continue  # the base itself: its rollout is already there
            extra = _rollout_params(name, given)
            try:
                self.also.append(HEURISTICS[name](base_routes, topology=topology, **extra))
            except ConfigError as exc:
                raise ConfigError(f"rollout_oracle: also {name!r}: {exc}") from exc
        # what ranks the shortlist: the base's scores, or Mooncake's where it has none
        self.ranker: Policy = self.base
        if self.candidates < k and type(self.base).scores is Policy.scores:
            self.ranker = HEURISTICS["mooncake"](
                base_routes, topology=topology, prefill_estimate="tables"
            )
        self.sim: VecSimulator | None = None
        self._scratch: VecSimulator | None = None
        self._observer: SimObserver | None = None

    # ---- planning with the simulator ------------------------------------------------------
    def attach(self, sim: VecSimulator) -> None:
        """Plan with ``sim`` (the simulator whose pending decisions :meth:`act` is given)."""
        self.sim = sim
        self._scratch = VecSimulator(
            sim.scenario, sim.num_envs * self.candidates, tables=sim.tables
        )
        self._observer = SimObserver(self._scratch, self.base.routes.num_routes)
        if isinstance(self.base, RolloutOracle):
            self.base.reset(self._scratch.num_envs, seed=0)
            self.base.attach(self._scratch)
        self._centres = hist_centres()
        slo = self.ttft_slo_s if self.ttft_slo_s is not None else sim.scenario.ttft_slo_s
        self._excess = np.maximum(self._centres - slo, 0.0)
        self._slo_s = slo

    def act(self, view: View, mask: NDArray[np.bool_]) -> NDArray[np.int64]:
        if self.sim is None or self._scratch is None or self._observer is None:
            raise RuntimeError(
                "rollout_oracle plans with the simulator: run it through "
                "prfaas_env.evaluation.run_policy, or call attach(sim) first"
            )
        full = self._full_mask(mask)
        costs = np.where(full, self.candidate_costs(view, full), np.inf)
        return np.argmin(costs, axis=1).astype(np.int64)

    def _full_mask(self, mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
        """``mask`` over every action (columns it lacks are allowed; ValueError when it has
        more columns than the route table has actions)."""
        k = self.routes.num_actions
        mask = np.asarray(mask, np.bool_)
        if mask.ndim != 2 or mask.shape[1] > k:
            raise ValueError(
                f"rollout_oracle: mask: expected shape (envs, <= {k}), got {mask.shape}"
            )
        full = np.ones((mask.shape[0], k), np.bool_)
        full[:, : mask.shape[1]] = mask
        return full

    def shortlist(self, view: View, mask: NDArray[np.bool_]) -> NDArray[np.int64]:
        """``[env, candidate]``: the ``candidates`` allowed routes the base scores lowest
        (every action, in order, when no shortlist is asked for)."""
        full = self._full_mask(mask)
        n, k = full.shape
        if self.candidates >= k:
            return np.tile(np.arange(k, dtype=np.int64), (n, 1))
        s = np.asarray(self.ranker.scores(view), np.float64)
        # allowed routes first (a NaN or infinite score ranks last among them), masked last
        s = np.where(full[:, : s.shape[1]], np.nan_to_num(s, nan=1e300, posinf=1e300), np.inf)
        return np.argsort(s, axis=1, kind="stable")[:, : self.candidates].astype(np.int64)

    def candidate_costs(
        self, view: View | None = None, mask: NDArray[np.bool_] | None = None
    ) -> NDArray[np.float64]:
        """``[env, action]`` cost of each action at every env's pending decision (lower is
        better; masked actions are simulated too, unless a shortlist leaves them out: actions
        outside the shortlist cost infinity). A shortlist needs the decision's ``view`` and
        ``mask``."""
        sim, scratch, obs = self.sim, self._scratch, self._observer
        assert sim is not None and scratch is not None and obs is not None
        n, k, m = sim.num_envs, self.routes.num_actions, self.candidates
        if m < k:
            if view is None or mask is None:
                raise ValueError("rollout_oracle: a shortlist of candidates needs view and mask")
            first = self.shortlist(view, mask).ravel()
        else:
            first = np.tile(np.arange(k, dtype=np.int64), n)
        cost = self._rollout_cost(self.base, first)
        for base in self.also:  # parallel rollout: the lowest cost over the bases
            cost = np.minimum(cost, self._rollout_cost(base, first))
        if m == k:
            return cost.reshape(n, k)
        full = np.full((n, k), np.inf)
        np.put_along_axis(full, first.reshape(n, m), cost.reshape(n, m), axis=1)
        return full

    def _rollout_cost(self, base: Policy, first: NDArray[np.int64]) -> NDArray[np.float64]:
        """Per copy (``first``: each copy's candidate), the cost of taking it and routing the
        next ``horizon`` arrivals with ``base``."""
        sim, scratch, obs = self.sim, self._scratch, self._observer
        assert sim is not None and scratch is not None and obs is not None
        n, m = sim.num_envs, len(first) // sim.num_envs
        scratch.copy_envs(sim, np.repeat(np.arange(n), m), np.arange(n * m))
        base.reset(scratch.num_envs, seed=0)  # every copy's base starts alike
        before = scratch.counters()
        hist_before = scratch.ttft_histogram() if self.cost == "tail" else None
        scratch.step(routes_from_actions(first, self.routes.num_routes))
        for _ in range(self.horizon):
            a = base.act(obs.observe_view(), obs.mask)
            scratch.step(routes_from_actions(a, base.routes.num_routes))
        scratch.drain()
        after = scratch.counters()
        if self.cost == "ttft":
            cost = after[:, _TTFT] - before[:, _TTFT]
        elif self.cost == "goodput":
            cost = -(after[:, _SLO] - before[:, _SLO])
        elif self.cost in ("ttft_slo", "e2e_slo"):
            missed = (after[:, _DONE] - before[:, _DONE]) - (after[:, _SLO] - before[:, _SLO])
            cost = after[:, _TTFT] - before[:, _TTFT] + self._slo_s * missed
            if self.cost == "e2e_slo":
                cost = cost + (after[:, _DECODE] - before[:, _DECODE])
        else:
            assert hist_before is not None
            cost = (scratch.ttft_histogram() - hist_before) @ self._excess
        return np.asarray(cost, np.float64)

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        super().reset(num_envs, seed)
        if self.sim is not None and self.sim.num_envs != num_envs:
            raise ValueError(
                f"rollout_oracle: planning with {self.sim.num_envs} envs, reset for {num_envs}"
            )
