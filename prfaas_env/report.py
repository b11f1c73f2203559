"""Result tables and output files shared by evaluate.py and train.py."""

from __future__ import annotations

import csv
import json
import math
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


PENALTY = 1.0  # a router under 99 % of the best heuristic's throughput counts +100 %


def paired_relative(
    result: Any, policy: str, scenario: str, reference: str, metric: str = "ttft_p90_s"
) -> tuple[float, float, int]:
    """Mean and 95 % half-width over seeds of ``policy``'s metric over ``reference``'s on
    the same seed, minus 1, and the number of seeds used (seeds where either is unknown are
    left out; NaN mean with none, NaN half-width with one)."""
    from prfaas_env.evaluation import interval

    def per_seed(p: str) -> dict[int, float]:
        return {
            r["seed"]: np.nan if r[metric] is None else float(r[metric])
            for r in result.records
            if r["policy"] == p and r["scenario"] == scenario
        }

    mine, ref = per_seed(policy), per_seed(reference)
    seeds = sorted(set(mine) & set(ref))
    ratios = np.array([mine[s] / ref[s] - 1.0 if ref[s] else np.nan for s in seeds])
    ratios = ratios[np.isfinite(ratios)]
    mean, half = interval(ratios)
    return mean, (half if ratios.size > 1 else math.nan), int(ratios.size)


def _pct(x: float, sign: bool = True) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x:+.1%}" if sign else f"{x:.1%}"


def headroom_table(result: Any, metric: str = "ttft_p90_s") -> str:
    """Markdown: per scenario, the best heuristic and its metric, each planner's (the
    oracle's) and each learned router's metric relative to it with a paired 95 % interval
    over seeds (``*``: under 99 % of its throughput), and the share of the planner's gain a
    learned router reaches. Means of the paired figures over the scenarios each router ran
    (``k of n`` when it skipped some), twice: as measured, and with a router under 99 % of
    the throughput counted +100 % (it did not keep up). The share compares the learned
    router with the planner as measured, over the scenarios both ran. Empty without a
    planner. Figures are means of per-seed ratios (``summary.json``'s ``relative`` is the
    ratio of the seeds' means)."""
    rel = result.relative(metric)
    best = result.best_heuristics(metric)
    kinds = result.kinds()
    planners = sorted(p for p in rel if kinds[p] == "planner")
    learned = sorted(p for p in rel if kinds[p] == "learned")
    if not planners:
        return ""
    scenarios = [s for s in result.suite.scenarios if s.name in best]
    cols = planners + learned
    short = SHORT.get(metric, metric)
    unit = " s" if metric.endswith("_s") else ""
    head = f"| scenario | split | best heuristic | {short} |"
    head += "".join(f" {p} |" for p in cols)
    lines = [head, "|---" * (4 + len(cols)) + "|"]
    paired = {
        (p, sc.name): paired_relative(result, p, sc.name, best[sc.name], metric)
        for p in cols
        for sc in scenarios
        if sc.name in rel[p]
    }
    for sc in scenarios:
        b = best[sc.name]
        split = sc.split.replace("_", "-")
        row = f"| `{sc.name}` | {split} | {b} | {rel[b][sc.name]['value']:.3g}{unit} |"
        for p in cols:
            v = rel[p].get(sc.name)
            if v is None:
                row += " skip |"
                continue
            m, h, _ = paired[(p, sc.name)]
            spread = f" ± {_pct(h, False)}" if math.isfinite(h) else ""
            row += f" {_pct(m)}{spread}{'' if v['keeps_up'] else '*'} |"
        lines.append(row)

    def figures(p: str, names: list[str], penalise: bool) -> list[float]:
        out = []
        for n in names:
            m = paired[(p, n)][0] if (p, n) in paired else math.nan
            if math.isfinite(m):
                keeps = bool(rel[p][n]["keeps_up"])
                out.append(max(m, PENALTY) if penalise and not keeps else m)
        return out

    for which, name in (("train", "train"), ("held_out", "held-out"), (None, "all")):
        names = [sc.name for sc in scenarios if which is None or sc.split == which]
        for penalise in (False, True):
            tag = f"mean, {name}" + (" (* counted +100 %)" if penalise else "")
            cells = ""
            for p in cols:
                vals = figures(p, names, penalise)
                cell = _pct(float(np.mean(vals))) if vals else "n/a"
                if len(vals) < len(names):
                    cell += f" ({len(vals)} of {len(names)})"
                cells += f" {cell} |"
            lines.append(f"| {tag} | | | |{cells}")
    notes = [
        "",
        "± : 95 % interval over seeds of the per-seed ratio to the best heuristic on the same "
        "requests; * : under 99 % of the best heuristic's throughput.",
        f"{', '.join(planners)}: sees requests that have not arrived yet (a reference, not a "
        "router).",
    ]
    for p in learned:
        for planner in planners:
            both = [sc.name for sc in scenarios if (p, sc.name) in paired]
            both = [n for n in both if (planner, n) in paired]
            bound = -float(np.mean(figures(planner, both, False))) if both else math.nan
            shares = []
            for penalise in (False, True):
                mine = figures(p, both, penalise)
                if not (math.isfinite(bound) and bound > 0) or not mine:
                    shares.append("n/a (the planner gains nothing on them)")
                else:
                    shares.append(f"{-float(np.mean(mine)) / bound:.0%}")
            notes.append(
                f"{p}: share of {planner}'s mean gain over the best heuristic, on the "
                f"{len(both)} scenarios both ran: {shares[0]} as measured, {shares[1]} with "
                f"{p}'s * counted +100 %."
            )
    return "\n".join(lines + notes)


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
