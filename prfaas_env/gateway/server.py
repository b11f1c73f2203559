"""The picker process: Envoy's ext_proc gRPC service, gRPC health, the scrape loop and a
Prometheus ``/metrics`` page, all on one asyncio event loop.

:class:`StreamHandler` is one ext_proc stream (one HTTP request) as a plain state machine:
``handle(ProcessingRequest) -> [ProcessingResponse, ...]``; the gRPC servicer only feeds it.
Body handling by the request body mode Envoy announces in ``protocol_config`` (or the
``--body-mode`` the picker was started with, for proxies that do not announce it):

- ``BUFFERED``: the headers are answered at once (continue); the whole body arrives in one
  message and its answer carries the destination header, the metadata and
  ``clear_route_cache``.
- ``FULL_DUPLEX_STREAMED`` (the GAIE reference picker's mode): nothing is answered until the
  body has ended (``end_of_stream`` or trailers); then the headers answer carries the
  destination and the body goes back to Envoy as streamed pieces.
- ``STREAMED``: as full duplex, but each body piece is answered with a plain continue; this
  needs Envoy's ``send_body_without_waiting_for_header_response: true``.
- no body (``end_of_stream`` on the headers, e.g. ``GET /v1/models``): any ready decode
  endpoint, in turn.

A request the picker cannot parse gets an ImmediateResponse (400/404/413); a fault inside
the picker lets the request continue without a destination (Envoy's default route takes
it) and is logged and counted as ``internal``.

Metrics (``GET /metrics`` on the metrics port, with ``/healthz``, ``/readyz`` and ``/stats``):
``prfaas_gateway_requests_total{outcome}``, ``prfaas_gateway_decisions_total{route,source}``,
``prfaas_gateway_fallbacks_total{reason}``, ``prfaas_gateway_decision_seconds``,
``prfaas_gateway_scrapes_total{result}``, ``prfaas_gateway_endpoint_up{endpoint,role}``,
``prfaas_gateway_served_total{endpoint}`` (docs/gateway.md says what each counts).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as epg

from prfaas_env.gateway import protocol as proto
from prfaas_env.gateway.picker import Pick, Picker
from prfaas_env.gateway.prompt import BadRequest, parse_request

__all__ = ["PickerMetrics", "PickerServer", "StreamHandler"]

log = logging.getLogger("prfaas_env.gateway")

BUFFERED, STREAMED, FULL_DUPLEX = "BUFFERED", "STREAMED", "FULL_DUPLEX_STREAMED"
BODY_MODES = (BUFFERED, STREAMED, FULL_DUPLEX)
_MODE_NAMES = {
    0: "NONE",
    1: STREAMED,
    2: BUFFERED,
    3: "BUFFERED_PARTIAL",
    4: FULL_DUPLEX,
    5: "GRPC",
}
_KINDS = {
    400: "invalid_request_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class PickerMetrics:
    """The picker's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "prfaas_gateway_requests", "Requests by outcome", ["outcome"], registry=r
        )
        self.decisions = Counter(
            "prfaas_gateway_decisions",
            "Routed requests by route and decider",
            ["route", "source"],
            registry=r,
        )
        self.fallbacks = Counter(
            "prfaas_gateway_fallbacks",
            "Decisions not taken by the model as is, by reason",
            ["reason"],
            registry=r,
        )
        self.seconds = Histogram(
            "prfaas_gateway_decision_seconds",
            "Picker decision time, s",
            buckets=(5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2),
            registry=r,
        )
        self.scrapes = Counter(
            "prfaas_gateway_scrapes", "Metric scrapes by result", ["result"], registry=r
        )
        self.up = Gauge(
            "prfaas_gateway_endpoint_up",
            "1 while metrics are fresh",
            ["endpoint", "role"],
            registry=r,
        )
        self.streams = Gauge("prfaas_gateway_streams_open", "ext_proc streams open", registry=r)
        self.served = Counter(
            "prfaas_gateway_served", "Responses by serving endpoint", ["endpoint"], registry=r
        )
        self.recent: list[float] = []  # last decision times (s), for the demo's summary

    def observe(self, pick: Pick) -> None:
        self.seconds.observe(pick.seconds)
        self.recent.append(pick.seconds)
        if len(self.recent) > 200_000:
            del self.recent[:100_000]
        if pick.status == 200:
            self.decisions.labels(pick.route, pick.source).inc()
            if pick.reason:
                self.fallbacks.labels(_reason_label(pick.reason)).inc()


def _reason_label(reason: str) -> str:
    """A bounded label for a reason: its first clause without the offending value."""
    first = reason.split(";")[0].strip()
    return re.sub(r"\d+", "N", first.split(":")[0])[:80]


@dataclass
class _Options:
    block_tokens: int
    chars_per_token: int
    max_blocks: int
    max_body_bytes: int
    fallback_format: str
    default_mode: str


class StreamHandler:
    """One ext_proc stream (see the module docstring): feed it every ProcessingRequest with
    :meth:`handle`, send back what it returns, stop when :attr:`done`."""

    def __init__(
        self, picker: Picker, opts: _Options, metrics: PickerMetrics | None = None
    ) -> None:
        self.picker = picker
        self.opts = opts
        self.metrics = metrics
        self.mode: str | None = None
        self.response_mode = "NONE"
        self.path = "/"
        self.subset: list[str] | None = None
        self.chunks: list[bytes] = []
        self.pieces = 0
        self.size = 0
        self.decided = False
        self.done = False

    def handle(self, req: ep.ProcessingRequest) -> list[ep.ProcessingResponse]:
        if self.mode is None:
            if req.HasField("protocol_config"):
                pc = req.protocol_config
                self.mode = _MODE_NAMES.get(pc.request_body_mode, "NONE")
                self.response_mode = _MODE_NAMES.get(pc.response_body_mode, "NONE")
            else:
                self.mode = self.opts.default_mode
        kind = req.WhichOneof("request")
        if kind == "request_headers":
            return self._headers(req)
        if kind == "request_body":
            return self._body(req.request_body)
        if kind == "request_trailers":
            return self._trailers()
        if kind == "response_headers":
            served = proto.served_endpoint(req)
            if served and self.metrics is not None:
                self.metrics.served.labels(served).inc()
            return [proto.continue_headers(response=True)]
        if kind == "response_body":
            if self.response_mode == FULL_DUPLEX:
                b = req.response_body
                return proto.body_chunks(b.body, b.end_of_stream, response=True)
            return [proto.continue_body(response=True)]
        if kind == "response_trailers":
            return [proto.continue_trailers(response=True)]
        return []

    # ---- request path ---------------------------------------------------------------------
    def _headers(self, req: ep.ProcessingRequest) -> list[ep.ProcessingResponse]:
        h = req.request_headers
        self.path = proto.header_value(h, ":path") or "/"
        self.subset = proto.subset_hint(req)
        if h.end_of_stream or self.mode == "NONE":
            pick = self._safe(lambda: self.picker.pick_without_body(self.subset))
            self._count(pick, "no_body")
            self.decided = True
            return [self._answer_headers(pick)]
        if self.mode in (BUFFERED, "BUFFERED_PARTIAL"):
            return [proto.continue_headers()]
        return []  # streamed modes: the headers wait for the body's decision

    def _body(self, b: ep.HttpBody) -> list[ep.ProcessingResponse]:
        if self.decided:  # e.g. more pieces after an immediate response; pass them on
            if self.mode == FULL_DUPLEX:
                return proto.body_chunks(b.body, b.end_of_stream)
            return [proto.continue_body()]
        self.chunks.append(b.body)
        self.pieces += 1
        self.size += len(b.body)
        if self.size > self.opts.max_body_bytes:
            self.decided = self.done = True
            return [self._reject(413, f"request body over {self.opts.max_body_bytes} bytes")]
        if self.mode in (BUFFERED, "BUFFERED_PARTIAL") or b.end_of_stream:
            return self._decide(end_of_stream=True)
        return []

    def _trailers(self) -> list[ep.ProcessingResponse]:
        out = []
        if not self.decided:
            out = self._decide(end_of_stream=False)
        if not self.done:
            out.append(proto.continue_trailers())
        return out

    def _decide(self, end_of_stream: bool) -> list[ep.ProcessingResponse]:
        self.decided = True
        body = b"".join(self.chunks)
        self.chunks = []
        t0 = time.perf_counter()
        o = self.opts
        try:
            prompt = parse_request(
                body, self.path, o.block_tokens, o.chars_per_token, o.max_blocks, o.max_body_bytes
            )
        except BadRequest as exc:
            self.done = True
            return [self._reject(exc.status, exc.message)]
        pick = self._safe(lambda: self.picker.pick(prompt, self.subset))
        pick = Pick(**{**pick.__dict__, "seconds": time.perf_counter() - t0})
        self._count(pick, "routed")
        if pick.status not in (200, -1):
            self.done = True
            return [self._reject(pick.status, pick.message or "", pick)]
        if self.mode in (BUFFERED, "BUFFERED_PARTIAL"):
            common, meta = self._mutation(pick)
            return [proto.continue_body(common, meta)]
        head = self._answer_headers(pick)
        if self.mode == STREAMED:
            return [head] + [proto.continue_body() for _ in range(self.pieces)]
        return [head, *proto.body_chunks(body, end_of_stream)]

    def _mutation(self, pick: Pick) -> tuple[Any, Any]:
        if pick.status != 200 or pick.destination is None:
            return None, None  # internal fault: no destination, Envoy's default route
        decision = pick.source + (f": {pick.reason}" if pick.reason else "")
        extra = [(proto.ROUTE, pick.route), (proto.DECISION, _header_safe(decision))]
        return proto.destination_mutation(
            pick.destination, pick.fallbacks, pick.prefill, self.opts.fallback_format, extra
        )

    def _answer_headers(self, pick: Pick) -> ep.ProcessingResponse:
        if pick.status not in (200, -1):
            self.done = True
            return self._reject(pick.status, pick.message or "", pick)
        common, meta = self._mutation(pick)
        return proto.continue_headers(common, meta)

    def _safe(self, fn: Any) -> Pick:
        try:
            return fn()
        except Exception as exc:  # a fault in the picker: the request goes on unrouted
            log.exception("picker fault; the request continues to the default route")
            return Pick(
                -1, route="none", source="picker", reason=f"internal: {type(exc).__name__}: {exc}"
            )

    def _reject(self, status: int, message: str, pick: Pick | None = None) -> ep.ProcessingResponse:
        if pick is None:
            self._count(Pick(status, message=message), "")
        log.info("answering %d: %s (path %s)", status, message, self.path)
        return proto.immediate(status, message, _KINDS.get(status, "invalid_request_error"))

    def _count(self, pick: Pick, ok_label: str) -> None:
        m = self.metrics
        if m is None:
            return
        if pick.status == 200:
            m.requests.labels(ok_label).inc()
            m.observe(pick)
            if pick.reason:
                _log_reason(pick.reason)
        elif pick.status == -1:
            m.requests.labels("internal").inc()
        else:
            m.requests.labels(str(pick.status)).inc()
            if pick.seconds:
                m.seconds.observe(pick.seconds)


_last_reason = [""]


def _log_reason(reason: str) -> None:
    """Log a fallback reason when it differs from the last one logged (a metric outage
    would otherwise log every request)."""
    label = _reason_label(reason)
    if label != _last_reason[0]:
        _last_reason[0] = label
        log.info("decision not by the model as is: %s", reason)


def _header_safe(text: str, limit: int = 200) -> str:
    clean = "".join(c if 32 <= ord(c) < 127 else "?" for c in text)
    return clean[:limit]


class _Servicer(epg.ExternalProcessorServicer):
    def __init__(self, picker: Picker, opts: _Options, metrics: PickerMetrics) -> None:
        self.picker, self.opts, self.metrics = picker, opts, metrics

    async def Process(self, request_iterator: Any, context: Any) -> Any:
        handler = StreamHandler(self.picker, self.opts, self.metrics)
        self.metrics.streams.inc()
        try:
            async for req in request_iterator:
                for resp in handler.handle(req):
                    yield resp
                if handler.done:
                    return
        finally:
            self.metrics.streams.dec()


class PickerServer:
    """The picker process's servers (see the module docstring).

    Args:
        picker: the decision maker (its datastore is scraped here).
        host: address to listen on (ext_proc, health and metrics).
        port: ext_proc and gRPC health port.
        metrics_port: HTTP port of ``/metrics``, ``/healthz``, ``/readyz`` (0: none).
        body_mode: the body mode assumed when Envoy does not announce one.
    """

    def __init__(
        self,
        picker: Picker,
        host: str = "127.0.0.1",
        port: int = 9002,
        metrics_port: int = 9090,
        body_mode: str = BUFFERED,
    ) -> None:
        if body_mode not in BODY_MODES:
            raise ValueError(f"body mode {body_mode!r}; allowed: {', '.join(BODY_MODES)}")
        inv = picker.inv
        self.picker = picker
        self.host, self.port, self.metrics_port = host, port, metrics_port
        self.metrics = PickerMetrics()
        self.opts = _Options(
            block_tokens=inv.topology.block_tokens,
            chars_per_token=inv.picker.chars_per_token,
            max_blocks=inv.picker.max_prefix_blocks,
            max_body_bytes=inv.picker.max_body_bytes,
            fallback_format=inv.picker.fallback_format,
            default_mode=body_mode,
        )
        self.ready = False
        self._started_at = time.monotonic()

    def _on_scrape(self, result: Any) -> None:
        self.picker.store.on_scrape(result)
        self.metrics.scrapes.labels(
            "ok" if result.error is None else result.error.split(":")[0].split(" ")[0]
        ).inc()
        if result.error is not None:
            log.debug("scrape of %s failed: %s", result.url, result.error)

    def _update_ready(self) -> bool:
        store = self.picker.store
        waited = time.monotonic() - self._started_at > 2 * store.settings.stale_after_s
        return store.all_scraped() or waited

    async def run(
        self, started: asyncio.Event | None = None, stop: asyncio.Event | None = None
    ) -> None:
        """Serve until ``stop`` is set (or forever)."""
        import grpc
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc

        from prfaas_env.gateway.scrape import Scraper

        store = self.picker.store
        max_msg = self.opts.max_body_bytes + (2 << 20)
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_msg),
                ("grpc.max_send_message_length", max_msg),
                ("grpc.so_reuseport", 0),
            ]
        )
        epg.add_ExternalProcessorServicer_to_server(
            _Servicer(self.picker, self.opts, self.metrics), server
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        bound = server.add_insecure_port(f"{self.host}:{self.port}")
        if bound == 0:
            raise OSError(f"cannot listen on {self.host}:{self.port}")
        self.port = bound
        scraper = Scraper(
            store.scrape_urls(),
            store.wanted,
            self._on_scrape,
            store.settings.scrape_interval_s,
            store.settings.scrape_timeout_s,
        )
        await server.start()
        import gc

        gc.collect()
        gc.freeze()  # the router and tables are long-lived: keep them out of every GC pass
        svc = health_pb2.HealthCheckResponse
        for name in ("", "liveness"):
            await health_servicer.set(name, svc.SERVING)
        for name in ("readiness", "envoy.service.ext_proc.v3.ExternalProcessor"):
            await health_servicer.set(name, svc.NOT_SERVING)
        web_runner = await self._start_web() if self.metrics_port else None
        scrape_task = asyncio.create_task(scraper.run())
        log.info("picker serving ext_proc on %s:%d", self.host, self.port)
        if started is not None:
            started.set()
        try:
            while stop is None or not stop.is_set():
                if not self.ready and self._update_ready():
                    self.ready = True
                    for name in ("readiness", "envoy.service.ext_proc.v3.ExternalProcessor"):
                        await health_servicer.set(name, svc.SERVING)
                    log.info("picker ready (every endpoint scraped once, or waited)")
                now = store.clock()
                for st in store.states.values():
                    self.metrics.up.labels(st.endpoint.address, st.endpoint.role).set(
                        1.0 if st.fresh(now, store.settings.stale_after_s) else 0.0
                    )
                if stop is None:
                    await asyncio.sleep(0.1)
                else:
                    try:
                        await asyncio.wait_for(stop.wait(), 0.1)
                    except asyncio.TimeoutError:
                        pass
        finally:
            scraper.stop()
            await asyncio.gather(scrape_task, return_exceptions=True)
            await server.stop(0.5)
            if web_runner is not None:
                await web_runner.cleanup()

    def stats(self) -> dict[str, Any]:
        """Exact decision-time percentiles of the recent decisions (ms) and the counters."""
        import numpy as np

        rec = np.array(self.metrics.recent) * 1e3
        out: dict[str, Any] = {"decisions": int(rec.size)}
        if rec.size:
            for q in (50, 90, 99):
                out[f"decision_p{q}_ms"] = float(np.percentile(rec, q))
            out["decision_max_ms"] = float(rec.max())
        for metric in (self.metrics.requests, self.metrics.decisions, self.metrics.fallbacks):
            for fam in metric.collect():
                for sm in fam.samples:
                    if sm.name.endswith("_total"):
                        key = ",".join(f"{k}={v}" for k, v in sorted(sm.labels.items()))
                        out.setdefault(fam.name, {})[key] = int(sm.value)
        return out

    async def _start_web(self) -> Any:
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(
                body=generate_latest(self.metrics.registry),
                headers={"Content-Type": CONTENT_TYPE_LATEST},
            )

        async def healthz(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def stats(_: web.Request) -> web.Response:
            return web.json_response(self.stats())

        async def readyz(_: web.Request) -> web.Response:
            return web.json_response({"ready": self.ready}, status=200 if self.ready else 503)

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/stats", stats)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.metrics_port)
        await site.start()
        return runner


def serve_forever(server: PickerServer) -> None:
    """Run ``server`` until interrupted (Ctrl-C or SIGTERM)."""
    import signal

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await server.run(stop=stop)

    asyncio.run(main())
