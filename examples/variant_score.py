"""Score generalist runs on randomised variants of the suite's train scenarios (no held-out data).

    python examples/variant_score.py runs/gen_plx_s0 runs/generalist_ship

Each run (a ``train.py --suite`` folder) is scored by the generalist's validation score
(:func:`agents.generalist.selection_score`: the mean P90 TTFT relative to each scenario's best
heuristic, a scenario under 99 % of its throughput counted +100 %) on the train scenarios
and ``--variants`` randomised variants of each, drawn from the ranges given (load, output
lengths, links; pools with ``--set pool_low=...``) as
:func:`agents.generalist.validation_variants` draws them, with the variant generator's seed
offset by ``--seed-offset`` (1 by default: not the variants a run with
``validate_variants`` selected its iteration on). Validation seeds only (10000 onwards); the
held-out scenarios are never touched. This is how the shipped generalist was chosen among
candidates (docs/generalist.md, "How it was chosen"); about 10 minutes for the heuristics and
1-2 minutes per run here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import agents.generalist as gen
from prfaas_env.errors import ConfigError
from prfaas_env.evaluation import VALIDATION_SEED, seed_range
from prfaas_env.suite import load_suite

# the widest randomisation any shipped recipe trains with
WIDEST = {"out_low": 0.7, "out_high": 4.0, "link_low": 0.2, "link_high": 1.5, "link_fluctuate": 0.3}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="train.py --suite run folders")
    ap.add_argument("--suite", default="default")
    ap.add_argument("--variants", type=int, default=3, help="variants per train scenario")
    ap.add_argument("--seed-offset", type=int, default=1, help="added to VARIANT_SEED")
    ap.add_argument("--seeds", type=int, default=3, help="validation seeds per scenario")
    ap.add_argument("--decisions", type=int, default=1000, help="requests per seed")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a randomisation range (GeneralistSettings field); default the widest shipped",
    )
    args = ap.parse_args(argv)
    try:
        s = gen.settings_from(
            args.set,
            **WIDEST,
            validate_variants=args.variants,
            eval_seeds=args.seeds,
            eval_decisions=args.decisions,
        )
    except ConfigError as exc:
        ap.error(f"--set {exc}")
    train = list(load_suite(args.suite).train)
    checks = gen.validation_scenarios(train, s, gen.VARIANT_SEED + args.seed_offset)
    seeds = seed_range(VALIDATION_SEED, s.eval_seeds)
    print(f"best heuristics of {len(checks)} scenarios and variants ...", flush=True)
    best = gen.best_heuristics(checks, seeds, s.eval_decisions)
    base = None
    for run in args.runs:
        net = gen.load_generalist(run)[0]
        res, base = gen.evaluate(net, checks, best, s, base)
        slow = [k for k, v in res.items() if v["rps_ratio"] < 0.99]
        print(
            f"{run}: score {gen.selection_score(res):+.2%}; under 99 % of the throughput: "
            + (", ".join(slow) or "none"),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
