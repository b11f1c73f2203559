"""Reference simulator: one env, event by event, with plain Python objects.

It implements the model of docs/simulator.md as directly as possible (an ``OrderedDict`` per
prefix cache, lists of flows with their remaining bytes, lists of decoding sequences with their
remaining tokens, co-located engines as lists of running requests and deques of waiting ones
scheduled step by step) so that it can be read and checked by eye. It shares only the inputs
with the fast engine: the workload sampler (same request stream), the drawn bandwidth series
and the cost tables. The differential tests run both on the same seeds and routing decisions
and compare every request's record.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from prfaas_env.sim import workload as wl
from prfaas_env.sim.costs import CostTables, decode_step_time, kv_bytes, pass_time, prefill_time
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
    # at a co-located engine: KV tokens computed, tokens of the sequence, outputs produced,
    # KV blocks held, tokens scheduled in the step in flight
    comp: int = 0
    ntok: int = 0
    gen: int = 0
    blk: int = 0
    sch: int = 0
    handed: float = 0.0  # when a co-located cluster's frontend hands it to the engine


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


@dataclass
class Rank:
    """One attention data-parallel rank of a co-located engine."""

    free: int  # KV blocks
    running: list[Req] = field(default_factory=list)
    waiting: deque[Req] = field(default_factory=deque)


@dataclass
class Engine:
    """A co-located engine: ranks stepping together."""

    cluster: int
    ranks: list[Rank]
    end: float = math.inf  # end of the step in flight
    start: float = 0.0
    step: float = 0.0
    scheduled: list[tuple[Req, int]] = field(default_factory=list)


class ReferenceSimulator:
    """One env of ``scenario``, seeded with ``seed`` (same stream as env 0 of a VecSimulator
    seeded ``seed``; ``tables``: cost tables to use instead of the scenario's). Route requests
    with :meth:`step`; read records with :meth:`records`."""

    def __init__(self, scenario: Scenario, seed: int, tables: CostTables | None = None) -> None:
        # Borrow the engine's constants and its reset (same draws), not its dynamics.
        self._vec = VecSimulator(scenario, 1, tables=tables)
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
        self.engines = [
            Engine(int(c), [Rank(int(S.cl_kv_blocks[c])) for _ in range(int(S.cl_ranks[c]))])
            for c in S.k_cluster
        ]
        self.frontend_free = [0.0] * len(topo.clusters)
        self.closed = int(S.closed_loop)
        # pending starts of a closed loop's clients (the engine's initial ones)
        self.starts = [float(x) for x in self._vec._fresh.starts[0, : self.closed]]
        self.reqs: list[Req] = []
        self.now = 0.0
        self.preemptions = 0  # requests a co-located engine preempted (for tests)
        self._draw()

    # ---- the request stream ----------------------------------------------------------------------
    def _draw(self) -> None:
        wl.next_request(self.wp, self.ws, 0)
        self.pending_blocks = [
            int(wl.block_id(self.wp.tr_blocks, self.ws.wi, 0, b))
            for b in range(int(self.ws.req_nblocks[0]))
        ]
        if self.closed:  # the next request starts when a client has seen its last token
            self._run(math.inf, closed=True)
            self.starts.sort()
            self.now = self.starts.pop(0)
            return
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
        if S.cl_nc[pc]:  # a co-located cluster: its engines prefill and decode it
            kv = kv_bytes(S.kv_fixed, S.kv_per_token, S.swa_per_token, S.swa_window, float(length))
            nan = math.nan
            req = Req(
                len(self.reqs), self.now, route, length, out, cached, -1, nan, nan, nan, kv, 0
            )
            self.reqs.append(req)
            self._co_join(pc, req, self.now, cached)
            req.pinst = req.dinst
            self._draw()
            return
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
        for g in self.engines:
            out.append((g.end, lambda t, g=g: self._co_step_end(g, t)))
        return out

    def _run(self, t_end: float, until_idle: bool = False, closed: bool = False) -> None:
        while True:
            if until_idle and all(not math.isnan(r.finish) for r in self.reqs):
                return
            best_t, best_action = math.inf, None
            for t, action in self._events():
                if t < best_t:
                    best_t, best_action = t, action
            if closed and min(self.starts, default=math.inf) < best_t:
                return
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
        if self.S.cl_nc[c]:  # KV prefilled elsewhere: the engine recomputes the last token
            self._co_join(c, req, t, req.input - 1)
            return
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
        req.first = t + d.step + self.S.cl_request_s[d.cluster]

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
        self._finished(s.req, t, d.cluster)
        c = d.cluster
        while self.waiting[c]:
            nxt = self._pick(c, self.waiting[c][0])
            if nxt is None:
                break
            self._admit(nxt, self.waiting[c].popleft(), t)

    def _finished(self, req: Req, t: float, c: int) -> None:
        """``req`` made its last token at ``t`` (engine time) on cluster ``c``."""
        req.finish = t
        if self.closed:
            self.starts.append(t + self.S.cl_request_s[c])

    # co-located engines: vLLM's scheduler, step by step
    def _co_join(self, c: int, req: Req, t: float, comp: int) -> None:
        S = self.S
        first = int(S.cl_c0[c])
        engines = self.engines[first : first + int(S.cl_nc[c])]
        ranks = [(r, g) for g in engines for r in g.ranks]
        rank, g = min(ranks, key=lambda rg: len(rg[0].running) + len(rg[0].waiting))
        req.comp, req.ntok, req.gen, req.blk, req.sch = comp, req.input, 0, 0, 0
        # the frontend hands requests on one at a time
        req.handed = max(t, self.frontend_free[c]) + float(S.cl_frontend_s[c])
        self.frontend_free[c] = req.handed
        rank.waiting.append(req)
        req.dinst = self.engines.index(g) - first
        if g.end == math.inf:  # an idle engine wakes: an empty step ending then
            g.end, g.start, g.step, g.scheduled = req.handed, req.handed, 0.0, []

    def _blocks(self, c: int, tokens: int) -> int:
        S = self.S
        if tokens <= 0:
            return 0
        return -(-tokens // int(S.cl_kv_bt[c])) + int(S.cl_fixed_blocks[c])

    def _co_step_end(self, g: Engine, t: float) -> None:
        S = self.S
        c = g.cluster
        req_s = float(S.cl_request_s[c])
        for req, n in g.scheduled:
            req.sch = 0
            req.comp += n
            if req.comp < req.ntok:
                continue
            req.gen += 1
            req.ntok += 1
            if req.gen == 1:  # the first token
                req.dstart = g.start
                req.first = t + req_s
                if int(S.route_p[req.route]) == c:  # prefilled here
                    req.end = t
                    req.ready = t
            if req.gen >= req.output:
                rank = next(r for r in g.ranks if req in r.running)
                rank.running.remove(req)
                rank.free += req.blk
                req.blk = 0
                self._finished(req, t, c)
        g.scheduled = []
        step = 0.0
        for rank in g.ranks:
            step = max(step, self._co_schedule(g, rank, t))
        if step > 0:
            g.start, g.step, g.end = t, step, t + step
        else:  # idle, or waiting for the first request still in the frontend
            wake = min((r.waiting[0].handed for r in g.ranks if r.waiting), default=math.inf)
            g.start, g.step, g.end = wake, 0.0, wake

    def _co_schedule(self, g: Engine, rank: Rank, t: float) -> float:
        """Schedule ``rank``'s part of the next step; returns its duration, s."""
        S = self.S
        c = g.cluster
        budget = int(S.cl_budget[c])
        chunks: list[tuple[int, int]] = []
        decodes: list[int] = []
        preempted = False
        i = 0
        while i < len(rank.running) and budget > 0:
            req = rank.running[i]
            n = min(req.ntok - req.comp, budget)
            need = self._blocks(c, req.comp + n) - req.blk
            lost = False
            while need > rank.free:  # preempt the most recently admitted request
                victim = rank.running.pop()
                rank.free += victim.blk
                victim.blk, victim.comp = 0, 0
                rank.waiting.appendleft(victim)
                preempted = True
                self.preemptions += 1
                if victim is req:
                    lost = True
                    break
            if lost:
                break
            self._co_take(g, rank, req, n, need, chunks, decodes)
            budget -= n
            i += 1
        while (
            not preempted
            and rank.waiting
            and budget > 0
            and len(rank.running) < int(S.cl_max_seqs[c])
        ):
            req = rank.waiting[0]
            if req.handed > t:  # still in the frontend
                break
            n = min(req.ntok - req.comp, budget)
            need = self._blocks(c, req.comp + n) - req.blk
            if need > rank.free:
                break
            rank.waiting.popleft()
            rank.running.append(req)
            if math.isnan(req.start) and int(S.route_p[req.route]) == c:
                req.start = t  # its prefill starts
            self._co_take(g, rank, req, n, need, chunks, decodes)
            budget -= n
        if not chunks and not decodes:
            return 0.0
        tokens = sum(n for n, _ in chunks) + len(decodes)
        attn = 0.0
        for n, comp in chunks:
            attn += prefill_time(S.co_pa_log_t[c], float(n), float(comp))
        out = pass_time(S.co_na_log_t[c], float(tokens)) + attn + S.cl_step_s[c]
        if decodes:
            b = len(decodes)
            out += decode_step_time(S.co_da_log_t[c], b, float(sum(decodes)))
            out += S.cl_seq_s[c] * b
        return out

    def _co_take(
        self,
        g: Engine,
        rank: Rank,
        req: Req,
        n: int,
        need: int,
        chunks: list[tuple[int, int]],
        decodes: list[int],
    ) -> None:
        """Schedule ``n`` tokens of ``req`` in the step, with ``need`` more KV blocks."""
        rank.free -= need
        req.blk += need
        req.sch = n
        g.scheduled.append((req, n))
        if n == 1 and req.gen >= 1:
            decodes.append(req.comp + 1)
        else:
            chunks.append((n, req.comp))

    # ---- results ---------------------------------------------------------------------------------
    def records(self) -> dict[str, np.ndarray]:
        """Records in the engine's format (``RECORD_FIELDS``)."""
        S = self.S
        rows = []
        for r in self.reqs:
            pc = S.route_p[r.route]
            dc = S.route_d[r.route]
            req_s = float(S.cl_request_s[dc])
            co = bool(S.cl_nc[dc])
            rows.append(
                (
                    r.arrival,
                    r.route,
                    r.input,
                    r.output,
                    r.cached,
                    r.pinst if S.cl_nc[pc] else r.pinst - S.cl_p0[pc],
                    r.start,
                    r.end,
                    r.kv,
                    r.ready,
                    r.dinst if co else (r.dinst - S.cl_d0[dc] if r.dinst >= 0 else math.nan),
                    r.dstart + req_s,
                    r.first,
                    r.finish + req_s,
                )
            )
        arr = np.array(rows, dtype=float).reshape(-1, len(RECORD_FIELDS))
        return {f: arr[:, i] for i, f in enumerate(RECORD_FIELDS)}
