"""Cost-model call throughput: evaluations per second of each API method by batch size.

Run: python benchmarks/costmodel_throughput.py [--seconds S]
Prints a table (method, batch size, microseconds per call, evaluations per second). The
simulator calls these with one entry per environment, so the per-call overhead at small batch
and the per-entry cost at large batch both matter.
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import numpy as np

from prfaas_env.costmodel import CalibrationRangeWarning, CostModel


def _rate(fn, seconds: float) -> float:
    fn()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=0.5, help="timing budget per row, s")
    args = ap.parse_args()
    warnings.simplefilter("ignore", CalibrationRangeWarning)
    cm = CostModel("prfaas-1t-hybrid", "h20", 8)
    rng = np.random.default_rng(0)
    print(f"# {platform.processor() or platform.machine()}, numpy {np.__version__}")
    print(f"{'method':20s} {'batch':>6s} {'us/call':>10s} {'evals/s':>14s}")
    for n in (1, 64, 1024, 4096):
        new = rng.integers(1, 100_000, n)
        cached = rng.integers(0, 10_000, n)
        batch = rng.integers(1, 128, n)
        rows = {
            "prefill_time_s": (cm.prefill_time_s, (new, cached)),
            "decode_step_time_s": (cm.decode_step_time_s, (batch, batch * 20_000)),
            "kv_bytes": (cm.kv_bytes, (new,)),
        }
        for name, (method, call_args) in rows.items():
            dt = _rate(lambda m=method, a=call_args: m(*a), args.seconds)
            print(f"{name:20s} {n:6d} {dt * 1e6:10.1f} {n / dt:14,.0f}")


if __name__ == "__main__":
    main()
