"""How close the emulated deployment behind Envoy and the picker stays to the simulator.

    python benchmarks/gateway_fidelity.py [--requests 400] [--time-scale 5]

For each case, the same trace and the same policy go through Envoy + the picker + the
emulated deployment (what the client saw) and through the simulator (its records), and the
TTFT percentiles are compared (deployment seconds):

- ``paper, prfaas_threshold``: the paper's deployment and workload (log-normal prompts,
  1024 output tokens) at 2x its arrival rate, the PrfaaS threshold router;
- ``paper, mooncake``: the same trace with Mooncake's min-TTFT router, whose decisions
  depend on the queues the picker estimates from scraped metrics and its own bookkeeping;
- ``mooncake trace, prefix caches``: the first requests of the Mooncake conversation trace
  on the paper's deployment with 16,384-block prefix caches in both clusters (the
  ``mooncake_fluctuating`` topology with a constant 100 Gbps link: the emulated link is
  constant), the threshold router, whose cache lookups come from the picker's LRUs.

The target is an emulated TTFT P90 within 15 % of the simulator's. The emulator runs
``--time-scale`` times faster than the wall clock; the wall milliseconds each request spends
in Envoy, the picker and the servers' HTTP handling count that many times over in deployment
time, so a smaller time scale is closer (and slower to run).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prfaas_env.env.config import resolve_config  # noqa: E402
from prfaas_env.gateway.demo import run_case  # noqa: E402
from prfaas_env.gateway.loadgen import synthetic_trace_file  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--time-scale", type=float, default=5.0)
    ap.add_argument("--cases", default="paper-threshold,paper-mooncake,mooncake-trace")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="prfaas-fidelity-"))
    paper, _ = resolve_config("paper_prfaas")
    moon, _ = resolve_config("mooncake_fluctuating")
    moon_topo = copy.deepcopy(moon.raw["topology"])
    for link in moon_topo["links"]:
        link.pop("bandwidth", None)
        link.pop("outages", None)
    trace = synthetic_trace_file("paper_prfaas", args.requests, 0, work / "paper.jsonl", 2.0)
    cases = {
        "paper-threshold": (paper.raw["topology"], trace, "prfaas_threshold"),
        "paper-mooncake": (paper.raw["topology"], trace, "mooncake"),
        "mooncake-trace": (moon_topo, "mooncake-conversation", "prfaas_threshold"),
    }
    rows = {}
    print(
        f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; "
        f"time scale {args.time_scale:g}"
    )
    for name in args.cases.split(","):
        topo, tr, policy = cases[name]
        s = run_case(
            topo,
            tr,
            args.requests,
            work / name,
            policy,
            time_scale=args.time_scale,
            slo=paper.raw.get("slo"),
            label=name,
        )
        rows[name] = {
            k: s.get(k)
            for k in (
                "requests",
                "ok",
                "status_5xx",
                "ttft_p50_s",
                "ttft_p90_s",
                "ttft_p99_s",
                "sim_ttft_p50_s",
                "sim_ttft_p90_s",
                "sim_ttft_p99_s",
                "ttft_p90_vs_sim",
                "routes",
                "picker_decision_p99_ms",
            )
        }
        r = rows[name]
        print(
            f"{name:16s} emulated TTFT p50 {r['ttft_p50_s']:.3f} p90 {r['ttft_p90_s']:.3f} p99 "
            f"{r['ttft_p99_s']:.3f} | simulator p50 {r['sim_ttft_p50_s']:.3f} "
            f"p90 {r['sim_ttft_p90_s']:.3f} "
            f"p99 {r['sim_ttft_p99_s']:.3f} | p90 {r['ttft_p90_vs_sim']:+.1%} "
            f"| routes {r['routes']}",
            flush=True,
        )
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
