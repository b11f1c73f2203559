"""The endpoint picker's parts: request bodies, inventory, scraping, datastore, decisions,
and the ext_proc protocol messages checked against Envoy's own message types."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("envoy.service.ext_proc.v3.external_processor_pb2", reason="gateway extra")

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from google.protobuf import struct_pb2

from prfaas_env.env.config import resolve_config
from prfaas_env.errors import ConfigError
from prfaas_env.gateway import protocol as proto
from prfaas_env.gateway.build import build_picker
from prfaas_env.gateway.inventory import load_inventory, parse_inventory
from prfaas_env.gateway.prompt import BadRequest, estimate, parse_request, synthetic_prompt
from prfaas_env.gateway.scrape import Scraper, ScrapeResult, parse_metrics, select
from prfaas_env.gateway.server import StreamHandler, _Options
from prfaas_env.observation.simulated import SimObserver
from prfaas_env.policies import RouteTable, make_policy
from prfaas_env.router.heuristic import HeuristicRouter
from prfaas_env.sim.engine import VecSimulator

TOPOLOGY: dict[str, Any] = {
    "model": "prfaas-1t-hybrid",
    "datacenters": ["local", "remote"],
    "clusters": {
        "prfaas": {
            "datacenter": "remote",
            "role": "prefill",
            "gpu": "h200",
            "prefix_cache_blocks": 4096,
        },
        "pd": {
            "datacenter": "local",
            "role": "pd",
            "gpu": "h20",
            "max_batch": 64,
            "prefix_cache_blocks": 4096,
        },
    },
    "links": [{"between": ["remote", "local"], "bandwidth_gbps": 100, "rtt_ms": 10}],
}
ENDPOINTS = {
    "prfaas": {"prefill": ["127.0.0.1:7101"]},
    "pd": {"prefill": ["127.0.0.1:7201"], "decode": ["127.0.0.1:7301", "127.0.0.1:7302"]},
}


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def inventory_file(tmp_path: Path, **extra: Any) -> Path:
    data = {"topology": TOPOLOGY, "endpoints": ENDPOINTS, "models": ["m"], **extra}
    p = tmp_path / "inventory.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def metrics_text(
    waiting: float, running: float, kv: float = 0.1, ttft: tuple[float, float] = (0, 0)
) -> str:
    lab = 'model_name="m"'
    return (
        f"# HELP x\nvllm:num_requests_waiting{{{lab}}} {waiting}\n"
        f"vllm:num_requests_running{{{lab}}} {running}\nvllm:kv_cache_usage_perc{{{lab}}} {kv}\n"
        f"vllm:time_to_first_token_seconds_sum{{{lab}}} {ttft[0]}\n"
        f"vllm:time_to_first_token_seconds_count{{{lab}}} {ttft[1]}\n"
    )


def feed_all(picker: Any, text: str | None = None, error: str | None = None) -> None:
    store = picker.store
    for url in store.scrape_urls():
        if error is not None:
            store.on_scrape(ScrapeResult(url, None, error, 0, store.clock()))
        else:
            samples, bad = parse_metrics(text or metrics_text(0, 0), store.wanted)
            store.on_scrape(ScrapeResult(url, samples, None, bad, store.clock()))


@pytest.fixture()
def picker(tmp_path: Path) -> Any:
    clock = FakeClock()
    p = build_picker(inventory_file(tmp_path), policy="prfaas_threshold", clock=clock)
    feed_all(p)
    return p


def body(tokens: int, blocks: list[int] | None = None, **extra: Any) -> bytes:
    return json.dumps(
        {"model": "m", "prompt": synthetic_prompt(tokens, blocks or [], 512), **extra}
    ).encode()


# ---- request bodies -----------------------------------------------------------------------
@settings(max_examples=40)
@given(
    length=st.integers(1, 20_000),
    shared=st.integers(0, 40),
    ids=st.lists(st.integers(0, 2**40), min_size=40, max_size=40, unique=True),
)
def test_synthetic_prompts_estimate_back_to_their_length_and_prefix(
    length: int, shared: int, ids: list[int]
) -> None:
    """Property: a prompt made for (length, block ids) estimates back to that length, one
    hash per block, and two prompts share exactly the hashes of the blocks they share."""
    n = math.ceil(length / 512)
    a_ids = ids[:n]
    b_ids = ids[:shared] + [i + 2**41 for i in ids[shared:n]]
    a = synthetic_prompt(length, a_ids, 512)
    b = synthetic_prompt(length, b_ids, 512)
    ta, ha = estimate(a, 512, 4, 512)
    tb, hb = estimate(b, 512, 4, 512)
    assert ta == tb == length and len(ha) == len(hb) == n
    common = next((k for k in range(n) if ha[k] != hb[k]), n)
    assert common == min(shared, n)


def test_request_bodies_completions_chat_and_token_ids() -> None:
    p = parse_request(body(3000, max_tokens=7, stream=True), "/v1/completions", 512)
    assert (p.kind, p.input_tokens, len(p.hashes), p.max_tokens, p.stream) == (
        "completions",
        3000,
        6,
        7,
        True,
    )
    chat = {
        "model": "m",
        "messages": [{"role": "user", "content": "x" * 4000}],
        "max_completion_tokens": 9,
    }
    c = parse_request(json.dumps(chat).encode(), "/v1/chat/completions", 512)
    assert (
        c.kind == "chat"
        and c.max_tokens == 9
        and c.input_tokens == math.ceil((4 + 1 + 4000 + 1) / 4)
    )
    parts = {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {}}],
            }
        ],
    }
    assert parse_request(json.dumps(parts).encode(), "/v1/chat/completions", 512).input_tokens == 2
    ids = parse_request(
        json.dumps({"model": "m", "prompt": list(range(1500))}).encode(), "/v1/completions", 512
    )
    assert ids.input_tokens == 1500 and len(ids.hashes) == 3


@pytest.mark.parametrize(
    ("raw", "status", "words"),
    [
        (b"", 400, "empty"),
        (b"not json", 400, "not valid JSON"),
        (b'{"model": "m", "prompt": "abc', 400, "not valid JSON"),  # truncated
        (b"\xff\xfe{}", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"prompt": "x"}', 400, "model"),
        (b'{"model": "m"}', 400, "prompt"),
        (b'{"model": "m", "prompt": 5}', 400, "prompt"),
        (b'{"model": "m", "prompt": "x", "max_tokens": -1}', 400, "max_tokens"),
        (b'{"model": "m", "prompt": "x", "stream": "yes"}', 400, "stream"),
        (b'{"model": "m", "messages": []}', 400, "messages"),
        (b'{"model": "m", "messages": [{"content": "x"}]}', 400, "role"),
        (b"[" * 100_000, 400, "JSON"),
    ],
)
def test_bad_bodies_get_a_clear_4xx(raw: bytes, status: int, words: str) -> None:
    with pytest.raises(BadRequest) as exc:
        parse_request(raw, "/v1/completions", 512)
    assert exc.value.status == status and words in exc.value.message


def test_a_body_over_the_limit_is_413() -> None:
    with pytest.raises(BadRequest) as exc:
        parse_request(b"x" * 2000, "/v1/completions", 512, max_body_bytes=1000)
    assert exc.value.status == 413


# ---- inventory ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda d: d["endpoints"]["pd"].update(decode=["localhost:80"]), "IP literal"),
        (lambda d: d["endpoints"]["pd"].update(decode=["127.0.0.1:99999"]), "port in 1-65535"),
        (lambda d: d["endpoints"]["pd"].update(decode=["::1:80"]), "brackets"),
        (lambda d: d["endpoints"].update(nope={"decode": ["127.0.0.1:1"]}), "not a cluster"),
        (lambda d: d["endpoints"]["prfaas"].update(decode=["127.0.0.1:1"]), "prefill-only"),
        (lambda d: d["endpoints"]["pd"].update(decode=["127.0.0.1:7101"]), "already an endpoint"),
        (lambda d: d["endpoints"]["pd"].update(typo=[]), "unknown key"),
        (lambda d: d["topology"]["clusters"]["pd"].update(decode_instances=5), "must agree"),
        (lambda d: d.update(engine="tgi"), "allowed: vllm, sglang"),
        (lambda d: d.update(picker={"scrape_interval_s": -1}), "scrape_interval_s"),
        (lambda d: d.update(picker={"fallback_format": "csv"}), "allowed: key, list"),
        (
            lambda d: d.update(channels={"local->remote": {"url": "http://127.0.0.1:1/m"}}),
            "allowed: remote->local",
        ),
        (
            lambda d: d.update(channels={"remote->local": {"url": "http://x/m", "flows": "a{b"}}),
            "selector",
        ),
        (lambda d: d.pop("topology"), "topology"),
        (lambda d: d.update(time_scale=0), "time_scale"),
    ],
)
def test_inventory_mistakes_are_refused_naming_file_and_key(
    tmp_path: Path, edit: Any, words: str
) -> None:
    data = json.loads(json.dumps({"topology": TOPOLOGY, "endpoints": ENDPOINTS}))
    edit(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as exc:
        load_inventory(path)
    assert str(path) in str(exc.value) and words in str(exc.value)


def test_inventory_counts_come_from_endpoints_and_colocated_endpoints_are_allowed() -> None:
    eps = {
        "prfaas": {"prefill": ["127.0.0.1:1", "127.0.0.1:2"]},
        "pd": {"prefill": ["127.0.0.1:3"], "decode": ["127.0.0.1:3", "[::1]:4"]},
    }
    inv = parse_inventory({"topology": TOPOLOGY, "endpoints": eps}, "inline")
    c = {cl.name: cl for cl in inv.topology.clusters}
    assert (c["prfaas"].prefill_instances, c["pd"].prefill_instances, c["pd"].decode_instances) == (
        2,
        1,
        2,
    )
    assert [e.address for e in inv.pool("pd", "decode")] == ["127.0.0.1:3", "[::1]:4"]


# ---- scraping -------------------------------------------------------------------------------
def test_prometheus_parser_keeps_what_it_can_and_counts_the_rest() -> None:
    text = (
        "# HELP vllm:num_requests_waiting x\n"
        'vllm:num_requests_waiting{model_name="a",engine="0"} 3\n'
        'vllm:num_requests_waiting{model_name="b",engine="1"} 2 1700000000\n'
        "vllm:num_requests_running 1.5e0\n"
        "vllm:num_requests_running{broken 7\n"
        "vllm:kv_cache_usage_perc NaN\n"
        'vllm:num_requests_waiting{x="y"} notanumber\n'
        "\x00\xff garbage line of another name\n"
        "nospaceatall\n"
    )
    samples, bad = parse_metrics(
        text, ["vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"]
    )
    assert select(samples, "vllm:num_requests_waiting") == 5.0
    assert select(samples, "vllm:num_requests_waiting", (("engine", "1"),)) == 2.0
    assert select(samples, "vllm:num_requests_running") == 1.5
    assert select(samples, "vllm:kv_cache_usage_perc") is None  # NaN only
    assert bad == 3


def test_a_large_metrics_page_is_read_whole_and_an_oversized_one_refused() -> None:
    """A real engine's /metrics page runs to hundreds of kB (histograms per model): the
    scraper reads all of it, so a metric near the end is seen; a page over ``max_bytes`` is
    reported as garbage instead of being held in memory."""
    import asyncio

    import aiohttp
    from aiohttp import web

    filler = "".join(
        f'vllm:request_latency_bucket{{le="{i}",model_name="m"}} {i}\n' for i in range(6000)
    )
    page = filler + 'vllm:num_requests_waiting{model_name="m"} 7\n'
    assert len(page) > 300_000

    async def main() -> tuple[ScrapeResult, ScrapeResult]:
        async def metrics(_request: web.Request) -> web.Response:
            return web.Response(text=page)

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}/metrics"
        try:
            async with aiohttp.ClientSession() as session:
                whole = Scraper([url], ["vllm:num_requests_waiting"], print, 1.0, 5.0)
                small = Scraper([url], ["vllm:num_requests_waiting"], print, 1.0, 5.0, 100_000)
                return (
                    await whole.scrape_once(session, url),
                    await small.scrape_once(session, url),
                )
        finally:
            await runner.cleanup()

    whole, small = asyncio.run(main())
    assert whole.error is None and select(whole.samples, "vllm:num_requests_waiting") == 7.0
    assert small.samples is None and small.error == "garbage: body too large"


# ---- the heuristic router -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["prfaas_threshold", "mooncake", "llm_d", "lmetric", "dynamo"])
def test_heuristic_router_decides_as_the_policy_does_on_simulator_views(name: str) -> None:
    """Differential: deciding on live states written from simulator views gives the actions
    the policy takes on the views themselves."""
    sc, _ = resolve_config("paper_prfaas")
    topo = sc.topology
    router = HeuristicRouter(topo, name, expected_output_tokens=sc.workload.mean_output_tokens())
    policy = make_policy(name, RouteTable.from_topology(topo), topo)
    policy.reset(4, seed=0)
    sim = VecSimulator(sc.with_rate(2.5), 4)
    observer = SimObserver(sim, len(topo.routes))
    sim.reset(seed=[1, 2, 3, 4])
    for _ in range(60):
        view = observer.observe_view()
        mask = sim.route_mask()
        want = policy.act(view, mask)
        got = router.decide_many([router.live.state(view, i) for i in range(4)])
        assert [d.action for d in got] == want.tolist()
        assert all(d.source == "heuristic" and d.reason is None for d in got)
        sim.step(want)


# ---- datastore and decisions ----------------------------------------------------------------
def test_live_state_reads_metrics_and_marks_stale_pools_missing(picker: Any) -> None:
    store = picker.store
    feed_all(picker, metrics_text(2, 1, 0.25))
    s = store.live_state(5000, ())
    assert s["prefill"]["pd"]["queued_requests"] == 2 and s["prefill"]["pd"]["busy_fraction"] == 1.0
    assert s["decode"]["pd"]["kv_used"] == 0.25 and s["decode"]["pd"]["admission_queue"] == 4
    assert s["decode"]["pd"]["free_slots"] == pytest.approx(1 - 2 / 128)
    assert s["channels"]["remote->local"]["bandwidth_gbps"] == 100.0
    assert picker.router.decide(s).reason is None
    store.clock.t += 10.0  # every scrape is now older than stale_after_s
    s = store.live_state(5000, ())
    assert s["prefill"]["pd"]["queued_requests"] is None and s["decode"]["pd"]["free_slots"] is None
    d = picker.router.decide(s)
    assert d.source == "heuristic" and "missing prefill.prfaas.queued_requests" in d.reason


def test_the_shipped_generalist_picks_on_the_inventorys_topology(tmp_path: Path) -> None:
    """``--bundle pretrained:generalist``: the per-route bundle decides on the inventory's
    own topology, from scraped metrics, with its guard and fallback in the decision."""
    p = build_picker(inventory_file(tmp_path), bundle="pretrained:generalist", clock=FakeClock())
    feed_all(p, metrics_text(0, 1, 0.25))  # nothing waiting: inside the training ranges
    routes, sources = set(), set()
    for tokens in (500, 4000, 30_000):
        pick = p.pick(parse_request(body(tokens), "/v1/completions", 512))
        assert pick.status == 200 and pick.destination in ("127.0.0.1:7301", "127.0.0.1:7302")
        routes.add(pick.route)
        d = p.router.decide(p.store.live_state(tokens, ()))
        assert d.source in ("model", "fallback") and (d.source == "model") == (d.reason is None)
        sources.add(d.source)
    assert routes <= {"pd->pd", "prfaas->pd"} and "model" in sources
    # requests waiting at the decode servers: a feature that was 0 in every training row, so
    # the guard sends the decision to the fallback and says which feature it was
    feed_all(p, metrics_text(2, 1, 0.25))
    d = p.router.decide(p.store.live_state(4000, ()))
    assert d.source == "fallback" and "admission_queue_per_instance" in d.reason


def test_garbage_or_down_metrics_never_crash_and_the_decision_says_why(picker: Any) -> None:
    store = picker.store
    store.clock.t += 10.0
    feed_all(picker, "\x00\x01 not prometheus at all {{{")
    feed_all(picker, error="connect: ClientConnectorError")
    feed_all(picker, metrics_text(-1, 3))  # a negative gauge is garbage too
    prompt = parse_request(body(4000), "/v1/completions", 512)
    pick = picker.pick(prompt)
    assert pick.status == 200 and "missing" in pick.reason
    for _ in range(3):
        feed_all(picker, error="connect: ClientConnectorError")
    assert picker.pick(prompt).status == 503  # every server known down


def test_prefix_cache_and_queue_bookkeeping_follow_routed_requests(picker: Any) -> None:
    store = picker.store
    blocks = list(range(100, 140))
    long_prompt = parse_request(body(20_000, blocks), "/v1/completions", 512)
    first = picker.pick(long_prompt)
    assert first.status == 200 and first.route == "prfaas->pd" and first.prefill == "127.0.0.1:7101"
    s = store.live_state(20_000, long_prompt.hashes)
    assert s["prefill"]["prfaas"]["cached_tokens"] == 40 * 512 - 512 * 1 + 512  # every block
    assert s["prefill"]["pd"]["cached_tokens"] == 0
    assert s["prefill"]["prfaas"]["wait_s"] > 0  # the picker's estimate of the first prefill
    assert s["channels"]["remote->local"]["flows"] == 1.0 or s["prefill"]["prfaas"]["wait_s"] > 0
    second = picker.pick(long_prompt)  # cached where it was prefilled: local prefill is cheap
    assert second.status == 200 and second.destination in ("127.0.0.1:7301", "127.0.0.1:7302")
    assert second.destination != first.destination  # the first one holds a pending request


def test_unknown_models_rejects_and_subsets(picker: Any, tmp_path: Path) -> None:
    ok = parse_request(body(2000), "/v1/completions", 512)
    other = parse_request(
        json.dumps({"model": "gpt-x", "prompt": "hi"}).encode(), "/v1/completions", 512
    )
    assert picker.pick(other).status == 404
    only = picker.pick(ok, ["127.0.0.1:7302", "not an address"])
    assert only.status == 200 and only.destination == "127.0.0.1:7302" and only.fallbacks == ()
    assert picker.pick(ok, ["10.9.9.9:1"]).status == 503
    assert picker.pick(ok, []).status == 503


# ---- protocol messages ------------------------------------------------------------------------
def options(mode: str, fmt: str = "key") -> _Options:
    return _Options(512, 4, 512, 1 << 20, fmt, mode)


def headers_msg(
    path: str = "/v1/completions",
    eos: bool = False,
    subset: list[str] | None = None,
    mode: int | None = None,
) -> ep.ProcessingRequest:
    hv = [
        base_pb2.HeaderValue(key=":path", raw_value=path.encode()),
        base_pb2.HeaderValue(key=":method", raw_value=b"POST"),
    ]
    req = ep.ProcessingRequest(
        request_headers=ep.HttpHeaders(headers=base_pb2.HeaderMap(headers=hv), end_of_stream=eos)
    )
    if subset is not None:
        s = struct_pb2.Struct()
        s.fields[proto.SUBSET].list_value.extend(subset)
        req.metadata_context.filter_metadata[proto.SUBSET_NAMESPACE].CopyFrom(s)
    if mode is not None:
        req.protocol_config.request_body_mode = mode
    return ep.ProcessingRequest.FromString(req.SerializeToString())  # as it comes off the wire


def body_msg(data: bytes, eos: bool = True) -> ep.ProcessingRequest:
    return ep.ProcessingRequest(request_body=ep.HttpBody(body=data, end_of_stream=eos))


def headers_of(common: ep.CommonResponse) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}


def test_buffered_mode_answers_body_with_destination_header_and_metadata(picker: Any) -> None:
    h = StreamHandler(picker, options("BUFFERED"))
    [first] = h.handle(headers_msg())
    assert first.WhichOneof("response") == "request_headers"
    assert not first.request_headers.response.HasField("header_mutation")
    [resp] = h.handle(body_msg(body(3000)))
    resp = ep.ProcessingResponse.FromString(resp.SerializeToString())
    assert resp.WhichOneof("response") == "request_body"
    common = resp.request_body.response
    assert common.clear_route_cache
    hdr = headers_of(common)
    lb = resp.dynamic_metadata.fields[proto.LB_NAMESPACE].struct_value.fields
    assert hdr[proto.DESTINATION] == lb[proto.DESTINATION].string_value  # never two values
    assert hdr[proto.DESTINATION] in ("127.0.0.1:7301", "127.0.0.1:7302")
    assert lb[proto.FALLBACK].string_value in ("127.0.0.1:7301", "127.0.0.1:7302")
    assert lb[proto.FALLBACK].string_value != hdr[proto.DESTINATION]
    assert hdr[proto.PREFILL] == "127.0.0.1:7201" and hdr[proto.ROUTE] == "pd->pd"
    assert all(
        o.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
        for o in common.header_mutation.set_headers
    )


def test_full_duplex_holds_headers_until_the_body_ends_and_streams_it_back(picker: Any) -> None:
    h = StreamHandler(picker, options("BUFFERED", "list"))
    data = body(9000)
    assert h.handle(headers_msg(mode=4)) == []  # FULL_DUPLEX_STREAMED announced by Envoy
    pieces = [data[i : i + 7000] for i in range(0, len(data), 7000)]
    for p in pieces[:-1]:
        assert h.handle(body_msg(p, eos=False)) == []
    out = h.handle(body_msg(pieces[-1], eos=True))
    assert out[0].WhichOneof("response") == "request_headers"
    hdr = headers_of(out[0].request_headers.response)
    dest = hdr[proto.DESTINATION].split(",")
    assert (
        len(dest) == 2
        and out[0]
        .dynamic_metadata.fields[proto.LB_NAMESPACE]
        .struct_value.fields[proto.DESTINATION]
        .string_value
        == hdr[proto.DESTINATION]
    )
    sent = b"".join(r.request_body.response.body_mutation.streamed_response.body for r in out[1:])
    assert (
        sent == data and out[-1].request_body.response.body_mutation.streamed_response.end_of_stream
    )


def test_immediate_responses_for_bad_input_and_no_body_routing(picker: Any) -> None:
    def status(resp: ep.ProcessingResponse) -> int:
        assert resp.WhichOneof("response") == "immediate_response"
        assert (
            json.loads(resp.immediate_response.body)["error"]["code"]
            == resp.immediate_response.status.code
        )
        return resp.immediate_response.status.code

    h = StreamHandler(picker, options("BUFFERED"))
    h.handle(headers_msg())
    assert status(h.handle(body_msg(b'{"model": "m", "prompt": "ab'))[0]) == 400 and h.done
    h = StreamHandler(picker, options("BUFFERED"))
    h.handle(headers_msg())
    assert status(h.handle(body_msg(json.dumps({"model": "zz", "prompt": "a"}).encode()))[0]) == 404
    h = StreamHandler(picker, options("FULL_DUPLEX_STREAMED"))
    h.handle(headers_msg())
    big = b"x" * (600 << 10)
    assert h.handle(body_msg(big, eos=False)) == []
    assert status(h.handle(body_msg(big, eos=False))[0]) == 413
    h = StreamHandler(picker, options("BUFFERED"))
    h.handle(headers_msg(subset=["10.1.1.1:80"]))
    assert status(h.handle(body_msg(body(100)))[0]) == 503
    h = StreamHandler(picker, options("BUFFERED"))
    [resp] = h.handle(headers_msg("/v1/models", eos=True))
    assert headers_of(resp.request_headers.response)[proto.DESTINATION] in (
        "127.0.0.1:7301",
        "127.0.0.1:7302",
    )


def test_a_shed_request_gets_429(picker: Any, monkeypatch: Any) -> None:
    """A policy trained with admission control may answer ``reject``: the request is shed
    with the protocol's 429, and the picker says so."""
    from prfaas_env.router.core import Decision

    monkeypatch.setattr(picker.router, "decide", lambda state: Decision(2, "reject", "model"))
    h = StreamHandler(picker, options("BUFFERED"))
    h.handle(headers_msg())
    [resp] = h.handle(body_msg(body(100)))
    assert resp.immediate_response.status.code == 429
    assert "overloaded" in json.loads(resp.immediate_response.body)["error"]["message"]


def test_a_picker_fault_lets_the_request_continue_to_the_default_route(
    picker: Any, monkeypatch: Any
) -> None:
    def boom(*_: Any, **__: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(picker, "pick", boom)
    h = StreamHandler(picker, options("BUFFERED"))
    h.handle(headers_msg())
    [resp] = h.handle(body_msg(body(100)))
    assert resp.WhichOneof("response") == "request_body"
    assert not resp.request_body.response.HasField("header_mutation")


def test_subset_hint_and_served_endpoint_are_read_from_envoy_metadata() -> None:
    assert proto.subset_hint(headers_msg(subset=["1.2.3.4:5", "6.7.8.9:10"])) == [
        "1.2.3.4:5",
        "6.7.8.9:10",
    ]
    assert proto.subset_hint(headers_msg()) is None
    req = ep.ProcessingRequest(response_headers=ep.HttpHeaders())
    req.metadata_context.filter_metadata[proto.LB_NAMESPACE].fields[
        proto.SERVED
    ].string_value = "1.2.3.4:5"
    assert proto.served_endpoint(req) == "1.2.3.4:5"


def test_envoy_config_has_the_gaie_pieces(tmp_path: Path) -> None:
    from prfaas_env.gateway.envoy import config_yaml, envoy_config

    inv = load_inventory(inventory_file(tmp_path))
    cfg = envoy_config(inv, "127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "FULL_DUPLEX_STREAMED")
    text = config_yaml(cfg)
    assert "0.0.0.0" not in text  # loopback only
    ext = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "http_filters"
    ][1]
    assert ext["typed_config"]["failure_mode_allow"] is True
    assert ext["typed_config"]["processing_mode"]["request_body_mode"] == "FULL_DUPLEX_STREAMED"
    clusters = {c["name"]: c for c in cfg["static_resources"]["clusters"]}
    assert (
        clusters["prfaas_original_dst"]["original_dst_lb_config"]["http_header_name"]
        == proto.DESTINATION
    )
    default = clusters["prfaas_default"]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert len(default) == 2
    np.testing.assert_equal(yaml.safe_load(text), cfg)


metric_value = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 10**6), st.just("x")
)


@settings(max_examples=40)
@given(
    scrapes=st.lists(
        st.tuples(
            st.integers(0, 4),  # which URL
            st.one_of(
                st.none(),  # a failed scrape
                st.tuples(metric_value, metric_value, metric_value, metric_value),
            ),
            st.floats(0, 5),  # seconds passing before it
        ),
        max_size=12,
    ),
    lengths=st.lists(st.integers(1, 400_000), min_size=1, max_size=4),
)
def test_any_scrapes_and_prompts_give_a_decision_or_503(
    tmp_path_factory: Any, scrapes: list[Any], lengths: list[int]
) -> None:
    """Property: whatever the servers' metrics say (garbage, NaN, negative, huge, missing,
    stale), every request gets a route with endpoints from the inventory, or 503; the live
    state always parses."""
    clock = FakeClock()
    p = build_picker(inventory_file(tmp_path_factory.mktemp("inv")), policy="mooncake", clock=clock)
    urls = p.store.scrape_urls()
    addresses = {e.address for e in p.inv.endpoints}
    for which, values, wait in scrapes:
        clock.t += wait
        url = urls[which % len(urls)]
        if values is None:
            p.store.on_scrape(ScrapeResult(url, None, "connect: refused", 0, clock.t))
            continue
        w, r, kv, ttft = values
        text = (
            f"vllm:num_requests_waiting {w}\nvllm:num_requests_running {r}\n"
            f"vllm:kv_cache_usage_perc {kv}\nvllm:time_to_first_token_seconds_sum {ttft}\n"
            f"vllm:time_to_first_token_seconds_count {len(str(ttft))}\n"
        )
        samples, bad = parse_metrics(text, p.store.wanted)
        p.store.on_scrape(ScrapeResult(url, samples, None, bad, clock.t))
    for n in lengths:
        prompt = parse_request(
            json.dumps({"model": "m", "prompt": list(range(n))}).encode(), "/v1/completions", 512
        )
        p.router.live.parse([p.store.live_state(n, prompt.hashes)])  # never LiveStateError
        pick = p.pick(prompt)
        assert pick.status in (200, 503)
        if pick.status == 200:
            assert pick.destination in addresses and pick.route in p.labels
            assert pick.prefill is None or pick.prefill in addresses


def test_the_demos_simulator_side_takes_a_shipped_per_route_bundle(tmp_path: Path) -> None:
    """``demo --bundle pretrained:generalist`` compares with the simulator routed by the same
    bundle (a per-route bundle on the demo's topology, not only flat bundles)."""
    from prfaas_env.env.config import resolve_config
    from prfaas_env.gateway.demo import simulate_trace
    from prfaas_env.gateway.loadgen import synthetic_trace_file
    from prfaas_env.router import BundleError

    sc, _ = resolve_config("paper_prfaas")
    trace = synthetic_trace_file("paper_prfaas", 60, 0, tmp_path / "t.jsonl", 2.0)
    out = simulate_trace(sc.raw["topology"], trace, 60, bundle="pretrained:generalist")
    assert out["requests"] == 60 and out["completed"] == 60 and out["ttft_p90_s"] > 0
    with pytest.raises(BundleError, match="no such pretrained bundle"):
        simulate_trace(sc.raw["topology"], trace, 60, bundle="pretrained:nope")
