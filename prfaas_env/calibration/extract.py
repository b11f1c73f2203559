"""Extract the measurements the fit uses from the raw profile folders into small CSV files.

The raw profiles (aiconfigurator kernel timings as parquet, splitwise-sim end-to-end CSV) are
large and need pyarrow; users of the package do not have them. This module copies the subset the
fit needs into ``prfaas_env/calibration/data/*.csv``, with a header line naming the source, so
the fit reruns anywhere with NumPy alone.

Layout expected under ``--profiles DIR`` (the project's shared data folder):
``aiconfigurator/systems/data/<gpu>/{gemm,attention,comm}/...`` and
``splitwise_sim/data/perf_model.csv``.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from statistics import median

DATA_DIR = Path(__file__).resolve().parent / "data"

# aiconfigurator GPU folder -> catalog name, and the framework folder whose kernels we use.
AIC_GPUS = {"h100_sxm": "h100-sxm", "h200_sxm": "h200-sxm", "a100_sxm": "a100-80gb"}
AIC_FRAMEWORK = "vllm"
# Splitwise hardware names -> catalog names. The power-capped H100 rows are not used: the
# catalog has no power-capped GPU.
SPLITWISE_GPUS = {"a100-80gb": "a100-80gb", "h100-80gb": "h100-sxm"}
SPLITWISE_MODELS = {"llama2-70b": "llama-2-70b", "bloom-176b": "bloom-176b"}

GEMM_SHAPES = {(4096, 4096), (8192, 8192), (16384, 16384), (8192, 28672), (28672, 8192)}
GEMM_SHAPES |= {(7168, 2048), (2048, 7168), (12288, 4096)}
ATTN_HEADS = {(64, 8, 128), (32, 8, 128), (64, 64, 128), (32, 32, 128)}

# Paper Table 5 (arXiv 2604.15039): prfaas-1t-hybrid on one 8 x H200 instance.
TABLE5 = [
    (1024, 190.8, 0.44),
    (8192, 308.9, 0.72),
    (32768, 701.3, 1.84),
    (131072, 2316.3, 7.40),
]


def _read_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "re-extracting from raw profiles needs pyarrow: pip install -e '.[calibrate]'"
        ) from exc
    return pq.read_table(path).to_pylist()


def _only_dir(path: Path) -> Path:
    subdirs = sorted(p for p in path.iterdir() if p.is_dir())
    if len(subdirs) != 1:
        raise SystemExit(f"{path}: expected exactly one version folder, found {len(subdirs)}")
    return subdirs[0]


def _write(name: str, source: str, header: list[str], rows: list[list]) -> Path:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    out = DATA_DIR / name
    with out.open("w", newline="", encoding="utf-8") as f:
        f.write(f"# source: {source}\n")
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return out


def extract(profiles: Path) -> list[Path]:
    """Write the CSV extract from the raw profiles folder; returns the files written."""
    aic = profiles / "aiconfigurator" / "systems" / "data"
    sw = profiles / "splitwise_sim" / "data" / "perf_model.csv"
    for p in (aic, sw):
        if not p.exists():
            raise SystemExit(f"--profiles {profiles}: {p} not found")
    gemm, ctx, gen, ar = [], [], [], []
    for folder, gpu in AIC_GPUS.items():
        base = aic / folder
        ver = _only_dir(base / "gemm" / AIC_FRAMEWORK)
        for r in _read_parquet(ver / "gemm_perf.parquet"):
            if r["gemm_dtype"] in ("bfloat16", "fp8") and (r["n"], r["k"]) in GEMM_SHAPES:
                gemm.append([gpu, r["gemm_dtype"], r["m"], r["n"], r["k"], r["latency"]])
        ver = _only_dir(base / "attention" / AIC_FRAMEWORK)
        for fname, sink in (
            ("context_attention_perf.parquet", ctx),
            ("generation_attention_perf.parquet", gen),
        ):
            for r in _read_parquet(ver / fname):
                heads = (r["num_heads"], r["num_key_value_heads"], r["head_dim"])
                if (
                    r.get("window_size", 0) == 0
                    and r["kv_cache_dtype"] == "bfloat16"
                    and "fa4" not in r["kernel_source"]
                    and heads in ATTN_HEADS
                ):
                    # generation rows: one new token ("isl") after "step" cached tokens
                    length = r["isl"] + r["step"] if sink is gen else r["isl"]
                    sink.append([gpu, r["batch_size"], length, *heads, r["latency"]])
        ver = _only_dir(base / "comm" / "nccl")
        for r in _read_parquet(ver / "nccl_perf.parquet"):
            if r["op_name"] == "all_reduce" and r["nccl_dtype"] == "half":
                ar.append([gpu, r["num_gpus"], 2 * r["message_size"], r["latency"]])
    src = "aiconfigurator systems/data (vllm kernels, nccl), snapshot 095f58a5, Apache-2.0"
    written = [
        _write("gemm.csv", src, ["gpu", "dtype", "m", "n", "k", "latency_ms"], gemm),
        _write(
            "context_attention.csv",
            src,
            ["gpu", "batch", "isl", "num_heads", "num_kv_heads", "head_dim", "latency_ms"],
            ctx,
        ),
        _write(
            "generation_attention.csv",
            src,
            ["gpu", "batch", "context", "num_heads", "num_kv_heads", "head_dim", "latency_ms"],
            gen,
        ),
        _write("allreduce.csv", src, ["gpu", "num_gpus", "bytes", "latency_ms"], ar),
    ]
    groups: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    with sw.open(newline="") as f:
        for r in csv.DictReader(f):
            if r["hardware"] not in SPLITWISE_GPUS or r["model"] not in SPLITWISE_MODELS:
                continue
            key = (
                SPLITWISE_MODELS[r["model"]],
                SPLITWISE_GPUS[r["hardware"]],
                int(r["tensor_parallel"]),
                int(r["prompt_size"]),
                int(r["batch_size"]),
                int(r["token_size"]),
            )
            groups[key].append((float(r["prompt_time"]), float(r["token_time"])))
    rows = [
        [*k, len(v), median(x[0] for x in v), median(x[1] for x in v)]
        for k, v in sorted(groups.items())
    ]
    written.append(
        _write(
            "splitwise.csv",
            "splitwise-sim data/perf_model.csv, snapshot 8f99e7dc, MIT (median of repeats)",
            [
                "model",
                "gpu",
                "gpus",
                "prompt",
                "batch",
                "output",
                "repeats",
                "prompt_time_ms",
                "token_time_ms",
            ],
            rows,
        )
    )
    written.append(
        _write(
            "table5.csv",
            "arXiv 2604.15039 Table 5 (prfaas-1t-hybrid, 8 x H200)",
            ["model", "gpu", "gpus", "prompt", "kv_mib", "prefill_time_s"],
            [["prfaas-1t-hybrid", "h200-sxm", 8, t, kv, s] for t, kv, s in TABLE5],
        )
    )
    return written
