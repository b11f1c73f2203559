"""Command line: print prefill time, KV size, KV rate and decode step times for a model on a GPU.

Example::

    python -m prfaas_env.costmodel --gpu h200 --model prfaas-1t-hybrid --gpus-per-instance 8 \\
        --tokens 1024,8192,32768,131072
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

import numpy as np

from prfaas_env.architecture import register_models
from prfaas_env.costmodel.core import CostModel
from prfaas_env.errors import ConfigError, UnknownNameError
from prfaas_env.hardware import register_gpus

MIB = 2**20


def _int_list(flag: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise SystemExit(f"{flag}: expected comma-separated positive integers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the cost-model command."""
    ap = argparse.ArgumentParser(
        prog="python -m prfaas_env.costmodel",
        description="Calibrated prefill / decode / KV-cache costs of a model on a GPU instance.",
    )
    ap.add_argument("--gpu", required=True, help="GPU name or alias, e.g. h200, h20, h100-sxm")
    ap.add_argument("--model", required=True, help="model name, e.g. prfaas-1t-hybrid")
    ap.add_argument(
        "--gpus-per-instance", type=int, default=8, help="GPUs per instance (default 8)"
    )
    ap.add_argument(
        "--tokens",
        default="1024,8192,32768,131072",
        help="comma-separated prompt lengths in tokens",
    )
    ap.add_argument(
        "--batch-sizes",
        default="1,16,64",
        help="decode batch sizes for the decode-step columns (each sequence holds "
        "the row's tokens)",
    )
    ap.add_argument("--gpu-file", action="append", default=[], help="extra GPU catalog YAML")
    ap.add_argument("--model-file", action="append", default=[], help="extra model catalog YAML")
    ap.add_argument("--json", action="store_true", help="print a JSON list of records instead")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    tokens = _int_list("--tokens", args.tokens)
    batches = _int_list("--batch-sizes", args.batch_sizes)
    try:
        for f in args.gpu_file:
            register_gpus(f)
        for f in args.model_file:
            register_models(f)
        cm = CostModel(args.model, args.gpu, args.gpus_per_instance)
    except (UnknownNameError, ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t = np.array(tokens, dtype=np.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prefill = cm.prefill_time_s(t)
        kv = cm.kv_bytes(t)
        decode = {b: cm.decode_step_time_s(b, b * t) for b in batches}
    rate_gbps = kv * 8 / prefill / 1e9
    records = [
        {
            "tokens": int(n),
            "prefill_time_s": float(prefill[i]),
            "kv_bytes": round(kv[i]),
            "kv_rate_gbps": float(rate_gbps[i]),
            "decode_step_time_s": {str(b): float(decode[b][i]) for b in batches},
        }
        for i, n in enumerate(tokens)
    ]
    if args.json:
        print(json.dumps(records, indent=1))
    else:
        print(f"{cm.model.name} on {cm.gpus} x {cm.gpu.name}")
        for k, v in cm.describe().items():
            print(f"  {k:8s} {v}")
        head = ["tokens", "prefill s", "KV MiB", "KV Gbps"] + [f"decode ms @{b}" for b in batches]
        rows = [
            [
                f"{r['tokens']}",
                f"{r['prefill_time_s']:.3f}",
                f"{r['kv_bytes'] / MIB:.1f}",
                f"{r['kv_rate_gbps']:.2f}",
            ]
            + [f"{r['decode_step_time_s'][str(b)] * 1e3:.2f}" for b in batches]
            for r in records
        ]
        widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
        print("  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
        for row in rows:
            print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
