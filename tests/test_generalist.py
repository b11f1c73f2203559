"""The generalist: the per-route policy's training, its bundle, the router that serves it on
any topology, its guard and fallback."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.generalist import (
    GeneralistSettings,
    RouteScorer,
    load_generalist,
    randomised,
    score_fn,
    soft_targets,
    train_generalist,
    validation_scenarios,
)
from prfaas_env.export.route_bundle import export_route_bundle
from prfaas_env.observation.per_route import GLOBAL_FEATURES, ROUTE_FEATURES
from prfaas_env.router import BundleError, open_router, pretrained_names
from prfaas_env.router.routes import load_route_bundle, replay_golden
from prfaas_env.suite import load_suite

SUITE = load_suite("default")
WIDE = {
    "routes": [[-1.0, 10.0]] * len(ROUTE_FEATURES),
    "global": [[-1.0, 10.0]] * len(GLOBAL_FEATURES),
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained scorer exported on two topologies (2 and 15 routes)."""
    torch.manual_seed(0)
    net = RouteScorer(len(ROUTE_FEATURES), len(GLOBAL_FEATURES), 16).eval()
    out = tmp_path_factory.mktemp("route") / "bundle"
    ranges = {"routes": [[0.0, 1.0]] * len(ROUTE_FEATURES), "global": WIDE["global"]}
    ranges["routes"] = WIDE["routes"][:]
    ranges["routes"][[n for n, _ in ROUTE_FEATURES].index("wait")] = [0.0, 3.0]
    scenarios = [(n, SUITE.get(n).scenario) for n in ("paper_poisson", "region3_mixed_ramp")]
    export_route_bundle(
        net,
        score_fn(net),
        scenarios,
        out,
        ranges,
        {"summary": {"test": True}},
        seeds=1,
        decisions=80,
        golden=10,
        echo=lambda s: None,
    )
    return out


def test_the_bundle_replays_its_golden_lines_on_every_topology(bundle: Path) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["form"] == "routes" and m["parity"]["decisions"] == 2 * 80
    assert m["parity"]["onnx_agree"] == m["parity"]["decisions"]
    count, wrong = replay_golden(bundle)
    assert count == m["golden"]["lines"] > 10 and not wrong
    tops = json.loads((bundle / "topologies.json").read_text())
    assert set(tops) == {"paper_poisson", "region3_mixed_ramp"}


def test_one_bundle_routes_any_topology_with_guard_and_fallback(bundle: Path) -> None:
    sc = SUITE.get("large_poisson").scenario  # a topology the bundle never saw: 72 routes
    router = open_router(
        bundle,
        topology=sc.raw["topology"],
        ttft_slo_s=sc.ttft_slo_s,
        expected_output_tokens=1024,
    )
    assert len(router.labels) == 72
    d = router.decide({"request": {"input_tokens": 20000}})
    assert d.source == "fallback" and "missing" in d.reason  # metrics absent: fallback
    state = {"request": {"input_tokens": 20000}, "recent": {"ttft_ewma_s": 1.0}}
    state["prefill"] = {
        c: {
            "cached_tokens": 0,
            "queued_requests": 0,
            "queued_tokens": 0,
            "wait_s": 0.0,
            "busy_fraction": 0.0,
        }
        for c in router.live.entities["prefill"]
    }
    state["channels"] = {
        c: {"bandwidth_gbps": 50.0, "bytes_in_flight": 0, "flows": 0}
        for c in router.live.entities["channels"]
    }
    state["decode"] = {
        c: {"free_slots": 1.0, "kv_used": 0.0, "admission_queue": 0, "admission_wait_s": 0.0}
        for c in router.live.entities["decode"]
    }
    ok = router.decide(state)
    assert ok.source == "model" and 0 <= ok.action < 72 and len(ok.scores) == 72
    first = router.live.entities["prefill"][0]
    state["prefill"][first]["wait_s"] = 3600.0  # far beyond the guard's wait range
    guarded = router.decide(state)
    assert guarded.source == "fallback" and guarded.reason.startswith("guard: route ")
    assert "wait" in guarded.reason and router.guard_fired == 1
    with pytest.raises(BundleError, match="give the deployment's topology, ttft_slo_s"):
        open_router(bundle)


def test_altered_or_foreign_bundles_are_refused(bundle: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    (copy / "golden.jsonl").write_text("{}\n")
    with pytest.raises(BundleError, match=r"golden\.jsonl: SHA-256 differs"):
        load_route_bundle(copy)
    with pytest.raises(BundleError, match="no such pretrained bundle; shipped: "):
        open_router("pretrained:nothing-like-this")
    m = json.loads((bundle / "manifest.json").read_text())
    m["features"]["routes"][0]["name"] = "something_else"
    shutil.rmtree(copy)
    shutil.copytree(bundle, copy)
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"features\.routes are .*this version computes"):
        load_route_bundle(copy)


def test_soft_targets_follow_the_cost_gaps() -> None:
    costs = np.array([[10.0, 12.0, 50.0], [3.0, 3.0, np.inf]])
    mask = np.array([[True, True, True], [True, True, False]])
    p = soft_targets(costs, mask, temperature_s=2.0)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-6)
    assert p[0, 0] > p[0, 1] > p[0, 2] and p[1, 2] == 0.0 and p[1, 0] == p[1, 1]
    np.testing.assert_allclose(p[0, 0] / p[0, 1], np.e, rtol=1e-5)


def test_training_writes_a_usable_run(tmp_path: Path) -> None:
    """A tiny DAgger run: labels from the oracle, a fitted scorer, run.json with the
    guard's ranges, TensorBoard logs; the run routes a held-out topology."""
    s = GeneralistSettings(
        hidden=8,
        horizon=2,
        iterations=1,
        envs=2,
        warmup=5,
        decisions=6,
        epochs=1,
        eval_seeds=1,
        eval_decisions=40,
    )
    summary = train_generalist("default", tmp_path / "g", s, echo=lambda m: None)
    assert summary["selected_iteration"] == 0
    assert (tmp_path / "g" / "iterations" / "0.pt").is_file()  # every iteration's weights
    assert len(summary["ranges"]["routes"]) == len(ROUTE_FEATURES)
    assert summary["history"][0]["labels"] == 7 * 2 * 6
    assert set(summary["history"][0]["eval"]) == {sc.name for sc in SUITE.train}
    assert set(summary["oracle"]) == {sc.name for sc in SUITE.train}  # its reference, once
    assert all(np.isfinite(v["p90_rel"]) for v in summary["oracle"].values())
    events = b"".join(p.read_bytes() for p in (tmp_path / "g" / "tb").iterdir())
    assert b"eval/paper_poisson/oracle_p90_vs_best_heuristic" in events
    assert b"eval/share_of_oracle_gain" in events
    net, _ = load_generalist(tmp_path / "g")
    assert net.head.in_features == 8
    from agents.generalist import generalist_policy
    from prfaas_env.evaluation import run_policy

    sc = SUITE.get("large_poisson").scenario
    run = run_policy(sc, lambda _sc: generalist_policy(sc, str(tmp_path / "g")), "g", [0], 30)
    assert run.metrics["decisions"][0] == 30


def test_variant_score_scores_runs_on_variants_only_of_the_train_scenarios(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """examples/variant_score.py: the train scenarios and their variants (drawn with the
    offset seed, not a run's own), the validation score of each run, nothing held out."""
    import importlib.util

    from agents.generalist import VARIANT_SEED, validation_scenarios

    s = GeneralistSettings(hidden=8, horizon=2, iterations=1, envs=2, warmup=5, decisions=6)
    s = replace(s, epochs=1, eval_seeds=1, eval_decisions=30, oracle_eval=0)
    train_generalist("default", tmp_path / "g", s, echo=lambda m: None)
    path = Path(__file__).resolve().parents[1] / "examples" / "variant_score.py"
    spec = importlib.util.spec_from_file_location("variant_score", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    argv = [str(tmp_path / "g"), "--variants", "1", "--seeds", "1", "--decisions", "30"]
    assert mod.main(argv) == 0
    out = capsys.readouterr().out
    assert "best heuristics of 14 scenarios and variants" in out
    assert f"{tmp_path / 'g'}: score " in out
    wide = replace(GeneralistSettings(**mod.WIDEST), validate_variants=1)
    train = list(SUITE.train)
    mine = validation_scenarios(train, wide, VARIANT_SEED + 1)[len(train) :]
    runs = validation_scenarios(train, wide)[len(train) :]
    assert [v.name for v in mine] == [f"{t.name}@v0" for t in train]
    assert [v.scenario.workload.rate_multiplier for v in mine] != [
        v.scenario.workload.rate_multiplier for v in runs
    ]


def test_shipped_pretrained_bundles_replay_their_golden_files() -> None:
    assert "generalist" in pretrained_names()
    for name in pretrained_names():
        count, wrong = replay_golden(
            Path(__file__).resolve().parents[1] / "prfaas_env" / "pretrained" / name
        )
        assert count > 0 and not wrong, wrong[:3]


def test_the_shipped_generalist_routes_suite_and_single_scenarios_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``evaluate.py --agent pretrained:generalist`` on a suite (a topology it shares with
    training and the large one) and on one shipped config, with guard firings reported."""
    import json

    from tests.test_evaluate import _main

    out = tmp_path / "suite"
    argv = ["--suite", "default", "--scenarios", "paper_poisson,large_poisson"]
    argv += ["--policies", "mooncake", "--agent", "pretrained:generalist", "--seeds", "1"]
    argv += ["--decisions", "80", "--workers", "1", "--no-progress", "--out", str(out)]
    assert _main()(argv) == 0
    text = capsys.readouterr().out
    assert "pretrained:generalist" in text and "guard fired" in text
    records = json.loads((out / "results.json").read_text())
    mine = [r for r in records if r["policy"] == "pretrained:generalist"]
    assert {r["scenario"] for r in mine} == {"paper_poisson", "large_poisson"}
    assert all(r["throughput_rps"] > 0 and 0.0 <= r["guard_fired"] <= 1.0 for r in mine)
    argv = ["--config", "paper_prfaas", "--policies", "none", "--agent", "pretrained:generalist"]
    assert _main()([*argv, "--seeds", "1", "--decisions", "60", "--no-progress"]) == 0
    assert "pretrained:generalist" in capsys.readouterr().out


def test_an_untrained_residual_scorer_routes_as_mooncake_and_a_residual_run_reloads(
    tmp_path: Path,
) -> None:
    """The residual form starts as the heuristic's rule (the lowest estimated TTFT among the
    allowed routes, on the same per-route rows) and its run reloads with its anchor."""
    from agents.generalist import anchor_of, load_generalist

    anchor = anchor_of(1)
    assert anchor == [n for n, _ in ROUTE_FEATURES].index("estimated_ttft")
    net = RouteScorer(len(ROUTE_FEATURES), len(GLOBAL_FEATURES), 8, anchor=anchor).eval()
    rng = np.random.default_rng(3)
    routes = rng.random((64, 9, len(ROUTE_FEATURES))).astype(np.float32)
    glob = rng.random((64, len(GLOBAL_FEATURES))).astype(np.float32)
    # statistics far from (0, 1): the rule must read the raw feature, not the standardised one
    shift = rng.random(len(ROUTE_FEATURES)).astype(np.float32)
    net.set_statistics(routes.reshape(-1, len(ROUTE_FEATURES)) * 7.0 - shift, glob * 3.0 + 1.0)
    routes[:, :, anchor] = rng.permuted(rng.random((64, 9)), axis=1)
    mask = rng.random((64, 9)) < 0.7
    mask[:, 0] = True
    with torch.no_grad():
        action, _ = net(torch.from_numpy(routes), torch.from_numpy(glob), torch.from_numpy(mask))
    want = np.argmin(np.where(mask, routes[:, :, anchor], np.inf), axis=1)
    np.testing.assert_array_equal(action.numpy(), want)
    with pytest.raises(ValueError, match="anchor: a route feature index"):
        RouteScorer(len(ROUTE_FEATURES), len(GLOBAL_FEATURES), 8, anchor=len(ROUTE_FEATURES))
    s = GeneralistSettings(
        hidden=8, horizon=2, iterations=1, envs=2, warmup=5, decisions=6, epochs=1,
        eval_seeds=1, eval_decisions=30, oracle_eval=0, residual=1,
    )  # fmt: skip
    summary = train_generalist("default", tmp_path / "r", s, echo=lambda m: None)
    assert summary["oracle"] is None and summary["settings"]["residual"] == 1
    again, _ = load_generalist(tmp_path / "r")
    saved = torch.load(tmp_path / "r" / "model.pt")
    assert again.anchor == anchor and set(saved) == set(again.state_dict())
    assert all(torch.equal(saved[k], v) for k, v in again.state_dict().items())
    from prfaas_env.errors import ConfigError

    with pytest.raises(ConfigError, match="residual: expected 0 or 1, got 2"):
        GeneralistSettings(residual=2)


def test_domain_randomisation_and_label_cost_settings() -> None:
    """Output-length multipliers are drawn log-uniformly in their range (the scenario's own
    lengths, and the same random stream as before, when the range is 1-1); the label cost
    and the ranges are checked with the setting named."""
    from prfaas_env.errors import ConfigError

    sc = SUITE.get("paper_poisson").scenario
    rng = np.random.default_rng(3)
    plain = randomised(sc, GeneralistSettings(), rng)
    assert plain.workload.output_multiplier == 1.0
    again = np.random.default_rng(3)
    assert plain.workload.rate_multiplier == again.uniform(0.7, 1.15)  # the one draw
    assert rng.integers(10**9) == again.integers(10**9)
    s = GeneralistSettings(out_low=0.5, out_high=4.0, cost="ttft_slo")
    draws = [randomised(sc, s, rng).workload.output_multiplier for _ in range(40)]
    assert 0.5 <= min(draws) < 1.0 < 2.0 < max(draws) <= 4.0
    train = list(SUITE.train)
    assert validation_scenarios(train, s) == train
    more = validation_scenarios(train, replace(s, validate_long=1))
    assert [v.name for v in more[len(train) :]] == [f"{t.name}@out4" for t in train]
    assert more[-1].scenario.workload.output_multiplier == 4.0
    var = validation_scenarios(train, replace(s, validate_variants=2))
    assert [v.name for v in var[len(train) :]] == [
        f"{t.name}@v{k}" for t in train for k in range(2)
    ]
    mult = [v.scenario.workload.rate_multiplier for v in var[len(train) :]]
    again = validation_scenarios(train, replace(s, validate_variants=2, seed=9))[len(train) :]
    assert [v.scenario.workload.rate_multiplier for v in again] == mult  # not the run's seed
    own = [t.scenario.workload.rate_multiplier for t in train for _ in range(2)]
    drawn = [m / o for m, o in zip(mult, own, strict=True)]
    assert len(set(drawn)) == len(drawn) and all(0.7 <= m <= 1.15 for m in drawn)
    with pytest.raises(ConfigError, match="validate_variants: expected at least 0"):
        GeneralistSettings(validate_variants=-1)
    with pytest.raises(ConfigError, match="cost: 'goodput' is not allowed; allowed: ttft, tail"):
        GeneralistSettings(cost="goodput")
    with pytest.raises(ConfigError, match="out_low, out_high: expected 0 < low <= high <= 100"):
        GeneralistSettings(out_low=3.0, out_high=2.0)


def test_link_randomisation_draws_bandwidth_and_fluctuation_within_their_ranges() -> None:
    """Link bandwidth multipliers are drawn log-uniformly in their range and, with
    ``link_fluctuate``, steady links become fluctuating with parameters inside FLUCTUATION;
    the defaults leave the links (and the random stream) alone; bad ranges name the key."""
    from agents.generalist import FLUCTUATION
    from prfaas_env.errors import ConfigError

    sc = SUITE.get("paper_poisson").scenario
    (nominal,) = [link.bandwidth_gbps for link in sc.topology.links]
    rng = np.random.default_rng(5)
    assert randomised(sc, GeneralistSettings(), rng).topology.links == sc.topology.links
    s = GeneralistSettings(link_low=0.1, link_high=1.0, link_fluctuate=0.5)
    drawn = [randomised(sc, s, rng).topology.links[0] for _ in range(40)]
    ratios = [link.bandwidth_gbps / nominal for link in drawn]
    assert 0.1 <= min(ratios) < 0.2 and 0.6 < max(ratios) <= 1.0
    shaky = [link.process for link in drawn if link.process.kind == "fluctuating"]
    assert 8 <= len(shaky) <= 32  # about half of 40
    for p in shaky:
        assert FLUCTUATION["mean_fraction"][0] <= p.mean_fraction <= FLUCTUATION["mean_fraction"][1]
        assert FLUCTUATION["volatility"][0] <= p.volatility <= FLUCTUATION["volatility"][1]
    with pytest.raises(ConfigError, match="link_low, link_high: expected 0 < low <= high"):
        GeneralistSettings(link_low=0.0)
    with pytest.raises(ConfigError, match="link_fluctuate: expected a probability"):
        GeneralistSettings(link_fluctuate=1.5)
    with pytest.raises(ConfigError, match="members: expected at least 1"):
        GeneralistSettings(members=0)
    teacher = GeneralistSettings(also="mooncake, prfaas_threshold").oracle(sc, "mooncake")
    assert teacher["base"] == "mooncake" and teacher["also"] == ["prfaas_threshold"]
    assert set(teacher["also_params"]) == {"prfaas_threshold"}
    assert GeneralistSettings().oracle(sc, "lmetric")["also"] == []
    with pytest.raises(ConfigError, match="also: 'rollout_oracle' is not a deterministic"):
        GeneralistSettings(also="rollout_oracle")


def test_pool_randomisation_resizes_every_pool_within_its_range() -> None:
    """With ``pool_low``/``pool_high`` every pool's instance count is scaled by its own
    log-uniform draw (so clusters of one topology end up with different multipliers); the
    defaults leave the pools and the random stream alone; a bad range names the keys."""
    from prfaas_env.errors import ConfigError

    sc = SUITE.get("region3_prefix_bursty").scenario
    own = {c.name: (c.prefill_instances, c.decode_instances) for c in sc.topology.clusters}
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    plain = randomised(sc, GeneralistSettings(), a)
    assert plain.topology.clusters == sc.topology.clusters
    randomised(sc, GeneralistSettings(), b)
    assert a.random() == b.random()
    s = GeneralistSettings(pool_low=0.5, pool_high=2.0)
    ratios = []
    for _ in range(20):
        for c in randomised(sc, s, a).topology.clusters:
            for n, n0 in zip((c.prefill_instances, c.decode_instances), own[c.name], strict=True):
                if n0 == 0:
                    assert n == 0
                    continue
                assert max(1, round(0.5 * n0)) <= n <= round(2.0 * n0)
                ratios.append(n / n0)
    assert min(ratios) < 0.8 and max(ratios) > 1.4 and len(set(ratios)) > 3
    with pytest.raises(ConfigError, match="pool_low, pool_high: expected 0 < low <= high"):
        GeneralistSettings(pool_low=2.0, pool_high=1.0)


def test_an_ensemble_run_scores_with_its_members_mean_and_exports_as_one_graph(
    tmp_path: Path,
) -> None:
    """``members=3``: three residual scorers fitted to the same labels in their own orders
    (they differ), the policy's score is their mean, the run reloads bit for bit and its
    bundle's ONNX graph reproduces the mean."""
    import onnxruntime as ort

    from agents.generalist import export_generalist, members_of
    from prfaas_env.policies.route_scorer import ScorerEnsemble

    s = GeneralistSettings(
        hidden=8, horizon=2, iterations=1, envs=2, warmup=5, decisions=6, epochs=1,
        eval_seeds=1, eval_decisions=30, oracle_eval=0, residual=1, members=3,
        link_low=0.5, link_fluctuate=1.0,
    )  # fmt: skip
    train_generalist("default", tmp_path / "e", s, echo=lambda m: None)
    net, summary = load_generalist(tmp_path / "e")
    assert isinstance(net, ScorerEnsemble) and summary["settings"]["members"] == 3
    parts = members_of(net)
    heads = [m.head.weight.detach() for m in parts]
    assert not torch.equal(heads[0], heads[1]) and not torch.equal(heads[1], heads[2])
    rng = np.random.default_rng(0)
    routes = torch.from_numpy(rng.random((5, 4, len(ROUTE_FEATURES))).astype(np.float32))
    glob = torch.from_numpy(rng.random((5, len(GLOBAL_FEATURES))).astype(np.float32))
    with torch.no_grad():
        mean = torch.stack([m.scores(routes, glob) for m in parts]).mean(0)
        torch.testing.assert_close(net.scores(routes, glob), mean)
    manifest = export_generalist(tmp_path / "e", tmp_path / "b", echo=lambda m: None)
    sess = ort.InferenceSession(
        str(tmp_path / "b" / manifest["model"]["onnx"]), providers=["CPUExecutionProvider"]
    )
    mask = np.ones((5, 4), dtype=bool)
    _, onnx_scores = sess.run(
        ["action", "scores"],
        {"routes": routes.numpy(), "global": glob.numpy(), "action_mask": mask},
    )
    np.testing.assert_allclose(onnx_scores, mean.numpy(), rtol=1e-4, atol=1e-4)
