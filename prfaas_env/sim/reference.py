"""Reference simulator: one env, event by event, with plain Python objects.

It implements the model of docs/simulator.md as directly as possible (an ``OrderedDict`` per
prefix cache, lists of flows with their remaining bytes, lists of decoding sequences with their
remaining tokens) so that it can be read and checked by eye. It shares only the inputs with the
fast engine: the workload sampler (same request stream), the drawn bandwidth series and the cost
tables. The differential tests run both on the same seeds and routing decisions and compare
every request's record.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from prfaas_env.sim import workload as wl
from prfaas_env.sim.costs import decode_step_time, kv_bytes, prefill_time
from prfaas_env.sim.engine import VecSimulator
from prfaas_env.sim.scenario import Scenario
from prfaas_env.sim.state import RECORD_FIELDS


class LRUCache:
    """Blocks with least-recently-used eviction: an OrderedDict, most recent last."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.blocks: OrderedDict[int, None] = OrderedDict()

    def __contains__(self, key: int) -> bool:
        return key in self.blocks

    def access(self, key: int) -> bool:
        """Mark ``key`` most recently used, inserting it; returns whether it was cached."""
        if self.capacity == 0:
            return False
        if key in self.blocks:
            self.blocks.move_to_end(key)
            return True
        if len(self.blocks) >= self.capacity:
            self.blocks.popitem(last=False)
        self.blocks[key] = None
        return False


@dataclass
class Req:
    """One routed request and its timeline (seconds)."""

    seq: int
    arrival: float
    route: int
    input: int
    output: int
    cached: int
    pinst: int
    start: float
    end: float
    evt: float
    kv: float
    need: float
    pdone: bool = False
    kvdone: bool = False
    kv_at: float = math.inf
    ready: float = math.nan
    dinst: int = -1
    dstart: float = math.nan
    first: float = math.nan
    finish: float = math.nan


@dataclass
class Flow:
    req: Req
    remaining: float  # bytes


@dataclass
class Seq:
    req: Req
    remaining: float  # tokens


@dataclass
class Channel:
    series: np.ndarray
    step: float
    latency: float
    cell: int = 0
    t: float = 0.0
    flows: list[Flow] = field(default_factory=list)
    delay: deque[Req] = field(default_factory=deque)

    @property
    def bw(self) -> float:
        return float(self.series[self.cell % self.series.size])


@dataclass
class DecodeInst:
    cluster: int
    t: float = 0.0
    seqs: list[Seq] = field(default_factory=list)
    mem: float = 0.0
    step: float = 0.0


class ReferenceSimulator:
    """One env of ``scenario``, seeded with ``seed`` (same stream as env 0 of a VecSimulator
    seeded ``seed``). Route requests with :meth:`step`; read records with :meth:`records`."""

    def __init__(self, scenario: Scenario, seed: int) -> None:
        # Borrow the engine's constants and its reset (same draws), not its dynamics.
        self._vec = VecSimulator(scenario, 1)
        self._vec._reset_env(0, np.random.default_rng(seed))  # the same draws, no events
        S = self.S = self._vec.static
        self.wp = self._vec.workload_params
        self.ws = self._vec.workload_state
        self.bt = S.block_tokens
        topo = scenario.topology
        self.caches = [LRUCache(c.prefix_cache_blocks) for c in topo.clusters]
        n_p = int(S.cl_np.sum())  # prefill instances
        self.p_free = [0.0] * n_p
        self.p_last_evt = [0.0] * n_p
        self.p_queue: list[deque[Req]] = [deque() for _ in range(n_p)]  # not yet completed
        self.p_started = [0] * n_p  # how many of p_queue have started
        st = self._vec.state
        self.channels = [
            Channel(
                st.l_series[0, ch, : S.ch_cells[ch]].copy(), S.ch_step_s[ch], S.ch_latency_s[ch]
            )
            for ch in range(len(S.ch_step_s))
        ]
        self.decode = [DecodeInst(int(c)) for c in S.d_cluster]
        self.waiting: list[deque[Req]] = [deque() for _ in topo.clusters]
        self.reqs: list[Req] = []
        self.now = 0.0
        self._draw()

    # ---- the request stream ----------------------------------------------------------------------
    def _draw(self) -> None:
        wl.next_request(self.wp, self.ws, 0)
        self.pending_blocks = [
            int(wl.block_id(self.wp.tr_blocks, self.ws.wi, 0, b))
            for b in range(int(self.ws.req_nblocks[0]))
        ]
        self._run(float(self.ws.req_t[0]))
        self.now = float(self.ws.req_t[0])

    def cached_tokens(self, cluster: int) -> int:
        """Cached-prefix tokens of the pending request in ``cluster`` (no cache update)."""
        hits = 0
        for b in self.pending_blocks:
            if b not in self.caches[cluster]:
                break
            hits += 1
        return min(hits * self.bt, int(self.ws.req_in[0]) - 1)

    def step(self, route: int) -> None:
        """Route the pending request on ``route`` and advance to the next arrival."""
        S = self.S
        pc = int(S.route_p[route])
        length, out = int(self.ws.req_in[0]), int(self.ws.req_out[0])
        cached = self.cached_tokens(pc)
        for b in self.pending_blocks:
            self.caches[pc].access(b)
        unc = length - cached
        first = int(S.cl_p0[pc])
        insts = range(first, first + int(S.cl_np[pc]))
        i = min(insts, key=lambda j: (self.p_free[j], j))
        start = max(self.now, self.p_free[i])
        end = start + prefill_time(S.prefill_log_t[pc], float(unc), float(cached))
        self.p_free[i] = end
        kv = kv_bytes(S.kv_fixed, S.kv_per_token, S.swa_per_token, S.swa_window, float(length))
        ch = int(S.route_ch[route])
        evt = end if ch >= 0 else max(end, start + kv / S.cl_rdma_bps[S.route_d[route]])
        evt = max(evt, self.p_last_evt[i])
        self.p_last_evt[i] = evt
        need = kv_bytes(
            S.kv_fixed, S.kv_per_token, S.swa_per_token, S.swa_window, float(length + out)
        )
        req = Req(
            len(self.reqs), self.now, route, length, out, cached, i, start, end, evt, kv, need
        )
        self.reqs.append(req)
        self.p_queue[i].append(req)
        self._draw()

    def drain(self, limit_s: float = 1e7) -> None:
        """Run until every routed request has finished."""
        self._run(self.now + limit_s, until_idle=True)

    # ---- events ----------------------------------------------------------------------------------
    def _events(self) -> list[tuple[float, Callable[[float], None]]]:
        """Every pending event as (time, action), in the fixed tie order."""
        out: list[tuple[float, Callable[[float], None]]] = []
        for c in self.channels:
            out.append(((c.cell + 1) * c.step, lambda t, c=c: self._bw_change(c, t)))
        for c in self.channels:
            out.append((self._flow_done_time(c), lambda t, c=c: self._flow_done(c, t)))
        for c in self.channels:
            if c.delay:
                out.append((c.delay[0].kv_at, lambda t, c=c: self._delivered(c, t)))
        for i, q in enumerate(self.p_queue):
            if self.p_started[i] < len(q):
                out.append((q[self.p_started[i]].start, lambda t, i=i: self._started(i, t)))
        for i, q in enumerate(self.p_queue):
            if q and self.p_started[i] > 0:
                out.append((q[0].evt, lambda t, i=i: self._completed(i, t)))
        for d in self.decode:
            out.append((self._decode_done_time(d), lambda t, d=d: self._decode_done(d, t)))
        return out

    def _run(self, t_end: float, until_idle: bool = False) -> None:
        while True:
            if until_idle and all(not math.isnan(r.finish) for r in self.reqs):
                return
            best_t, best_action = math.inf, None
            for t, action in self._events():
                if t < best_t:
                    best_t, best_action = t, action
            if best_action is None or best_t > t_end:
                return
            best_action(best_t)

    # links: every active flow gets an equal share of the current bandwidth
    def _advance_channel(self, c: Channel, t: float) -> None:
        if t > c.t and c.flows:
            share = (t - c.t) * c.bw / len(c.flows)
            for f in c.flows:
                f.remaining -= share
        c.t = max(c.t, t)

    def _next_flow(self, c: Channel) -> Flow | None:
        return min(c.flows, key=lambda f: (f.remaining, f.req.seq), default=None)

    def _flow_done_time(self, c: Channel) -> float:
        f = self._next_flow(c)
        if f is None or c.bw <= 0:
            return math.inf
        return c.t + max(f.remaining, 0.0) * len(c.flows) / c.bw

    def _bw_change(self, c: Channel, t: float) -> None:
        self._advance_channel(c, t)
        c.cell += 1

    def _flow_done(self, c: Channel, t: float) -> None:
        f = self._next_flow(c)
        assert f is not None
        self._advance_channel(c, t)
        c.flows.remove(f)
        f.req.kv_at = t + c.latency
        c.delay.append(f.req)

    def _delivered(self, c: Channel, t: float) -> None:
        req = c.delay.popleft()
        req.kvdone = True
        if req.pdone:
            self._ready(req, t)

    # prefill: FIFO per instance
    def _started(self, i: int, t: float) -> None:
        req = self.p_queue[i][self.p_started[i]]
        self.p_started[i] += 1
        ch = int(self.S.route_ch[req.route])
        if ch >= 0:
            c = self.channels[ch]
            self._advance_channel(c, t)
            c.flows.append(Flow(req, req.kv))

    def _completed(self, i: int, t: float) -> None:
        req = self.p_queue[i].popleft()
        self.p_started[i] -= 1
        req.pdone = True
        if int(self.S.route_ch[req.route]) < 0 or req.kvdone:
            self._ready(req, t)

    # decode: every sequence of an instance makes one token per step
    def _ready(self, req: Req, t: float) -> None:
        req.ready = t
        c = int(self.S.route_d[req.route])
        d = self._pick(c, req) if not self.waiting[c] else None
        if d is None:
            self.waiting[c].append(req)
        else:
            self._admit(d, req, t)

    def _pick(self, c: int, req: Req) -> DecodeInst | None:
        S = self.S
        ok = [
            (len(d.seqs), j)
            for j, d in enumerate(self.decode)
            if d.cluster == c
            and len(d.seqs) < S.cl_max_batch[c]
            and d.mem + req.need <= S.cl_kv_cap[c]
        ]
        return self.decode[min(ok)[1]] if ok else None

    def _advance_decode(self, d: DecodeInst, t: float) -> None:
        if t > d.t and d.seqs:
            made = (t - d.t) / d.step
            for s in d.seqs:
                s.remaining -= made
        d.t = max(d.t, t)

    def _restep(self, d: DecodeInst) -> None:
        ctx = sum(s.req.input + (s.req.output - s.remaining) for s in d.seqs)
        d.step = decode_step_time(self.S.decode_log_t[d.cluster], len(d.seqs), float(ctx))

    def _admit(self, d: DecodeInst, req: Req, t: float) -> None:
        self._advance_decode(d, t)
        d.seqs.append(Seq(req, float(req.output)))
        d.mem += req.need
        self._restep(d)
        req.dinst = self.decode.index(d)
        req.dstart = t
        req.first = t + d.step

    def _decode_done_time(self, d: DecodeInst) -> float:
        if not d.seqs:
            return math.inf
        s = min(d.seqs, key=lambda s: (s.remaining, s.req.seq))
        return d.t + max(s.remaining, 0.0) * d.step

    def _decode_done(self, d: DecodeInst, t: float) -> None:
        s = min(d.seqs, key=lambda s: (s.remaining, s.req.seq))
        self._advance_decode(d, t)
        d.seqs.remove(s)
        d.mem -= s.req.need
        if not d.seqs:
            d.mem = 0.0
        self._restep(d)
        s.req.finish = t
        c = d.cluster
        while self.waiting[c]:
            nxt = self._pick(c, self.waiting[c][0])
            if nxt is None:
                break
            self._admit(nxt, self.waiting[c].popleft(), t)

    # ---- results ---------------------------------------------------------------------------------
    def records(self) -> dict[str, np.ndarray]:
        """Records in the engine's format (``RECORD_FIELDS``)."""
        S = self.S
        rows = []
        for r in self.reqs:
            pc = S.route_p[r.route]
            dc = S.route_d[r.route]
            rows.append(
                (
                    r.arrival,
                    r.route,
                    r.input,
                    r.output,
                    r.cached,
                    r.pinst - S.cl_p0[pc],
                    r.start,
                    r.end,
                    r.kv,
                    r.ready,
                    r.dinst - S.cl_d0[dc] if r.dinst >= 0 else math.nan,
                    r.dstart,
                    r.first,
                    r.finish,
                )
            )
        arr = np.array(rows, dtype=float).reshape(-1, len(RECORD_FIELDS))
        return {f: arr[:, i] for i, f in enumerate(RECORD_FIELDS)}
