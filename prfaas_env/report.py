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


def suite_table(result: Any, metric: str = "ttft_p90_s") -> str:
    """The suite's tables: per router and scenario the metric relative to that scenario's
    best heuristic (``*``: the router completes under 99 % of the best heuristic's
    throughput), with means over the train set, the held-out set and all scenarios; then
    SLO attainment. ``result`` is a :class:`prfaas_env.suite_eval.SuiteResult`."""
    rel = result.relative(metric)
    best = result.best_heuristics(metric)
    kinds = result.kinds()
    scenarios = [s for s in result.suite.scenarios if s.name in best]
    order = sorted(rel, key=lambda p: (("heuristic", "learned", "planner").index(kinds[p]), p))
    width = max([len(p) + (9 if kinds[p] == "planner" else 0) for p in order] + [8]) + 2
    planners = [p for p in order if kinds[p] == "planner"]
    cols = [s.name for s in scenarios]
    split = {s.name: s.split for s in scenarios}

    def cell(x: float, keeps: bool = True) -> str:
        if not np.isfinite(x):
            return "n/a"
        return f"{x:+.0%}" + ("" if keeps else "*")

    def label(p: str) -> str:
        return f"{p} (future)" if kinds[p] == "planner" else p

    def means(p: str, key: str) -> list[float]:
        """Means over the train set, the held-out set and all scenarios (NaN unless the
        router ran on every scenario of the set)."""
        out = []
        for which in ("train", "held_out", None):
            want = [c for c in cols if which is None or split[c] == which]
            vals = [rel[p][c][key] for c in want if c in rel[p]]
            out.append(float(np.mean(vals)) if want and len(vals) == len(want) else np.nan)
        return out

    idx = "  ".join(f"[{i}] {c}" for i, c in enumerate(cols))
    lines = [
        f"{SHORT.get(metric, metric)} relative to each scenario's best heuristic "
        f"(* = under 99 % of its throughput; mean over scenarios: train / held-out / all)",
        idx,
    ]
    head = "policy".ljust(width) + "".join(f"[{i}]".rjust(8) for i in range(len(cols)))
    head += "   train  held-out     all"
    lines += [head, "-" * len(head)]
    for p in order:
        row = label(p).ljust(width)
        for c in cols:
            v = rel[p].get(c)
            row += (cell(v["rel"], bool(v["keeps_up"])) if v else "skip").rjust(8)
        row += "".join(cell(m).rjust(8) for m in means(p, "rel"))
        lines.append(row)
    lines.append("")
    lines.append("best heuristic: " + ", ".join(f"[{i}] {best[c]}" for i, c in enumerate(cols)))
    if planners:
        lines.append(
            "(future): sees requests that have not arrived yet; a reference and a teacher, not "
            "a router"
        )
    lines.append("")
    lines.append("SLO attainment")
    lines += [head.replace("   train  held-out     all", ""), "-" * len(head)]
    for p in order:
        row = label(p).ljust(width)
        for c in cols:
            v = rel[p].get(c)
            row += (f"{v['slo_attainment']:.2f}" if v else "skip").rjust(8)
        lines.append(row)
    guarded = sorted({r["policy"] for r in result.records if "guard_fired" in r})
    if guarded:
        lines += ["", "guard fired (share of decisions sent to the fallback heuristic)"]
        lines += [head.replace("   train  held-out     all", ""), "-" * len(head)]
        for p in guarded:
            row = label(p).ljust(width)
            for c in cols:
                fired = [
                    r["guard_fired"]
                    for r in result.records
                    if r["policy"] == p and r["scenario"] == c
                ]
                row += (f"{fired[0]:.1%}" if fired else "skip").rjust(8)
            lines.append(row)
    return "\n".join(lines)


def write_suite_outputs(out: Path, result: Any, metric: str = "ttft_p90_s") -> None:
    """``results.json`` and ``results.csv`` (one record per scenario, router and seed),
    ``summary.json`` (relative figures, best heuristics, skipped pairs) and
    ``heatmap.png`` (the metric relative to each scenario's best heuristic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    out.mkdir(parents=True, exist_ok=True)
    recs = result.records
    (out / "results.json").write_text(json.dumps(recs, indent=1) + "\n")
    keys = ["scenario", "split", "policy", "kind", "seed", *[k for k in SHORT if k in recs[0]]]
    with (out / "results.csv").open("w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        wr.writeheader()
        wr.writerows(recs)
    rel = result.relative(metric)
    summary = {
        "suite": result.suite.name,
        "metric": metric,
        "seeds": result.seeds,
        "decisions": result.decisions,
        "best_heuristic": result.best_heuristics(metric),
        "relative": rel,
        "skipped": [
            {"scenario": s, "policy": p, "reason": r} for (s, p), r in result.skipped.items()
        ],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    scenarios = [s.name for s in result.suite.scenarios if s.name in summary["best_heuristic"]]
    policies = sorted(rel)
    grid = np.array(
        [[rel[p].get(s, {}).get("rel", np.nan) for s in scenarios] for p in policies], float
    )
    fig, ax = plt.subplots(
        figsize=(max(6.0, 2.5 + 0.6 * len(scenarios)), 2.0 + 0.35 * len(policies))
    )
    shown = np.clip(grid, -0.5, 2.0)
    im = ax.imshow(shown, cmap="RdYlGn_r", norm=TwoSlopeNorm(vcenter=0.0, vmin=-0.5, vmax=2.0))
    ax.set_xticks(range(len(scenarios)), scenarios, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(policies)), policies, fontsize=7)
    for i in range(len(policies)):
        for j in range(len(scenarios)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:+.0%}", ha="center", va="center", fontsize=5)
    fig.colorbar(im, ax=ax, label=f"{SHORT.get(metric, metric)} vs best heuristic (clipped)")
    ax.set_title(
        f"suite {result.suite.name}: {SHORT.get(metric, metric)} relative to the best heuristic"
    )
    fig.tight_layout()
    fig.savefig(out / "heatmap.png", dpi=130)
    plt.close(fig)
