"""An open-loop, bounded load generator that replays a trace against an OpenAI endpoint.

Each trace request is sent at its own arrival time (``arrival_s / rate_multiplier /
time_scale`` wall seconds after the start), whether or not earlier ones have been answered
(open loop), as a completions request whose prompt is :func:`~.prompt.synthetic_prompt` of
the trace's input length and prefix-block ids, with ``max_tokens`` the trace's output length.
It is bounded in requests (``--requests``), in wall time (``--duration-s``: nothing is sent
after it, and answers still open ``--timeout-s`` later are cut) and in requests open at once
(``--max-inflight``: a request that would exceed it is not sent and is counted as
``skipped``).

What the client saw, per request: the status, the time to the first streamed token (TTFT;
for an answer that is not streamed, the time to the whole answer), the time to the last
byte, and the ``x-prfaas-route`` / ``x-prfaas-served-by`` headers the emulated servers
echo. Against the emulated servers it also times the *path*: the wall time between sending
the request and its arrival at the model server, plus between the server starting its
answer and the client getting the answer's headers (the servers stamp both instants with
the machine's monotonic clock), i.e. what a gateway in between adds to a request.
:func:`summarise` turns them into the figures the demo and the benchmarks print;
times are reported in the deployment's seconds (wall seconds x ``time_scale``).

Traces: a Mooncake JSONL file or a shipped trace name (``mooncake-conversation``), or a
scenario's synthetic workload written out as a Mooncake JSONL file by
:func:`synthetic_trace_file` (so the simulator can replay exactly the same requests).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prfaas_env.gateway.emulator import WALL_IN, WALL_OUT
from prfaas_env.gateway.prompt import DEFAULT_CHARS_PER_TOKEN, synthetic_prompt

__all__ = [
    "Result",
    "TraceRequests",
    "add_load_arguments",
    "replay",
    "run_load_command",
    "summarise",
    "synthetic_trace_file",
    "trace_requests",
]


@dataclass(frozen=True)
class TraceRequests:
    """Requests to send: arrival (s, from 0), input and output tokens, prefix-block ids."""

    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    blocks: list[np.ndarray]
    block_tokens: int

    def __len__(self) -> int:
        return int(self.arrival_s.size)


def trace_requests(
    spec: str | Path, limit: int | None = None, window_s: tuple[float, float] | None = None
) -> TraceRequests:
    """The first ``limit`` requests of a trace (a shipped name or a file; Mooncake or Azure
    format, as the simulator reads them), optionally of a time window."""
    from prfaas_env.sim.traces import load_trace

    tr = load_trace(spec)
    if window_s is not None:
        tr = tr.window(*window_s)
    n = len(tr) if limit is None else min(limit, len(tr))
    return TraceRequests(
        arrival_s=tr.arrival_s[:n] - tr.arrival_s[0],
        input_tokens=tr.input_tokens[:n],
        output_tokens=tr.output_tokens[:n],
        blocks=[tr.blocks(i) for i in range(n)],
        block_tokens=tr.block_tokens,
    )


def synthetic_trace_file(
    config: str, requests: int, seed: int, path: str | Path, rate_multiplier: float = 1.0
) -> Path:
    """Draw ``requests`` requests of scenario ``config``'s workload (the simulator's own
    sampler and seed rules: the stream env 0 of a simulator seeded ``seed`` sees) and write
    them as a Mooncake JSONL trace (timestamps in ms, ``hash_ids`` the prefix-block ids)."""
    from prfaas_env.env.config import resolve_config
    from prfaas_env.sim import workload as wl
    from prfaas_env.sim.engine import VecSimulator

    sc = resolve_config(config)[0]
    if rate_multiplier != 1.0:
        sc = sc.with_rate(rate_multiplier)
    vec = VecSimulator(sc, 1)
    vec._reset_env(0, np.random.default_rng(seed))  # the same draws as reset(seed)
    wp, ws = vec.workload_params, vec.workload_state
    out = Path(path)
    t0 = None
    with out.open("w") as f:
        for _ in range(requests):
            wl.next_request(wp, ws, 0)
            t = float(ws.req_t[0])
            t0 = t if t0 is None else t0
            blocks = [
                int(wl.block_id(wp.tr_blocks, ws.wi, 0, b)) for b in range(int(ws.req_nblocks[0]))
            ]
            f.write(
                json.dumps(
                    {
                        "timestamp": round((t - t0) * 1000.0, 3),
                        "input_length": int(ws.req_in[0]),
                        "output_length": int(ws.req_out[0]),
                        "hash_ids": blocks,
                    }
                )
                + "\n"
            )
    return out


@dataclass
class Result:
    """What the client saw of one request (wall seconds from the start of the run)."""

    index: int
    sent_s: float
    status: int = 0  # 0: no HTTP answer (connection error or cut at the end)
    first_s: float = math.nan
    done_s: float = math.nan
    route: str = ""
    served_by: str = ""
    error: str = ""
    skipped: bool = False
    path_s: float = math.nan  # wall s between client and server, both ways (see replay)


@dataclass
class LoadOptions:
    url: str
    model: str = "prfaas-1t-hybrid"
    stream: bool = True
    chat: bool = False
    time_scale: float = 1.0
    rate_multiplier: float = 1.0
    duration_s: float = 600.0
    timeout_s: float = 120.0
    max_inflight: int = 4096
    chars_per_token: int = DEFAULT_CHARS_PER_TOKEN
    max_output_tokens: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # send straight to servers instead of a gateway: (base URL, extra headers), in turn
    direct: list[tuple[str, dict[str, str]]] = field(default_factory=list)


def _body(req: TraceRequests, i: int, o: LoadOptions) -> bytes:
    text = synthetic_prompt(
        int(req.input_tokens[i]), req.blocks[i], req.block_tokens, o.chars_per_token, salt=i
    )
    out = int(req.output_tokens[i])
    if o.max_output_tokens is not None:
        out = min(out, o.max_output_tokens)
    body: dict[str, Any] = {
        "model": o.model,
        "max_tokens": out,
        "stream": o.stream,
        "ignore_eos": True,
    }
    if o.chat:
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = text
    return json.dumps(body).encode()


async def replay(
    req: TraceRequests, o: LoadOptions, progress: Any = None
) -> tuple[list[Result], float]:
    """Send every request of ``req`` open loop (see the module docstring); the results in
    trace order and the wall seconds the run took."""
    import aiohttp

    path = "/v1/chat/completions" if o.chat else "/v1/completions"
    results: list[Result] = []
    inflight = 0
    conn = aiohttp.TCPConnector(limit=0, force_close=False, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=o.timeout_s)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        t0 = loop.time()
        tasks = []

        async def one(i: int, res: Result, body: bytes) -> None:
            nonlocal inflight
            headers = {"content-type": "application/json", **o.headers}
            base = o.url
            if o.direct:
                base, extra = o.direct[i % len(o.direct)]
                headers.update(extra)
            try:
                t_send = loop.time()
                async with session.post(base + path, data=body, headers=headers) as resp:
                    t_head = loop.time()
                    res.status = resp.status
                    w_in, w_out = resp.headers.get(WALL_IN), resp.headers.get(WALL_OUT)
                    if w_in and w_out:  # the server's clock is this machine's monotonic clock
                        res.path_s = (float(w_in) - t_send) + (t_head - float(w_out))
                    res.route = resp.headers.get("x-prfaas-route", "")
                    res.served_by = resp.headers.get("x-prfaas-served-by", "")
                    if resp.status == 200 and o.stream:
                        async for chunk in resp.content.iter_any():
                            if math.isnan(res.first_s) and (
                                b'"text"' in chunk or b'"content"' in chunk
                            ):
                                res.first_s = loop.time() - t0
                    else:
                        await resp.read()
                    res.done_s = loop.time() - t0
                    if math.isnan(res.first_s) and resp.status == 200:
                        res.first_s = res.done_s
            except asyncio.TimeoutError:
                res.error = "timeout"
            except aiohttp.ClientError as exc:
                res.error = type(exc).__name__
            except OSError as exc:
                res.error = type(exc).__name__
            finally:
                inflight -= 1
                if progress is not None:
                    progress()

        scale = o.time_scale * o.rate_multiplier
        for i in range(len(req)):
            at = float(req.arrival_s[i]) / scale
            if at > o.duration_s:
                break
            body = _body(req, i, o)  # made before its send time: client work is not latency
            delay = t0 + at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            res = Result(i, loop.time() - t0)
            results.append(res)
            if inflight >= o.max_inflight:
                res.skipped = True
                continue
            inflight += 1
            tasks.append(asyncio.create_task(one(i, res, body)))
        if tasks:
            await asyncio.wait(tasks, timeout=o.timeout_s)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        wall = loop.time() - t0
    return results, wall


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarise(results: list[Result], wall_s: float, time_scale: float = 1.0) -> dict[str, Any]:
    """Figures of a run as the client saw them (times in deployment seconds)."""
    sent = [r for r in results if not r.skipped]
    answered = [r for r in sent if r.status]
    ok = [r for r in answered if r.status == 200]
    ttft = [(r.first_s - r.sent_s) * time_scale for r in ok if not math.isnan(r.first_s)]
    e2e = [(r.done_s - r.sent_s) * time_scale for r in ok if not math.isnan(r.done_s)]
    path = [r.path_s * 1e3 for r in ok if not math.isnan(r.path_s)]
    span = max((r.done_s for r in answered if not math.isnan(r.done_s)), default=0.0) - min(
        (r.sent_s for r in sent), default=0.0
    )
    statuses = Counter(str(r.status) for r in answered)
    errors = Counter(r.error for r in sent if not r.status and r.error)
    return {
        "requests": len(sent),
        "skipped": len(results) - len(sent),
        "responses": len(answered),
        "ok": len(ok),
        "status": dict(sorted(statuses.items())),
        "status_5xx": sum(n for s, n in statuses.items() if s.startswith("5")),
        "no_response": len(sent) - len(answered),
        "errors": dict(errors),
        "wall_s": round(wall_s, 3),
        "throughput_rps": round(len(answered) / span * 1.0, 3) if span > 0 else None,
        "throughput_rps_deployment": round(len(answered) / (span * time_scale), 4)
        if span > 0
        else None,
        "ttft_p50_s": _pct(ttft, 50),
        "ttft_p90_s": _pct(ttft, 90),
        "ttft_p99_s": _pct(ttft, 99),
        "ttft_mean_s": float(np.mean(ttft)) if ttft else None,
        "e2e_p50_s": _pct(e2e, 50),
        "e2e_p99_s": _pct(e2e, 99),
        "path_p50_ms": _pct(path, 50),
        "path_p99_ms": _pct(path, 99),
        "routes": dict(sorted(Counter(r.route or "none" for r in ok).items())),
    }


def add_load_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--trace", help="trace file or shipped name (mooncake-conversation, ...)")
    p.add_argument("--config", help="a scenario whose synthetic workload to replay instead")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic workload")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--model", default="prfaas-1t-hybrid")
    p.add_argument("--time-scale", type=float, default=1.0, help="the deployment's time_scale")
    p.add_argument("--rate-multiplier", type=float, default=1.0)
    p.add_argument("--duration-s", type=float, default=600.0)
    p.add_argument("--timeout-s", type=float, default=120.0)
    p.add_argument("--max-inflight", type=int, default=4096)
    p.add_argument("--no-stream", action="store_true")
    p.add_argument("--chat", action="store_true")
    p.add_argument("--max-output-tokens", type=int)
    p.add_argument("--out", help="write per-request results (JSONL) here")


def run_load_command(args: argparse.Namespace) -> int:
    import tempfile

    from prfaas_env.errors import ConfigError

    if (args.trace is None) == (args.config is None):
        raise ConfigError("give either --trace or --config")
    if args.trace is not None:
        req = trace_requests(args.trace, args.requests)
    else:
        path = Path(tempfile.mkdtemp()) / "trace.jsonl"
        req = trace_requests(synthetic_trace_file(args.config, args.requests, args.seed, path))
    o = LoadOptions(
        url=args.url.rstrip("/"),
        model=args.model,
        stream=not args.no_stream,
        chat=args.chat,
        time_scale=args.time_scale,
        rate_multiplier=args.rate_multiplier,
        duration_s=args.duration_s,
        timeout_s=args.timeout_s,
        max_inflight=args.max_inflight,
        max_output_tokens=args.max_output_tokens,
    )
    results, wall = asyncio.run(replay(req, o))
    if args.out:
        with open(args.out, "w") as f:
            for r in results:
                f.write(json.dumps(r.__dict__) + "\n")
    print(json.dumps(summarise(results, wall, args.time_scale)))
    return 0
