"""VecSimulator: many independent copies of a scenario, advanced one routing decision at a time.

Usage::

    sim = VecSimulator(load_scenario("configs/paper.yaml"), num_envs=64)
    sim.reset(seed=0)                 # env i is seeded with seed + i
    while ...:
        routes = policy(sim)          # one route index per env (see ``topology.routes``)
        sim.step(routes)
    print(sim.metrics())

State is a struct of arrays (``sim.state``, ``sim.cache``, ``sim.workload_state``) whose leading
dimension is the env; :meth:`step` is a single call into compiled code that routes every env's
pending request and advances every env to its next arrival.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numba
import numpy as np
from numpy.typing import NDArray

from prfaas_env.sim import kernel
from prfaas_env.sim import workload as wl
from prfaas_env.sim.bandwidth import GBPS
from prfaas_env.sim.cache import CacheState, clear_env, new_cache
from prfaas_env.sim.costs import CostTables, build_tables
from prfaas_env.sim.jit import entry_point
from prfaas_env.sim.kernel import REJECT, SKIP
from prfaas_env.sim.observe import DeriveParams, derive_params
from prfaas_env.sim.scenario import Scenario
from prfaas_env.sim.state import (
    CHF,
    HIST_BINS,
    HIST_LO_S,
    HIST_PER_DECADE,
    RECORD_FIELDS,
    ROUTE,
    SLOT_ARRAYS,
    State,
    Static,
    grow_slots,
    new_state,
)

DRAIN_LIMIT_S = 1e7
# The metrics every results record carries (evaluate.py, train.py, episode summaries).
RESULT_METRICS = (
    "throughput_rps",
    "output_tps",
    "ttft_mean_s",
    "ttft_p50_s",
    "ttft_p90_s",
    "ttft_p99_s",
    "tpot_mean_s",
    "slo_attainment",
    "offload_fraction",
    "link_utilisation",
)


def routes_from_actions(actions: NDArray[np.int64], num_routes: int) -> NDArray[np.int64]:
    """Simulator routes of environment actions: indices ``>= num_routes`` (the reject
    action) become ``REJECT``."""
    a = np.asarray(actions, np.int64)
    return np.where(a >= num_routes, REJECT, a).astype(np.int64)


PARALLEL_MIN_ENVS = 256  # below this, thread start-up costs more than it saves
# The request slots' copies of request numbers, the histogram counts and the session numbers
# are 32-bit (smaller state runs faster, see state.py), so an env's arrivals since its reset
# must stay below ARRIVAL_LIMIT. Each step adds at most one arrival per env, so checking every
# _ARRIVAL_CHECK_STEPS steps against ARRIVAL_LIMIT - _ARRIVAL_CHECK_STEPS is enough.
ARRIVAL_LIMIT = 2**31 - 1
_ARRIVAL_CHECK_STEPS = 1 << 20


def build_static(sc: Scenario, tables: CostTables | None = None) -> Static:
    """Compile a scenario's topology and cost tables into the kernel's constants."""
    topo = sc.topology
    cl = topo.clusters
    if tables is None:
        tables = build_tables(topo.cost_models(), [c.max_batch for c in cl])
    np_ = np.array([c.prefill_instances for c in cl], np.int64)
    nd = np.array([c.decode_instances for c in cl], np.int64)
    p0 = np.concatenate([[0], np.cumsum(np_)[:-1]]).astype(np.int64)
    d0 = np.concatenate([[0], np.cumsum(nd)[:-1]]).astype(np.int64)
    ch_links = [topo.links[li] for li, _, _ in topo.channels]
    routes = topo.routes
    route = np.array([(r.prefill, r.decode, r.channel) for r in routes], np.int64).reshape(
        -1, len(ROUTE)
    )
    cl_i = np.stack([p0, np_, d0, nd, [c.max_batch for c in cl]], axis=1).astype(np.int64)
    cl_f = np.stack([[c.rdma_gbps * GBPS for c in cl], topo.decode_kv_capacity_bytes()], axis=1)
    ch_f = np.array(
        [
            (topo.channel_latency_s(i), np.inf if lk.process.is_constant else lk.process.step_s)
            for i, lk in enumerate(ch_links)
        ],
        dtype=float,
    ).reshape(-1, len(CHF))
    return Static(
        route=route,
        cl_i=cl_i,
        cl_f=cl_f,
        ch_f=ch_f,
        ch_cells=np.array([lk.process.cells(sc.bandwidth_horizon_s) for lk in ch_links], np.int64),
        d_cluster=np.repeat(np.arange(len(cl)), nd).astype(np.int64),
        prefill_log_t=tables.prefill_log_t,
        decode_log_t=tables.decode_log_t,
        swa_per_token=tables.swa_per_token,
        swa_window=tables.swa_window,
        kv_fixed=tables.kv_fixed,
        kv_per_token=tables.kv_per_token,
        block_tokens=topo.block_tokens,
        ttft_slo_s=sc.ttft_slo_s,
        tpot_slo_s=sc.tpot_slo_s,
    )


def env_seeds(seed: int | Sequence[int] | None, num_envs: int) -> list[int | None]:
    """Per-env seeds: ``seed + i`` for an int, the list itself for a sequence."""
    if seed is None:
        return [None] * num_envs
    if isinstance(seed, (int, np.integer)):
        return [int(seed) + i for i in range(num_envs)]
    seeds = [int(s) for s in seed]
    if len(seeds) != num_envs:
        raise ValueError(f"seed: expected {num_envs} seeds (one per env), got {len(seeds)}")
    return seeds


class VecSimulator:
    """``num_envs`` independent copies of a scenario (see the module docstring).

    Args:
        scenario: the parsed scenario.
        num_envs: copies simulated side by side.
        record: keep a full record of the first ``record`` requests of each env (see
            :data:`~prfaas_env.sim.state.RECORD_FIELDS`); 0 keeps only aggregate metrics.
        slots: initial request slots per env (doubled automatically when needed).
        tables: precomputed cost tables (to share them between simulators).
        parallel: split the envs across numba's threads (``numba.set_num_threads`` sets how
            many); ``None`` (default) does so from ``PARALLEL_MIN_ENVS`` envs up when more than
            one thread is available. Results do not depend on it.
    """

    def __init__(
        self,
        scenario: Scenario,
        num_envs: int = 1,
        *,
        record: int = 0,
        slots: int = 64,
        tables: CostTables | None = None,
        parallel: bool | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs: expected a positive integer, got {num_envs!r}")
        self.scenario = scenario
        self.num_envs = int(num_envs)
        topo = scenario.topology
        if tables is None:
            tables = build_tables(topo.cost_models(), [c.max_batch for c in topo.clusters])
        self.static = build_static(scenario, tables)
        # constants of the router's derived view entries (prfaas_env.sim.observe.derive)
        self.derive_params: DeriveParams = derive_params(topo, tables)
        self.workload_params = wl.params(scenario.workload, topo.block_tokens)
        self.num_routes = len(topo.routes)
        # routes over a cross-datacenter channel, and those channels (for route_mask)
        self._remote_routes = [i for i, r in enumerate(topo.routes) if r.channel >= 0]
        self._remote_channels = [topo.routes[i].channel for i in self._remote_routes]
        cl = topo.clusters
        dims = (
            int(self.static.cl_np.sum()),
            len(topo.channels),
            int(self.static.ch_cells.max()) if topo.channels else 1,
            int(self.static.cl_nd.sum()),
            max(c.max_batch for c in cl),
            len(cl),
            record,
        )
        self.state: State = new_state(self.num_envs, slots, *dims)
        self._fresh = new_state(1, 1, *dims)  # the values a reset env starts from
        self.cache: CacheState = new_cache(self.num_envs, [c.prefix_cache_blocks for c in cl])
        w = scenario.workload
        self.workload_state = wl.new_state(self.num_envs, w.sessions, len(w.clients))
        self._started = False
        if parallel is None:
            parallel = self.num_envs >= PARALLEL_MIN_ENVS and numba.get_num_threads() > 1
        self.parallel = bool(parallel)
        self._step_fn = kernel.step_parallel if self.parallel else kernel.run
        self._step_entry: Callable[..., None] | None = None
        self._unchecked_steps = 0

    # ---- episode control -----------------------------------------------------------------
    def reset(
        self, seed: int | Sequence[int] | None = None, mask: NDArray[np.bool_] | None = None
    ) -> None:
        """Reset the envs in ``mask`` (default all) and draw their first requests.

        Env ``i`` draws all its randomness from ``numpy.random.default_rng(seeds[i])`` where
        ``seeds = env_seeds(seed, num_envs)``; so env ``i`` of a batch seeded ``s`` equals a
        single env seeded ``s + i``.
        """
        if mask is None:
            mask = np.ones(self.num_envs, np.bool_)
        mask = np.asarray(mask, np.bool_)
        if mask.shape != (self.num_envs,):
            raise ValueError(f"mask: expected shape ({self.num_envs},), got {mask.shape}")
        seeds = env_seeds(seed, self.num_envs)
        for e in np.flatnonzero(mask):  # resets are rare; per-env generators keep streams apart
            self._reset_env(int(e), np.random.default_rng(seeds[e]))
        kernel.start(
            self.static, self.workload_params, self.workload_state, self.cache, self.state, mask
        )
        self._started = True

    def _reset_env(self, e: int, rng: np.random.Generator) -> None:
        st, fresh = self.state, self._fresh
        for name in State._fields:
            a = getattr(st, name)
            f = getattr(fresh, name)
            if name == "free":
                a[e] = np.arange(a.shape[1] - 1, -1, -1)
            elif name in SLOT_ARRAYS:
                a[e] = f[0, 0]
            else:
                a[e] = f[0]
        st.nfree[e] = st.free.shape[1]
        clear_env(self.cache, e)
        wl.reset_env(self.scenario.workload, self.workload_state, e, rng)
        topo = self.scenario.topology
        for ch, (li, _, _) in enumerate(topo.channels):
            link = topo.links[li]
            series = link.process.series(
                link.bandwidth_gbps, self.scenario.bandwidth_horizon_s, rng
            )
            st.l_series[e, ch, : series.size] = series
            st.l_bw[e, ch] = series[0]

    def step(
        self,
        routes: NDArray[np.integer] | Sequence[int],
        active: NDArray[np.bool_] | None = None,
    ) -> None:
        """Apply each env's decision and advance it to its next arrival.

        Args:
            routes: per env, a route index in ``[0, num_routes)``, or ``REJECT`` (-1) to turn
                the pending request away.
            active: envs to step (default all); the others are left exactly as they are.

        Raises:
            RuntimeError: :meth:`reset` was not called.
            ValueError: ``routes`` has the wrong shape or a value outside ``[-1, num_routes)``.
        """
        if not self._started:
            raise RuntimeError("VecSimulator.step called before reset()")
        r = np.asarray(routes)
        if r.shape != (self.num_envs,) or not np.issubdtype(r.dtype, np.integer):
            raise ValueError(
                f"routes: expected {self.num_envs} integer route indices, got shape {r.shape} "
                f"of {r.dtype}"
            )
        if r.size and (r.min() < REJECT or r.max() >= self.num_routes):
            raise ValueError(
                f"routes: values must be route indices in [0, {self.num_routes}) or "
                f"{REJECT} (reject), got {r}"
            )
        r = r.astype(np.int64, copy=False)
        if active is not None:
            r = np.where(np.asarray(active, np.bool_), r, SKIP)
        if self.state.nfree.min() < 1:
            self.state = grow_slots(self.state)
        self._unchecked_steps += 1
        if self._unchecked_steps >= _ARRIVAL_CHECK_STEPS:
            self._check_arrivals()
        args = (
            self.static,
            self.workload_params,
            self.workload_state,
            self.cache,
            self.state,
            r,
        )
        if self.parallel:
            args = (*args, numba.get_num_threads())
        else:
            args = (*args, 0, self.num_envs, 0.0)
        if self._step_entry is None:
            self._step_fn(*args)
            self._step_entry = entry_point(self._step_fn, args)
        else:
            self._step_entry(*args)

    def _check_arrivals(self) -> None:
        """Refuse to step an env whose 32-bit fields could overflow before the next check
        (the check runs again at every step until the env is reset)."""
        arrivals = self.state.seq + self.state.m_rejected
        e = int(np.argmax(arrivals))
        # an env's session count is at most its arrivals + 1 (its first request is drawn at
        # reset), and each step adds at most one arrival
        if arrivals[e] >= ARRIVAL_LIMIT - _ARRIVAL_CHECK_STEPS:
            raise RuntimeError(
                f"env {e} has had {int(arrivals[e]):,} arrivals since its last reset; the "
                f"simulator counts at most {ARRIVAL_LIMIT:,} per env (32-bit counters): "
                "reset it (VecSimulator.reset(mask=...)) before going on"
            )
        self._unchecked_steps = 0

    def drain(self, limit_s: float = DRAIN_LIMIT_S) -> None:
        """Finish every routed request (no further arrivals); for end-of-run metrics."""
        kernel.drain(
            self.static,
            self.workload_params,
            self.workload_state,
            self.cache,
            self.state,
            float(limit_s),
        )

    # ---- what a router sees about the pending request -------------------------------------------
    @property
    def now(self) -> NDArray[np.float64]:
        """Arrival time of each env's pending request, s."""
        return self.state.now

    def route_mask(self) -> NDArray[np.bool_]:
        """``[env, route]`` True where the route can be used now: a route over a link whose
        usable bandwidth is 0 (an outage) cannot."""
        ok = np.ones((self.num_envs, self.num_routes), np.bool_)
        ok[:, self._remote_routes] = self.state.l_bw[:, self._remote_channels] > 0
        return ok

    def pending(self) -> dict[str, NDArray]:
        """The pending request of every env: input/output tokens and cached tokens per cluster."""
        ws = self.workload_state
        return {
            "input_tokens": ws.req_in.copy(),
            "output_tokens": ws.req_out.copy(),
            "cached_tokens": self.state.obs_cached.copy(),
        }

    # ---- results --------------------------------------------------------------------------------
    def records(self, e: int = 0) -> dict[str, NDArray[np.float64]]:
        """Per-request records of env ``e`` (requests routed so far, up to ``record``)."""
        st = self.state
        n = min(int(st.seq[e]), st.records.shape[1])
        return {f: st.records[e, :n, i].copy() for i, f in enumerate(RECORD_FIELDS)}

    def clock(self) -> NDArray[np.float64]:
        """Simulated time each env has reached, s: its pending decision, or later after
        :meth:`drain` (the last event processed)."""
        st = self.state
        out = st.now.copy()
        if st.d_t.shape[1]:
            out = np.maximum(out, st.d_t.max(1))
        if st.l_t.shape[1]:
            out = np.maximum(out, st.l_t.max(1))
        return out

    def metrics(self) -> dict[str, NDArray[np.float64]]:
        """Aggregate metrics of every env since its reset (arrays over envs).

        Throughputs divide by the simulated time from 0 to :meth:`clock`. Percentiles
        come from a log-spaced histogram (20 bins per decade: within 12 % of the exact value).
        Per-cluster arrays are ``[env, cluster]`` (NaN where a cluster has no such pool):
        prefill utilisation is prefill-busy time over instance time; decode slot utilisation
        is the mean batch size over ``max_batch``.
        """
        st = self.state
        clock = self.clock()
        t = np.maximum(clock, 1e-9)
        done = st.m_done.astype(float)
        safe = np.maximum(done, 1)
        cap = st.l_cap_int + np.maximum(clock[:, None] - st.l_t, 0) * st.l_bw
        out = {
            "decisions": st.seq.astype(float),
            "completed": done,
            "throughput_rps": done / t,
            "output_tps": st.m_out_tokens / t,
            "ttft_mean_s": np.where(done > 0, st.m_ttft_sum / safe, np.nan),
            "tpot_mean_s": np.where(done > 0, st.m_tpot_sum / safe, np.nan),
            "slo_attainment": np.where(done > 0, st.m_slo_ok / safe, np.nan),
            "offload_fraction": st.m_offload / np.maximum(st.seq, 1),
            "rejected": st.m_rejected.astype(float),
            "cache_hit_fraction": st.m_cached_tokens / np.maximum(st.m_input_tokens, 1),
            "link_utilisation": st.l_bytes_done.sum(1) / np.maximum(cap.sum(1), 1e-9),
            "link_bytes": st.l_bytes_done.sum(1),
        }
        for q in (50, 90, 99):
            out[f"ttft_p{q}_s"] = hist_quantile(st.m_ttft_hist, q / 100)
        S = self.static
        # prefill seconds done so far: assigned minus what is still queued or running
        done_s = st.p_busy_s - np.maximum(st.p_free - clock[:, None], 0.0)
        seq_s = st.d_busy_int + st.d_n * np.maximum(clock[:, None] - st.d_t, 0.0)
        clusters = len(self.scenario.topology.clusters)
        pre = np.full((self.num_envs, clusters), np.nan)
        dec = np.full((self.num_envs, clusters), np.nan)
        for c in range(clusters):
            p0, n_p, d0, n_d = S.cl_p0[c], S.cl_np[c], S.cl_d0[c], S.cl_nd[c]
            if n_p:
                pre[:, c] = done_s[:, p0 : p0 + n_p].sum(1) / (n_p * t)
            if n_d:
                dec[:, c] = seq_s[:, d0 : d0 + n_d].sum(1) / (n_d * S.cl_max_batch[c] * t)
        out["prefill_utilisation"] = done_s.sum(1) / (S.cl_np.sum() * t)
        out["prefill_utilisation_by_cluster"] = pre
        out["decode_slot_utilisation_by_cluster"] = dec
        return out


def hist_quantile(hist: NDArray[np.integer], q: float) -> NDArray[np.float64]:
    """Quantile ``q`` of each row of a TTFT histogram (geometric bin centres), s; NaN if empty."""
    total = hist.sum(1)
    cum = np.cumsum(hist, 1)
    target = np.ceil(q * total)
    b = (cum < target[:, None]).sum(1)
    centre = HIST_LO_S * 10 ** ((np.minimum(b, HIST_BINS - 1) + 0.5) / HIST_PER_DECADE)
    return np.where(total > 0, centre, np.nan)
