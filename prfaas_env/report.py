"""Result tables and output files shared by evaluate.py and train.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

SHORT = {
    "throughput_rps": "req/s",
    "output_tps": "tok/s",
    "ttft_mean_s": "TTFT mean",
    "ttft_p50_s": "P50",
    "ttft_p90_s": "P90",
    "ttft_p99_s": "P99",
    "tpot_mean_s": "TPOT",
    "slo_attainment": "SLO",
    "offload_fraction": "offload",
    "link_utilisation": "link",
    "max_rps": "max req/s",
}


def fmt(mean: float, half: float) -> str:
    """``mean±half`` with digits suited to the magnitude (``n/a`` when not finite)."""
    if not np.isfinite(mean):
        return "n/a"
    digits = 4 if abs(mean) < 0.1 else 2 if abs(mean) < 100 else 0
    return f"{mean:.{digits}f}±{half:.{digits}f}"


def table(rows: dict[str, dict[str, tuple[float, float]]], keys: list[str]) -> str:
    """A fixed-width table: one row per policy, one ``mean±half`` column per metric key."""
    width = max(len(p) for p in rows) + 2
    head = "policy".ljust(width) + "".join(SHORT[k].rjust(14) for k in keys)
    lines = [head, "-" * len(head)]
    for p, vals in rows.items():
        lines.append(p.ljust(width) + "".join(fmt(*vals[k]).rjust(14) for k in keys))
    return "\n".join(lines)


def write_outputs(
    out: Path,
    records: list[dict[str, Any]],
    keys: list[str],
    cdfs: dict[str, np.ndarray],
    sweeps: dict[str, Any],
    ttft_slo: float,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(records, indent=1) + "\n")
    with (out / "results.csv").open("w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=["policy", "seed", *keys])
        wr.writeheader()
        wr.writerows(records)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, ttft in cdfs.items():
        x = np.sort(ttft[np.isfinite(ttft)])
        ax.plot(x, np.arange(1, x.size + 1) / max(x.size, 1), label=name)
    ax.axvline(ttft_slo, color="grey", linestyle=":", label="TTFT SLO")
    ax.set(xscale="log", xlabel="TTFT (s)", ylabel="fraction of requests", title="TTFT CDF")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "ttft_cdf.png", dpi=120)
    plt.close(fig)
    if sweeps:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, sw in sweeps.items():
            pts = np.array(sw.points)
            ax.plot(pts[:, 0], pts[:, 1], marker="o", ms=3, label=name)
        ax.set(
            xlabel="arrival rate (req/s)",
            ylabel="goodput (req/s within SLO)",
            title="Goodput against load",
        )
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "goodput.png", dpi=120)
        plt.close(fig)
