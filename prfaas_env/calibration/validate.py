"""End-to-end validation of the cost model against real serving runs, and the serving-overhead fit.

Usage::

    python -m prfaas_env.calibration.validate           # recompute, rewrite the report
    python -m prfaas_env.calibration.validate --json    # the same, and print one JSON object
    python -m prfaas_env.calibration.validate --render  # re-render the report from the saved
                                                        # results (no backend needed)
    python -m prfaas_env.calibration.validate --only llmservingsim  # one check (~seconds);
                                                        # the others from the saved results

Three checks (needs the ``aic`` extra, aiconfigurator-core, for the first two):

1. **silicon**: every distinct configuration of aiconfigurator-core's ``silicon_sample.csv``
   whose model and GPU the catalog covers, replayed in the simulator as the benchmark ran it
   (closed loop at the row's concurrency; :func:`prfaas_env.calibration.silicon.replay_row`).
   The benchmark's ramp, the serving overhead and per-model kernel multipliers are fitted to
   these rows (:func:`fit_protocol`); the errors reported are leave-one-configuration-out (each
   configuration predicted by a fit that did not see it).
2. **llmservingsim**: the four measured vLLM 0.19 runs of LLMServingSim
   (``--llmservingsim DIR``; default ``../shared/data/groundtruth/llmservingsim`` beside the
   checkout), replayed request by request in the simulator's co-located engine
   (:mod:`prfaas_env.calibration.colocated`). vLLM 0.19's step time over the database
   version's kernels is fitted to the runs' mean TPOT; each run is reported with the fit of
   the other runs (leave one run out).
3. **table5**: the paper's Table 5 (prefill time and KV size on 8 x H200) from the shipped
   cost model.

Writes ``prfaas_env/calibration/validation.json`` (the results),
``prfaas_env/calibration/serving_overhead.json`` (the fitted overhead and version scales the
cost model uses)
and the validation section of ``docs/calibration.md``. Errors are fractions,
``predicted / measured - 1``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from prfaas_env.calibration.fit import REPORT, read_csv, replace_validation_section
from prfaas_env.costmodel import CostModel, ServingOverhead
from prfaas_env.costmodel.serving import NO_OVERHEAD, OVERHEAD_FILE, reload_overheads

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "validation.json"
LLMSERVINGSIM = (
    Path(__file__).resolve().parents[3] / "shared" / "data" / "groundtruth" / "llmservingsim"
)
SECTIONS = ("silicon", "llmservingsim", "table5")
TARGETS = {"silicon_tpot": 0.12, "silicon_ttft": 0.20, "llmservingsim": 0.15, "table5": 0.05}
MIN_GROUP_ROWS = 20  # (model, GPU) groups this large must be within 2x of the overall targets


def _err(pred: float, meas: float) -> float:
    return pred / meas - 1.0


def _stats(errs: list[float]) -> dict[str, float]:
    a = np.abs(np.asarray(errs, float))
    if a.size == 0:
        return {"n": 0}
    return {
        "n": int(a.size),
        "median_abs_error": float(np.median(a)),
        "p90_abs_error": float(np.percentile(a, 90)),
        "median_signed_error": float(np.median(errs)),
    }


# ---- 1. silicon rows ---------------------------------------------------------------------------
# The benchmark protocol's one free parameter: over what fraction of the cycle (TTFT plus
# decode, from the replay with every client starting together) the clients' first requests
# are spread. 0 keeps the first wave together; real benchmarks drift apart from it.
RAMPS = (0.0, 0.05, 0.2, 1.0)


def _best_offset(kernel_s: np.ndarray, measured_s: np.ndarray) -> tuple[float, float]:
    """The delay ``d >= 0`` (s) that minimises the median of ``|(kernel_s + d) / measured_s -
    1|``, and that median. Candidates: 0 and 401 quantiles of ``measured_s - kernel_s``
    (the optimum is one of those differences; the quantiles come within half a percent of
    the rows of it)."""
    diff = np.maximum(measured_s - kernel_s, 0.0)
    cand = np.unique(np.concatenate([[0.0], np.quantile(diff, np.linspace(0.0, 1.0, 401))]))
    err = np.median(np.abs((kernel_s[None, :] + cand[:, None]) / measured_s[None, :] - 1.0), 1)
    i = int(np.argmin(err))
    return float(cand[i]), float(err[i])


def _weighted_median(x: np.ndarray, w: np.ndarray) -> float:
    o = np.argsort(x)
    c = np.cumsum(w[o])
    return float(x[o][np.searchsorted(c, 0.5 * c[-1])])


def _fit_step(tk: np.ndarray, mt: np.ndarray) -> float:
    """``step_s >= 0`` of least absolute relative TPOT error ``|(tk + step) / mt - 1|``
    (iteratively reweighted least squares)."""
    res = mt - tk
    w = np.ones_like(mt)
    step_s = 0.0
    for _ in range(50):
        step_s = max(float(np.sum(w * res / mt**2) / np.sum(w / mt**2)), 0.0)
        w = 1.0 / np.sqrt(np.maximum(np.abs((tk + step_s) / mt - 1.0), 1e-3))
    return step_s


MIN_SCALE_CONFIGS = 2  # configurations of a model a fit needs for its own kernel multiplier
# Kernel multipliers outside this range are not applied: kernels that far off mean the replay
# misses something else about those rows (their pools, precision or protocol), not a step time.
SCALE_RANGE = (0.5, 2.0)


class ProtocolFit(NamedTuple):
    """:func:`fit_protocol`'s result: the ramp fraction, the overhead (``step_scale`` 1),
    the kernel multipliers applied by model and those outside :data:`SCALE_RANGE`."""

    ramp: float
    overhead: ServingOverhead
    scales: dict[str, float]
    not_applied: dict[str, float]

    def predict(self, x: dict[str, Any]) -> Any:
        """Row ``x``'s prediction under this fit (:func:`_with_overhead`)."""
        return _with_overhead(x, self.ramp, self.overhead, self.scales)


def fit_protocol(
    samples: list[dict[str, Any]], mode: str, source: str, model_scales: bool = True
) -> ProtocolFit:
    """Fit the benchmark's ramp and the serving overhead to replays of measured rows.

    ``samples``: per row ``ttft_kernel_s`` and ``tpot_kernel_s`` (lists over :data:`RAMPS`:
    replays without overhead), the measured ``tpot_s`` and ``ttft_s``, the ``model`` and
    the ``config``.

    * per model with rows of at least :data:`MIN_SCALE_CONFIGS` configurations (with
      ``model_scales``), a kernel multiplier (``step_scale``: this backend's end-to-end step
      time of the model over the databases' kernel time, e.g. fused or unfused kernels the
      databases time otherwise); the other models keep 1. In a closed loop every engine
      time scaled by ``s`` scales the whole replay by ``s``, so the prediction is ``s``
      times the replay's TTFT and TPOT plus the overheads below;
    * the ramp fraction of :data:`RAMPS` and ``request_s`` (at least 0) together minimise
      the median absolute relative TTFT error, ``|(s ttft_kernel + request_s) / ttft - 1|``
      (:func:`_best_offset`: the error the report gives, not the median of the
      differences, which rows of several seconds dominate);
    * ``step_s``: non-negative, least absolute relative TPOT error at that ramp,
      ``|(s tpot_kernel + step) / tpot - 1|`` (``per_sequence_step_s`` stays 0: it cannot
      be told apart from the kernels' own growth with the batch on these rows);
    * the multipliers: weighted medians of ``(tpot - step) / tpot_kernel`` over each model's
      rows (the least absolute relative TPOT error); one outside :data:`SCALE_RANGE` is
      not applied (1 instead); the three steps alternate three times;
    * ``first_token_decode_steps``: 1 for disaggregated serving (the simulator's PD model
      emits the first token after one decode step), 0 for aggregated (informative).

    Returns a :class:`ProtocolFit`.
    """
    if not samples:
        return ProtocolFit(0.0, NO_OVERHEAD, {}, {})
    m = np.array([x["ttft_s"] for x in samples])
    mt = np.array([x["tpot_s"] for x in samples])
    models = np.array([x.get("model", "") for x in samples])
    configs: dict[str, set[str]] = defaultdict(set)
    for x in samples:
        configs[x.get("model", "")].add(x["config"])
    own = [k for k, v in configs.items() if model_scales and len(v) >= MIN_SCALE_CONFIGS]
    scales: dict[str, float] = {}
    r, request_s, step_s = 0, 0.0, 0.0
    lo, hi = SCALE_RANGE
    for _ in range(3 if own else 1):
        use = {k: v for k, v in scales.items() if lo <= v <= hi}
        s_row = np.array([use.get(k, 1.0) for k in models])
        best = (np.inf, 0, 0.0)
        for j in range(len(RAMPS)):
            k = s_row * np.array([x["ttft_kernel_s"][j] for x in samples])
            d, err = _best_offset(k, m)
            if err < best[0] - 1e-12:
                best = (err, j, d)
        _, r, request_s = best
        tk = np.array([x["tpot_kernel_s"][r] for x in samples])
        step_s = _fit_step(s_row * tk, mt)
        for name in own:
            i = models == name
            scales[name] = _weighted_median((mt[i] - step_s) / tk[i], tk[i] / mt[i])
    return ProtocolFit(
        RAMPS[r],
        ServingOverhead(
            request_s=request_s,
            step_s=step_s,
            first_token_decode_steps=1 if mode == "disagg" else 0,
            source=source,
        ),
        {k: v for k, v in scales.items() if lo <= v <= hi},
        {k: v for k, v in scales.items() if not lo <= v <= hi},
    )


def _reason(exc: Exception) -> str:
    """Why a row was not replayed, without the row's own numbers (to count alike reasons)."""
    text = str(exc)
    for cut in (": no backend data: ", "topology.clusters.bench: ", "topology.clusters.bench."):
        if cut in text:
            text = text.split(cut, 1)[1]
            break
    return re.sub(r"\d+(\.\d+)?", "#", text)[:140]


def silicon_section(verbose: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """Replay the silicon rows in the simulator; returns (results, fitted overhead per
    backend/mode)."""
    from prfaas_env.calibration import silicon
    from prfaas_env.costmodel import aic

    aic.LIST_AVAILABLE["on"] = False
    path = aic.silicon_sample_path()
    rows, skipped = silicon.load_rows(path)
    t0 = time.perf_counter()
    failed: dict[str, int] = defaultdict(int)
    notes: dict[str, int] = defaultdict(int)
    usable: list[tuple[Any, dict[str, CostModel]]] = []
    kernel: list[dict[str, Any]] = []

    def progress(what: str, k: int, n: int) -> None:
        if verbose and k % 250 == 0:
            print(f"  silicon {what}: {k}/{n}, {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    for k, row in enumerate(rows):  # replays without overhead, every client starting at once
        progress("replays without overhead", k, len(rows))
        try:
            cms, note = silicon.cost_models(row)
            pred0 = silicon.replay_row(row, cms, NO_OVERHEAD)
        # the backend cannot build it (its estimator may raise anything), or it does not fit
        except Exception as exc:
            failed[_reason(exc)] += 1
            continue
        if note:
            notes[note] += 1
        usable.append((row, cms))
        kernel.append(
            {
                "ttft_kernel_s": [pred0.ttft_s],
                "tpot_kernel_s": [pred0.tpot_s],
                "regime": [pred0.regime],
                "cycle_s": pred0.ttft_s + (row.osl - 1) * pred0.tpot_s,
                "tpot_s": row.tpot_s,
                "ttft_s": row.ttft_s,
                "config": row.configuration,
                "model": row.model,
                "fit_group": f"{row.backend}/{row.mode}",
            }
        )
    for ramp in RAMPS[1:]:  # the same with the first requests spread
        for k, ((row, cms), x) in enumerate(zip(usable, kernel, strict=True)):
            progress(f"replays with ramp {ramp}", k, len(usable))
            p = silicon.replay_row(row, cms, NO_OVERHEAD, ramp * x["cycle_s"])
            x["ttft_kernel_s"].append(p.ttft_s)
            x["tpot_kernel_s"].append(p.tpot_s)
            x["regime"].append(p.regime)
    src = f"fitted to aiconfigurator-core {aic.installed_version()} silicon_sample.csv"
    groups = sorted({x["fit_group"] for x in kernel})
    fitted = {
        g: fit_protocol(
            [x for x in kernel if x["fit_group"] == g], g.split("/")[1], f"{src} ({g} rows)"
        )
        for g in groups
    }
    # leave one configuration out: refit without the row's configuration
    loo: dict[str, ProtocolFit] = {}
    per_row = []
    for row, x in zip((u[0] for u in usable), kernel, strict=True):
        key = f"{x['fit_group']}|{x['config']}"
        if key not in loo:
            train = [
                t for t in kernel if t["fit_group"] == x["fit_group"] and t["config"] != x["config"]
            ]
            if len({t["config"] for t in train}) < 3:  # too few: pool over backends of the mode
                train = [
                    t
                    for t in kernel
                    if t["fit_group"].endswith(row.mode) and t["config"] != x["config"]
                ]
            loo[key] = fit_protocol(train, row.mode, "held out")
        held = loo[key].predict(x)
        fit_in = fitted[x["fit_group"]].predict(x)
        ramp = loo[key].ramp
        per_row.append(
            {
                "model": row.model,
                "gpu": row.gpu,
                "backend": row.backend,
                "mode": row.mode,
                "configuration": row.configuration,
                "isl": row.isl,
                "osl": row.osl,
                "concurrency": row.concurrency,
                "ttft_s": row.ttft_s,
                "tpot_s": row.tpot_s,
                "ttft_pred_s": held.ttft_s,
                "tpot_pred_s": held.tpot_s,
                "ttft_in_sample_s": fit_in.ttft_s,
                "tpot_in_sample_s": fit_in.tpot_s,
                "ttft_kernel_s": x["ttft_kernel_s"][0],
                "tpot_kernel_s": x["tpot_kernel_s"][0],
                "ramp_fraction": ramp,
                "regime": held.regime,
            }
        )
    res = _silicon_summary(per_row)
    res.update(
        {
            "file": f"aiconfigurator-core {aic.installed_version()} systems/silicon_sample.csv",
            "distinct_configurations_skipped": skipped,
            "not_replayed": dict(failed),
            "precision_substitutions": dict(notes),
            "ramp_fraction": {g: f.ramp for g, f in fitted.items()},
            "model_scale": {g: f.scales for g, f in fitted.items() if f.scales},
            "model_scale_not_applied": {
                g: f.not_applied for g, f in fitted.items() if f.not_applied
            },
            "seconds": time.perf_counter() - t0,
            "per_row": per_row,
        }
    )
    return res, {g: f.overhead.to_json() for g, f in fitted.items()}


def _with_overhead(
    x: dict[str, Any], ramp: float, ov: ServingOverhead, scales: dict[str, float]
) -> Any:
    """A row's prediction with serving overhead ``ov`` and the model's kernel multiplier
    ``s`` (``scales``, 1 if absent): ``s`` times its replay at ``ramp`` (without overhead)
    plus ``request_s`` on the TTFT and ``step_s`` on the TPOT, as :func:`fit_protocol` fits
    them.

    The overhead is applied to the replay's times, not inside the replay: it is time outside
    the engine (HTTP, tokenisation, sampling, detokenisation) that shifts every client's
    requests alike, and inside a deterministic closed loop of identical requests such a
    shift moves arrivals across step boundaries and changes which requests meet (109 ms per
    request inside the replay added 100 to 123 ms to the mean TTFT of llama-3.1-70b / h200 /
    trtllm / tp4 at 1024 / 1024 tokens and concurrency 4 to 32, but 367 ms at 64 and
    1,253 ms at 128), so the replay with it would not be the fitted model.
    """
    from prfaas_env.calibration.silicon import Prediction

    r = RAMPS.index(ramp)
    f = scales.get(x["model"], 1.0)
    return Prediction(
        f * x["ttft_kernel_s"][r] + ov.request_s,
        f * x["tpot_kernel_s"][r] + ov.step_s,
        x["regime"][r],
    )


def _silicon_summary(per_row: list[dict[str, Any]]) -> dict[str, Any]:
    def errs(rows, what, pred="pred"):
        return [_err(r[f"{what}_{pred}_s"], r[f"{what}_s"]) for r in rows]

    by_group: dict[str, list] = defaultdict(list)
    by_mg: dict[str, list] = defaultdict(list)
    for r in per_row:
        by_group[f"{r['model']} / {r['gpu']} / {r['backend']} / {r['mode']}"].append(r)
        by_mg[f"{r['model']} / {r['gpu']}"].append(r)
    tt, tp = _stats(errs(per_row, "ttft")), _stats(errs(per_row, "tpot"))
    out = {
        "rows": len(per_row),
        "ttft_median_abs_error": tt.get("median_abs_error"),
        "ttft_p90_abs_error": tt.get("p90_abs_error"),
        "tpot_median_abs_error": tp.get("median_abs_error"),
        "tpot_p90_abs_error": tp.get("p90_abs_error"),
        "ttft": tt,
        "tpot": tp,
        "in_sample": {
            "ttft": _stats(errs(per_row, "ttft", "in_sample")),
            "tpot": _stats(errs(per_row, "tpot", "in_sample")),
        },
        "kernel_only": {
            "ttft": _stats(errs(per_row, "ttft", "kernel")),
            "tpot": _stats(errs(per_row, "tpot", "kernel")),
        },
        "groups": {
            g: {"ttft": _stats(errs(v, "ttft")), "tpot": _stats(errs(v, "tpot"))}
            for g, v in sorted(by_group.items())
        },
        "model_gpu": {
            g: {"ttft": _stats(errs(v, "ttft")), "tpot": _stats(errs(v, "tpot"))}
            for g, v in sorted(by_mg.items())
        },
    }
    return out


# ---- 2. LLMServingSim runs --------------------------------------------------------------------
def llmservingsim_section(root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Replay the measured vLLM runs (see :mod:`prfaas_env.calibration.colocated`): the
    results by run (each validated with its version's step time fitted on the other runs),
    and the version scales fitted on all runs (``serving_overhead.json``'s
    ``version_scale``)."""
    from prfaas_env.calibration import colocated

    if not root.is_dir():
        return {"skipped": f"{root}: not found (pass --llmservingsim DIR)"}, {}
    runs = [
        colocated.load_run(d)
        for d in sorted(p.parent.parent for p in root.glob("bench/examples/*/*/vllm/meta.json"))
    ]
    fit = colocated.fit_version_scales(runs)
    out: dict[str, Any] = {}
    for run in runs:
        scale, others = fit.held_out(run.name)
        res = colocated.validate_run(run, scale, others)
        if run.name in fit.own:
            plain = colocated.validate_run(run) if others else res
            res["own_step_scale"] = fit.own[run.name]
            res["database_kernels"] = {
                k: plain[k] for k in ("ttft_p90_error", "tpot_mean_error", "ttft_mean_error")
            }
        out[run.name] = res
    return out, {k: v.to_json() for k, v in fit.scales.items()}


# ---- 3. Table 5 -------------------------------------------------------------------------------
def table5_section() -> dict[str, Any]:
    """The shipped cost model against the paper's Table 5 (8 x H200)."""
    rows = read_csv("table5.csv")
    points = []
    for r in rows:
        cm = CostModel(r["model"], r["gpu"], int(r["gpus"]))
        n = int(r["prompt"])
        pre = float(cm.prefill_time_s(n)[()])
        kv = float(cm.kv_bytes(n)[()]) / 2**20
        points.append(
            {
                "prompt": n,
                "prefill_s": pre,
                "measured_prefill_s": float(r["prefill_time_s"]),
                "prefill_error": _err(pre, float(r["prefill_time_s"])),
                "kv_mib": kv,
                "measured_kv_mib": float(r["kv_mib"]) if "kv_mib" in r else None,
                "kv_error": _err(kv, float(r["kv_mib"])) if "kv_mib" in r else None,
            }
        )
    errs = [abs(p["prefill_error"]) for p in points] + [
        abs(p["kv_error"]) for p in points if p["kv_error"] is not None
    ]
    return {"points": points, "max_abs_error": max(errs)}


# ---- report ------------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def render(results: dict[str, Any]) -> str:
    """The validation section of docs/calibration.md, from saved results."""
    L: list[str] = ["## End-to-end validation against real serving runs", ""]
    L.append(
        "Generated by `python -m prfaas_env.calibration.validate` (needs the `aic` extra); "
        "`--render` rewrites it from `prfaas_env/calibration/validation.json` alone. Errors "
        "are `predicted / measured - 1`; medians and p90 of their absolute values."
    )
    L.append("")
    si = results.get("silicon", {})
    ls = results.get("llmservingsim", {})
    t5 = results.get("table5", {})
    L += ["### Targets", "", "| check | figure | target | met |", "|---|---|---|---|"]
    if si.get("rows"):
        L.append(
            f"| silicon TPOT, median (held out), {si['rows']} rows | "
            f"{_pct(si['tpot_median_abs_error'])} | <= 12 % | "
            f"{_met(si['tpot_median_abs_error'] <= TARGETS['silicon_tpot'])} |"
        )
        L.append(
            f"| silicon TTFT, median (held out), {si['rows']} rows | "
            f"{_pct(si['ttft_median_abs_error'])} | <= 20 % | "
            f"{_met(si['ttft_median_abs_error'] <= TARGETS['silicon_ttft'])} |"
        )
        big = {g: v for g, v in si["model_gpu"].items() if v["tpot"]["n"] >= MIN_GROUP_ROWS}
        bad = [
            g
            for g, v in big.items()
            if v["tpot"]["median_abs_error"] > 2 * TARGETS["silicon_tpot"]
            or v["ttft"]["median_abs_error"] > 2 * TARGETS["silicon_ttft"]
        ]
        L.append(
            f"| (model, GPU) groups with >= {MIN_GROUP_ROWS} rows within 2x of both | "
            f"{len(big) - len(bad)} of {len(big)} | all | {_met(not bad)} |"
        )
    for name, run in sorted(ls.items()):
        if not isinstance(run, dict) or "ttft_p90_error" not in run:
            continue
        covered = run.get("backend_covered", False)
        tgt = "within 15 %" if covered else "(no backend data: informative)"
        ok = abs(run["ttft_p90_error"]) <= 0.15 and abs(run["tpot_mean_error"]) <= 0.15
        L.append(
            f"| {name}: TTFT P90 / TPOT mean"
            f"{' (held out)' if run.get('step_scale_fitted_on') else ''} | "
            f"{_pct(run['ttft_p90_error'])} / "
            f"{_pct(run['tpot_mean_error'])} | {tgt} | {_met(ok) if covered else ''} |"
        )
    if t5:
        L.append(
            f"| Table 5 (prefill time, KV size), worst point | "
            f"{_pct(t5['max_abs_error'])} | <= 5 % | "
            f"{_met(t5['max_abs_error'] <= TARGETS['table5'])} |"
        )
    L.append("")
    L.append(
        "The H20 has no public measurement and no backend database: it keeps the derived "
        "model (H100 kernel efficiencies on the H20's spec-sheet peaks, with the nearest "
        "measured end-to-end fit; docs/costmodel.md, 'The H20'), whose prefill may be off by "
        "tens of percent and decode by about the fitted ranges, with nothing to bound them."
    )
    L.append("")
    if si.get("rows"):
        L += _render_silicon(si)
    if ls:
        L += _render_llmservingsim(ls)
    if t5:
        L += [
            "### Paper Table 5 (8 x H200), shipped cost model",
            "",
            "| prompt | prefill s | measured | error | KV MiB | measured | error |",
            "|---|---|---|---|---|---|---|",
        ]
        for p in t5["points"]:
            L.append(
                f"| {p['prompt']} | {p['prefill_s']:.3f} | {p['measured_prefill_s']:.2f} | "
                f"{_pct(p['prefill_error'])} | {p['kv_mib']:.1f} | "
                f"{p['measured_kv_mib'] or 0:.1f} | {_pct(p['kv_error'])} |"
            )
        L.append("")
    return "\n".join(L) + "\n"


def _render_silicon(si: dict[str, Any]) -> list[str]:
    L = ["### aiconfigurator silicon measurements", ""]
    L.append(
        f"{si['file']}: {si['rows']} distinct configurations replayed (repeats of a "
        "configuration merged, median kept). Each is replayed in the simulator as the "
        "benchmark ran it (`prfaas_env/calibration/silicon.py`): a closed loop at the row's "
        "concurrency, ten times that many requests of the row's lengths; aggregated rows on "
        "one co-located engine (continuous batching, chunked prefill in a budget of 8192 "
        "tokens, KV blocks from 90 % of memory, attention data-parallel ranks stepping "
        "together), disaggregated rows on a PD cluster with the row's prefill and decode "
        "pools; step times from the measured backend at the row's parallelism and precision "
        "(its `current` database version). Three things are fitted per backend and mode: over "
        "what share of the cycle the clients' first requests are spread (0: all together; "
        "0.05, 0.2 or 1 of the cycle replayed with them together), the serving overhead "
        "(a per-request delay before the first token, a time per step, added to the replay's "
        "TTFT and TPOT: time outside the engine that shifts every client alike) and, per "
        "model with rows of at least two configurations, a kernel multiplier (the backend's "
        "step time of that model over the databases' kernel times; in a closed loop it "
        "scales the whole replay). The "
        "concurrency is the one each row's source records (`silicon_concurrency`); an "
        "aggregated row recording more clients than its engine's batch holds ran several "
        "engines, one replayed with its share. Errors are leave one "
        "configuration out: what predicts a row was fitted without the rows of its "
        "configuration (model, GPU, backend, mode, precision, parallelism)."
    )
    L.append("")
    L += [
        "| | rows | TTFT median | TTFT p90 | TTFT signed | TPOT median | TPOT p90 | TPOT signed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, d in (
        ("held out (reported)", si),
        ("in sample", si["in_sample"]),
        ("kernels only (no overhead, first requests together)", si["kernel_only"]),
    ):
        tt, tp = d["ttft"], d["tpot"]
        L.append(
            f"| {label} | {tt['n']} | {_pct(tt['median_abs_error'])} | "
            f"{_pct(tt['p90_abs_error'])} | {_pct(tt['median_signed_error'])} | "
            f"{_pct(tp['median_abs_error'])} | {_pct(tp['p90_abs_error'])} | "
            f"{_pct(tp['median_signed_error'])} |"
        )
    L.append("")
    L += [
        "Per (model, GPU, backend, mode), held out:",
        "",
        "| model / GPU / backend / mode | rows | TTFT median | TTFT p90 | TTFT signed | "
        "TPOT median | TPOT p90 | TPOT signed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for g, v in si["groups"].items():
        tt, tp = v["ttft"], v["tpot"]
        L.append(
            f"| {g} | {tt['n']} | {_pct(tt['median_abs_error'])} | "
            f"{_pct(tt['p90_abs_error'])} | {_pct(tt['median_signed_error'])} | "
            f"{_pct(tp['median_abs_error'])} | {_pct(tp['p90_abs_error'])} | "
            f"{_pct(tp['median_signed_error'])} |"
        )
    L.append("")
    if si.get("not_replayed"):
        L += ["Configurations not replayed (the backend has no data for them):", ""]
        for k, v in sorted(si["not_replayed"].items()):
            L.append(f"- {v} rows: {k}")
        L.append("")
    if si.get("precision_substitutions"):
        L += ["Precision substitutions (the databases lack the row's exact pair):", ""]
        for k, v in sorted(si["precision_substitutions"].items()):
            L.append(f"- {v} rows: {k}")
        L.append("")
    if si.get("distinct_configurations_skipped"):
        L += ["Left out (model or GPU not in the catalog; pools not recorded), distinct rows:", ""]
        for k, v in sorted(si["distinct_configurations_skipped"].items()):
            L.append(f"- {v}: {k}")
        L.append("")
    ov = si.get("overhead", {})
    ramps = si.get("ramp_fraction", {})
    if ov:
        L += [
            "Fitted on all rows (the serving overhead in "
            "`prfaas_env/calibration/serving_overhead.json`, the ramp in the results):",
            "",
            "| backend / mode | first requests spread over | request ms | step ms | "
            "first-token decode steps |",
            "|---|---|---|---|---|",
        ]
        for g, o in sorted(ov.items()):
            L.append(
                f"| {g} | {ramps.get(g, 0.0):g} of the cycle | {o['request_s'] * 1e3:.1f} | "
                f"{o['step_s'] * 1e3:.2f} | {o['first_token_decode_steps']} |"
            )
        L.append("")
    scales = si.get("model_scale", {})
    if scales:
        L += [
            "Kernel multipliers fitted on all rows (`serving_overhead.json`, `model_scale`; "
            "a cost model of that backend, mode and model uses it):",
            "",
            "| backend / mode | model | multiplier |",
            "|---|---|---|",
        ]
        for g, by_model in sorted(scales.items()):
            for name, f in sorted(by_model.items()):
                L.append(f"| {g} | {name} | {f:.3f} |")
        off = si.get("model_scale_not_applied", {})
        for g, by_model in sorted(off.items()):
            for name, f in sorted(by_model.items()):
                lo, hi = SCALE_RANGE
                L.append(f"| {g} | {name} | {f:.3f}: outside {lo:g}-{hi:g}, not applied (1) |")
        L.append("")
    return L


def _render_llmservingsim(ls: dict[str, Any]) -> list[str]:
    L = ["### LLMServingSim's measured vLLM runs", ""]
    if "skipped" in ls:
        return [*L, ls["skipped"], ""]
    L.append(
        "Each run's 300 requests replayed at their measured arrival times in the simulator's "
        "co-located engine with the run's settings (`prfaas_env/calibration/colocated.py`: "
        "max_num_seqs, max_num_batched_tokens, KV blocks as recorded or from memory, "
        "tensor, data and expert parallelism; no serving overhead per request: the runs drive "
        "the engine in process); LLMServingSim's own error on the same run (its "
        "`validation/summary.txt`) beside ours. The kernel tables are the backend database's "
        "current vLLM version; where the database also measured the run's own vLLM version, "
        "tensor-parallel all-reduces are charged at that version's speed (the cost source says "
        "so). The runs' vLLM version itself is not in the database: its step time over the "
        "database's kernels is fitted per run to the run's mean TPOT (a kernel multiplier; "
        "TTFT is never fitted), and each run is predicted with the geometric mean of the "
        "*other* runs' multipliers of its GPU and version (leave one run out). The mean over "
        "all runs is what a scenario naming that version gets "
        "(`serving_overhead.json`, `version_scale`), in place of the model's multiplier from "
        "the silicon rows (fitted on other vLLM versions), so the replays leave that out too."
    )
    fitted = {n: r for n, r in sorted(ls.items()) if "own_step_scale" in r}
    if fitted:
        L += [
            "",
            "| run | own multiplier | multiplier used (other runs) | TTFT P90, database "
            "kernels -> used | TPOT mean, database kernels -> used |",
            "|---|---|---|---|---|",
        ]
        for n, r in fitted.items():
            d = r["database_kernels"]
            L.append(
                f"| {n} | {r['own_step_scale']:.3f} | {r['step_scale']:.3f} | "
                f"{_pct(d['ttft_p90_error'])} -> {_pct(r['ttft_p90_error'])} | "
                f"{_pct(d['tpot_mean_error'])} -> {_pct(r['tpot_mean_error'])} |"
            )
    L.append("")
    L += [
        "| run | cost source | metric | measured | predicted | error | LLMServingSim |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, run in sorted(ls.items()):
        for metric, meas, pred, err, theirs in run.get("table", []):
            L.append(
                f"| {name} | {run['source']} | {metric} | {meas:.1f} | {pred:.1f} | "
                f"{_pct(err)} | {theirs} |"
            )
    L.append("")
    return L


def _json_summary(results: dict[str, Any]) -> dict[str, Any]:
    """The printed JSON: everything except per-row detail."""
    out = json.loads(json.dumps(results))
    out.get("silicon", {}).pop("per_row", None)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(
        prog="python -m prfaas_env.calibration.validate", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object of the results")
    ap.add_argument(
        "--render",
        action="store_true",
        help="only re-render docs/calibration.md from the saved results",
    )
    ap.add_argument(
        "--llmservingsim",
        type=Path,
        default=LLMSERVINGSIM,
        help="folder of LLMServingSim's measured runs",
    )
    ap.add_argument(
        "--only",
        choices=SECTIONS,
        action="append",
        help="recompute only this check (repeatable); the others come from the saved results",
    )
    ap.add_argument("--report", type=Path, default=REPORT, help="report to update")
    ap.add_argument("--no-write", action="store_true", help="write no file")
    ap.add_argument("--rows", type=Path, help="also write every replayed row (JSON) here")
    args = ap.parse_args(argv)
    if args.render:
        results = json.loads(RESULTS.read_text(encoding="utf-8"))
    else:
        from prfaas_env.costmodel import aic

        if aic.installed_version() is None:
            print(f"aiconfigurator-core is not installed: {aic.INSTALL_HINT}", file=sys.stderr)
            return 2
        sections = set(args.only or SECTIONS)
        results = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.is_file() else {}
        results = {k: v for k, v in results.items() if k not in sections}
        doc = (
            json.loads(OVERHEAD_FILE.read_text(encoding="utf-8")) if OVERHEAD_FILE.is_file() else {}
        )

        def save_overheads() -> None:  # what the cost models read from now on
            if not args.no_write:
                OVERHEAD_FILE.write_text(
                    json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8"
                )
                reload_overheads()

        if "silicon" in sections:
            silicon_res, overhead = silicon_section(verbose=not args.json)
            silicon_res["overhead"] = overhead
            doc.update(
                source=silicon_res["file"],
                overhead=overhead,
                model_scale=silicon_res["model_scale"],
            )
            save_overheads()
            if args.rows is not None:
                args.rows.write_text(json.dumps(silicon_res["per_row"], indent=1), encoding="utf-8")
            results["silicon"] = silicon_res
        if "llmservingsim" in sections:
            results["llmservingsim"], scales = llmservingsim_section(args.llmservingsim)
            if scales:
                doc["version_scale"] = scales
                save_overheads()
        if "table5" in sections:
            results["table5"] = table5_section()
        if not args.no_write:
            RESULTS.write_text(
                json.dumps(_json_summary(results), indent=1, sort_keys=True) + "\n",
                encoding="utf-8",
            )
    if not args.no_write:
        replace_validation_section(args.report, render(results))
    if args.json:
        print(json.dumps(_json_summary(results), sort_keys=True))
    else:
        si = results.get("silicon", {})
        if si.get("rows"):
            print(
                f"silicon: {si['rows']} rows, TTFT median {_pct(si['ttft_median_abs_error'])}, "
                f"TPOT median {_pct(si['tpot_median_abs_error'])} (held out)"
            )
        for name, run in sorted(results.get("llmservingsim", {}).items()):
            if isinstance(run, dict) and "ttft_p90_error" in run:
                print(
                    f"llmservingsim {name}: TTFT P90 {_pct(run['ttft_p90_error'])}, "
                    f"TPOT mean {_pct(run['tpot_mean_error'])}"
                )
        if "table5" in results:
            print(f"table5: max error {_pct(results['table5']['max_abs_error'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
