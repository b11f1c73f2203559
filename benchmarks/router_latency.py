"""Router latency: in-process decisions and the HTTP sidecar under open-loop load.

    python benchmarks/router_latency.py --bundle bundles/quickstart

In process: ``Router.decide`` on the bundle's golden states in turn (parse the live state,
build the view, encode, run the ONNX graph), one decision per call, after a warm-up; p50,
p99 and p99.9 of the wall time per call.

HTTP: starts ``python -m prfaas_env.router serve`` on a free loopback port and sends
``POST /route`` at a fixed rate (open loop: each request has a scheduled send time and its
latency is counted from that time, so a slow server cannot hide its queueing) over
keep-alive connections from a pool of client threads; p50, p99 and max latency, the rate
achieved and any non-200 answers. Client and server share the machine's cores.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prfaas_env.router import Router  # noqa: E402


def golden_states(bundle: Path) -> list[dict]:
    lines = (bundle / "golden.jsonl").read_text().splitlines()
    return [json.loads(x)["state"] for x in lines if x.strip()]


def in_process(bundle: Path, n: int) -> dict[str, float]:
    router = Router(bundle)
    states = golden_states(bundle)
    for i in range(1000):
        router.decide(states[i % len(states)])
    times = np.empty(n)
    for i in range(n):
        s = states[i % len(states)]
        t0 = time.perf_counter_ns()
        router.decide(s)
        times[i] = time.perf_counter_ns() - t0
    us = times / 1e3
    return {
        "p50_us": float(np.percentile(us, 50)),
        "p99_us": float(np.percentile(us, 99)),
        "p999_us": float(np.percentile(us, 99.9)),
        "mean_us": float(us.mean()),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(port: int, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("server did not become healthy")


def http_load(bundle: Path, rate: float, duration_s: float, clients: int) -> dict[str, float]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prfaas_env.router",
            "serve",
            "--bundle",
            str(bundle),
            "--port",
            str(port),
        ],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_healthy(port, proc)
        bodies = [json.dumps(s).encode() for s in golden_states(bundle)]
        todo: queue.Queue[tuple[float, int] | None] = queue.Queue()
        lat: list[float] = []
        bad: list[int] = []
        lock = threading.Lock()

        def worker() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            headers = {"Content-Type": "application/json"}
            while (job := todo.get()) is not None:
                scheduled, i = job
                conn.request("POST", "/route", bodies[i % len(bodies)], headers)
                resp = conn.getresponse()
                resp.read()
                done = time.perf_counter()
                with lock:
                    lat.append(done - scheduled)
                    if resp.status != 200:
                        bad.append(resp.status)
            conn.close()

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
        for t in threads:
            t.start()
        warm = int(rate)  # one second of warm-up, not counted
        total = warm + int(rate * duration_s)
        start = time.perf_counter() + 0.05
        for i in range(total):
            at = start + i / rate
            while (left := at - time.perf_counter()) > 0:
                time.sleep(min(left, 0.002) if left > 0.0005 else 0)
            todo.put((at, i))
        for _ in threads:
            todo.put(None)
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        ms = np.array(lat[warm:]) * 1e3
        return {
            "requests": float(total - warm),
            "rate_rps": total / elapsed,
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()),
            "non_200": float(len(bad)),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--bundle", required=True, help="bundle folder (python export.py --run RUN --out DIR)"
    )
    ap.add_argument("--decisions", type=int, default=20000, help="in-process decisions timed")
    ap.add_argument("--rate", type=float, default=500.0, help="HTTP requests per second")
    ap.add_argument("--duration", type=float, default=20.0, help="HTTP load seconds")
    ap.add_argument("--clients", type=int, default=8, help="client threads (connections)")
    args = ap.parse_args()
    bundle = Path(args.bundle)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    r = in_process(bundle, args.decisions)
    print(
        f"in-process decide ({args.decisions} decisions): p50 {r['p50_us']:.0f} us, "
        f"p99 {r['p99_us']:.0f} us, p99.9 {r['p999_us']:.0f} us, mean {r['mean_us']:.0f} us"
    )
    h = http_load(bundle, args.rate, args.duration, args.clients)
    print(
        f"HTTP POST /route at {h['rate_rps']:.0f} req/s for {args.duration:.0f} s "
        f"({h['requests']:.0f} requests, {args.clients} connections): p50 {h['p50_ms']:.2f} ms, "
        f"p99 {h['p99_ms']:.2f} ms, max {h['max_ms']:.1f} ms, non-200 {h['non_200']:.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
