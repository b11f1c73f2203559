"""Emulated model servers: a whole PrfaaS deployment on one machine, timed by the cost model.

``python -m prfaas_env.gateway emulate --inventory FILE`` serves every endpoint of an
inventory from one process (one asyncio loop, one port per instance), each an
OpenAI-compatible server (``POST /v1/completions`` and ``/v1/chat/completions``, streamed or
not; ``GET /v1/models``, ``/health``, ``/metrics``) whose timing is the simulator's model of
docs/simulator.md, computed with the simulator's cost tables (``prfaas_env.sim.costs``):

- **Prefill instances** serve one prefill at a time, first come first served; a prefill of
  ``u`` uncached tokens after ``c`` cached ones lasts ``prefill_time(u, c)`` of the
  instance's cluster. The cluster's prefix cache is an LRU of block hashes (capacity
  ``prefix_cache_blocks``), looked up and then touched when a request arrives. When the
  prefill starts, the KV (``kv_bytes(L)``) leaves for the decode instance named in the
  request: over the link's channel (processor sharing of its bandwidth among the flows,
  arriving half an RTT after its last byte) or over RDMA inside a datacenter
  (``start + kv / rdma``). The prefill's answer returns when the prefill has ended and the
  KV has arrived, in the order the instance took its requests.
- **Decode instances** do what llm-d's routing sidecar does for a request that names a
  prefill endpoint in ``x-prefiller-host-port``: they send the request to that prefill
  instance (``max_tokens`` 1, with the decode endpoint in ``x-prfaas-kv-destination``),
  wait for its answer, then queue for a decode slot (first come first served; a slot is
  free while fewer than ``max_batch`` sequences run and the KV reservation
  ``kv_bytes(L + O)`` fits). Decoding is continuous batching as a fluid: every sequence
  makes one token per step of ``decode_step_time(batch, context)``, re-evaluated at each
  admission and completion; the first token comes one step after admission. A request
  without the prefill header is prefilled by the least-busy prefill instance of the decode
  instance's own cluster (the emulator's stand-in for a server prefilling for itself).
- **Metrics** under vLLM's names: ``vllm:num_requests_waiting`` (prefill: queued, not
  started; decode: waiting for a slot), ``vllm:num_requests_running`` (prefill: 1 while
  computing; decode: sequences in the batch), ``vllm:kv_cache_usage_perc`` (decode: KV
  reserved over capacity), ``vllm:time_to_first_token_seconds`` (decode: from the request's
  arrival at the decode server), ``vllm:prefix_cache_queries_total`` /
  ``vllm:prefix_cache_hits_total`` (tokens), ``vllm:request_success_total``,
  ``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total``. A link monitor on its own
  port serves ``prfaas_link_bandwidth_gbps``, ``prfaas_link_bytes_in_flight`` and
  ``prfaas_link_flows`` per direction (labels ``from``, ``to``).

Clock: the deployment runs ``time_scale`` times faster than the wall clock (the inventory's
``time_scale``); every time it reports (metrics, timings in answers) is in deployment
seconds. Differences from the simulator: the decode instance is the one the gateway chose
(the simulator's cluster admits to its least-loaded instance), requests reach servers a few
wall milliseconds after the decision, and timers fire up to a few milliseconds late.

Faults for tests: ``POST /admin/fault`` with ``{"metrics": "ok" | "garbage" | "error" |
"slow"}`` makes an instance's ``/metrics`` answer normally, with junk, with HTTP 500, or
after 2 wall seconds.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prfaas_env.gateway.inventory import Endpoint, Inventory
from prfaas_env.gateway.prompt import BadRequest, PromptInfo, parse_request
from prfaas_env.sim.bandwidth import GBPS
from prfaas_env.sim.costs import CostTables, build_tables, decode_step_time, kv_bytes, prefill_time

__all__ = ["Deployment", "run_deployment"]

PREFILL_HEADER = "x-prefiller-host-port"
KV_DESTINATION = "x-prfaas-kv-destination"
# when (time.monotonic, wall seconds) the request reached the server and its answer began:
# a client on the same machine subtracts them from its own clock to time the path between
WALL_IN, WALL_OUT = "x-prfaas-wall-in", "x-prfaas-wall-out"
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)


class Clock:
    """Deployment time: wall time since start x ``scale`` (seconds)."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()

    def now(self) -> float:
        return (self.loop.time() - self.t0) * self.scale

    def call_at(self, t: float, fn: Callable[[], None]) -> asyncio.TimerHandle:
        return self.loop.call_at(self.t0 + t / self.scale, fn)

    async def sleep_until(self, t: float) -> None:
        delay = (t - self.now()) / self.scale
        if delay > 0:
            await asyncio.sleep(delay)


class LRU:
    """A cluster's prefix cache: block hashes, least recently used first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.blocks: OrderedDict[int, None] = OrderedDict()

    def lookup_and_touch(self, hashes: tuple[int, ...]) -> int:
        """Leading blocks held before this request, then every block touched (inserted)."""
        hits = 0
        for h in hashes:
            if h not in self.blocks:
                break
            hits += 1
        if self.capacity > 0:
            for h in hashes:
                if h in self.blocks:
                    self.blocks.move_to_end(h)
                else:
                    if len(self.blocks) >= self.capacity:
                        self.blocks.popitem(last=False)
                    self.blocks[h] = None
        return hits


# ---- the link -----------------------------------------------------------------------------
@dataclass
class _Flow:
    remaining: float  # bytes
    seq: int
    done: asyncio.Future[float]


class Channel:
    """One direction of a link: flows share the bandwidth equally (processor sharing); a
    flow's KV arrives ``latency_s`` after its last byte is sent."""

    def __init__(self, clock: Clock, name: str, gbps: float, latency_s: float) -> None:
        self.clock, self.name = clock, name
        self.bps = gbps * GBPS
        self.latency_s = latency_s
        self.flows: list[_Flow] = []
        self.t = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self._seq = 0

    def _advance(self, now: float) -> None:
        if now > self.t and self.flows:
            share = (now - self.t) * self.bps / len(self.flows)
            for f in self.flows:
                f.remaining -= share
        self.t = max(self.t, now)

    def add(self, nbytes: float) -> asyncio.Future[float]:
        """Start a flow of ``nbytes``; the future gives the deployment time its KV arrives."""
        now = self.clock.now()
        self._advance(now)
        fut: asyncio.Future[float] = self.clock.loop.create_future()
        self._seq += 1
        self.flows.append(_Flow(nbytes, self._seq, fut))
        self._schedule()
        return fut

    def _schedule(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.flows or self.bps <= 0:
            return
        f = min(self.flows, key=lambda f: (f.remaining, f.seq))
        self.timer = self.clock.call_at(
            self.t + max(f.remaining, 0.0) * len(self.flows) / self.bps, self._done
        )

    def _done(self) -> None:
        self.timer = None
        now = self.clock.now()
        self._advance(now)
        f = min(self.flows, key=lambda f: (f.remaining, f.seq))
        self.flows.remove(f)
        arrive = now + self.latency_s
        self.clock.call_at(arrive, lambda: f.done.done() or f.done.set_result(arrive))
        self._schedule()

    def bytes_in_flight(self) -> float:
        now = self.clock.now()
        if not self.flows:
            return 0.0
        share = (now - self.t) * self.bps / len(self.flows)
        return sum(max(f.remaining - share, 0.0) for f in self.flows)


# ---- instances ----------------------------------------------------------------------------
@dataclass
class _Job:
    prompt: PromptInfo
    cached: int
    kv: float
    channel: Channel | None
    rdma_bps: float
    done: asyncio.Future[dict[str, Any]]
    prev: asyncio.Future[Any] | None
    arrival: float


@dataclass
class _Counters:
    success: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    cache_queries: int = 0
    cache_hits: int = 0
    ttft_buckets: list[int] = field(default_factory=lambda: [0] * len(TTFT_BUCKETS))
    ttft_sum: float = 0.0
    ttft_count: int = 0

    def ttft(self, s: float) -> None:
        for i, b in enumerate(TTFT_BUCKETS):
            if s <= b:
                self.ttft_buckets[i] += 1
        self.ttft_sum += s
        self.ttft_count += 1


class Instance:
    """What every emulated server has: an endpoint, counters and a metrics fault switch."""

    def __init__(self, dep: Deployment, ep: Endpoint) -> None:
        self.dep, self.ep = dep, ep
        self.cluster = dep.topo.clusters[dep.cluster_index[ep.cluster]]
        self.ci = dep.cluster_index[ep.cluster]
        self.counters = _Counters()
        self.fault = "ok"

    def gauges(self) -> tuple[float, float, float]:  # waiting, running, kv usage
        raise NotImplementedError

    def metrics_text(self, gauges: tuple[float, float, float] | None = None) -> str:
        """This instance's metrics in Prometheus text (``gauges`` overrides its own)."""
        model = self.dep.model_label
        lab = f'model_name="{model}",engine="0"'
        w, r, kv = gauges or self.gauges()
        c = self.counters
        lines = [
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{lab}}} {w}",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{lab}}} {r}",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{{{lab}}} {kv}",
            "# TYPE vllm:request_success_total counter",
            f'vllm:request_success_total{{{lab},finished_reason="length"}} {c.success}',
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{{{lab}}} {c.prompt_tokens}",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{{{lab}}} {c.generation_tokens}",
            "# TYPE vllm:prefix_cache_queries_total counter",
            f"vllm:prefix_cache_queries_total{{{lab}}} {c.cache_queries}",
            "# TYPE vllm:prefix_cache_hits_total counter",
            f"vllm:prefix_cache_hits_total{{{lab}}} {c.cache_hits}",
            "# TYPE vllm:time_to_first_token_seconds histogram",
        ]
        for b, n in zip(TTFT_BUCKETS, c.ttft_buckets, strict=True):
            lines.append(f'vllm:time_to_first_token_seconds_bucket{{{lab},le="{b}"}} {n}')
        lines += [
            f'vllm:time_to_first_token_seconds_bucket{{{lab},le="+Inf"}} {c.ttft_count}',
            f"vllm:time_to_first_token_seconds_sum{{{lab}}} {c.ttft_sum}",
            f"vllm:time_to_first_token_seconds_count{{{lab}}} {c.ttft_count}",
        ]
        return "\n".join(lines) + "\n"


class PrefillInstance(Instance):
    """One prefill at a time, first come first served (see the module docstring)."""

    def __init__(self, dep: Deployment, ep: Endpoint) -> None:
        super().__init__(dep, ep)
        self.queue: deque[_Job] = deque()
        self.computing = False
        self.free_at = 0.0  # deployment time the instance is free by the queue's estimate
        self.wake = asyncio.Event()
        self.last_done: asyncio.Future[Any] | None = None
        self.deliveries: set[asyncio.Task[None]] = set()
        self.task = asyncio.create_task(self._work())

    def gauges(self) -> tuple[float, float, float]:
        return float(len(self.queue)), 1.0 if self.computing else 0.0, 0.0

    def submit(
        self, prompt: PromptInfo, destination: DecodeInstance
    ) -> asyncio.Future[dict[str, Any]]:
        dep = self.dep
        hits = dep.caches[self.ci].lookup_and_touch(prompt.hashes)
        tokens = prompt.input_tokens
        cached = min(hits * dep.topo.block_tokens, tokens - 1)
        self.counters.cache_queries += tokens
        self.counters.cache_hits += cached
        self.counters.prompt_tokens += tokens
        ch = dep.channel_between(self.cluster.datacenter, destination.cluster.datacenter)
        rdma = destination.cluster.rdma_gbps * GBPS
        fut: asyncio.Future[dict[str, Any]] = dep.loop.create_future()
        job = _Job(
            prompt, cached, dep.kv_bytes(tokens), ch, rdma, fut, self.last_done, dep.clock.now()
        )
        self.last_done = fut
        self.queue.append(job)
        self.wake.set()
        return fut

    async def _work(self) -> None:
        dep = self.dep
        log_t = dep.tables.prefill_log_t[self.ci]
        while True:
            while not self.queue:
                self.wake.clear()
                await self.wake.wait()
            job = self.queue.popleft()
            start = dep.clock.now()
            self.computing = True
            unc = job.prompt.input_tokens - job.cached
            end = start + float(prefill_time(log_t, float(unc), float(job.cached)))
            arrival = job.channel.add(job.kv) if job.channel is not None else None
            await dep.clock.sleep_until(end)
            self.computing = False
            self.counters.success += 1
            task = asyncio.create_task(self._deliver(job, start, end, arrival))
            self.deliveries.add(task)  # keep a reference until it is done
            task.add_done_callback(self.deliveries.discard)

    async def _deliver(
        self, job: _Job, start: float, end: float, arrival: asyncio.Future[float] | None
    ) -> None:
        dep = self.dep
        if arrival is not None:
            ready = max(end, await arrival)
        else:
            ready = max(end, start + job.kv / job.rdma_bps)
            await dep.clock.sleep_until(ready)
        if job.prev is not None and not job.prev.done():
            try:  # completions leave an instance in the order it took them
                await asyncio.shield(job.prev)
            except Exception:
                pass
            ready = max(ready, dep.clock.now())
        if not job.done.done():
            job.done.set_result(
                {
                    "cached_tokens": job.cached,
                    "arrival_s": job.arrival,
                    "prefill_start_s": start,
                    "prefill_end_s": end,
                    "kv_ready_s": ready,
                    "kv_bytes": job.kv,
                }
            )


@dataclass
class _Seq:
    tokens: int
    output: int
    need: float
    remaining: float
    no: int
    first: asyncio.Future[float]
    finished: asyncio.Future[float]


class DecodeInstance(Instance):
    """Continuous batching as a fluid (see the module docstring)."""

    def __init__(self, dep: Deployment, ep: Endpoint) -> None:
        super().__init__(dep, ep)
        self.seqs: list[_Seq] = []
        self.queue: deque[_Seq] = deque()
        self.t = 0.0
        self.step = 0.0
        self.mem = 0.0
        self.cap = float(dep.kv_capacity[self.ci])
        self.timer: asyncio.TimerHandle | None = None
        self.log_t = dep.tables.decode_log_t[self.ci]
        self._no = 0

    def gauges(self) -> tuple[float, float, float]:
        return (
            float(len(self.queue)),
            float(len(self.seqs)),
            min(self.mem / self.cap, 1.0) if self.cap > 0 else 0.0,
        )

    def fits(self, prompt: PromptInfo, output: int) -> bool:
        return self.dep.kv_bytes(prompt.input_tokens + output) <= self.cap

    def enqueue(self, prompt: PromptInfo, output: int) -> _Seq:
        loop = self.dep.loop
        self._no += 1
        seq = _Seq(
            prompt.input_tokens,
            output,
            self.dep.kv_bytes(prompt.input_tokens + output),
            float(output),
            self._no,
            loop.create_future(),
            loop.create_future(),
        )
        self.queue.append(seq)
        self._admit(self.dep.clock.now())
        return seq

    def _advance(self, now: float) -> None:
        if now > self.t and self.seqs and self.step > 0:
            made = (now - self.t) / self.step
            for s in self.seqs:
                s.remaining -= made
        self.t = max(self.t, now)

    def _restep(self) -> None:
        if not self.seqs:
            self.step = 0.0
            return
        ctx = sum(s.tokens + (s.output - s.remaining) for s in self.seqs)
        self.step = float(decode_step_time(self.log_t, len(self.seqs), float(ctx)))

    def _admit(self, now: float) -> None:
        changed = False
        while self.queue:
            head = self.queue[0]
            if len(self.seqs) >= self.cluster.max_batch or self.mem + head.need > self.cap:
                break
            self.queue.popleft()
            self._advance(now)
            self.seqs.append(head)
            self.mem += head.need
            self._restep()
            first = now + self.step
            self.dep.clock.call_at(
                first, lambda s=head, t=first: s.first.done() or s.first.set_result(t)
            )
            changed = True
        if changed:
            self._schedule()

    def _schedule(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.seqs:
            s = min(self.seqs, key=lambda s: (s.remaining, s.no))
            self.timer = self.dep.clock.call_at(
                self.t + max(s.remaining, 0.0) * self.step, self._done
            )

    def _done(self) -> None:
        self.timer = None
        now = self.dep.clock.now()
        self._advance(now)
        s = min(self.seqs, key=lambda s: (s.remaining, s.no))
        self.seqs.remove(s)
        self.mem = self.mem - s.need if self.seqs else 0.0
        self._restep()
        if not s.first.done():  # a one-token answer can finish with its first step
            s.first.set_result(now)
        s.finished.set_result(now)
        self.counters.success += 1
        self.counters.generation_tokens += s.output
        self._admit(now)
        self._schedule()

    def produced(self, s: _Seq) -> int:
        """Tokens ``s`` has made by now."""
        if s.finished.done():
            return s.output
        if s not in self.seqs or self.step <= 0:
            return 0
        left = s.remaining - (self.dep.clock.now() - self.t) / self.step
        return max(0, min(s.output - 1, int(s.output - max(left, 0.0))))


# ---- the deployment -----------------------------------------------------------------------
class Deployment:
    """Every instance of an inventory, served from this process (see the module docstring).

    Args:
        inventory: the deployment (its topology, endpoints and ``time_scale``).
        host: address to listen on.
        link_port: port of the link monitor (0: none).
        stream_interval_s: wall seconds between two streamed chunks of one answer.
        tables: the topology's cost tables (built when not given).
    """

    def __init__(
        self,
        inventory: Inventory,
        host: str = "127.0.0.1",
        link_port: int = 0,
        stream_interval_s: float = 0.05,
        tables: CostTables | None = None,
    ) -> None:
        self.inv = inventory
        self.topo = topo = inventory.topology
        self.host, self.link_port = host, link_port
        self.stream_interval_s = stream_interval_s
        self.tables = tables or build_tables(
            topo.cost_models(), [c.max_batch for c in topo.clusters]
        )
        self.cluster_index = {c.name: i for i, c in enumerate(topo.clusters)}
        self.kv_capacity = topo.decode_kv_capacity_bytes()
        self.model_label = (inventory.models or (topo.model.name,))[0]
        self.models = inventory.models

    def kv_bytes(self, tokens: float) -> float:
        t = self.tables
        return float(
            kv_bytes(t.kv_fixed, t.kv_per_token, t.swa_per_token, t.swa_window, float(tokens))
        )

    def channel_between(self, src_dc: str, dst_dc: str) -> Channel | None:
        if src_dc == dst_dc:
            return None
        return self.channels[f"{src_dc}->{dst_dc}"]

    async def start(self) -> None:
        """Create the instances and start listening (inside a running event loop)."""
        from aiohttp import web

        self.loop = asyncio.get_running_loop()
        self.clock = Clock(self.inv.time_scale)
        topo = self.topo
        self.caches = [LRU(c.prefix_cache_blocks) for c in topo.clusters]
        self.channels: dict[str, Channel] = {}
        for i, (li, a, b) in enumerate(topo.channels):
            link = topo.links[li]
            self.channels[f"{a}->{b}"] = Channel(
                self.clock, f"{a}->{b}", link.bandwidth_gbps, topo.channel_latency_s(i)
            )
        self.prefill: dict[str, PrefillInstance] = {}
        self.decode: dict[str, DecodeInstance] = {}
        for ep in self.inv.endpoints:
            if ep.role == "prefill":
                self.prefill[ep.address] = PrefillInstance(self, ep)
            else:
                self.decode[ep.address] = DecodeInstance(self, ep)
        import aiohttp

        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)
        )
        self.runners: list[web.AppRunner] = []
        for addr in dict.fromkeys(ep.address for ep in self.inv.endpoints):
            app = web.Application(client_max_size=self.inv.picker.max_body_bytes)
            handlers = _Handlers(self, addr)
            app.router.add_post("/v1/completions", handlers.completions)
            app.router.add_post("/v1/chat/completions", handlers.completions)
            app.router.add_get("/v1/models", handlers.models)
            app.router.add_get("/health", handlers.health)
            app.router.add_get("/metrics", handlers.metrics)
            app.router.add_post("/admin/fault", handlers.fault)
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            host, _, port = addr.rpartition(":")
            await web.TCPSite(runner, host.strip("[]"), int(port), backlog=1024).start()
            self.runners.append(runner)
        if self.link_port:
            app = web.Application()
            app.router.add_get("/metrics", self._link_metrics)
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            await web.TCPSite(runner, self.host, self.link_port).start()
            self.runners.append(runner)

    async def stop(self) -> None:
        for r in self.runners:
            await r.cleanup()
        await self.session.close()
        for p in self.prefill.values():
            p.task.cancel()

    async def _link_metrics(self, _: Any) -> Any:
        from aiohttp import web

        lines = []
        for name, ch in self.channels.items():
            a, b = name.split("->")
            lab = f'from="{a}",to="{b}"'
            lines += [
                f"prfaas_link_bandwidth_gbps{{{lab}}} {ch.bps / GBPS}",
                f"prfaas_link_bytes_in_flight{{{lab}}} {ch.bytes_in_flight()}",
                f"prfaas_link_flows{{{lab}}} {len(ch.flows)}",
            ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    def local_prefill(self, decode: DecodeInstance) -> PrefillInstance | None:
        """The least-busy prefill instance of a decode instance's own cluster."""
        pool = [p for p in self.prefill.values() if p.ep.cluster == decode.ep.cluster]
        if not pool:
            return None
        return min(pool, key=lambda p: (len(p.queue) + p.computing, p.ep.index))


def _error(status: int, message: str) -> Any:
    from aiohttp import web

    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "server_error")
    return web.json_response(
        {"error": {"message": message, "type": kind, "code": status}}, status=status
    )


class _Handlers:
    """The HTTP endpoints of the instance(s) at one address."""

    def __init__(self, dep: Deployment, address: str) -> None:
        self.dep = dep
        self.address = address
        self.prefill = dep.prefill.get(address)
        self.decode = dep.decode.get(address)
        self.instances = [i for i in (self.prefill, self.decode) if i is not None]

    async def health(self, _: Any) -> Any:
        from aiohttp import web

        return web.Response(text="ok")

    async def models(self, _: Any) -> Any:
        from aiohttp import web

        names = list(self.dep.models or (self.dep.model_label,))
        return web.json_response(
            {"object": "list", "data": [{"id": m, "object": "model"} for m in names]}
        )

    async def fault(self, request: Any) -> Any:
        from aiohttp import web

        data = await request.json()
        mode = data.get("metrics", "ok")
        if mode not in ("ok", "garbage", "error", "slow"):
            return _error(400, "metrics: allowed ok, garbage, error, slow")
        for inst in self.instances:
            inst.fault = mode
        return web.json_response({"metrics": mode})

    async def metrics(self, _: Any) -> Any:
        from aiohttp import web

        mode = self.instances[0].fault
        if mode == "error":
            return web.Response(status=500, text="internal error")
        if mode == "garbage":
            return web.Response(body=b"\x00\xff<html>not metrics{{{\n", content_type="text/plain")
        if mode == "slow":
            await asyncio.sleep(2.0)
        if len(self.instances) > 1:  # a co-located instance: both sides' requests count
            (w1, r1, _), (w2, r2, kv) = (i.gauges() for i in self.instances)
            text = self.instances[1].metrics_text((w1 + w2, r1 + r2, kv))
        else:
            text = self.instances[0].metrics_text()
        return web.Response(text=text, content_type="text/plain")

    async def completions(self, request: Any) -> Any:
        dep = self.dep
        wall_in = dep.loop.time()
        arrival = dep.clock.now()
        body = await request.read()
        try:
            prompt = parse_request(
                body,
                request.path,
                dep.topo.block_tokens,
                dep.inv.picker.chars_per_token,
                dep.inv.picker.max_prefix_blocks,
                dep.inv.picker.max_body_bytes,
            )
        except BadRequest as exc:
            return _error(exc.status, exc.message)
        if dep.models is not None and prompt.model not in dep.models:
            return _error(404, f"The model `{prompt.model}` does not exist.")
        kv_dest = request.headers.get(KV_DESTINATION)
        if kv_dest is not None:  # a prefill request sent by a decode instance
            if self.prefill is None:
                return _error(400, f"{self.address} is not a prefill instance")
            target = dep.decode.get(kv_dest)
            if target is None:
                return _error(400, f"{KV_DESTINATION}: {kv_dest} is no decode instance here")
            result = await self.prefill.submit(prompt, target)
            return _json(
                {
                    "object": "prefill",
                    "kv_transfer_params": {"remote_host_port": self.address},
                    "prfaas": result,
                }
            )
        if self.decode is None:
            return _error(
                400,
                f"{self.address} is a prefill-only instance; send requests to a "
                f"decode instance with the {PREFILL_HEADER} header",
            )
        output = prompt.max_tokens or 16
        if not self.decode.fits(prompt, output):
            return _error(
                400,
                f"prompt of {prompt.input_tokens} tokens plus max_tokens {output} "
                "exceed this instance's KV-cache capacity",
            )
        header = request.headers.get(PREFILL_HEADER)
        if header is not None and header != self.address:
            if header not in dep.prefill:
                return _error(400, f"{PREFILL_HEADER}: {header} is no prefill instance here")
            prefill_addr = header
        else:
            local = dep.prefill.get(self.address) or dep.local_prefill(self.decode)
            if local is None:
                return _error(503, "no prefill instance for this request")
            prefill_addr = local.ep.address
        try:
            if prefill_addr == self.address:
                timing = await dep.prefill[prefill_addr].submit(prompt, self.decode)
            else:
                async with dep.session.post(
                    f"http://{prefill_addr}{request.path}",
                    data=body,
                    headers={KV_DESTINATION: self.address, "content-type": "application/json"},
                ) as resp:
                    if resp.status != 200:
                        return _error(502, f"prefill at {prefill_addr} answered {resp.status}")
                    timing = (await resp.json())["prfaas"]
        except (OSError, asyncio.TimeoutError) as exc:
            return _error(502, f"prefill at {prefill_addr} failed: {type(exc).__name__}")
        seq = self.decode.enqueue(prompt, output)
        first = await seq.first
        self.decode.counters.ttft(first - arrival)
        route = request.headers.get("x-prfaas-route", "default")
        headers = {
            "x-prfaas-served-by": self.address,
            "x-prfaas-prefill": prefill_addr,
            "x-prfaas-route": route,
            WALL_IN: repr(wall_in),
        }
        rid = f"cmpl-{id(seq):x}"
        chat = prompt.kind == "chat"
        if not prompt.stream:
            await seq.finished
            headers[WALL_OUT] = repr(dep.loop.time())
            return _json(_final(rid, prompt, output, chat, timing, arrival, first), headers)
        return await self._stream(request, seq, prompt, output, rid, chat, headers)

    async def _stream(
        self,
        request: Any,
        seq: _Seq,
        prompt: PromptInfo,
        output: int,
        rid: str,
        chat: bool,
        headers: dict[str, str],
    ) -> Any:
        from aiohttp import web

        headers[WALL_OUT] = repr(self.dep.loop.time())
        resp = web.StreamResponse(headers={"content-type": "text/event-stream", **headers})
        await resp.prepare(request)
        sent = 0
        dec = self.decode
        assert dec is not None
        while True:
            done = seq.finished.done()
            made = output if done else max(dec.produced(seq), 1)
            if made > sent:
                await resp.write(_chunk(rid, prompt.model, chat, made - sent, sent == 0))
                sent = made
            if done:
                break
            try:
                await asyncio.wait_for(asyncio.shield(seq.finished), self.dep.stream_interval_s)
            except asyncio.TimeoutError:
                pass
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _json(data: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    from aiohttp import web

    return web.Response(
        body=json.dumps(data).encode(), content_type="application/json", headers=headers
    )


def _text(n: int) -> str:
    return "tok " * n


def _chunk(rid: str, model: str, chat: bool, n: int, first: bool) -> bytes:
    if chat:
        delta: dict[str, Any] = {"content": _text(n)}
        if first:
            delta["role"] = "assistant"
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": _text(n), "finish_reason": None}
        obj = "text_completion"
    data = {
        "id": rid,
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": {"completion_tokens_delta": n},
    }
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def _final(
    rid: str,
    prompt: PromptInfo,
    output: int,
    chat: bool,
    timing: dict[str, Any],
    arrival: float,
    first: float,
) -> dict[str, Any]:
    usage = {
        "prompt_tokens": prompt.input_tokens,
        "completion_tokens": output,
        "total_tokens": prompt.input_tokens + output,
    }
    if chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": _text(output)},
            "finish_reason": "length",
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": _text(output), "finish_reason": "length"}
        obj = "text_completion"
    return {
        "id": rid,
        "object": obj,
        "created": int(time.time()),
        "model": prompt.model,
        "choices": [choice],
        "usage": usage,
        "prfaas": {**timing, "decode_arrival_s": arrival, "first_token_s": first},
    }


async def run_deployment(
    inventory: Inventory,
    link_port: int = 0,
    stop: asyncio.Event | None = None,
    started: Callable[[Deployment], None] | None = None,
) -> None:
    """Serve the emulated deployment until ``stop`` is set (or forever)."""
    dep = Deployment(inventory, link_port=link_port)
    await dep.start()
    if started is not None:
        started(dep)
    try:
        if stop is None:
            await asyncio.Event().wait()
        else:
            await stop.wait()
    finally:
        await dep.stop()
