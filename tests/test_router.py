"""Live state, export bundles, the reference router, its HTTP sidecar and knob distillation."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator

import evaluate as evaluate_cli
from agents.run import load_run
from agents.training import train
from prfaas_env.env.config import resolve_config
from prfaas_env.evaluation import best_baseline
from prfaas_env.export import STATELESS_FALLBACKS, default_fallback, export_bundle
from prfaas_env.export.distill import best_knobs
from prfaas_env.export.record import record, score_margin
from prfaas_env.observation.live import LiveState, LiveStateError, Parsed
from prfaas_env.observation.simulated import SimObserver
from prfaas_env.policies import RouteTable, make_policy
from prfaas_env.router import BundleError, Router, load_bundle
from prfaas_env.router.__main__ import check_golden
from prfaas_env.router.__main__ import main as router_main
from prfaas_env.router.bundle import content_hash, sha256
from prfaas_env.sim.engine import VecSimulator
from tests.sim_scenarios import base
from tests.test_agents import quick_args

SCENARIOS = ("paper_prfaas", "mooncake_fluctuating", "multi_region", "starved_10gbps")


def live_of(name: str, admission: bool = False) -> tuple[Any, LiveState]:
    sc, _ = resolve_config(name)
    return sc, LiveState(sc.topology, sc.workload.mean_output_tokens(), admission)


# ---- live state <-> view ------------------------------------------------------------------------
@pytest.mark.parametrize("name", SCENARIOS)
def test_live_state_gives_the_simulators_view_exactly(name: str) -> None:
    """Differential: the router's derivations (uncached tokens, prefill time from the cost
    tables, transfer time, estimated TTFT, bandwidth fraction, mask) equal the simulator's on
    states written from simulator views (to the last bits: bandwidth is carried in Gbps)."""
    sc, live = live_of(name)
    sim = VecSimulator(sc, 3)
    observer = SimObserver(sim, live.num_actions)
    sim.reset(seed=[5, 6, 7])
    policy = make_policy("mooncake", RouteTable.from_topology(sc.topology), sc.topology)
    for _ in range(150):
        view = observer.observe_view()
        states = [json.loads(json.dumps(live.state(view, i))) for i in range(3)]
        parsed = live.parse(states)
        assert parsed.problems == [[], [], []]
        assert set(parsed.view) == set(view)
        for key in view:  # bandwidth goes through Gbps and back: within an ulp or two
            np.testing.assert_allclose(
                parsed.view[key], np.asarray(view[key], float), rtol=1e-13, atol=0, err_msg=key
            )
        np.testing.assert_array_equal(parsed.mask, sim.route_mask())
        np.testing.assert_allclose(
            live.encoder.encode(parsed.view), live.encoder.encode(view), rtol=1e-6, atol=1e-7
        )
        sim.step(policy.act(view, sim.route_mask()))


def test_states_follow_the_published_schema() -> None:
    """States written from simulator views are valid; the sidecar's compiled validator
    (fastjsonschema) and the reference implementation (jsonschema) agree on every document."""
    import fastjsonschema

    sc, live = live_of("multi_region")
    schema = live.schema()
    Draft7Validator.check_schema(schema)
    reference = Draft7Validator(schema)
    compiled = fastjsonschema.compile(schema)

    def compiled_ok(doc: Any) -> bool:
        try:
            compiled(doc)
        except fastjsonschema.JsonSchemaValueException:
            return False
        return True

    sim = VecSimulator(sc, 2)
    observer = SimObserver(sim, live.num_actions)
    sim.reset(seed=[1, 2])
    state = live.state(observer.observe_view(), 0)
    p0 = live.entities["prefill"][0]
    docs: list[Any] = [state, {"request": {"input_tokens": 10}}, {"prefill": {}}, [1], "x"]
    for path, value in (
        (("prefill", p0, "wait_s"), -1),
        (("prefill", p0, "wait_s"), None),
        (("prefill", p0, "busy_fraction"), 1.5),
        (("prefill", p0, "queued_tokens"), True),
        (("prefill", p0, "queued_tokens"), "3"),
        (("prefill", "nowhere"), {}),
        (("prefill", p0, "typo"), 1),
        (("request", "input_tokens"), 1.5),
        (("request", "input_tokens"), 300_000),
        (("request", "input_tokens"), 4.0),
        (("decode",), []),
        (("extra",), 1),
    ):
        doc = json.loads(json.dumps(state))
        node = doc
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        docs.append(doc)
    verdicts = [reference.is_valid(d) for d in docs]
    assert verdicts == [compiled_ok(d) for d in docs]
    # 4.0 is an integer in JSON Schema (the router accepts whole-number floats too)
    assert verdicts == [True, True] + [False] * 4 + [True] + [False] * 7 + [True, False, False]
    assert [list(e.absolute_path) for e in reference.iter_errors(docs[5])] == [
        ["prefill", p0, "wait_s"]
    ]


finite = st.floats(min_value=0, max_value=1e12, allow_nan=False)
metric = st.one_of(
    st.none(),
    finite,
    st.integers(0, 10**9),
    st.just(-1.0),
    st.just("x"),
    st.booleans(),
    st.just(10**400),
    st.sampled_from([float("nan"), float("inf"), 1.5, {}, []]),
)


@settings(max_examples=60, deadline=None)
@given(
    tokens=st.integers(1, 262_144),
    values=st.lists(metric, min_size=19, max_size=19),
    drop=st.sets(st.integers(0, 18)),
)
def test_any_state_with_a_length_parses_to_a_bounded_observation(
    tokens: int, values: list[Any], drop: set[int]
) -> None:
    """Property: whatever the metrics (missing, null, negative, not numbers, huge), a state with
    an input length parses; every unusable metric is reported by its path, the others are
    not, and the observation is finite and within [0, 10]."""
    _, live = LIVE_PAPER
    keys = [
        (g, n, k)
        for g in ("prefill", "channels", "decode")
        for n in live.entities[g]
        for k in live.inputs[g]
    ] + [("recent", "", "ttft_ewma_s")]
    state: dict[str, Any] = {"request": {"input_tokens": tokens, "expected_output_tokens": 512}}
    expect: set[str] = set()
    for i, (g, n, k) in enumerate(keys):
        node = state.setdefault(g, {})
        node = node.setdefault(n, {}) if n else node
        where = f"{g}.{n}.{k}" if n else f"{g}.{k}"
        v = values[i % len(values)]
        if i in drop:
            expect.add(f"missing {where}")
            continue
        node[k] = v
        high = 1.0 if k in ("busy_fraction", "free_slots", "kv_used") else 2.0**53
        if v is None:
            expect.add(f"missing {where}")
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= high:
            expect.add(f"invalid {where}")
    parsed = live.parse([state])
    got = {p.split(":")[0] for p in parsed.problems[0]}
    assert got == expect
    obs = live.encoder.encode(parsed.view)
    assert np.isfinite(obs).all() and obs.min() >= 0 and obs.max() <= 10


LIVE_PAPER = live_of("paper_prfaas")


def test_a_state_without_a_usable_length_is_refused() -> None:
    _, live = LIVE_PAPER
    for bad in (
        {},
        {"request": {}},
        {"request": {"input_tokens": 0}},
        {"request": {"input_tokens": 1.5}},
        {"request": {"input_tokens": True}},
        {"request": {"input_tokens": float("inf")}},
        {"request": {"input_tokens": 300_000}},
        [1],
        {"request": 5},
    ):
        with pytest.raises(LiveStateError, match="state 0"):
            live.parse([bad])  # type: ignore[list-item]


# ---- export -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short PPO run on the paper scenario, exported with the default 10,000 recorded
    decisions (parity is checked on all of them) and distilled on a shorter recording."""
    tmp = tmp_path_factory.mktemp("export")
    train(quick_args(tmp, "run", timesteps=1024), echo=lambda s: None)
    out = tmp / "bundle"
    scores = json.loads((tmp / "run" / "baselines.json").read_text())["scores"]
    export_bundle(
        load_run(tmp / "run", "selected"),
        out,
        fallback=default_fallback(scores),
        distill=False,
        echo=lambda s: None,
    )
    return out


def test_bundle_has_every_file_and_a_full_manifest(bundle: Path) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    assert {p.name for p in bundle.iterdir()} == {
        "manifest.json",
        "policy.onnx",
        "policy.pt",
        "golden.jsonl",
        "state.schema.json",
    }
    assert m["parity"]["decisions"] == 10_000
    assert m["parity"]["disagreements_beyond_ties"] == 0
    assert m["parity"]["max_abs_score_diff_onnx"] < 1e-4
    assert m["parity"]["max_abs_score_diff_torchscript"] < 1e-4
    assert m["parity"]["onnx_agree"] >= 9_990 and m["parity"]["torchscript_agree"] >= 9_990
    feats = m["observation"]["features"]
    assert len(feats) == m["observation"]["size"] == 27
    for f in feats:  # each input is either read from a named metric or derived
        assert f["unit"] and f["normalisation"]
        assert ("state" in f and f["metric"]) or "derived" in f
    topo = load_bundle(bundle).live.topology
    assert [a["label"] for a in m["actions"]] == topo.route_labels()
    assert sorted(a["kv_path"] for a in m["actions"]) == ["rdma", "remote->local"]
    # the fallback is the run's best stateless heuristic on its validation seeds
    scores = json.loads((bundle.parent / "run" / "baselines.json").read_text())["scores"]
    stateless = {k: v for k, v in scores.items() if k in STATELESS_FALLBACKS}
    assert m["fallback"]["policy"] == best_baseline(stateless, "ttft_p90_s")
    assert m["files"] == {p.name: sha256(p) for p in bundle.iterdir() if p.name != "manifest.json"}
    assert m["content_hash"] == content_hash(m["files"], m)
    import onnx

    proto = onnx.load(str(bundle / "policy.onnx"))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) <= 17
    assert all(i.data_type != onnx.TensorProto.DOUBLE for i in proto.graph.initializer)
    kinds = {i.name: i.type.tensor_type.elem_type for i in proto.graph.input}
    assert kinds == {"observation": onnx.TensorProto.FLOAT, "action_mask": onnx.TensorProto.BOOL}


def test_golden_file_replays_through_the_router(bundle: Path) -> None:
    router = Router(bundle)
    total, ok, diff = check_golden(router)
    assert total > 50 and ok == total and diff <= 1e-6
    lines = [json.loads(x) for x in (bundle / "golden.jsonl").read_text().splitlines()]
    assert {g["action"] for g in lines} == {0, 1}  # both actions are represented
    assert router_main(["check", "--bundle", str(bundle)]) == 0


def test_router_falls_back_with_a_reason(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    router = Router(bundle)
    state = json.loads((bundle / "golden.jsonl").read_text().splitlines()[0])["state"]
    assert router.decide(state).source == "model"
    partial = json.loads(json.dumps(state))
    del partial["prefill"]["pd"]["wait_s"]
    partial["decode"]["pd"]["kv_used"] = float("nan")
    d = router.decide(partial)
    assert d.source == "fallback" and d.scores is None
    assert d.reason == (
        "missing prefill.pd.wait_s; invalid decode.pd.kv_used: nan (expected a number in [0, 1])"
    )
    fb = router.fallback.act(router.live.parse([partial]).view, np.ones((1, 2), bool))
    assert d.action == int(fb[0])
    # expected_output_tokens is optional: leaving it out is not a reason to fall back
    del partial["request"]["expected_output_tokens"]
    partial["prefill"]["pd"]["wait_s"] = 0.5
    partial["decode"]["pd"]["kv_used"] = 0.5
    assert router.decide(partial).source == "model"
    partial["decode"]["pd"] = "full"  # an entity that is not a mapping is invalid, not missing
    assert router.decide(partial).reason.startswith("invalid decode.pd: expected a mapping")
    down = json.loads(json.dumps(state))
    down["channels"]["remote->local"]["bandwidth_gbps"] = 0
    d = router.decide(down)
    assert d.label == "pd->pd" and d.source == "model"  # link down: only the local route

    def broken(*_: Any) -> Any:
        raise RuntimeError("session lost")

    monkeypatch.setattr(router.model, "run", broken)
    d = router.decide(state)
    assert d.source == "fallback" and d.reason == "model failed: RuntimeError: session lost"
    with pytest.raises(LiveStateError):
        router.decide({"request": {"input_tokens": -3}})
    parse = router.live.parse

    def all_links_down(states: Any) -> Parsed:
        p = parse(states)
        return dataclasses.replace(p, mask=np.zeros_like(p.mask))

    monkeypatch.setattr(router.live, "parse", all_links_down)
    d = router.decide(state)  # nothing allowed: no route is named
    assert (d.action, d.label, d.reason) == (-1, "none", "model failed: RuntimeError: session lost")


def _rehash(root: Path) -> None:
    m = json.loads((root / "manifest.json").read_text())
    m["files"] = {n: sha256(root / n) for n in m["files"]}
    m["content_hash"] = content_hash(m["files"], m)
    (root / "manifest.json").write_text(json.dumps(m))


def test_bad_bundles_are_refused_with_the_problem_named(bundle: Path, tmp_path: Path) -> None:
    def copy(name: str) -> Path:
        return Path(shutil.copytree(bundle, tmp_path / name))

    b = copy("missing")
    (b / "policy.onnx").unlink()
    with pytest.raises(BundleError, match=r"policy.onnx is missing"):
        load_bundle(b)
    b = copy("altered")
    (b / "golden.jsonl").write_text("{}\n")
    with pytest.raises(BundleError, match=r"golden.jsonl: SHA-256 differs"):
        load_bundle(b)
    b = copy("format")
    m = json.loads((b / "manifest.json").read_text())
    m["format"] = 99
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"bundle format 99; this version .* reads format 1"):
        load_bundle(b)

    def edit(name: str, change: Any, rehash: bool = True) -> Path:
        b = copy(name)
        m = json.loads((b / "manifest.json").read_text())
        change(m)
        (b / "manifest.json").write_text(json.dumps(m))
        if rehash:
            _rehash(b)
        return b

    b = edit("edited", lambda m: m["observation"].update(expected_output_tokens=1e9), False)
    with pytest.raises(BundleError, match=r"content_hash does not match .* edited after export"):
        load_bundle(b)
    b = edit(
        "features", lambda m: m["observation"].update(features=m["observation"]["features"][:-1])
    )
    with pytest.raises(BundleError, match=r"lists 26 features, this version's encoder makes 27"):
        load_bundle(b)

    def renormalise(m: dict) -> None:
        m["observation"]["features"][0]["normalisation"] = "none"

    b = edit("normalisation", renormalise)
    with pytest.raises(BundleError, match=r"index 0: normalisation 'none' \(bundle\)"):
        load_bundle(b)
    b = edit("version", lambda m: m["versions"].update({"prfaas-env": "9.4.0"}))
    with pytest.raises(BundleError, match=r"exported with prfaas-env 9.4.0; this is"):
        load_bundle(b)
    b = edit("stateful", lambda m: m["fallback"].update(policy="round_robin"))
    with pytest.raises(BundleError, match=r"'round_robin' is not a stateless heuristic"):
        load_bundle(b)
    b = edit("malformed", lambda m: m.update(state=5))
    with pytest.raises(BundleError, match=r"'state' must be a JSON object, got int"):
        load_bundle(b)
    # a golden file the model does not reproduce (e.g. a model swapped after export)
    b = copy("golden")
    lines = (b / "golden.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["action"] = 1 - first["action"]
    (b / "golden.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    _rehash(b)
    with pytest.raises(BundleError, match=r"golden.jsonl: line 1: the router does not reproduce"):
        Router(b)
    # a model whose input width differs from the manifest's feature list
    b = copy("width")
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("ArgMax", ["observation"], ["action"], axis=1, keepdims=0),
            helper.make_node("Identity", ["action_mask"], ["scores"]),
        ],
        "wrong",
        [
            helper.make_tensor_value_info("observation", TensorProto.FLOAT, ["batch", 30]),
            helper.make_tensor_value_info("action_mask", TensorProto.BOOL, ["batch", 2]),
        ],
        [
            helper.make_tensor_value_info("action", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("scores", TensorProto.BOOL, ["batch", 2]),
        ],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
        str(b / "policy.onnx"),
    )
    _rehash(b)
    with pytest.raises(
        BundleError, match=r"takes 30 observation features but manifest.json lists 27"
    ):
        Router(b)
    assert router_main(["route", "--bundle", str(tmp_path / "missing"), "-"]) == 2


def test_evaluate_py_runs_a_bundle_like_its_run(
    bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = bundle.parent / "run"
    cfg = json.loads((run / "run.json").read_text())["config"]
    out = bundle.parent / "eval"
    code = evaluate_cli.main(
        [
            "--config",
            cfg,
            "--policies",
            "none",
            "--agent",
            str(run),
            "--agent",
            str(bundle),
            "--seeds",
            "2",
            "--decisions",
            "150",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    recs = json.loads((out / "results.json").read_text())
    by = {}
    for r in recs:
        by.setdefault(r["policy"], []).append({k: v for k, v in r.items() if k != "policy"})
    assert by["agent:run"] == by["bundle:bundle"]


# ---- the HTTP sidecar ---------------------------------------------------------------------------
def test_sidecar_endpoints_and_errors(bundle: Path) -> None:
    from starlette.testclient import TestClient

    from prfaas_env.router.server import create_app

    client = TestClient(create_app(Router(bundle)))
    state = json.loads((bundle / "golden.jsonl").read_text().splitlines()[0])["state"]
    r = client.post("/route", json=state)
    assert r.status_code == 200 and r.json()["source"] == "model"
    assert r.json()["bundle"] == json.loads((bundle / "manifest.json").read_text())["content_hash"]
    r = client.post("/route", json={"request": {"input_tokens": 900}})
    assert r.status_code == 200 and r.json()["source"] == "fallback"
    assert r.json()["reason"].startswith("missing recent.ttft_ewma_s; missing prefill.")
    assert r.json()["scores"] is None
    r = client.post("/route", content=b"{not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    bad = json.loads(json.dumps(state))
    bad["decode"]["pd"]["free_slots"] = "many"
    r = client.post("/route", json=bad)
    assert r.status_code == 422 and r.json()["path"] == "/decode/pd/free_slots"
    r = client.post("/route", json={"request": {"input_tokens": 5}, "extra": 1})
    assert r.status_code == 422 and "extra" in r.json()["error"]
    r = client.post("/route", content=b" " * 70_000)
    assert r.status_code == 413
    for body, status in (
        (b'{"request": {"input_tokens": NaN}}', 400),
        (b'{"request": {"input_tokens": 100}, "recent": {"ttft_ewma_s": Infinity}}', 400),
        (b'{"request": {"input_tokens": 1' + b"0" * 5000 + b"}}", 400),
        (b'{"a":' * 10_000, 400),
        (b'{"request": {"input_tokens": 1' + b"0" * 400 + b"}}", 422),
        (b'{"request": {"input_tokens": 1.5}}', 422),
        (b'{"request": {"input_tokens": true}}', 422),
        (b'{"request": {"input_tokens": 10}, "decode": {"pd": {"kv_used": 5}}}', 422),
        (
            b'{"request": {"input_tokens": 10}, "decode": {"pd": {"kv_used": 10'
            + b"0" * 400
            + b"}}}",
            422,
        ),
        (b"[1, 2]", 422),
        (b'"state"', 422),
    ):
        r = client.post("/route", content=body)
        assert r.status_code == status, (body[:60], r.text[:200])
        assert r.json()["error"]
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/schema").json()["required"] == ["request"]
    text = client.get("/metrics").text
    assert 'prfaas_router_decisions_total{source="model"} 1.0' in text
    assert 'prfaas_router_fallbacks_total{reason="missing"} 1.0' in text
    assert 'prfaas_router_bad_requests_total{status="422"} 9.0' in text
    assert "prfaas_router_decision_seconds_count 2.0" in text
    assert client.get("/route").status_code == 405


# ---- knob distillation --------------------------------------------------------------------------
def test_distillation_recovers_a_threshold_it_was_given() -> None:
    """Record the PrfaaS threshold rule at t = 4096 as if it were a learned policy: the search
    must find a setting that reproduces every decision, and the default t (16384) must not."""
    sc, live = live_of("paper_prfaas")
    routes = RouteTable.from_topology(sc.topology)
    teacher = make_policy("prfaas_threshold", routes, sc.topology, threshold_tokens=4096)
    rec = record(sc, teacher, live, [10000, 10001], 400)
    params, agree, default_agree = best_knobs("prfaas_threshold", sc, live, rec)
    assert agree == 1.0 and default_agree < 0.9
    lengths = rec.view["input_tokens"]
    # any threshold between the nearest recorded lengths around 4096 is exact
    lo, hi = lengths[lengths <= 4096].max(), lengths[lengths > 4096].min()
    assert lo <= params["threshold_tokens"] < hi


def test_evaluate_py_reads_policy_params(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "distilled.yaml"
    p.write_text(yaml.safe_dump({"policies": {"prfaas_threshold": {"threshold_tokens": 1}}}))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(base()))
    args = ["--config", str(cfg), "--seeds", "1", "--decisions", "100", "--no-progress"]
    assert (
        evaluate_cli.main(
            [*args, "--policies", "prfaas_threshold,always_remote", "--policy-params", str(p)]
        )
        == 0
    )
    rows = [x for x in capsys.readouterr().out.splitlines() if x.startswith(("prfaas", "always"))]
    assert rows[0].split()[1:] == rows[1].split()[1:]  # t = 1 offloads everything
    p.write_text(yaml.safe_dump({"policies": {"nope": {}}}))
    assert evaluate_cli.main([*args, "--policy-params", str(p)]) == 2
    assert "policies.nope: unknown policy" in capsys.readouterr().err


def test_gateway_picker_decides_with_a_bundle(bundle: Path, tmp_path: Path) -> None:
    """The endpoint picker with a bundle: an inventory without a topology takes the
    bundle's; with fresh metrics the model decides, with none the bundle's fallback does and
    says which metrics were missing."""
    pytest.importorskip("envoy.service.ext_proc.v3.external_processor_pb2", reason="gateway extra")
    from prfaas_env.gateway.build import build_picker
    from prfaas_env.gateway.prompt import parse_request, synthetic_prompt
    from prfaas_env.gateway.scrape import ScrapeResult, parse_metrics

    topo = load_bundle(bundle).live.topology
    port = iter(range(7000, 8000))
    endpoints = {
        c.name: {
            role: [f"127.0.0.1:{next(port)}" for _ in range(n)]
            for role, n in (("prefill", c.prefill_instances), ("decode", c.decode_instances))
            if n
        }
        for c in topo.clusters
    }
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump({"endpoints": endpoints}))
    now = [100.0]
    picker = build_picker(tmp_path / "inventory.yaml", bundle=bundle, clock=lambda: now[0])
    store = picker.store
    gauges = {"waiting": 0, "running": 1, "kv_cache_usage_perc": 0.2}
    text = "".join(
        f"vllm:{k if k.startswith('kv') else 'num_requests_' + k} {v}\n" for k, v in gauges.items()
    )
    samples, _ = parse_metrics(text, store.wanted)
    for url in store.scrape_urls():
        store.on_scrape(ScrapeResult(url, samples, None, 0, now[0]))
    body = json.dumps({"model": "m", "prompt": synthetic_prompt(20_000, [], 512)}).encode()
    prompt = parse_request(body, "/v1/completions", topo.block_tokens)
    pick = picker.pick(prompt)
    assert pick.status == 200 and pick.source == "model" and pick.reason is None
    assert pick.route in topo.action_labels(False)
    now[0] += 60.0  # every scrape stale
    pick = picker.pick(prompt)
    assert pick.status == 200 and pick.source == "fallback" and "missing" in (pick.reason or "")


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 5).flatmap(
        lambda k: st.tuples(
            st.lists(
                st.lists(st.floats(-5, 5, allow_nan=False), min_size=k, max_size=k),
                min_size=1,
                max_size=6,
            ),
            st.lists(st.lists(st.booleans(), min_size=k, max_size=k), min_size=6, max_size=6),
        )
    )
)
def test_score_margin_is_the_gap_between_the_two_best_allowed_scores(data: tuple) -> None:
    """Against a plain loop: the best allowed score minus the second best; inf with one
    allowed action, 0 with none."""
    rows, masks = data
    scores = np.array(rows, float)
    mask = np.array(masks[: len(rows)], bool)
    got = score_margin(scores, mask)
    for i in range(len(rows)):
        allowed = sorted((s for s, m in zip(rows[i], mask[i], strict=True) if m), reverse=True)
        if not allowed:
            assert got[i] == 0.0
        elif len(allowed) == 1:
            assert got[i] == np.inf
        else:
            assert got[i] == allowed[0] - allowed[1]
