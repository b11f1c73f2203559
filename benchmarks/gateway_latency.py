"""Gateway latency and robustness: the picker alone, and Envoy + picker under open-loop load.

    python benchmarks/gateway_latency.py picker                       # decision time in process
    python benchmarks/gateway_latency.py load --rate 500 --requests 20000
    python benchmarks/gateway_latency.py load --rate 500 --requests 100000 --arms gateway
    python benchmarks/gateway_latency.py kill --rate 500 --requests 30000

``picker``: the picker's ext_proc stream handler (parse the body, estimate tokens and prefix
hashes, build the live state, decide, build the answer) on request bodies of the paper's
workload (log-normal prompts, mean about 27K tokens) and of the Mooncake conversation trace,
one request at a time after a warm-up; p50, p99, p99.9 of the wall time per body.

``load``: the paper's topology (4 + 3 prefill and 5 decode instances) emulated 1000 times
faster than the wall clock (so the servers answer within a few wall milliseconds), short
prompts (log-normal, median about 1K tokens) and 2 output tokens, Poisson arrivals at
``--rate`` requests per wall second, open loop. Two arms, in alternating blocks of
``--block`` requests: through Envoy and the picker (``gateway``), and straight to the decode
servers with the prefill header set in turn (``direct``). The *path* of a request is the
wall time from the client sending it to the server receiving it plus from the server
answering to the client getting the answer's headers (the emulated servers stamp both with
the machine's monotonic clock); the gateway's added latency is the gateway arm's path minus
the direct arm's, compared percentile by percentile. Also counted: answers by status,
requests with no answer, and the picker's own decision times during the run.

``kill``: the gateway arm only; the picker is killed (SIGKILL) a third of the way through the
schedule and restarted two thirds of the way; every request must still get an answer
(Envoy's default route while the picker is down), and the picker must route again after it
is back.

Client, Envoy, picker and servers share the machine's cores; the figures include that.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prfaas_env.env.config import resolve_config  # noqa: E402
from prfaas_env.gateway.loadgen import (  # noqa: E402
    LoadOptions,
    TraceRequests,
    replay,
    summarise,
    synthetic_trace_file,
    trace_requests,
)
from prfaas_env.gateway.stack import Stack  # noqa: E402

SCALE = 1000.0


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}"


def short_requests(n: int, rate: float, seed: int) -> TraceRequests:
    """``n`` short requests, Poisson at ``rate`` per wall second (times in deployment s)."""
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1.0 / rate, n)) * SCALE
    arrival -= arrival[0]
    tokens = np.clip(rng.lognormal(7.0, 0.8, n), 16, 4096).astype(np.int64)
    blocks = [np.arange(-(-int(t) // 512)) + (i << 12) for i, t in enumerate(tokens)]
    return TraceRequests(arrival, tokens, np.full(n, 2, np.int64), blocks, 512)


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


# ---- picker in process ----------------------------------------------------------------------
def picker_bench(
    n: int, workloads: list[str], bundle: str | None = None, waiting: int = 1
) -> dict[str, Any]:
    import tempfile

    from envoy.config.core.v3 import base_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

    from prfaas_env.gateway.build import build_picker
    from prfaas_env.gateway.loadgen import _body
    from prfaas_env.gateway.scrape import ScrapeResult, parse_metrics
    from prfaas_env.gateway.server import StreamHandler, _Options
    from prfaas_env.gateway.stack import write_inventory

    sc, _ = resolve_config("paper_prfaas")
    work = Path(tempfile.mkdtemp())
    inv_path, _ = write_inventory(sc.raw["topology"], work / "inv.yaml", 1.0, None)

    def make() -> Any:  # the threshold router, or the bundle (e.g. pretrained:generalist)
        if bundle is not None:
            return build_picker(inv_path, bundle=bundle)
        return build_picker(inv_path, policy="prfaas_threshold")

    picker = make()
    store = picker.store
    text = (
        f"vllm:num_requests_waiting {waiting}\nvllm:num_requests_running 1\n"
        "vllm:kv_cache_usage_perc 0.3\n"
    )
    samples, _ = parse_metrics(text, store.wanted)

    def refresh() -> None:
        for url in store.scrape_urls():
            store.on_scrape(ScrapeResult(url, samples, None, 0, store.clock()))

    head = ep.ProcessingRequest(
        request_headers=ep.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[base_pb2.HeaderValue(key=":path", raw_value=b"/v1/completions")]
            )
        )
    )
    opts = _Options(512, 4, 512, 32 << 20, "key", "BUFFERED")
    out = {}
    traces = {}
    if "paper" in workloads:
        path = synthetic_trace_file("paper_prfaas", 2000, 0, work / "t.jsonl")
        traces["paper workload"] = trace_requests(path)
    if "mooncake" in workloads:
        traces["mooncake conversation"] = trace_requests("mooncake-conversation", 2000)
    for name, req in traces.items():
        picker = make()  # a fresh state per workload
        store = picker.store
        sources: Counter[str] = Counter()  # who decided: the model, its fallback, a heuristic
        decide = picker.pick

        def counted(*a: Any, _decide: Any = decide, _seen: Any = sources, **k: Any) -> Any:
            pick = _decide(*a, **k)
            _seen[pick.source] += 1
            return pick

        picker.pick = counted  # type: ignore[method-assign]
        o = LoadOptions(url="", stream=False)
        bodies = [_body(req, i, o) for i in range(len(req))]
        msgs = [
            ep.ProcessingRequest(request_body=ep.HttpBody(body=b, end_of_stream=True))
            for b in bodies
        ]
        gc.collect()
        gc.freeze()  # as the picker's server does once it has started
        times = []
        for k in range(n + 500):
            if k % 50 == 0:
                refresh()
            h = StreamHandler(picker, opts)
            h.handle(head)
            msg = msgs[k % len(msgs)]
            t0 = time.perf_counter_ns()
            resp = h.handle(msg)
            dt = time.perf_counter_ns() - t0
            assert resp and resp[0].WhichOneof("response") == "request_body"
            if k >= 500:
                times.append(dt / 1e6)
        out[name] = {
            "mean_input_tokens": float(np.mean(req.input_tokens)),
            "p50_ms": pct(times, 50),
            "p99_ms": pct(times, 99),
            "p999_ms": pct(times, 99.9),
            "sources": dict(sources),
        }
        print(
            f"{name:24s} mean prompt {out[name]['mean_input_tokens']:8.0f} tokens: decision "
            f"p50 {out[name]['p50_ms']:.3f} ms, p99 {out[name]['p99_ms']:.3f} ms, "
            f"p99.9 {out[name]['p999_ms']:.3f} ms; decided by {dict(sources)}",
            flush=True,
        )
    return out


# ---- load -----------------------------------------------------------------------------------
def direct_targets(stack: Stack) -> list[tuple[str, dict[str, str]]]:
    dec = [e.address for e in stack.inventory.endpoints if e.role == "decode"]
    pre = [e.address for e in stack.inventory.endpoints if e.role == "prefill"]
    return [
        (f"http://{d}", {"x-prefiller-host-port": pre[i % len(pre)]})
        for i, d in enumerate(dec * len(pre))
    ]


def run_arm(stack: Stack, req: TraceRequests, arm: str) -> tuple[list[Any], float]:
    opts = LoadOptions(
        url=stack.url,
        stream=False,
        time_scale=SCALE,
        duration_s=3600,
        timeout_s=60,
        max_inflight=2000,  # bounded: past it the client sheds (counted as skipped)
    )
    if arm == "direct":
        opts.direct = direct_targets(stack)
    return asyncio.run(replay(req, opts))


def load_bench(args: argparse.Namespace) -> dict[str, Any]:
    sc, _ = resolve_config("paper_prfaas")
    arms = args.arms.split(",")
    req = short_requests(args.requests, args.rate, args.seed)
    results: dict[str, list[Any]] = {a: [] for a in arms}
    walls: dict[str, float] = dict.fromkeys(arms, 0.0)
    with Stack(
        sc.raw["topology"],
        "prfaas_threshold",
        time_scale=SCALE,
        picker_settings={"scrape_interval_s": 0.1},
    ) as stack:
        print(f"stack up: Envoy {stack.url}, logs in {stack.dir}", flush=True)
        starts = list(range(0, len(req), args.block))
        for b, lo in enumerate(starts):
            hi = min(lo + args.block, len(req))
            sub = TraceRequests(
                req.arrival_s[lo:hi] - req.arrival_s[lo],
                req.input_tokens[lo:hi],
                req.output_tokens[lo:hi],
                req.blocks[lo:hi],
                512,
            )
            for arm in arms if b % 2 == 0 else arms[::-1]:
                res, wall = run_arm(stack, sub, arm)
                results[arm] += res
                walls[arm] += wall
                s = summarise(res, wall, SCALE)
                print(
                    f"block {b + 1}/{len(starts)} {arm:8s}: "
                    f"{s['responses']}/{s['requests']} answered, "
                    f"5xx {s['status_5xx']}, {s['throughput_rps']} req/s, path p50 "
                    f"{s['path_p50_ms']:.2f} ms p99 {s['path_p99_ms']:.2f} ms",
                    flush=True,
                )
        stats = stack.picker_stats()
    out: dict[str, Any] = {
        "machine": machine(),
        "rate_rps": args.rate,
        "requests_per_arm": len(req),
    }
    paths: dict[str, list[float]] = {}
    for arm in arms:
        res = results[arm]
        ok = [r for r in res if r.status == 200]
        paths[arm] = [r.path_s * 1e3 for r in ok if not np.isnan(r.path_s)]
        e2e = [(r.done_s - r.sent_s) * 1e3 for r in ok]
        out[arm] = {
            "sent": sum(not r.skipped for r in res),
            "answered": sum(1 for r in res if r.status),
            "ok": len(ok),
            "status_5xx": sum(1 for r in res if r.status >= 500),
            "no_response": sum(1 for r in res if not r.skipped and not r.status),
            "achieved_rps": round(sum(1 for r in res if r.status) / walls[arm], 1),
            **{f"path_p{q}_ms": pct(paths[arm], q) for q in (50, 90, 99, 99.9)},
            "e2e_p50_ms": pct(e2e, 50),
            "e2e_p99_ms": pct(e2e, 99),
        }
    if "gateway" in out and "direct" in out:
        gw, di = paths["gateway"], paths["direct"]
        out["added_ms"] = {f"p{q}": pct(gw, q) - pct(di, q) for q in (50, 90, 99, 99.9)}
    out["picker"] = {
        k: stats.get(k)
        for k in ("decisions", "decision_p50_ms", "decision_p99_ms", "decision_max_ms")
    }
    out["picker_requests"] = stats.get("prfaas_gateway_requests")
    return out


def kill_bench(args: argparse.Namespace) -> dict[str, Any]:
    sc, _ = resolve_config("paper_prfaas")
    req = short_requests(args.requests, args.rate, args.seed)
    span = float(req.arrival_s[-1]) / SCALE
    events: list[tuple[str, float]] = []
    with Stack(sc.raw["topology"], "prfaas_threshold", time_scale=SCALE) as stack:
        t0 = time.monotonic()

        def chaos() -> None:
            time.sleep(span / 3)
            stack.kill_picker()
            events.append(("killed", time.monotonic() - t0))
            time.sleep(max(0.0, span * 2 / 3 - (time.monotonic() - t0)))
            stack.start_picker()
            events.append(("restarted (ready)", time.monotonic() - t0))

        threading.Thread(target=chaos, daemon=True).start()
        results, wall = run_arm(stack, req, "gateway")
    s = summarise(results, wall, SCALE)
    thirds = []
    for k in range(3):
        part = [r for r in results if k * span / 3 <= r.sent_s < (k + 1) * span / 3]
        routed = sum(1 for r in part if r.status == 200 and r.route not in ("", "default"))
        thirds.append(
            {
                "sent": len(part),
                "answered": sum(1 for r in part if r.status),
                "by_picker": routed,
                "default_route": sum(1 for r in part if r.route == "default"),
            }
        )
    last = [r for r in results if r.sent_s >= span * 0.9]
    return {
        "machine": machine(),
        "rate_rps": args.rate,
        "requests": s["requests"],
        "responses": s["responses"],
        "no_response": s["no_response"],
        "status": s["status"],
        "status_5xx": s["status_5xx"],
        "events_s": events,
        "thirds": thirds,
        "last_tenth_by_picker": sum(1 for r in last if r.route not in ("", "default"))
        / max(len(last), 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("what", choices=["picker", "load", "kill"])
    ap.add_argument("--rate", type=float, default=500.0, help="requests per wall second")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--block", type=int, default=5000, help="requests per block of one arm")
    ap.add_argument("--arms", default="gateway,direct")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--decisions", type=int, default=5000, help="picker: decisions per workload")
    ap.add_argument("--workloads", default="paper,mooncake", help="picker: paper, mooncake")
    ap.add_argument(
        "--bundle", default=None, help="picker: decide with this bundle (default: prfaas_threshold)"
    )
    ap.add_argument(
        "--waiting", type=int, default=1, help="picker: requests each server reports waiting"
    )
    args = ap.parse_args()
    print(f"machine: {machine()}", flush=True)
    if args.what == "picker":
        out = picker_bench(args.decisions, args.workloads.split(","), args.bundle, args.waiting)
    elif args.what == "load":
        out = load_bench(args)
    else:
        out = kill_bench(args)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
