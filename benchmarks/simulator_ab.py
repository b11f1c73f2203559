"""Paired speed comparison of the simulator at two git revisions, in one process.

    python benchmarks/simulator_ab.py 4ae0d69 HEAD --envs 4096
    python benchmarks/simulator_ab.py HEAD . --envs 4096 --serial --scenario mooncake

On a shared machine the speed of the same code drifts by 10-20 % from one run to the next,
which hides changes of a few per cent. This script exports the ``prfaas_env`` package of each
revision (``git archive``; ``.`` is the working tree) under a name of its own, builds one
``VecSimulator`` from each in the same process, and times them in alternating blocks of
steps, so that drift affects both alike. It prints each side's median decisions per second
(time inside ``VecSimulator.step`` only, the policy excluded), the median and quartiles of the
per-block ratio B/A, and which state arrays differ at the end (none, for a change that must
not alter results). The scenarios and the threshold policy are those of
``benchmarks/simulator_throughput.py``.

Exports are kept in ``--cache`` (default ``~/.cache/prfaas-env-ab``), keyed by content, so
numba compiles each revision once (a minute or two); the first run of a revision takes that
much longer. Each edit of the working tree makes a new export: delete the folder to reclaim
the space.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib
import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from simulator_throughput import scenarios, threshold_policy  # noqa: E402

PACKAGE = "prfaas_env"
# --scenario choices: names of benchmarks/simulator_throughput.py's scenarios
SCENARIOS = {"paper": "paper (synthetic)", "mooncake": "mooncake replay"}


def _sources(rev: str) -> dict[str, bytes]:
    """``{path inside the package: bytes}`` of every file of the package at ``rev`` (data
    files included; its ``configs`` link is replaced by the repository's ``configs``)."""
    if rev == ".":
        out = {}
        for top, prefix in ((ROOT / PACKAGE, ""), (ROOT / "configs", "configs/")):
            for p in sorted(top.rglob("*")):
                rel = p.relative_to(top)
                if p.is_file() and "__pycache__" not in rel.parts and rel.parts[0] != "configs":
                    out[prefix + str(rel)] = p.read_bytes()
        return out
    try:
        blob = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", rev, PACKAGE, "configs"],
            check=True,
            capture_output=True,
        ).stdout
    except subprocess.CalledProcessError as err:
        why = err.stderr.decode().strip()
        raise SystemExit(f"revision {rev!r}: git archive failed: {why}") from None
    out = {}
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        for m in tar.getmembers():
            if not m.isfile():  # directories, and the package's configs link
                continue
            f = tar.extractfile(m)
            assert f is not None
            name = m.name[len(PACKAGE) + 1 :] if m.name.startswith(PACKAGE + "/") else m.name
            out[name] = f.read()
    return out


def export(rev: str, cache: Path) -> str:
    """Write ``rev``'s package into ``cache`` under a name of its own; return that name."""
    files = _sources(rev)
    digest = hashlib.sha256()
    for path, data in sorted(files.items()):
        digest.update(path.encode() + b"\0" + data)
    name = f"{PACKAGE}_{digest.hexdigest()[:12]}"
    root = cache / name
    target = root / name
    if not target.exists():
        tmp = root / f"{name}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        pattern = re.compile(rb"\b" + PACKAGE.encode() + rb"\b")
        for path, data in files.items():
            dest = tmp / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(pattern.sub(name.encode(), data) if path.endswith(".py") else data)
        tmp.rename(target)
    sys.path.insert(0, str(root))
    return name


def build(package: str, data: dict, envs: int, parallel: bool) -> Any:
    """A reset and warmed-up ``VecSimulator`` of the exported ``package``."""
    engine = importlib.import_module(f"{package}.sim.engine")
    scenario = importlib.import_module(f"{package}.sim.scenario")
    sim = engine.VecSimulator(
        scenario.parse_scenario(copy.deepcopy(data), "ab"), envs, parallel=parallel
    )
    sim.reset(seed=0)
    return sim


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev_a", help="git revision of side A ('.' = working tree)")
    ap.add_argument("rev_b", help="git revision of side B ('.' = working tree)")
    ap.add_argument("--envs", type=int, default=4096)
    ap.add_argument("--blocks", type=int, default=20, help="timed blocks per side")
    ap.add_argument("--steps", type=int, default=10, help="steps per block")
    ap.add_argument("--serial", action="store_true", help="one thread (default: parallel)")
    ap.add_argument("--scenario", choices=tuple(SCENARIOS), default="paper")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "prfaas-env-ab")
    args = ap.parse_args()
    if args.envs < 1 or args.blocks < 1 or args.steps < 1:
        ap.error("--envs, --blocks and --steps must be at least 1")
    data, threshold = scenarios()[SCENARIOS[args.scenario]]
    sides = []
    for rev in (args.rev_a, args.rev_b):
        sim = build(export(rev, args.cache), data, args.envs, not args.serial)
        policy = threshold_policy(sim, threshold)
        for _ in range(20):  # warm-up (and compilation on a first run)
            sim.step(policy())
        sides.append((sim, policy))
    rates: list[list[float]] = [[], []]
    for b in range(args.blocks):
        for i in (0, 1) if b % 2 == 0 else (1, 0):
            sim, policy = sides[i]
            spent = 0.0
            for _ in range(args.steps):
                routes = policy()
                t0 = time.perf_counter()
                sim.step(routes)
                spent += time.perf_counter() - t0
            rates[i].append(args.steps * args.envs / spent)
    ratio = np.array(rates[1]) / np.array(rates[0])
    mode = "1 thread" if args.serial else "parallel"
    print(f"{args.scenario}, {args.envs} envs, {mode}, {args.blocks} blocks of {args.steps} steps")
    print(f"A {args.rev_a}: {statistics.median(rates[0]):,.0f} decisions/s (median)")
    print(f"B {args.rev_b}: {statistics.median(rates[1]):,.0f} decisions/s (median)")
    q1, q2, q3 = np.quantile(ratio, [0.25, 0.5, 0.75])
    print(f"B/A per block: median {q2:.3f}, quartiles {q1:.3f}-{q3:.3f}")
    a, b = sides[0][0], sides[1][0]
    differ = []
    for part, fields in (("state", None), ("cache", None), ("workload_state", ("rng", "wf", "wi"))):
        pa, pb = getattr(a, part), getattr(b, part)
        for f in fields or sorted(set(pa._fields) | set(pb._fields)):
            if not (hasattr(pa, f) and hasattr(pb, f)):
                differ.append(f"{part}.{f} (only one side has it)")
            elif not np.array_equal(getattr(pa, f), getattr(pb, f), equal_nan=True):
                differ.append(f"{part}.{f}")
    # the session table is left out: its encoding may change while the requests do not
    print("state arrays that differ (session table not compared):", ", ".join(differ) or "none")


if __name__ == "__main__":
    main()
