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

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import replace

import numba
import numpy as np
from numpy.typing import NDArray

from prfaas_env.sim import kernel
from prfaas_env.sim import workload as wl
from prfaas_env.sim.bandwidth import GBPS
from prfaas_env.sim.cache import CacheState, clear_env, new_cache
from prfaas_env.sim.costs import CostTables, tables_for
from prfaas_env.sim.jit import entry_point
from prfaas_env.sim.scenario import Scenario
from prfaas_env.sim.state import (
    CHF,
    HIST_BINS,
    HIST_LO_S,
    HIST_PER_DECADE,
    RECORD_FIELDS,
    REJECT,
    ROUTE,
    SKIP,
    SLOT_ARRAYS,
    State,
    Static,
    grow_slots,
    new_state,
)
from prfaas_env.sim.view import (
    COUNTERS,
    SimView,
    ViewSpec,
    no_view,
    read_counters,
    refresh,
    view_spec,
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
        tables = tables_for(topo)
    pre_models = topo.cost_models()
    dec_models = topo.decode_cost_models()
    # a prefill pool's attention data-parallel ranks each prefill their own requests
    np_ = np.array(
        [c.prefill_instances * m.prefill_parallelism for c, m in zip(cl, pre_models, strict=True)],
        np.int64,
    )
    nd = np.array([c.decode_instances for c in cl], np.int64)
    p0 = np.concatenate([[0], np.cumsum(np_)[:-1]]).astype(np.int64)
    d0 = np.concatenate([[0], np.cumsum(nd)[:-1]]).astype(np.int64)
    nc = np.array([c.instances for c in cl], np.int64)
    ranks = np.array(
        [m.prefill_parallelism if c.colocated else 0 for c, m in zip(cl, dec_models, strict=True)],
        np.int64,
    )
    c0 = np.concatenate([[0], np.cumsum(nc)[:-1]]).astype(np.int64)
    r0 = np.concatenate([[0], np.cumsum(nc * ranks)[:-1]]).astype(np.int64)
    co_cols = np.array(
        [
            (
                c.max_num_seqs,
                c.max_num_batched_tokens,
                c.kv_block_tokens,
                b,
                topo.kv_fixed_blocks(c) if c.colocated else 0,
            )
            for c, b in zip(cl, topo.colocated_kv_blocks(), strict=True)
        ],
        np.int64,
    ).reshape(len(cl), 5)
    ch_links = [topo.links[li] for li, _, _ in topo.channels]
    routes = topo.routes
    route = np.array([(r.prefill, r.decode, r.channel) for r in routes], np.int64).reshape(
        -1, len(ROUTE)
    )
    cl_i = np.concatenate(
        [
            np.stack([p0, np_, d0, nd, [c.max_batch for c in cl], c0, nc, r0, ranks], axis=1),
            co_cols,
        ],
        axis=1,
    ).astype(np.int64)
    n_cl = len(cl)
    request_s = tables.request_s if tables.request_s.size == n_cl else np.zeros(n_cl)
    step_s = tables.co_step_s if tables.co_step_s.size == n_cl else np.zeros(n_cl)
    seq_s = tables.co_seq_s if tables.co_seq_s.size == n_cl else np.zeros(n_cl)
    frontend_s = tables.frontend_s if tables.frontend_s.size == n_cl else np.zeros(n_cl)
    cl_f = np.stack(
        [
            [c.rdma_gbps * GBPS for c in cl],
            topo.decode_kv_capacity_bytes(),
            request_s,
            step_s,
            seq_s,
            frontend_s,
        ],
        axis=1,
    )
    co_tables = _co_tables(tables, n_cl)
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
        k_cluster=np.repeat(np.arange(len(cl)), nc).astype(np.int64),
        co_na_log_t=co_tables[0],
        co_pa_log_t=co_tables[1],
        co_da_log_t=co_tables[2],
        closed_loop=int(sc.workload.concurrency) if sc.workload.closed_loop else 0,
    )


def _co_tables(tables: CostTables, clusters: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The co-located step tables, one row per cluster (a row of zeros for each when the
    tables have none: a topology without co-located clusters)."""
    if tables.co_na_log_t.shape[0] == clusters:
        return tables.co_na_log_t, tables.co_pa_log_t, tables.co_da_log_t
    return np.zeros((clusters, 2)), np.zeros((clusters, 2, 2)), np.zeros((clusters, 2, 2))


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
            tables = tables_for(topo)
        self.static = build_static(scenario, tables)
        self.tables = tables
        self.workload_params = wl.params(scenario.workload, topo.block_tokens)
        self.num_routes = len(topo.routes)
        # routes over a cross-datacenter channel, and those channels (for route_mask)
        self._remote_routes = [i for i, r in enumerate(topo.routes) if r.channel >= 0]
        self._remote_channels = [topo.routes[i].channel for i in self._remote_routes]
        cl = topo.clusters
        S = self.static
        dims = (
            int(S.cl_np.sum()),
            len(topo.channels),
            int(S.ch_cells.max()) if topo.channels else 1,
            int(S.cl_nd.sum()),
            max([c.max_batch for c in cl if c.role != "colocated"], default=1),
            len(cl),
            record,
            int(S.cl_nc.sum()),
            int((S.cl_nc * S.cl_ranks).sum()),
            max([c.max_num_seqs for c in cl if c.colocated], default=0),
            S.closed_loop,
        )
        self.state: State = new_state(self.num_envs, slots, *dims)
        self._fresh = new_state(1, 1, *dims)  # the values a reset env starts from
        blocks = np.repeat(S.cl_kv_blocks, S.cl_nc * S.cl_ranks)
        for st in (self.state, self._fresh):  # every rank's KV blocks start free
            st.k_free[:] = blocks
            if S.closed_loop:  # client i starts at i * ramp_s / concurrency
                n = S.closed_loop
                st.starts[:, :n] = np.arange(n) * (scenario.workload.ramp_s / n)
                st.loop_n[:] = n
                st.loop_next_t[:] = 0.0
        self.cache: CacheState = new_cache(self.num_envs, [c.prefix_cache_blocks for c in cl])
        w = scenario.workload
        self.workload_state = wl.new_state(self.num_envs, w.sessions, len(w.clients))
        self._started = False
        if parallel is None:
            parallel = self.num_envs >= PARALLEL_MIN_ENVS and numba.get_num_threads() > 1
        self.parallel = bool(parallel)
        self._step_fn = kernel.step_parallel if self.parallel else kernel.run
        self._step_entry: Callable[..., None] | None = None
        self._step_args: tuple | None = None  # the state arguments of the compiled step
        self._unchecked_steps = 0
        self._slot_steps = 0  # steps that cannot run out of request slots (see step)
        self._view: ViewSpec = no_view()
        # simulators checked to run this scenario (copy_envs)
        self._same_as: weakref.WeakSet[VecSimulator] = weakref.WeakSet()
        self.rate_multiplier = 1.0  # set_rate_multiplier
        self._bandwidth_scale = np.ones(len(topo.links))  # set_bandwidth_scale

    # ---- episode conditions (domain randomisation without rebuilding) ------------------------
    def set_rate_multiplier(self, multiplier: float) -> None:
        """Arrivals at ``multiplier`` x the scenario's rate (as :meth:`Scenario.with_rate`
        would, on top of the file's own ``rate_multiplier``), for every env from its next
        drawn arrival on: call it before :meth:`reset` for a whole episode at that rate.
        Simulators of one scenario at different rates are not copies of each other
        (:meth:`copy_envs` is meant for simulators at one rate)."""
        if not (multiplier > 0 and math.isfinite(multiplier)):
            raise ValueError(f"rate multiplier: expected a positive number, got {multiplier!r}")
        w = self.scenario.workload
        scaled = replace(w, rate_multiplier=w.rate_multiplier * float(multiplier))
        self.workload_params = wl.params(scaled, self.scenario.topology.block_tokens)
        self.rate_multiplier = float(multiplier)
        self._step_args = None  # the compiled step reads the new constants

    def set_bandwidth_scale(self, scale: Sequence[float] | NDArray[np.float64]) -> None:
        """Scale each link's usable bandwidth series by ``scale[link]`` (in (0, 1], links in
        ``topology.links`` order) in the envs reset from now on: the link carries that share
        of what its bandwidth process draws (outages stay outages)."""
        s = np.asarray(scale, np.float64).reshape(-1)
        links = len(self.scenario.topology.links)
        if s.shape != (links,) or not (np.isfinite(s).all() and (s > 0).all() and (s <= 1).all()):
            raise ValueError(
                f"bandwidth scale: expected {links} numbers in (0, 1] (one per link), got "
                f"{np.asarray(scale).tolist()!r}"
            )
        self._bandwidth_scale = s

    # ---- the view a router would read ---------------------------------------------------------
    def enable_view(
        self,
        columns: dict[str, tuple[int, int]],
        width: int,
        actions: int,
        staleness_s: float = 0.0,
        expected_output_tokens: float | None = None,
    ) -> SimView:
        """Have every later :meth:`step` and :meth:`reset` write each advanced env's view
        (:mod:`prfaas_env.sim.view`) into the arrays returned: input ``key`` of entity ``i``
        goes to column ``start + i * step`` of a ``[num_envs, width]`` matrix where
        ``columns[key] = (start, step)``; ``actions`` mask columns (the routes, then any
        always-allowed actions such as reject); bandwidth as measured at the last multiple
        of ``staleness_s`` seconds (0: live); ``expected_output_tokens`` defaults to the
        workload's mean. The current pending decisions are written at once."""
        if self._view.values.shape[0]:
            raise RuntimeError(
                "enable_view: this simulator's view is already enabled (one observer per "
                "simulator; read the same arrays through .view)"
            )
        if expected_output_tokens is None:
            expected_output_tokens = self.scenario.workload.mean_output_tokens()
        self._step_args = None
        self._view = view_spec(
            self.scenario.topology,
            self.num_envs,
            columns,
            width,
            actions,
            staleness_s,
            expected_output_tokens,
        )
        if self._started:  # write the pending decisions now (SKIP codes change nothing else)
            self._refresh_view()
        return self.view

    @property
    def view(self) -> SimView:
        """The arrays :meth:`enable_view` set up (empty until it is called)."""
        v = self._view
        return SimView(v.values, v.bandwidth_bps, v.mask, v.counters)

    def _kernel_args(self) -> tuple:
        """The arguments every entry of the compiled event loop starts with."""
        return (
            self.static,
            self.workload_params,
            self.workload_state,
            self.cache,
            self.state,
            self._view,
        )

    def _refresh_view(self) -> None:
        """Write every env's view at its pending decision (no env advances)."""
        rows = np.arange(self.num_envs, dtype=np.int64)
        refresh(self.static, self.workload_state, self.state, self._view, rows)

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
        kernel.start(*self._kernel_args(), mask)
        self._started = True

    def _reset_env(self, e: int, rng: np.random.Generator) -> None:
        st, fresh = self.state, self._fresh
        for name in State._fields:
            a = getattr(st, name)
            f = getattr(fresh, name)
            if name == "free":
                a[e] = np.arange(a.shape[1] - 1, -1, -1)
            elif name in SLOT_ARRAYS:
                if a.shape[1]:  # slots without co-located fields have none to reset
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
            if self._bandwidth_scale[li] != 1.0:
                series = series * self._bandwidth_scale[li]
            st.l_series[e, ch, : series.size] = series
            st.l_bw[e, ch] = series[0]

    def step(
        self,
        routes: NDArray[np.integer] | Sequence[int],
        active: NDArray[np.bool_] | None = None,
        *,
        checked: bool = False,
    ) -> None:
        """Apply each env's decision and advance it to its next arrival.

        Args:
            routes: per env, a route index in ``[0, num_routes)``, or ``REJECT`` (-1) to turn
                the pending request away.
            active: envs to step (default all); the others are left exactly as they are.
            checked: ``routes`` is already an int64 array of valid codes (a caller that
                validated them, such as the environment); skips the checks below.

        Raises:
            RuntimeError: :meth:`reset` was not called.
            ValueError: ``routes`` has the wrong shape or a value outside ``[-1, num_routes)``.
        """
        if not self._started:
            raise RuntimeError("VecSimulator.step called before reset()")
        if checked:
            r = np.ascontiguousarray(routes, dtype=np.int64)
        else:
            r = np.asarray(routes)
            if r.shape != (self.num_envs,) or not np.issubdtype(r.dtype, np.integer):
                raise ValueError(
                    f"routes: expected {self.num_envs} integer route indices, got shape "
                    f"{r.shape} of {r.dtype}"
                )
            if r.size and (r.min() < REJECT or r.max() >= self.num_routes):
                raise ValueError(
                    f"routes: values must be route indices in [0, {self.num_routes}) or "
                    f"{REJECT} (reject), got {r}"
                )
            r = np.ascontiguousarray(r, dtype=np.int64)  # compiled code reads it as contiguous
        if active is not None:
            r = np.where(active, r, SKIP)
        # each step takes at most one request slot per env: check for free slots only when
        # the fewest free ones (at the last check) could have run out
        if self._slot_steps <= 0:
            if self.state.nfree.min() < 1:
                self.state = grow_slots(self.state)
            self._slot_steps = int(self.state.nfree.min())
        self._slot_steps -= 1
        self._unchecked_steps += 1
        if self._unchecked_steps >= _ARRIVAL_CHECK_STEPS:
            self._check_arrivals()
        args = self._step_args
        if args is None or args[4] is not self.state:  # grown slots replace the state
            args = self._step_args = self._kernel_args()
        if self._step_entry is None:
            tail = (r, numba.get_num_threads()) if self.parallel else (r, 0, self.num_envs, 0.0)
            self._step_fn(*args, *tail)
            self._step_entry = entry_point(self._step_fn, (*args, *tail))
        elif self.parallel:
            self._step_entry(*args, r, numba.get_num_threads())
        else:
            self._step_entry(*args, r, 0, self.num_envs, 0.0)

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
        kernel.drain(*self._kernel_args(), float(limit_s))

    # ---- copies of envs ----------------------------------------------------------------------
    def copy_envs(
        self,
        source: VecSimulator,
        src: Sequence[int] | NDArray[np.integer],
        dst: Sequence[int] | NDArray[np.integer],
    ) -> None:
        """Make envs ``dst`` of this simulator exact copies of envs ``src`` of ``source`` (a
        simulator of the same scenario, or this one): queues, caches, links and their
        bandwidth series, decode batches, metrics, the workload stream (so a copy draws the
        same future requests); their view rows are rewritten in this simulator's own layout.
        A copy stepped with the same decisions as
        its original stays equal to it. Per-request records are copied when both keep the
        same number. Either simulator's request slots grow to match the other's first.

        Raises ValueError when the two simulators run different scenarios or the index lists
        differ in length or leave their range.
        """
        s = np.asarray(src, np.int64).reshape(-1)
        d = np.asarray(dst, np.int64).reshape(-1)
        if s.shape != d.shape:
            raise ValueError(f"src and dst: {s.size} and {d.size} envs; expected as many")
        for name, idx, sim in (("src", s, source), ("dst", d, self)):
            if idx.size and (idx.min() < 0 or idx.max() >= sim.num_envs):
                raise ValueError(f"{name}: env indices must be in [0, {sim.num_envs})")
        if not source._started:
            raise RuntimeError("copy_envs: the source simulator was never reset")
        self._check_same_scenario(source)
        while self.state.free.shape[1] < source.state.free.shape[1]:
            self.state = grow_slots(self.state)
        while source.state.free.shape[1] < self.state.free.shape[1]:
            source.state = grow_slots(source.state)
        for mine, theirs in (
            (self.state, source.state),
            (self.workload_state, source.workload_state),
        ):
            for name in type(mine)._fields:
                a, b = getattr(mine, name), getattr(theirs, name)
                if name == "records" and a.shape[1:] != b.shape[1:]:
                    continue  # a copy without records (or another capacity) keeps none
                a[d] = b[s]
        for name in CacheState._fields:
            if name != "cfg":  # per cluster, not per env
                getattr(self.cache, name)[d] = getattr(source.cache, name)[s]
        if self._view.values.shape[0]:  # the copies' views, as this simulator lays them out
            refresh(self.static, self.workload_state, self.state, self._view, d)
        self._started = True
        self._slot_steps = 0  # free slots changed: check before the next step
        self._step_args = None

    def _check_same_scenario(self, other: VecSimulator) -> None:
        """ValueError unless ``other`` simulates the same scenario (constants and workload)."""
        if other is self or other in self._same_as:
            return
        same = len(self.static) == len(other.static) and all(
            np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
            for a, b in zip(self.static, other.static, strict=True)
        )
        same = same and all(
            np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
            for a, b in zip(self.workload_params, other.workload_params, strict=True)
        )
        if not same:
            raise ValueError(
                f"copy_envs: {other.scenario.source} and {self.scenario.source} are different "
                "scenarios (topology, costs or workload differ)"
            )
        self._same_as.add(other)

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
        if st.k_t.shape[1]:
            out = np.maximum(out, st.k_t.max(1))
        return out

    def counters(self) -> NDArray[np.float64]:
        """``[env, len(COUNTERS)]`` totals since each env's reset, now (after :meth:`drain`
        too): completed requests, those within both SLOs, their summed TTFT (s), the
        request-seconds spent waiting for a first token (s), output tokens, rejections
        (:data:`prfaas_env.sim.view.COUNTERS`)."""
        out = np.empty((self.num_envs, len(COUNTERS)))
        read_counters(self.state, out)
        return out

    def ttft_histogram(self) -> NDArray[np.int64]:
        """``[env, HIST_BINS]`` completed requests per TTFT bin since each env's reset (bin
        ``b`` holds TTFTs around :func:`hist_centres` ``[b]``; 20 bins per decade)."""
        return self.state.m_ttft_hist.astype(np.int64)

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
            c0, n_c = S.cl_c0[c], S.cl_nc[c]
            if n_c:  # co-located engines: steps computing prompt tokens; running requests
                pre[:, c] = st.k_pbusy[:, c0 : c0 + n_c].sum(1) / (n_c * t)
                places = n_c * S.cl_ranks[c] * S.cl_max_seqs[c]
                dec[:, c] = st.k_busy_int[:, c0 : c0 + n_c].sum(1) / (places * t)
        if S.cl_nc.sum():
            busy = done_s.sum(1) + st.k_pbusy.sum(1)
            out["prefill_utilisation"] = busy / ((S.cl_np.sum() + S.cl_nc.sum()) * t)
        else:
            out["prefill_utilisation"] = done_s.sum(1) / (S.cl_np.sum() * t)
        out["prefill_utilisation_by_cluster"] = pre
        out["decode_slot_utilisation_by_cluster"] = dec
        return out


def hist_centres() -> NDArray[np.float64]:
    """Geometric centre of each TTFT histogram bin, s."""
    return HIST_LO_S * 10 ** ((np.arange(HIST_BINS) + 0.5) / HIST_PER_DECADE)


def hist_quantile(hist: NDArray[np.integer], q: float) -> NDArray[np.float64]:
    """Quantile ``q`` of each row of a TTFT histogram (geometric bin centres), s; NaN if empty."""
    total = hist.sum(1)
    cum = np.cumsum(hist, 1)
    target = np.ceil(q * total)
    b = (cum < target[:, None]).sum(1)
    centre = HIST_LO_S * 10 ** ((np.minimum(b, HIST_BINS - 1) + 0.5) / HIST_PER_DECADE)
    return np.where(total > 0, centre, np.nan)
