"""Derive the shipped ServeGen tables from a copy of ServeGen's data (regeneration script).

ServeGen (github.com/alibaba/ServeGen, Apache-2.0; arXiv 2505.09999) publishes, per client of
a production model and per 10-minute window, the request rate, the inter-arrival coefficient of
variation and a fitted inter-arrival distribution (gamma or Weibull: shape and scale), and per
6-hour window histograms of input and output tokens. The simulator needs much less:

- one snapshot of the client mix: the busiest 10-minute window of the first day (the window
  with the highest total rate of the clients that have length data), and per active client
  its share of that rate, its inter-arrival family and shape (the scale follows from the rate
  the scenario asks for), and quantile tables of its input and output tokens (from the
  length histogram in force at that window);
- pooled input and output quantile tables (the clients' histograms mixed by rate share);
- the first day's hourly total rate, divided by its mean (a diurnal shape).

Like ServeGen's own loader, only clients with both a trace file and a length file are used
(the copy here lacks some length files, see the data's MISSING.txt).

Run (needs only numpy)::

    python -m prfaas_env.workloads.servegen --data /path/to/servegen

It rewrites ``prfaas_env/workloads/data/servegen_language.json`` and ``servegen_reason.json``.
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"
# Shipped table name -> folder under ServeGen's data/ (category/model).
SETS = {"language": "language/m-small", "reason": "reason/deepseek-r1"}
# Cumulative probabilities of the quantile tables: finer in both tails.
PROBS = (
    [0.0, 0.005, 0.01, 0.025, 0.05, 0.075]
    + [round(0.1 + 0.05 * i, 3) for i in range(17)]
    + [0.925, 0.95, 0.975, 0.99, 0.995, 0.999, 1.0]
)
WINDOW_S = 600
DAY_S = 86_400


def _read_trace(path: Path) -> dict[int, tuple[float, str, float, float]]:
    """Window start (s) -> (rate req/s, family, shape, scale); windows without traffic left out."""
    out = {}
    for line in path.read_text().splitlines():
        ts, rate, _cv, fam, a, b = line.strip().split(",")
        if fam and float(rate) > 0:
            out[int(ts)] = (float(rate), fam, float(a), float(b))
    return out


def _read_lengths(path: Path) -> dict[int, dict[str, np.ndarray]]:
    """Window start (s) -> field -> probability per token count (index = tokens)."""
    raw = json.loads(path.read_text())
    out = {}
    for ts, fields in raw.items():
        hist = {}
        for name in ("input_tokens", "output_tokens"):
            pdf = ast.literal_eval(fields[name])
            if not pdf:
                break
            arr = np.zeros(max(pdf) + 1)
            for tok, p in pdf.items():
                arr[tok] = p
            hist[name] = arr / arr.sum()
        else:
            out[int(ts)] = hist
    return out


def quantiles(pdf: np.ndarray) -> list[int]:
    """Token counts at :data:`PROBS` of a histogram (index = tokens); at least 1 token."""
    cdf = np.cumsum(pdf)
    nz = np.flatnonzero(pdf > 0)
    q = [int(nz[0])]
    q += [int(np.searchsorted(cdf, p - 1e-12)) for p in PROBS[1:-1]]
    q.append(int(nz[-1]))
    return [max(int(v), 1) for v in np.maximum.accumulate(q)]


def derive(root: Path, folder: str) -> dict:
    """The shipped table of one ServeGen data set (see the module docstring)."""
    src = root / "data" / folder
    clients = {}
    for f in sorted(src.glob("chunk-*-dataset.json")):
        cid = int(f.name.split("-")[1])
        trace = src / f"chunk-{cid}-trace.csv"
        if trace.exists():
            clients[cid] = (_read_trace(trace), _read_lengths(f))
    total: dict[int, float] = {}
    for tr, _ in clients.values():
        for ts, row in tr.items():
            total[ts] = total.get(ts, 0.0) + row[0]
    first_day = [ts for ts in range(0, DAY_S, WINDOW_S)]
    snap = max(first_day, key=lambda ts: total.get(ts, 0.0))
    day = np.array([total.get(ts, 0.0) for ts in first_day]).reshape(24, -1).mean(1)
    rows, pooled_in, pooled_out = [], None, None
    for cid, (tr, lens) in sorted(clients.items()):
        if snap not in tr:
            continue
        windows = [ts for ts in lens if ts <= snap]
        if not windows:
            continue
        hist = lens[max(windows)]
        rate, fam, shape, _scale = tr[snap]
        share = rate / total[snap]
        rows.append(
            {
                "client": cid,
                "share": round(share, 6),
                "family": fam.lower(),
                "shape": round(shape, 6),
                "input": quantiles(hist["input_tokens"]),
                "output": quantiles(hist["output_tokens"]),
            }
        )
        for name, acc in (("input_tokens", "in"), ("output_tokens", "out")):
            h = hist[name] * share
            cur = pooled_in if acc == "in" else pooled_out
            if cur is None:
                cur = h
            else:
                n = max(len(cur), len(h))
                cur = np.pad(cur, (0, n - len(cur))) + np.pad(h, (0, n - len(h)))
            if acc == "in":
                pooled_in = cur
            else:
                pooled_out = cur
    shares = sum(r["share"] for r in rows)
    for r in rows:
        r["share"] = round(r["share"] / shares, 6)
    assert pooled_in is not None and pooled_out is not None
    return {
        "source": f"ServeGen data/{folder}",
        "snapshot_s": snap,
        "snapshot_rate_rps": round(total[snap], 4),
        "probs": PROBS,
        "clients": rows,
        "pooled": {
            "input": quantiles(pooled_in / pooled_in.sum()),
            "output": quantiles(pooled_out / pooled_out.sum()),
        },
        "day_profile": [round(float(v), 4) for v in day / day.mean()],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="ServeGen checkout (has data/)")
    ap.add_argument("--out", type=Path, default=DATA_DIR, help="output folder")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, folder in SETS.items():
        table = derive(args.data, folder)
        path = args.out / f"servegen_{name}.json"
        path.write_text(json.dumps(table, separators=(",", ":")) + "\n")
        print(
            f"{path}: {len(table['clients'])} clients at t={table['snapshot_s']} s, "
            f"{path.stat().st_size / 1024:.1f} KiB"
        )


if __name__ == "__main__":
    main()
