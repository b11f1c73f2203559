"""Fit the cost model's coefficients to GPU measurements and write the fidelity report.

Usage::

    python -m prfaas_env.calibration.fit                    # refit from the committed extract
    python -m prfaas_env.calibration.fit --profiles DIR     # re-extract from raw profiles first

Two layers are fitted:

1. Kernel efficiencies per measured GPU (H100, H200, A100) from aiconfigurator kernel timings:
   GEMM compute and memory efficiency, prefill and decode attention efficiency, all-reduce
   latency and bandwidth, kernel launch floor.
2. End-to-end stack corrections per (model, GPU, GPUs per instance, phase) from splitwise-sim
   (Llama-2-70B, BLOOM-176B on A100/H100, TP 2/4/8) and from the PrfaaS paper's Table 5
   (prfaas-1t-hybrid on 8 x H200), as non-negative least squares on relative error.

Every end-to-end point is also predicted by a fit that did not see it (leave one prompt size,
batch size or output size out; leave one point out for Table 5); the report lists each point.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from prfaas_env.architecture import get_model
from prfaas_env.calibration.extract import DATA_DIR, extract
from prfaas_env.calibration.nnls import fit_relative_nnls
from prfaas_env.costmodel.kernels import KernelEfficiency, decode_pass, prefill_pass
from prfaas_env.costmodel.stack import (
    StackCalibration,
    decode_features,
    decode_time_s,
    prefill_features,
    prefill_time_s,
)
from prfaas_env.hardware import get_gpu

COEFFICIENTS = Path(__file__).resolve().parent / "coefficients.json"
REPORT = Path(__file__).resolve().parents[2] / "docs" / "calibration.md"
KNEE_GRID = (0.0, 1024.0, 1536.0, 2048.0, 3072.0, 4096.0, 6144.0)
# GPUs without kernel measurements borrow the efficiencies of a measured GPU of their kind.
DERIVED_FROM = {
    "hopper": "h100-sxm",
    "blackwell": "h200-sxm",
    "ampere": "a100-80gb",
    "ada": "a100-80gb",
    "unknown": "h100-sxm",
}


def read_csv(name: str, data_dir: Path = DATA_DIR) -> list[dict[str, str]]:
    """Rows of one extract file (the ``# source`` line is skipped)."""
    with (data_dir / name).open(newline="", encoding="utf-8") as f:
        lines = [line for line in f if not line.startswith("#")]
    return list(csv.DictReader(lines))


def source_of(name: str, data_dir: Path = DATA_DIR) -> str:
    """The source named on the first line of an extract file."""
    with (data_dir / name).open(encoding="utf-8") as f:
        return f.readline().removeprefix("# source:").strip()


# ---- 1. kernel efficiencies -------------------------------------------------------------
@dataclass
class KernelFitQuality:
    """How well the fitted roofline reproduces one GPU's kernel timings."""

    gpu: str
    kind: str
    points: int
    median_abs_rel_err: float
    p90_abs_rel_err: float


def fit_kernels(
    data_dir: Path = DATA_DIR,
) -> tuple[dict[str, KernelEfficiency], list[KernelFitQuality]]:
    """Fit :class:`KernelEfficiency` for every GPU with kernel timings."""
    gemm, ctx, gen, ar = (
        read_csv(n, data_dir)
        for n in ("gemm.csv", "context_attention.csv", "generation_attention.csv", "allreduce.csv")
    )
    src = source_of("gemm.csv", data_dir)
    out: dict[str, KernelEfficiency] = {}
    quality: list[KernelFitQuality] = []
    for gpu_name in sorted({r["gpu"] for r in gemm}):
        gpu = get_gpu(gpu_name)
        m, n, k, lat = _columns(gemm, gpu_name, "m", "n", "k")
        is_fp8 = np.array([r["dtype"] == "fp8" for r in gemm if r["gpu"] == gpu_name])
        wbytes = np.where(is_fp8, 1.0, 2.0)
        flops = 2 * m * n * k
        bytes_ = n * k * wbytes + 2 * (m * k + m * n)
        launch = float(np.percentile(lat, 2))
        big = (m >= 4096) & (n * k >= 4096 * 4096)
        peak = np.where(is_fp8, gpu.fp8_tflops or gpu.bf16_tflops, gpu.bf16_tflops) * 1e12
        achieved = flops / lat / peak
        eff_bf16 = float(np.median(achieved[big & ~is_fp8]))
        eff_fp8 = float(np.median(achieved[big & is_fp8])) if np.any(big & is_fp8) else eff_bf16
        small = (m <= 16) & (n * k >= 8192 * 8192)
        eff_mem = float(np.median(bytes_[small] / (lat[small] - launch) / gpu.hbm_bytes_per_s))
        pred = (
            np.maximum(
                flops / (peak * np.where(is_fp8, eff_fp8, eff_bf16)),
                bytes_ / (gpu.hbm_bytes_per_s * eff_mem),
            )
            + launch
        )
        quality.append(_quality(gpu_name, "GEMM (bf16, fp8)", pred, lat))

        b, s, h, d, clat = _columns(ctx, gpu_name, "batch", "isl", "num_heads", "head_dim")
        aflops = b * 4 * h * d * s * (s + 1) / 2
        big = aflops >= 1e12
        eff_attn = float(np.median(aflops[big] / (clat[big] - launch) / gpu.bf16_flops))
        pred = aflops / (gpu.bf16_flops * eff_attn) + launch
        quality.append(_quality(gpu_name, "prefill attention", pred, clat, big))

        b, ctxl, kvh, d, glat = _columns(
            gen, gpu_name, "batch", "context", "num_kv_heads", "head_dim"
        )
        kvb = b * ctxl * 2 * kvh * d * 2
        big = kvb >= 2**28
        eff_dec = float(np.median(kvb[big] / (glat[big] - launch) / gpu.hbm_bytes_per_s))
        pred = kvb / (gpu.hbm_bytes_per_s * eff_dec) + launch
        quality.append(_quality(gpu_name, "decode attention", pred, glat, big))

        ng, by, alat = _columns(ar, gpu_name, "num_gpus", "bytes")
        ar_lat = float(np.median(alat[by <= 4096]))
        big = by >= 2**26
        bus = 2 * (ng - 1) / ng * by
        eff_ar = float(np.median(bus[big] / (alat[big] - ar_lat) / gpu.nvlink_bytes_per_s))
        quality.append(
            _quality(gpu_name, "all-reduce", ar_lat + bus / (gpu.nvlink_bytes_per_s * eff_ar), alat)
        )
        out[gpu_name] = KernelEfficiency(
            gemm_bf16=eff_bf16,
            gemm_fp8=eff_fp8,
            memory=eff_mem,
            attention_prefill=eff_attn,
            attention_decode=eff_dec,
            launch_s=launch,
            allreduce_latency_s=ar_lat,
            allreduce_bw=eff_ar,
            measured_on=gpu_name,
            source=src,
        )
    return out, quality


def _columns(rows: list[dict[str, str]], gpu: str, *names: str) -> list[np.ndarray]:
    """The named columns of one GPU's rows as float arrays, then its latency in seconds."""
    mine = [r for r in rows if r["gpu"] == gpu]
    cols = [np.array([float(r[n]) for r in mine]) for n in names]
    return [*cols, np.array([float(r["latency_ms"]) for r in mine]) * 1e-3]


def _quality(
    gpu: str, kind: str, pred: np.ndarray, meas: np.ndarray, mask: np.ndarray | None = None
) -> KernelFitQuality:
    err = np.abs(pred / meas - 1)
    if mask is not None:
        err = err[mask]
    return KernelFitQuality(
        gpu, kind, int(err.size), float(np.median(err)), float(np.percentile(err, 90))
    )


# ---- 2. end-to-end stack fits -----------------------------------------------------------
@dataclass
class Point:
    """One end-to-end measurement and its predictions."""

    group: str
    phase: str
    prompt: int
    batch: int
    output: int
    measured_s: float
    fold: str
    fitted_s: float = float("nan")
    heldout_s: float = float("nan")
    excluded: str = ""


def _prefill_times(pts: list[Point], model, gpu, eff, gpus: int):
    """Roofline components of each point's prefill pass (its batch of equal prompts)."""
    prompts = np.array([p.prompt for p in pts], float)
    return prefill_pass(
        model, gpu, eff, gpus, prompts, 0.0, np.array([p.batch for p in pts], float)
    )


def _decode_times(pts: list[Point], model, gpu, eff, gpus: int):
    """Roofline components of each point's average decode step (context half-way through)."""
    b = np.array([p.batch for p in pts], float)
    ctx = b * np.array([p.prompt + p.output / 2 for p in pts], float)
    return decode_pass(model, gpu, eff, gpus, b, ctx)


def _prefill_design(pts: list[Point], model, gpu, eff, gpus: int, knee: float) -> np.ndarray:
    return prefill_features(_prefill_times(pts, model, gpu, eff, gpus), knee)


def _decode_design(pts: list[Point], model, gpu, eff, gpus: int) -> np.ndarray:
    return decode_features(_decode_times(pts, model, gpu, eff, gpus))


def _subset_fit(x: np.ndarray, y: np.ndarray, cols: list[int]) -> np.ndarray | None:
    """Relative least squares on the given columns; None if a coefficient comes out negative."""
    coef, *_ = np.linalg.lstsq(x[:, cols] / y[:, None], np.ones_like(y), rcond=None)
    if np.any(coef < 0) or not np.all(np.isfinite(coef)):
        return None
    full = np.zeros(x.shape[1])
    full[cols] = coef
    return full


def _select_prefill(
    x_by_knee: dict[float, np.ndarray], y: np.ndarray, folds: list[str], allow_knee: bool
) -> tuple[float, np.ndarray]:
    """Pick the knee and the feature subset by inner cross-validation, then refit on all points.

    Candidates always use the roofline term (column 1); the fixed, attention, knee and
    per-sequence terms are each in or out. With one fold per point or fewer than four folds, the
    choice falls back to non-negative least squares on all points (no inner validation).
    """
    optional = [0, 2, 4] + ([3] if allow_knee else [])
    uniq = sorted(set(folds))
    best: tuple[float, float, list[int]] | None = None
    for knee, x in x_by_knee.items():
        for mask in range(1 << len(optional)):
            cols = [1] + [c for i, c in enumerate(optional) if mask >> i & 1]
            if (3 in cols) != (knee > 0):
                continue
            err = 0.0
            for f in uniq:
                tr = np.array([g != f for g in folds])
                coef = _subset_fit(x[tr], y[tr], cols)
                if coef is None:
                    err = np.inf
                    break
                err += float(np.sum((x[~tr] @ coef / y[~tr] - 1) ** 2))
            if best is None or err < best[0] - 1e-12:
                best = (err, knee, cols)
    assert best is not None
    _, knee, cols = best
    coef = _subset_fit(x_by_knee[knee], y, cols)
    if coef is None or not np.isfinite(best[0]):
        knee, x = 0.0, x_by_knee[0.0].copy()
        x[:, 3] = 0.0
        coef = fit_relative_nnls(x, y)
    return knee, coef


def _fit_prefill(pts, model, gpu, eff, gpus, allow_knee: bool) -> StackCalibration:
    y = np.array([p.measured_s for p in pts])
    knees = KNEE_GRID if allow_knee else (0.0,)
    x_by_knee = {k: _prefill_design(pts, model, gpu, eff, gpus, k) for k in knees}
    if allow_knee:
        knee, coef = _select_prefill(x_by_knee, y, [p.fold for p in pts], allow_knee)
    else:  # too few points to choose terms: fixed + roofline + attention, by NNLS
        knee, x = 0.0, x_by_knee[0.0].copy()
        x[:, 3:] = 0.0
        coef = fit_relative_nnls(x, y)
    return StackCalibration(
        model=model.name,
        gpu=gpu.name,
        gpus=gpus,
        phase="prefill",
        fixed_s=float(coef[0]),
        kernel_scale=float(coef[1]),
        attention_scale=float(coef[2]),
        knee_tokens=knee if coef[3] > 0 else 0.0,
        knee_scale=float(coef[3]),
        per_sequence_s=float(coef[4]),
        tokens_range=(float(min(p.prompt for p in pts)), float(max(p.prompt for p in pts))),
        context_range=(0.0, 0.0),
    )


def _fit_decode(pts, model, gpu, eff, gpus) -> StackCalibration:
    y = np.array([p.measured_s for p in pts])
    coef = fit_relative_nnls(_decode_design(pts, model, gpu, eff, gpus), y)
    return StackCalibration(
        model=model.name,
        gpu=gpu.name,
        gpus=gpus,
        phase="decode",
        fixed_s=float(coef[0]),
        kernel_scale=float(coef[1]),
        attention_scale=1.0,
        per_sequence_s=float(coef[2]),
        tokens_range=(float(min(p.batch for p in pts)), float(max(p.batch for p in pts))),
        context_range=(
            float(min(p.prompt for p in pts)),
            float(max(p.prompt + p.output for p in pts)),
        ),
    )


def _predict(cal: StackCalibration, pts, model, gpu, eff, gpus) -> np.ndarray:
    if cal.phase == "prefill":
        return prefill_time_s(_prefill_times(pts, model, gpu, eff, gpus), cal)
    return decode_time_s(_decode_times(pts, model, gpu, eff, gpus), cal)


def _splitwise_points(data_dir: Path) -> dict[tuple[str, str, int], list[Point]]:
    rows = read_csv("splitwise.csv", data_dir)
    groups: dict[tuple[str, str, int], list[Point]] = defaultdict(list)
    for r in rows:
        key = (r["model"], r["gpu"], int(r["gpus"]))
        p, b, t = int(r["prompt"]), int(r["batch"]), int(r["output"])
        name = f"{key[0]} / {key[1]} / TP{key[2]}"
        sweep = (
            f"prompt={p}" if b == 1 and t == 128 else f"batch={b}" if t == 128 else f"output={t}"
        )
        if t == 128:  # prefill is independent of the output length: one point per (prompt, batch)
            groups[key].append(
                Point(
                    name,
                    "prefill",
                    p,
                    b,
                    t,
                    float(r["prompt_time_ms"]) / 1e3,
                    fold=f"prompt={p}" if b == 1 else f"batch={b}",
                )
            )
        groups[key].append(
            Point(name, "decode", p, b, t, float(r["token_time_ms"]) / 1e3, fold=sweep)
        )
    for pts in groups.values():
        # A larger batch cannot prefill faster than a smaller one; such rows (batch 64 at TP2,
        # which does not fit in memory) are measurement artefacts and are left out of the fit.
        by_batch = sorted(
            (p for p in pts if p.phase == "prefill" and p.prompt == 512), key=lambda p: p.batch
        )
        for prev, cur in itertools.pairwise(by_batch):
            if cur.measured_s < 0.5 * prev.measured_s:
                cur.excluded = f"prefill time below half that of batch {prev.batch}"
                for q in pts:
                    if q.phase == "decode" and q.batch == cur.batch:
                        q.excluded = "same run as an excluded prefill point"
    return groups


def _cross_validate(pts, fit: Callable[[list[Point]], StackCalibration], predict) -> None:
    used = [p for p in pts if not p.excluded]
    for fold in sorted({p.fold for p in used}):
        train = [p for p in used if p.fold != fold]
        test = [p for p in used if p.fold == fold]
        cal = fit(train)
        for p, v in zip(test, predict(cal, test), strict=True):
            p.heldout_s = float(v)


def fit_stacks(
    kernels: dict[str, KernelEfficiency], data_dir: Path = DATA_DIR
) -> tuple[list[StackCalibration], list[Point]]:
    """Fit every end-to-end group; returns the calibrations and all points with predictions."""
    cals: list[StackCalibration] = []
    points: list[Point] = []
    sw_src = source_of("splitwise.csv", data_dir)
    for (model_name, gpu_name, gpus), pts in sorted(_splitwise_points(data_dir).items()):
        model, gpu, eff = get_model(model_name), get_gpu(gpu_name), kernels[gpu_name]
        for phase in ("prefill", "decode"):
            ph = [p for p in pts if p.phase == phase]
            used = [p for p in ph if not p.excluded]
            if phase == "prefill":

                def fit(tr, m=model, g=gpu, e=eff, n=gpus):
                    return _fit_prefill(tr, m, g, e, n, allow_knee=True)
            else:

                def fit(tr, m=model, g=gpu, e=eff, n=gpus):
                    return _fit_decode(tr, m, g, e, n)

            def predict(cal, te, m=model, g=gpu, e=eff, n=gpus):
                return _predict(cal, te, m, g, e, n)

            cal = replace(fit(used), source=sw_src)
            for p, v in zip(ph, predict(cal, ph), strict=True):
                p.fitted_s = float(v)
            _cross_validate(ph, fit, predict)
            cals.append(cal)
            points.extend(ph)
    # Paper Table 5: prefill only.
    t5 = read_csv("table5.csv", data_dir)
    model, gpu = get_model(t5[0]["model"]), get_gpu(t5[0]["gpu"])
    gpus, eff = int(t5[0]["gpus"]), kernels[t5[0]["gpu"]]
    pts = [
        Point(
            f"{model.name} / {gpu.name} / {gpus} GPUs (paper Table 5)",
            "prefill",
            int(r["prompt"]),
            1,
            0,
            float(r["prefill_time_s"]),
            fold=f"prompt={r['prompt']}",
        )
        for r in t5
    ]

    def fit5(tr):
        return _fit_prefill(tr, model, gpu, eff, gpus, allow_knee=False)

    def pred5(cal, te):
        return _predict(cal, te, model, gpu, eff, gpus)

    cal = replace(fit5(pts), source=source_of("table5.csv", data_dir))
    for p, v in zip(pts, pred5(cal, pts), strict=True):
        p.fitted_s = float(v)
    _cross_validate(pts, fit5, pred5)
    cals.append(cal)
    points.extend(pts)
    return cals, points


# ---- outputs -----------------------------------------------------------------------------
def write_coefficients(kernels, cals, path: Path = COEFFICIENTS) -> None:
    """Write the coefficient file the cost model loads at run time."""
    doc = {
        "generated_by": "python -m prfaas_env.calibration.fit",
        "kernels": {k: asdict(v) for k, v in sorted(kernels.items())},
        "derived_from": DERIVED_FROM,
        "stacks": [c.to_json() for c in cals],
    }
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def summarise(points: Iterable[Point], heldout: bool = True) -> tuple[int, float, float]:
    """(count, median, max) absolute relative error over points (held-out or in-sample)."""
    errs = [
        abs((p.heldout_s if heldout else p.fitted_s) / p.measured_s - 1)
        for p in points
        if not p.excluded
    ]
    if not errs:
        return 0, float("nan"), float("nan")
    return len(errs), float(np.median(errs)), float(np.max(errs))


VALIDATION_MARKER = "<!-- end-to-end validation: written by prfaas_env.calibration.validate -->"


def fit_section(text: str) -> str:
    """The part of the report this module writes (before the validation section)."""
    if VALIDATION_MARKER not in text:
        return text
    return text.split(VALIDATION_MARKER)[0].rstrip("\n") + "\n"


def replace_validation_section(path: Path, section: str) -> None:
    """Rewrite the validation section of the report at ``path``, keeping the fit section."""
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    text = fit_section(old).rstrip("\n") + "\n\n" + VALIDATION_MARKER + "\n\n" + section
    path.write_text(text, encoding="utf-8")


def write_report(kernels, quality, cals, points, path: Path = REPORT) -> str:
    """Write the fit section of ``docs/calibration.md`` (a validation section already there
    is kept); returns the fit section's text."""
    L: list[str] = []
    L.append("# Cost-model calibration report")
    L.append("")
    L.append(
        "Generated by `python -m prfaas_env.calibration.fit`; do not edit by hand. "
        "Every coefficient of `prfaas_env/calibration/coefficients.json` comes from the "
        "measurements below. Errors are `|predicted / measured - 1|`."
    )
    L.append("")
    L.append("## Targets")
    L.append("")
    L.append("| check | points | median | max | target | met |")
    L.append("|---|---|---|---|---|---|")
    sw = [p for p in points if "Table 5" not in p.group and not p.excluded]
    for phase in ("prefill", "decode"):
        n, med, mx = summarise([p for p in sw if p.phase == phase])
        ok = med <= 0.10 and mx <= 0.25
        L.append(
            f"| splitwise {phase}, held out (H100 + A100) | {n} | {med:.1%} | {mx:.1%} | "
            f"median <= 10 %, max <= 25 % | {'yes' if ok else 'NO'} |"
        )
    t5 = [p for p in points if "Table 5" in p.group]
    n, med, mx = summarise(t5, heldout=False)
    L.append(
        f"| Table 5 prefill, fitted | {n} | {med:.1%} | {mx:.1%} | each <= 10 % | "
        f"{'yes' if mx <= 0.10 else 'NO'} |"
    )
    n, med, mx = summarise(t5)
    L.append(f"| Table 5 prefill, leave one out | {n} | {med:.1%} | {mx:.1%} | (informative) | |")
    L.append("")
    L.append("## Kernel efficiencies (aiconfigurator, vLLM kernels and NCCL)")
    L.append("")
    L.append(
        "| GPU | GEMM BF16 | GEMM FP8 | HBM (GEMM) | prefill attn | decode attn (HBM) | "
        "launch µs | all-reduce µs | all-reduce bw |"
    )
    L.append("|---|---|---|---|---|---|---|---|---|")
    for g, e in sorted(kernels.items()):
        L.append(
            f"| {g} | {e.gemm_bf16:.2f} | {e.gemm_fp8:.2f} | {e.memory:.2f} | "
            f"{e.attention_prefill:.2f} | {e.attention_decode:.2f} | {e.launch_s * 1e6:.1f} | "
            f"{e.allreduce_latency_s * 1e6:.1f} | {e.allreduce_bw:.2f} |"
        )
    L.append("")
    L.append(
        "GPUs without kernel measurements use the efficiencies of a measured GPU of their "
        "generation with their own spec-sheet peaks (roofline scaling), and are labelled "
        "derived: " + ", ".join(f"{k} -> {v}" for k, v in DERIVED_FROM.items()) + "."
    )
    L.append("")
    L.append("How well the fitted roofline reproduces the kernel timings it came from:")
    L.append("")
    L.append("| GPU | kernels | points | median error | p90 error |")
    L.append("|---|---|---|---|---|")
    for q in quality:
        L.append(
            f"| {q.gpu} | {q.kind} | {q.points} | {q.median_abs_rel_err:.1%} | "
            f"{q.p90_abs_rel_err:.1%} |"
        )
    L.append("")
    L.append("## End-to-end stack fits")
    L.append("")
    L.append(
        "| model / GPU / instance | phase | fixed ms | kernel scale | attention scale | "
        "knee tokens | knee scale | per-sequence ms | held-out median | held-out max |"
    )
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    for c in cals:
        grp = [
            p
            for p in points
            if p.phase == c.phase
            and p.group.startswith(f"{c.model} / {c.gpu} /")
            and (f"TP{c.gpus}" in p.group or "Table 5" in p.group)
        ]
        _, med, mx = summarise(grp)
        L.append(
            f"| {c.model} / {c.gpu} / {c.gpus} | {c.phase} | {c.fixed_s * 1e3:.1f} | "
            f"{c.kernel_scale:.2f} | {c.attention_scale:.2f} | {c.knee_tokens:.0f} | "
            f"{c.knee_scale:.2f} | {c.per_sequence_s * 1e3:.3f} | {med:.1%} | {mx:.1%} |"
        )
    L.append("")
    L.append("## Every measured point")
    L.append("")
    L.append(
        "`fitted` uses the fit on all points of its group; `held out` the fit without the "
        "point's fold (its prompt size, batch size or output size; for Table 5 the point "
        "itself)."
    )
    L.append("")
    L.append(
        "| group | phase | prompt | batch | output | measured ms | fitted ms | err | "
        "held out ms | err | note |"
    )
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for p in points:
        fe = p.fitted_s / p.measured_s - 1
        he = p.heldout_s / p.measured_s - 1
        held = "" if p.excluded else f"{p.heldout_s * 1e3:.1f} | {he:+.1%}"
        if p.excluded:
            held = " | "
        L.append(
            f"| {p.group} | {p.phase} | {p.prompt} | {p.batch} | {p.output} | "
            f"{p.measured_s * 1e3:.1f} | {p.fitted_s * 1e3:.1f} | {fe:+.1%} | {held} | "
            f"{'excluded: ' + p.excluded if p.excluded else ''} |"
        )
    text = "\n".join(L) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    rest = old[old.index(VALIDATION_MARKER) :] if VALIDATION_MARKER in old else ""
    path.write_text(text + ("\n" + rest if rest else ""), encoding="utf-8")
    return text


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(
        prog="python -m prfaas_env.calibration.fit", description=__doc__.split("\n")[0]
    )
    ap.add_argument(
        "--profiles", type=Path, help="raw profiles folder to re-extract from (needs pyarrow)"
    )
    ap.add_argument("--out", type=Path, default=COEFFICIENTS, help="coefficient file to write")
    ap.add_argument("--report", type=Path, default=REPORT, help="fidelity report to write")
    args = ap.parse_args(argv)
    if args.profiles is not None:
        for f in extract(args.profiles):
            print(f"extracted {f}")
    kernels, quality = fit_kernels()
    cals, points = fit_stacks(kernels)
    write_coefficients(kernels, cals, args.out)
    write_report(kernels, quality, cals, points, args.report)
    sw = [p for p in points if "Table 5" not in p.group]
    for phase in ("prefill", "decode"):
        n, med, mx = summarise([p for p in sw if p.phase == phase])
        print(f"splitwise {phase:7s} held-out: {n} points, median {med:.1%}, max {mx:.1%}")
    n, med, mx = summarise([p for p in points if "Table 5" in p.group], heldout=False)
    print(f"Table 5 prefill fitted: {n} points, median {med:.1%}, max {mx:.1%}")
    print(f"wrote {args.out} and {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
