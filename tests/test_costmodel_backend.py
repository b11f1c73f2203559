"""The measured backend behind the cost model: tables, fallback, errors, unchanged defaults."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prfaas_env.costmodel import BackendFallbackWarning, CostModel, ServingSpec, aic, parse_serving
from prfaas_env.errors import ConfigError
from prfaas_env.sim.costs import build_tables
from prfaas_env.sim.scenario import load_scenario

CONFIGS = Path(__file__).resolve().parents[1] / "prfaas_env" / "configs"
GOLDEN = Path(__file__).resolve().parent / "data" / "default_cost_tables.json"
needs_aic = pytest.mark.skipif(
    aic.installed_version() is None, reason="aiconfigurator-core (extra 'aic') is not installed"
)
FP8_70B = ServingSpec(backend="trtllm", weights="fp8", kv_cache="fp8", tp=4)


# ---- defaults unchanged --------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(json.loads(GOLDEN.read_text())))
def test_default_scenarios_cost_tables_unchanged(name):
    """Every shipped scenario tabulates exactly what it did before serving specs existed
    (values recorded from the commit before them)."""
    want = json.loads(GOLDEN.read_text())[name]
    topo = load_scenario(CONFIGS / f"{name}.yaml").topology
    t = build_tables(topo.cost_models(), [c.max_batch for c in topo.clusters])
    np.testing.assert_allclose(t.prefill_log_t.sum(), want["prefill_log_t_sum"], rtol=1e-12)
    np.testing.assert_allclose(t.decode_log_t.sum(), want["decode_log_t_sum"], rtol=1e-12)
    np.testing.assert_allclose(t.prefill_log_t.ravel()[::97], want["prefill_sample"], rtol=1e-12)
    np.testing.assert_allclose(t.decode_log_t.ravel()[::997], want["decode_sample"], rtol=1e-12)
    np.testing.assert_allclose(
        topo.decode_kv_capacity_bytes(), want["decode_kv_capacity_bytes"], rtol=1e-12
    )


def test_default_describe_names_fitted_sources():
    d = CostModel("prfaas-1t-hybrid", "h20", 8).describe()
    assert d["prefill"].startswith("derived")
    assert d["overhead"].startswith("none")
    assert "backend" not in d


# ---- parsing and bad input -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "key", "listed"),
    [
        ({"backend": "tensorrt"}, "c.serving.backend", "trtllm, vllm, sglang"),
        ({"weights": "fp6"}, "c.serving.weights", "fp8"),
        ({"kv_cache": "int2"}, "c.serving.kv_cache", "bf16"),
        ({"tp": 0}, "c.serving.tp", ">= 1"),
        ({"version": "1.0"}, "c.serving.version", "backend"),
        ({"speed": 1}, "c.serving", "allowed"),
    ],
)
def test_bad_serving_keys_name_the_key(raw, key, listed):
    with pytest.raises(ConfigError) as e:
        parse_serving(raw, "c.serving")
    assert key in str(e.value) and listed in str(e.value)


def test_parallelism_must_match_the_instance():
    with pytest.raises(ConfigError, match=r"clusterX\.serving.*gpus_per_instance = 8"):
        CostModel("llama-3.1-70b", "h200", 8, serving=ServingSpec(tp=4), where="clusterX")
    with pytest.raises(ConfigError, match=r"clusterX\.serving\.moe_ep.*tp \* attention_dp = 8"):
        CostModel("deepseek-v3", "h200", 8, serving=ServingSpec(tp=8, moe_ep=3), where="clusterX")


def _scenario(tmp_path, serving: dict, gpus: int = 8, model: str = "llama-3.1-70b") -> Path:
    doc = {
        "topology": {
            "model": model,
            "datacenters": ["a"],
            "clusters": {
                "pd": {
                    "datacenter": "a",
                    "role": "pd",
                    "gpu": "h100",
                    "gpus_per_instance": gpus,
                    "prefill_instances": 1,
                    "decode_instances": 1,
                    "serving": serving,
                }
            },
        },
        "workload": {
            "arrival": {"rate_rps": 1.0},
            "input": {"tokens": 1024},
            "output": {"tokens": 128},
        },
    }
    p = tmp_path / "s.yaml"
    import yaml

    p.write_text(yaml.safe_dump(doc))
    return p


def test_model_that_does_not_fit_names_cluster_and_key(tmp_path):
    p = _scenario(tmp_path, {"weights": "bf16"}, gpus=1)
    with pytest.raises(ConfigError) as e:
        load_scenario(p)
    msg = str(e.value)
    assert "clusters.pd.serving" in msg and "gpus_per_instance" in msg and "fp8" in msg


def test_precision_changes_kv_and_capacity():
    bf16 = CostModel("llama-3.1-70b", "h200", 8)
    fp8 = CostModel("llama-3.1-70b", "h200", 8, serving=ServingSpec(weights="fp8", kv_cache="fp8"))
    assert float(fp8.kv_bytes(1000)) == pytest.approx(float(bf16.kv_bytes(1000)) / 2)
    assert fp8.weight_bytes_per_instance() == pytest.approx(bf16.weight_bytes_per_instance() / 2)
    assert fp8.max_decode_batch(8192) > 2 * bf16.max_decode_batch(8192)


# ---- the backend ------------------------------------------------------------------------------
def test_fallback_for_gpu_without_database_warns_and_says_so():
    with pytest.warns(BackendFallbackWarning, match=r"h20.*fitted model answers"):
        cm = CostModel(
            "prfaas-1t-hybrid", "h20", 8, serving=ServingSpec(backend="vllm"), where="pd"
        )
    d = cm.describe()
    assert d["backend"].startswith("fallback") and d["prefill"].startswith("derived")
    base = CostModel("prfaas-1t-hybrid", "h20", 8)
    np.testing.assert_array_equal(
        cm.prefill_time_s([1024, 8192]), base.prefill_time_s([1024, 8192])
    )


def test_fallback_when_package_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(aic, "installed_version", lambda: None)
    monkeypatch.setattr(aic, "SHIPPED_DIR", tmp_path / "none")
    monkeypatch.setenv("PRFAAS_ENV_CACHE", str(tmp_path / "cache"))
    aic._MEMORY.clear()
    with pytest.warns(BackendFallbackWarning, match="not installed"):
        cm = CostModel("llama-3.1-70b", "h200", 4, serving=FP8_70B)
    assert cm.backend_tables is None


@needs_aic
def test_backend_tables_agree_with_direct_backend_calls():
    cm = CostModel("llama-3.1-70b", "h200", 4, serving=FP8_70B, overhead=None)
    t = cm.backend_tables
    assert t is not None and "measured backend" in cm.describe()["prefill"]
    h = aic.compile_handle(t.key)
    rng = np.random.default_rng(0)
    # on the grid: exact
    for ui in rng.choice(t.u.size, 5):
        for ci in rng.choice(t.c.size, 3):
            u, c = t.u[ui], t.c[ci]
            direct = h.predict_prefill_latency(1, int(u + c), int(c)) * 1e-3
            assert float(t.prefill_s(np.array(u), np.array(c))) == pytest.approx(direct, rel=1e-9)
    for bi in rng.choice(t.b.size, 5):
        for xi in rng.choice(t.x.size, 3):
            b, x = t.b[bi], t.x[xi]
            direct = h.decode_step_latency(int(b), int(max(x - 1, 1)), 1) * 1e-3
            assert float(t.decode_s(np.array(b), np.array(x))) == pytest.approx(direct, rel=1e-9)
    # between grid points: within 5 % of the backend (log-linear interpolation)
    for u in (300, 3000, 20000):
        direct = h.predict_prefill_latency(1, u, 0) * 1e-3
        no_ov = CostModel("llama-3.1-70b", "h200", 4, serving=FP8_70B, overhead=aic_none())
        assert float(no_ov.prefill_time_s(u)) == pytest.approx(direct, rel=0.05)


def aic_none():
    from prfaas_env.costmodel.serving import NO_OVERHEAD

    return NO_OVERHEAD


@needs_aic
def test_backend_cost_tables_feed_the_simulator_tables():
    cm = CostModel("llama-3.1-70b", "h200", 4, serving=FP8_70B, overhead=aic_none())
    t = build_tables([cm], [64])
    from prfaas_env.sim.costs import decode_grid, prefill_grid

    u, c = prefill_grid()
    direct = cm.prefill_time_continuous_s(u[40], c[0])
    assert np.exp(t.prefill_log_t[0, 40, 0]) == pytest.approx(float(direct), rel=1e-12)
    x = decode_grid()
    d = cm.decode_step_time_continuous_s(np.array(16.0), np.array(16.0 * x[50]))
    assert np.exp(t.decode_log_t[0, 16, 50]) == pytest.approx(float(d), rel=1e-12)


@needs_aic
def test_unknown_version_lists_available():
    with pytest.raises(ConfigError) as e:
        CostModel(
            "llama-3.1-70b",
            "h200",
            4,
            serving=replace(FP8_70B, version="0.0.1"),
            where="clusters.pd",
        )
    msg = str(e.value)
    assert "clusters.pd.serving.version" in msg and "current" in msg


@needs_aic
def test_missing_precision_data_lists_what_answers():
    spec = ServingSpec(backend="sglang", weights="fp8", moe_weights="fp8", kv_cache="fp8", tp=8)
    with pytest.raises(ConfigError) as e:
        CostModel("deepseek-v3", "h200", 8, serving=spec, where="clusters.pd")
    msg = str(e.value)
    assert "clusters.pd.serving.weights/kv_cache" in msg and "answers for" in msg


@needs_aic
def test_tables_are_cached_on_disk_by_digest(tmp_path, monkeypatch):
    monkeypatch.setenv("PRFAAS_ENV_CACHE", str(tmp_path))
    aic._MEMORY.clear()
    a = CostModel("llama-3.1-8b", "h100", 1, serving=ServingSpec(backend="vllm"))
    files = list((tmp_path / "backend_tables").glob("*.npz"))
    assert len(files) == 1 and files[0].stem == a.backend_tables.key.digest()
    aic._MEMORY.clear()
    b = CostModel("llama-3.1-8b", "h100", 1, serving=ServingSpec(backend="vllm"))
    np.testing.assert_array_equal(a.backend_tables.decode_log_t, b.backend_tables.decode_log_t)


@needs_aic
@settings(max_examples=30, deadline=None)
@given(
    p=st.integers(1, 8192),
    c=st.integers(0, 30000),
    b=st.integers(0, 256),
    x=st.integers(1, 30000),
)
def test_mixed_step_bounds(p, c, b, x):
    """A step that prefills a chunk and decodes a batch costs at least each part's own
    non-attention work, and no more than running the two apart."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = CostModel("llama-3.1-70b", "h200", 4, serving=FP8_70B, overhead=aic_none())
    mixed = float(cm.mixed_step_time_s(p, c, b, b * x))
    alone = float(cm.prefill_time_continuous_s(np.array(p), np.array(c)))
    dec = float(cm.decode_step_time_continuous_s(np.array(b), np.array(b * x))) if b else 0.0
    assert np.isfinite(mixed) and mixed > 0
    assert mixed >= 0.99 * float(cm.non_attention_time_s(p + b))
    assert mixed <= 1.01 * (alone + dec) + 1e-4


def test_validation_report_is_current():
    """docs/calibration.md's validation section is what the saved results render to."""
    from prfaas_env.calibration import fit, validate

    results = json.loads(validate.RESULTS.read_text(encoding="utf-8"))
    text = fit.REPORT.read_text(encoding="utf-8")
    assert text.split(fit.VALIDATION_MARKER)[1].strip() == validate.render(results).strip()
    for key in ("rows", "ttft_median_abs_error", "tpot_median_abs_error"):
        assert key in results["silicon"]
    assert "max_abs_error" in results["table5"]


@needs_aic
def test_cached_tables_serve_current_but_not_relative_versions_without_the_package(
    monkeypatch, tmp_path
):
    """Tables cached while the package was installed are used when it is not, for the
    ``current`` version; ``previous`` means a version relative to the installed package's
    data, so without the package it is not guessed from whatever tables are cached."""
    from dataclasses import replace

    monkeypatch.setattr(aic, "SHIPPED_DIR", tmp_path / "none")
    monkeypatch.setenv("PRFAAS_ENV_CACHE", str(tmp_path / "cache"))
    aic._MEMORY.clear()
    built = CostModel("llama-3.1-70b", "h200", 4, serving=FP8_70B).backend_tables
    assert built is not None
    monkeypatch.setattr(aic, "installed_version", lambda: None)
    aic._MEMORY.clear()
    again = CostModel("llama-3.1-70b", "h200", 4, serving=FP8_70B).backend_tables
    assert again is not None and again.key == built.key
    with pytest.warns(BackendFallbackWarning, match="relative to the installed package"):
        cm = CostModel("llama-3.1-70b", "h200", 4, serving=replace(FP8_70B, version="previous"))
    assert cm.backend_tables is None


# ---- the silicon rows' loader ----------------------------------------------------------------
_SILICON_COLUMNS = (
    "id,silicon_data_source,backend,backend_version,model_path,system,precision,mode,isl,osl,"
    "gemm_quant_mode,moe_quant_mode,batch_size,tp_size,pp_size,attention_dp_size,moe_tp_size,"
    "moe_ep_size,prefill_batch_size,prefill_num_workers,prefill_tp_size,prefill_pp_size,"
    "prefill_attention_dp_size,prefill_moe_tp_size,prefill_moe_ep_size,decode_batch_size,"
    "decode_num_workers,decode_tp_size,decode_pp_size,decode_attention_dp_size,"
    "decode_moe_tp_size,decode_moe_ep_size,silicon_ttft_ms,silicon_tpot_ms"
).split(",")


def _silicon_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    base = dict.fromkeys(_SILICON_COLUMNS, "")
    base.update(
        backend="vllm",
        backend_version="0.12.0",
        model_path="meta-llama/Llama-3.1-70B",
        system="h200_sxm",
        precision="fp8",
        isl="1024",
        osl="1024",
        gemm_quant_mode="fp8",
        moe_quant_mode="fp8",
    )
    lines = [",".join(_SILICON_COLUMNS)]
    for k, r in enumerate(rows):
        full = {**base, "id": f"row{k}", **r}
        lines.append(",".join(full[c] for c in _SILICON_COLUMNS))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_silicon_rows_keep_each_recorded_concurrency(tmp_path):
    """Rows that differ only in the concurrency their source records are distinct
    measurements (not repeats to merge), and that concurrency is the one replayed; repeats
    of one measurement merge to their median."""
    from prfaas_env.calibration import silicon

    agg = {"mode": "agg", "batch_size": "32", "tp_size": "4", "pp_size": "1"}
    agg.update(attention_dp_size="1", moe_tp_size="4", moe_ep_size="1")
    rows = [
        {**agg, "silicon_data_source": "f.csv; silicon_concurrency=8", "silicon_ttft_ms": "100"},
        {**agg, "silicon_data_source": "g.csv; silicon_concurrency=8", "silicon_ttft_ms": "300"},
        {**agg, "silicon_data_source": "f.csv; silicon_concurrency=32", "silicon_ttft_ms": "900"},
        {**agg, "silicon_data_source": "f.csv", "silicon_ttft_ms": "50"},  # none recorded
    ]
    for r in rows:
        r["silicon_tpot_ms"] = "10"
    got, skipped = silicon.load_rows(_silicon_csv(tmp_path / "s.csv", rows))
    assert not skipped
    seen = sorted((r.concurrency, r.repeats, round(r.ttft_s, 6)) for r in got)
    # the row without a recorded concurrency: batch x ranks x stages = 32
    assert seen == [(8, 2, 0.2), (32, 1, 0.05), (32, 1, 0.9)]
    # more clients than the engine's batch holds: 32 / 8 = 4 engines, one replayed
    got = silicon.load_rows(_silicon_csv(tmp_path / "t.csv", [{**rows[2], "batch_size": "8"}]))
    assert [(r.concurrency, r.replicas) for r in got[0]] == [(8, 4)]


def test_silicon_disagg_rows_without_pool_sizes_are_left_out(tmp_path):
    """A disaggregated row that records neither its decode batch nor its workers cannot be
    replayed (its pools' sizes are unknown); one that records them is."""
    from prfaas_env.calibration import silicon

    pools = {"mode": "disagg", "silicon_ttft_ms": "500", "silicon_tpot_ms": "20"}
    for side in ("prefill", "decode"):
        pools.update({f"{side}_tp_size": "4", f"{side}_pp_size": "1"})
        pools.update({f"{side}_attention_dp_size": "1", f"{side}_moe_tp_size": "4"})
        pools[f"{side}_moe_ep_size"] = "1"
    sized = {"prefill_batch_size": "1", "prefill_num_workers": "2"}
    sized.update(decode_batch_size="16", decode_num_workers="3")
    rows = [
        {**pools, "silicon_data_source": "silicon_concurrency=64"},
        {**pools, **sized, "silicon_data_source": "silicon_concurrency=48"},
    ]
    got, skipped = silicon.load_rows(_silicon_csv(tmp_path / "s.csv", rows))
    assert skipped == {silicon.NO_DISAGG_SIZES: 1}
    assert len(got) == 1 and got[0].concurrency == 48
    assert got[0].pools["decode"].workers == 3 and got[0].pools["prefill"].workers == 2


def test_silicon_fit_offsets_minimise_the_reported_error():
    """The per-request delay is the one that minimises the median relative TTFT error (the
    median of the differences would be pulled by the rows of several seconds), and a
    prediction adds the fitted terms to the replay at the fitted ramp."""
    from prfaas_env.calibration import validate
    from prfaas_env.costmodel import ServingOverhead

    kernel = np.array([0.05, 0.05, 0.05, 1.0, 1.0])
    measured = np.array([0.1, 0.1, 0.1, 5.0, 6.0])
    d, err = validate._best_offset(kernel, measured)
    assert d == pytest.approx(0.05) and err == pytest.approx(0.0)
    assert err <= np.median(np.abs((kernel + np.median(measured - kernel)) / measured - 1))
    assert validate._best_offset(np.array([1.0, 2.0]), np.array([0.5, 1.0]))[0] == 0.0
    x = {"ttft_kernel_s": [1.0, 2.0, 3.0, 4.0], "tpot_kernel_s": [0.01, 0.02, 0.03, 0.04]}
    x["regime"] = ["open", "queued", "open", "open"]
    x["model"] = "m"
    ov = ServingOverhead(request_s=0.5, step_s=1e-3)
    got = validate._with_overhead(x, validate.RAMPS[1], ov, {})
    assert got.ttft_s == pytest.approx(2.5) and got.tpot_s == pytest.approx(0.021)
    assert got.regime == "queued"
    got = validate._with_overhead(x, validate.RAMPS[1], ov, {"m": 0.5, "other": 3.0})
    assert got.ttft_s == pytest.approx(1.5) and got.tpot_s == pytest.approx(0.011)


def test_silicon_fit_recovers_a_model_kernel_multiplier():
    """Rows whose measured times are a model's kernel replay times a factor (plus a request
    delay) give that factor back for the model, and 1 (no entry) to a model of one
    configuration; without model_scales nothing is fitted per model."""
    from prfaas_env.calibration import validate

    rng = np.random.default_rng(0)
    samples = []
    for i in range(40):
        model = "slow" if i % 2 else "fast"
        f = 1.3 if model == "slow" else 0.8
        ttk = rng.uniform(0.05, 2.0, len(validate.RAMPS))
        tk = rng.uniform(0.01, 0.05, len(validate.RAMPS))
        samples.append(
            {
                "ttft_kernel_s": list(ttk),
                "tpot_kernel_s": list(tk),
                "ttft_s": f * ttk[2] + 0.1,
                "tpot_s": f * tk[2],
                "model": model,
                "config": f"{model}-{i % 6}",
            }
        )
    samples.append({**samples[0], "model": "lonely", "config": "lonely-0"})
    ramp, ov, scales, off = validate.fit_protocol(samples, "agg", "test")
    assert ramp == validate.RAMPS[2] and ov.request_s == pytest.approx(0.1, abs=0.02)
    assert scales["slow"] == pytest.approx(1.3, rel=0.02)
    assert scales["fast"] == pytest.approx(0.8, rel=0.02)
    assert "lonely" not in scales and off == {}
    assert validate.fit_protocol(samples, "agg", "test", model_scales=False)[2] == {}
    for x in samples:
        if x["model"] == "slow":  # 3x its kernels: outside the range, not applied
            x["tpot_s"] *= 3.0 / 1.3
    _, _, scales, off = validate.fit_protocol(samples, "agg", "test")
    assert "slow" not in scales and off["slow"] == pytest.approx(3.0, rel=0.05)


# ---- measured step time of a version the databases lack -----------------------------------------
@needs_aic
def test_measured_version_scales_the_database_version(tmp_path, monkeypatch):
    """A version with a fitted VersionScale is served from its database version's tables with
    every kernel time multiplied by the scale; describe() says so; an unknown version's error
    lists the measured one beside the database's."""
    from prfaas_env.costmodel import serving

    system = "rtx_pro_6000_server"
    current = aic.backend_versions(system, "vllm")["current"]
    doc = {
        "version_scale": {f"vllm/{system}/0.1.0": {"database_version": current, "step_scale": 1.5}},
        "overhead": {"vllm/agg": {"request_s": 0.05, "step_s": 1e-4}},
        "model_scale": {"vllm/agg": {"llama-3.1-8b": 0.8}},
    }
    path = tmp_path / "overhead.json"
    path.write_text(json.dumps(doc))
    monkeypatch.setattr(serving, "OVERHEAD_FILE", path)
    serving.reload_overheads()
    try:
        spec = ServingSpec(backend="vllm", tp=1)
        fitted = CostModel("llama-3.1-8b", "rtx-pro-6000", 1, serving=spec)
        assert fitted.overhead.step_scale == 0.8 and "x 0.800 for llama" in fitted.overhead.source
        base = CostModel(
            "llama-3.1-8b",
            "rtx-pro-6000",
            1,
            serving=spec,
            overhead=serving.fitted_overhead("vllm"),
        )
        assert base.overhead.step_scale == 1.0 and base.overhead.step_s == 1e-4
        old = CostModel("llama-3.1-8b", "rtx-pro-6000", 1, serving=replace(spec, version="0.1.0"))
        assert old.overhead.step_scale == 1.5  # the version's scale, not the model's as well
        assert old.backend_tables is base.backend_tables or (
            old.backend_tables.key == base.backend_tables.key
        )
        assert old.version_scale is not None and base.version_scale is None
        b, x = np.array([1.0, 8.0, 64.0]), np.array([512.0, 2048.0, 8192.0])
        np.testing.assert_allclose(
            old.decode_step_time_s(b, b * x) - old.overhead.step_time_s(b),
            1.5 * (base.decode_step_time_s(b, b * x) - base.overhead.step_time_s(b)),
            rtol=1e-9,
        )
        n = np.array([128.0, 4096.0])
        np.testing.assert_allclose(
            old.prefill_time_s(n, 0 * n), 1.5 * base.prefill_time_s(n, 0 * n), rtol=1e-9
        )
        assert "kernels x 1.500 for vllm 0.1.0" in old.describe()["decode"]
        with pytest.raises(ConfigError, match=r"0\.1\.0 \(measured step time"):
            CostModel("llama-3.1-8b", "rtx-pro-6000", 1, serving=replace(spec, version="0.0.9"))
    finally:
        serving.reload_overheads()


@needs_aic
def test_shipped_version_scale_is_the_fit_of_the_measured_runs():
    """serving_overhead.json's version_scale is what fitting LLMServingSim's runs gives: each
    run's own multiplier reproduces its mean TPOT, the version's scale is their geometric mean,
    and the multiplier a run is validated with never uses that run."""
    from prfaas_env.calibration import colocated, validate
    from prfaas_env.costmodel.serving import version_scales

    if not validate.LLMSERVINGSIM.is_dir():
        pytest.skip("LLMServingSim's runs are not beside the checkout")
    runs = [
        colocated.load_run(p.parent.parent)
        for p in sorted(validate.LLMSERVINGSIM.glob("bench/examples/*/*/vllm/meta.json"))
    ]
    fit = colocated.fit_version_scales(runs)
    assert fit.scales and set(fit.scales) == set(version_scales())
    for key, vs in fit.scales.items():
        shipped = version_scales()[key]
        assert shipped.runs == vs.runs and shipped.step_scale == pytest.approx(vs.step_scale)
    for run in runs:
        if run.name not in fit.own:
            assert fit.held_out(run.name) == (1.0, [])
            continue
        got = colocated.replay(run, fit.own[run.name])["tpot_s"]
        assert np.nanmean(got) == pytest.approx(np.nanmean(run.tpot_s), rel=2e-3)
        scale, others = fit.held_out(run.name)
        assert run.name not in others and others
        bumped = colocated.VersionFit(fit.scales, {**fit.own, run.name: 99.0}, fit.group)
        assert bumped.held_out(run.name) == (scale, others)
