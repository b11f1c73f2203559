"""Cost model API: calibration targets, physical properties, vectorisation, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from prfaas_env.costmodel import CalibrationRangeWarning, CostModel
from prfaas_env.errors import UnknownNameError

# arXiv 2604.15039 Table 5 (8 x H200): prompt tokens -> (prefill s, KV rate Gbps)
TABLE5 = {1024: (0.44, 3.61), 8192: (0.72, 3.59), 32768: (1.84, 3.19), 131072: (7.40, 2.62)}


@pytest.fixture(scope="module")
def h200():
    return CostModel("prfaas-1t-hybrid", "h200", 8)


@pytest.fixture(scope="module")
def h20():
    return CostModel("prfaas-1t-hybrid", "h20", 8)


@pytest.mark.parametrize("tokens", sorted(TABLE5))
def test_table5_prefill_within_10_percent(h200, tokens):
    t = float(h200.prefill_time_s(tokens))
    assert abs(t / TABLE5[tokens][0] - 1) <= 0.10


@pytest.mark.parametrize("tokens", sorted(TABLE5))
def test_table5_kv_rate_within_5_percent(h200, tokens):
    rate = float(h200.kv_bytes(tokens) * 8 / h200.prefill_time_s(tokens) / 1e9)
    assert abs(rate / TABLE5[tokens][1] - 1) <= 0.05


def test_sources_say_measured_or_derived(h200, h20):
    assert h200.describe()["kernels"].startswith("measured")
    assert h200.describe()["prefill"].startswith("measured")
    assert h20.describe()["kernels"].startswith("derived")
    assert h20.describe()["prefill"].startswith("derived")
    assert CostModel("llama-3.1-70b", "b200").describe()["kernels"].startswith("derived")


def test_h20_prefill_is_compute_scaled(h200, h20):
    # Long prefills are compute bound: H20 has 148 vs 989 dense BF16 TFLOPS.
    ratio = float(h20.prefill_time_s(131072) / h200.prefill_time_s(131072))
    assert 3.0 < ratio < 989 / 148


def test_vectorised_matches_scalar(h20):
    n = np.array([[1, 500, 4096], [20000, 64000, 3]])
    c = np.array([[0, 100, 0], [512, 0, 7]])
    out = h20.prefill_time_s(n, c)
    assert out.shape == n.shape
    for idx in np.ndindex(n.shape):
        assert out[idx] == pytest.approx(float(h20.prefill_time_s(n[idx], c[idx])), rel=1e-12)
    b = np.array([1, 8, 64, 256])
    d = h20.decode_step_time_s(b, b * 4000)
    assert d.shape == b.shape
    assert d[2] == pytest.approx(float(h20.decode_step_time_s(64, 256000)), rel=1e-12)


def test_zero_work_costs_nothing(h20):
    assert float(h20.prefill_time_s(0, 5000)) == 0.0
    assert float(h20.decode_step_time_s(0, 0)) == 0.0


@given(st.integers(1, 120_000), st.integers(1, 8192))
def test_prefill_increases_with_uncached_tokens(n, extra):
    cm = CostModel("prfaas-1t-hybrid", "h20", 8)
    assert cm.prefill_time_s(n + extra) > cm.prefill_time_s(n)


@given(st.integers(1, 100_000), st.integers(0, 100_000))
def test_cache_hits_never_cost_more_than_recomputing(total, cached):
    cached = min(cached, total - 1)
    cm = CostModel("llama-3.1-70b", "h100", 8)
    assert cm.prefill_time_s(total - cached, cached) <= cm.prefill_time_s(total, 0) * (1 + 1e-12)


@given(st.integers(1, 512), st.integers(1, 64), st.integers(1, 60_000))
def test_decode_step_monotone_in_batch_and_context(batch, more, ctx_per_seq):
    cm = CostModel("prfaas-1t-hybrid", "h20", 8)
    base = cm.decode_step_time_s(batch, batch * ctx_per_seq)
    assert cm.decode_step_time_s(batch + more, (batch + more) * ctx_per_seq) >= base
    assert cm.decode_step_time_s(batch, batch * ctx_per_seq + 1000) >= base


def test_decode_is_memory_bound_on_h20_vs_h200(h200, h20):
    # Decode reads weights and KV: H20 (4.0 TB/s) is not slower than H200 (4.8 TB/s) by more
    # than their bandwidth ratio would allow for a memory-bound step at small batch.
    r = float(h20.decode_step_time_s(1, 8192) / h200.decode_step_time_s(1, 8192))
    assert 1.0 <= r < 1.5


def test_max_decode_batch_fits_memory(h20):
    ctx = np.array([1024, 28000, 131072])
    b = h20.max_decode_batch(ctx, memory_fraction=0.9)
    budget = 8 * h20.gpu.hbm_bytes * 0.9 - h20.model.weight_bytes_total
    assert np.all(b * h20.kv_bytes(ctx) <= budget)
    assert np.all((b + 1) * h20.kv_bytes(ctx) > budget)
    # the 1T model does not fit on one 8 x H20 instance with FP8 experts
    assert CostModel("kimi-k2", "h20", 8).max_decode_batch(1024) == 0


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"uncached_tokens": -1}, "uncached_tokens"),
        ({"uncached_tokens": float("nan")}, "uncached_tokens"),
        ({"uncached_tokens": 10.5}, "uncached_tokens"),
        ({"uncached_tokens": 10, "cached_tokens": -3}, "cached_tokens"),
        ({"uncached_tokens": np.array([1, 2, np.inf])}, "uncached_tokens"),
    ],
)
def test_bad_prefill_tokens_name_argument(h20, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        h20.prefill_time_s(**kwargs)


def test_bad_decode_and_kv_arguments(h20):
    with pytest.raises(ValueError, match="batch_size"):
        h20.decode_step_time_s(-1, 10)
    with pytest.raises(ValueError, match="context_tokens"):
        h20.decode_step_time_s(1, 2.5)
    with pytest.raises(ValueError, match="prompt_tokens"):
        h20.kv_bytes("many")
    with pytest.raises(ValueError, match="memory_fraction"):
        h20.max_decode_batch(100, memory_fraction=1.5)


def test_unknown_names_and_bad_instance_size():
    with pytest.raises(UnknownNameError, match=r"known GPUs: .*h20"):
        CostModel("prfaas-1t-hybrid", "tpu-v5")
    with pytest.raises(UnknownNameError, match=r"known models: .*kimi-k2"):
        CostModel("kimi-k3", "h20")
    with pytest.raises(ValueError, match="gpus_per_instance"):
        CostModel("kimi-k2", "h20", 0)


def test_out_of_range_warns_once_and_answers():
    cm = CostModel("bloom-176b", "a100", 8)  # calibrated on prompts 128..8192
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = cm.prefill_time_s(20000)
        second = cm.prefill_time_s(30000)
    msgs = [w for w in caught if issubclass(w.category, CalibrationRangeWarning)]
    assert len(msgs) == 1
    text = str(msgs[0].message)
    assert "prefill" in text and "[128, 8192]" in text and "20000" in text
    assert np.isfinite(first) and second > first
