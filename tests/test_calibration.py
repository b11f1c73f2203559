"""Calibration: the fit reproduces the shipped coefficients and meets the fidelity targets."""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from prfaas_env.calibration import fit as fitmod
from prfaas_env.calibration.extract import DATA_DIR
from prfaas_env.calibration.nnls import fit_relative_nnls

SHARED_PROFILES = Path(__file__).resolve().parents[2] / "shared" / "data" / "profiles"


@pytest.fixture(scope="module")
def fitted():
    kernels, quality = fitmod.fit_kernels()
    cals, points = fitmod.fit_stacks(kernels)
    return kernels, quality, cals, points


def test_refit_reproduces_shipped_coefficients(fitted, tmp_path):
    kernels, _, cals, _ = fitted
    out = tmp_path / "coefficients.json"
    fitmod.write_coefficients(kernels, cals, out)
    assert json.loads(out.read_text()) == json.loads(fitmod.COEFFICIENTS.read_text())


def test_shipped_report_is_current(fitted, tmp_path):
    kernels, quality, cals, points = fitted
    text = fitmod.write_report(kernels, quality, cals, points, tmp_path / "calibration.md")
    assert text == fitmod.fit_section(fitmod.REPORT.read_text(encoding="utf-8"))


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_heldout_splitwise_targets(fitted, phase):
    points = [p for p in fitted[3] if "Table 5" not in p.group and p.phase == phase]
    gpus = {p.group.split(" / ")[1] for p in points}
    assert gpus == {"a100-80gb", "h100-sxm"}
    n, med, mx = fitmod.summarise(points)
    assert n >= 50
    assert med <= 0.10 and mx <= 0.25
    assert all(np.isfinite(p.heldout_s) for p in points if not p.excluded)


def test_table5_fit_within_10_percent(fitted):
    points = [p for p in fitted[3] if "Table 5" in p.group]
    assert len(points) == 4
    assert fitmod.summarise(points, heldout=False)[2] <= 0.10


def test_excluded_points_are_explained(fitted):
    excluded = [p for p in fitted[3] if p.excluded]
    assert excluded, "the non-monotone TP2 batch-64 splitwise rows should be excluded"
    assert all(p.batch == 64 and "TP2" in p.group for p in excluded)


def test_kernel_efficiencies_are_physical(fitted):
    for e in fitted[0].values():
        for v in (
            e.gemm_bf16,
            e.gemm_fp8,
            e.memory,
            e.attention_prefill,
            e.attention_decode,
            e.allreduce_bw,
        ):
            assert 0.2 < v <= 1.0
        assert 0 < e.launch_s < 1e-4


@given(
    arrays(np.float64, (12, 3), elements=st.floats(0.0, 10.0)),
    arrays(np.float64, 3, elements=st.floats(-2.0, 3.0)),
)
def test_nnls_satisfies_kkt(x, true_coef):
    y = np.abs(x @ true_coef) + 0.5
    coef = fit_relative_nnls(x, y)
    assert np.all(coef >= 0)
    a, r = x / y[:, None], 1.0 - (x / y[:, None]) @ coef
    grad = a.T @ r  # -1/2 gradient of the objective
    scale = 1e-6 * (1 + np.abs(a).sum())
    assert np.all(grad <= scale)  # no descent direction into the feasible region
    assert np.all(np.abs(grad[coef > 1e-9]) <= scale)  # stationary on active coefficients


@pytest.mark.skipif(not SHARED_PROFILES.is_dir(), reason="raw profiles not beside the checkout")
def test_extract_from_raw_profiles_matches_committed(tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    from prfaas_env.calibration import extract as ex

    monkeypatch.setattr(ex, "DATA_DIR", tmp_path)
    written = ex.extract(SHARED_PROFILES)
    for f in written:
        assert filecmp.cmp(f, DATA_DIR / f.name, shallow=False), f.name
    shutil.rmtree(tmp_path)


def test_allreduce_version_delta():
    """The all-reduce correction of a run on another vLLM version: none without tensor
    parallelism or for the tables' own version; positive below vLLM's custom all-reduce limit
    and zero above it (NCCL) for vLLM 0.19 against the current data on the RTX PRO 6000."""
    from dataclasses import replace

    from prfaas_env.costmodel import aic

    if aic.installed_version() is None:
        pytest.skip("aiconfigurator-core is not installed")
    key = aic.BackendKey(
        model="Qwen/Qwen3-32B",
        system="rtx_pro_6000_server",
        backend="vllm",
        version=aic.backend_versions("rtx_pro_6000_server", "vllm")["current"],
        tp=2,
        pp=1,
        attention_dp=1,
        moe_tp=2,
        moe_ep=1,
        gemm_quant=None,
        moe_quant=None,
        kv_quant=None,
        package_version=aic.installed_version(),
    )
    assert aic.allreduce_version_delta_s(key, key.version, 5120, 64) is None
    assert aic.allreduce_version_delta_s(replace(key, tp=1), "0.19.0", 5120, 64) is None
    delta = aic.allreduce_version_delta_s(key, "0.19.0", 5120, 64)
    if delta is None:
        pytest.skip("no vLLM 0.19 all-reduce data in this aiconfigurator-core")
    d = delta(np.array([0.0, 1.0, 128.0, 2048.0]))
    assert d[0] == 0.0 and d[3] == 0.0  # nothing to reduce; 20 MiB messages go to NCCL
    assert 0.0 < d[1] < d[2] < 0.05
