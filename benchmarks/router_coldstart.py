"""Cold start of the router: a new process, from start to its first answer.

    python benchmarks/router_coldstart.py --bundle bundles/quickstart [--tree DIR] [--runs 5]

Each run starts ``python -m prfaas_env.router route --bundle B STATE`` in a fresh process
(the state is the bundle's first golden line) and times it until it exits with the decision:
interpreter start, imports, loading and checking the bundle (its golden self-test), and the
decision. ``--tree`` runs another checkout of the project (a ``git worktree`` of an older
revision) the same way, for a before/after comparison on the same bundle. Also prints the
import time of ``prfaas_env.router`` alone and which heavy modules the router process loads.
Compiled code comes from the on-disk cache (one untimed run first). Each process runs in its
tree's folder with only that tree on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# what a router process should not have to load (tests/test_layers.py checks the same)
HEAVY = "gymnasium torch stable_baselines3 prfaas_env.sim.engine prfaas_env.sim.kernel".split()


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--tree", default=None, help="another checkout to time the same way")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    bundle = Path(args.bundle).resolve()
    first = json.loads((bundle / "golden.jsonl").read_text().splitlines()[0])["state"]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(first, f)
        state = f.name
    trees = {"this tree": Path(__file__).resolve().parents[1]}
    if args.tree:
        trees["--tree"] = Path(args.tree).resolve()
    print(
        f"{'tree':<12}{'first answer, s (min / median / max)':>40}{'import, s':>12}  heavy modules"
    )
    for label, tree in trees.items():
        env = {**os.environ, "PYTHONPATH": str(tree)}
        cmd = [sys.executable, "-m", "prfaas_env.router", "route", "--bundle", str(bundle), state]
        timed(cmd, env, tree)  # compiled code into the cache
        runs = [timed(cmd, env, tree) for _ in range(args.runs)]
        probe = (
            "import time, sys, json; t = time.perf_counter(); import prfaas_env.router; "
            "print(json.dumps([time.perf_counter() - t, sorted(sys.modules)]))"
        )
        out = subprocess.run(
            [sys.executable, "-c", probe],
            env=env,
            cwd=tree,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        imp, mods = json.loads(out.splitlines()[-1])
        heavy = [m for m in HEAVY if m in mods]
        print(
            f"{label:<12}{min(runs):>20.2f} / {statistics.median(runs):.2f} / {max(runs):.2f}"
            f"{imp:>14.2f}  {', '.join(heavy) or 'none'}"
        )
    os.unlink(state)


if __name__ == "__main__":
    main()
