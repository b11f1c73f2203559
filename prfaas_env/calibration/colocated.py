"""Request-by-request replay of measured vLLM runs in the simulator's co-located engine.

LLMServingSim's validation runs (``bench/examples/<GPU>/<model>/``: ``vllm/meta.json`` with
the engine settings, ``vllm/requests.jsonl`` with each request's lengths and timestamps,
``validation/summary.txt`` with LLMServingSim's own errors) are replayed with
:mod:`prfaas_env.sim`: a topology of one co-located engine with the run's settings
(``max_num_seqs``, ``max_num_batched_tokens``, KV blocks of ``block_size`` tokens, as many as
the run recorded or as memory holds, its tensor / data / expert parallelism) and a trace
workload of the run's requests at their measured arrival times. The engine schedules them as
vLLM's V1 scheduler does (docs/simulator.md: continuous batching, chunked prefill, KV blocks
allocated as tokens are scheduled, recompute preemption, data-parallel ranks stepping
together) with step times from the cost model (``mixed_step_time_s``'s composition).

Prefix caching is on in the runs, but the request files carry no prompt content or block
hashes, so no prefix hits are modelled (each prompt is computed in full). The runs drive vLLM
in process (no HTTP server): the serving overhead's per-request term is left out.

The kernel tables come from the backend database's current vLLM version; where the database
also measured the run's own vLLM version (``meta.json``'s ``vllm_version``), the
tensor-parallel all-reduces of a pass are charged at that version's measured speed
(:func:`allreduce_correction`; on the RTX PRO 6000 vLLM 0.19's custom all-reduce is 2-4x
slower than the current version's below 8 MiB).

The runs' own vLLM version is not in the kernel databases. :func:`fit_version_scales` measures
how much slower its engine steps are than the database version's kernels: per run, the kernel
multiplier (:attr:`~prfaas_env.costmodel.serving.ServingOverhead.step_scale`) that makes the
replay's mean TPOT equal the measured one; per (backend, GPU, version), their geometric mean
(:class:`~prfaas_env.costmodel.serving.VersionScale`, what a scenario naming that version
gets). Each run is then validated with the multiplier of the *other* runs of its version and
GPU (leave one run out), so no run is predicted by a fit that saw it; TTFT is never fitted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from prfaas_env.calibration.silicon import replay_to_end
from prfaas_env.costmodel import CostModel, ServingSpec
from prfaas_env.costmodel.serving import VersionScale, fitted_overhead
from prfaas_env.sim.costs import step_grid, tables_for
from prfaas_env.sim.scenario import Scenario, parse_scenario
from prfaas_env.sim.traces import Trace
from prfaas_env.sim.workload import Workload

# Run folder name -> catalog names; meta.json names the checkpoint and the GPU.
RUN_MODELS = {
    "meta-llama/Llama-3.1-8B": "llama-3.1-8b",
    "Qwen/Qwen3-32B": "qwen3-32b",
    "Qwen/Qwen3-30B-A3B-Instruct-2507": "qwen3-30b-a3b",
}
RUN_GPUS = {"RTX4090": "rtx-4090", "RTXPRO6000": "rtx-pro-6000"}
MEMORY_FRACTION = 0.9  # vLLM's gpu_memory_utilization (the runs keep the default)


@dataclass(frozen=True)
class EngineSettings:
    """vLLM engine settings of a run.

    Attributes:
        max_num_seqs: running requests per engine (data-parallel rank).
        max_num_batched_tokens: tokens per step per engine.
        kv_blocks: KV-cache blocks per engine (-1: not recorded; from memory).
        block_tokens: tokens per KV block.
        data_parallel: engines (data-parallel ranks) stepping together.
    """

    max_num_seqs: int
    max_num_batched_tokens: int
    kv_blocks: int
    block_tokens: int = 16
    data_parallel: int = 1


# ---- the measured runs ----------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """One measured run: its settings, requests and LLMServingSim's summary."""

    name: str
    model: str
    gpu: str
    serving: ServingSpec
    gpus: int
    settings: EngineSettings
    arrivals_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    ttft_s: np.ndarray
    tpot_s: np.ndarray
    latency_s: np.ndarray
    theirs: dict[str, str]
    vllm_version: str | None = None


def load_run(run_dir: Path) -> Run:
    """Read a run folder (``vllm/meta.json``, ``vllm/requests.jsonl``, ``validation/``)."""
    meta = json.loads((run_dir / "vllm" / "meta.json").read_text(encoding="utf-8"))
    kw = meta["engine_kwargs"]
    model = RUN_MODELS[meta["model"]]
    gpu = RUN_GPUS[run_dir.parent.name]
    tp, dp = int(kw["tensor_parallel_size"]), int(kw["data_parallel_size"])
    ep = bool(kw.get("enable_expert_parallel"))
    serving = ServingSpec(
        backend="vllm",
        tp=tp,
        attention_dp=dp,
        moe_tp=tp if ep else tp * dp if dp > 1 else None,
        moe_ep=dp if ep else 1 if dp > 1 else None,
    )
    rows = [
        json.loads(x) for x in (run_dir / "vllm" / "requests.jsonl").read_text().splitlines() if x
    ]
    q = np.array([r["queued_ts"] for r in rows])
    first = np.array([r["first_token_ts"] for r in rows])
    last = np.array([r["last_token_ts"] for r in rows])
    out = np.array([r["output_toks"] for r in rows])
    kv = meta.get("kv_cache") or {}
    block = int(kv.get("block_size", 16))
    blocks = int(kv["num_gpu_blocks"]) if kv.get("num_gpu_blocks") else -1
    settings = EngineSettings(
        max_num_seqs=int(kw["max_num_seqs"]),
        max_num_batched_tokens=int(kw["max_num_batched_tokens"]),
        kv_blocks=blocks,
        block_tokens=block,
        data_parallel=dp,
    )
    return Run(
        name=f"{run_dir.parent.name}/{run_dir.name}",
        model=model,
        gpu=gpu,
        serving=serving,
        gpus=tp * dp,
        settings=settings,
        arrivals_s=q - q.min(),
        prompt_tokens=np.array([r["input_toks"] for r in rows]),
        output_tokens=out,
        ttft_s=first - q,
        tpot_s=np.where(out > 1, (last - first) / np.maximum(out - 1, 1), np.nan),
        latency_s=last - q,
        theirs=_their_errors(run_dir / "validation" / "summary.txt"),
        vllm_version=meta.get("vllm_version"),
    )


def _their_errors(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^(TTFT|TPOT|Latency) (\w+)\s+\S+\s+\S+\s+([+-]?[\d.]+%)", line)
        if m:
            out[f"{m.group(1)} {m.group(2)}"] = m.group(3)
    return out


def _metrics(ttft: np.ndarray, tpot: np.ndarray, lat: np.ndarray) -> dict[str, float]:
    tp = tpot[np.isfinite(tpot)]
    return {
        "TTFT Mean": float(np.mean(ttft)),
        "TTFT Median": float(np.median(ttft)),
        "TTFT P90": float(np.percentile(ttft, 90)),
        "TTFT P99": float(np.percentile(ttft, 99)),
        "TPOT Mean": float(np.mean(tp)),
        "TPOT P90": float(np.percentile(tp, 90)),
        "Latency Mean": float(np.mean(lat)),
    }


def run_scenario(run: Run) -> Scenario:
    """The run's engine and requests as a simulator scenario (see the module docstring)."""
    st = run.settings
    sv = run.serving
    serving: dict[str, Any] = {"backend": sv.backend, "tp": sv.tp, "attention_dp": sv.attention_dp}
    if sv.moe_ep is not None:
        serving.update(moe_tp=sv.moe_tp, moe_ep=sv.moe_ep)
    engine: dict[str, Any] = {
        "datacenter": "dc",
        "role": "colocated",
        "gpu": run.gpu,
        "gpus_per_instance": run.gpus,
        "instances": 1,
        "max_num_seqs": st.max_num_seqs,
        "max_num_batched_tokens": st.max_num_batched_tokens,
        "kv_block_tokens": st.block_tokens,
        "memory_fraction": MEMORY_FRACTION,
        "serving": serving,
    }
    if st.kv_blocks > 0:
        engine["kv_blocks"] = st.kv_blocks
    order = np.argsort(run.arrivals_s, kind="stable")
    out = np.maximum(run.output_tokens[order], 1)
    raw = {
        "topology": {"model": run.model, "datacenters": ["dc"], "clusters": {"engine": engine}},
        # checked with the longest request; the trace below replaces it
        "workload": {
            "kind": "synthetic",
            "arrival": {"process": "poisson", "rate_rps": 1.0},
            "input": {"distribution": "fixed", "tokens": int(run.prompt_tokens.max())},
            "output": {"distribution": "fixed", "tokens": int(out.max())},
        },
    }
    sc = parse_scenario(raw, f"llmservingsim run {run.name}")
    n = len(order)
    trace = Trace(
        name=run.name,
        arrival_s=run.arrivals_s[order],
        input_tokens=run.prompt_tokens[order],
        output_tokens=out,
        block_offsets=np.zeros(n + 1, np.int64),
        block_ids=np.zeros(0, np.int64),
        block_tokens=sc.topology.block_tokens,
        source=run.name,
    )
    return replace(sc, workload=Workload(kind="trace", trace=trace, random_start=False))


def allreduce_correction(run: Run, sc: Scenario) -> Any | None:
    """``f(tokens) -> s`` to add to the engine's non-attention work of a pass when the run's
    vLLM version has its own all-reduce measurements on this GPU (the kernel tables come from
    the database's current version; :func:`prfaas_env.costmodel.aic.allreduce_version_delta_s`),
    else None."""
    cm = sc.topology.cost_models()[0]
    t = cm.backend_tables
    if t is None or not run.vllm_version:
        return None
    from prfaas_env.costmodel import aic

    m = cm.model
    return aic.allreduce_version_delta_s(t.key, run.vllm_version, m.hidden_size, m.num_layers)


def replay(run: Run, step_scale: float = 1.0) -> dict[str, np.ndarray]:
    """Replay ``run`` in the simulator; per request (in arrival order) TTFT, TPOT (NaN for
    one output token) and latency, s, and whether the cost model had backend data.

    ``step_scale`` multiplies the database version's kernel times (the serving overhead's
    :attr:`~prfaas_env.costmodel.serving.ServingOverhead.step_scale`, in place of the
    model's multiplier fitted on rows of other versions, as for a cluster naming the run's
    version; backend runs only)."""
    sc = run_scenario(run)
    models = None
    if sc.topology.cost_models()[0].backend_tables is not None:
        ov = replace(fitted_overhead(run.serving.backend, "agg"), step_scale=step_scale)
        models = [CostModel(run.model, run.gpu, run.gpus, serving=run.serving, overhead=ov)]
    tables = tables_for(sc.topology, models)
    tables = replace(tables, request_s=np.zeros_like(tables.request_s))  # in-process engine
    delta = allreduce_correction(run, sc)
    if delta is not None:  # tensor-parallel all-reduces at the run's vLLM version's speed
        na = tables.co_na_log_t.copy()
        # a version faster than the tables' would shorten passes: keep them positive
        na[0] = np.log(np.maximum(np.exp(na[0]) + delta(step_grid()), 1e-9))
        tables = replace(tables, co_na_log_t=na)
    sim = replay_to_end(sc, tables, len(sc.workload.trace))
    rec = sim.records(0)
    out = rec["output_tokens"]
    first, last = rec["first_token_s"], rec["finish_s"]
    return {
        "ttft_s": first - rec["arrival_s"],
        "tpot_s": np.where(out > 1, (last - first) / np.maximum(out - 1, 1), np.nan),
        "latency_s": last - rec["arrival_s"],
        "covered": np.array(sc.topology.cost_models()[0].backend_tables is not None),
        "kv_blocks": np.array(int(sim.static.cl_kv_blocks[0])),
    }


def missing_version(run: Run) -> tuple[str, str] | None:
    """``(backend/system/version, database version)`` if the backend covers ``run``'s model
    and GPU but its database has no kernels of the run's vLLM version, else None."""
    cm = CostModel(run.model, run.gpu, run.gpus, serving=run.serving, mode="agg")
    t = cm.backend_tables
    if t is None or not run.vllm_version:
        return None
    from prfaas_env.costmodel import aic

    if run.vllm_version in aic.backend_versions(t.key.system, t.key.backend).values():
        return None
    return f"{t.key.backend}/{t.key.system}/{run.vllm_version}", t.key.version


def fit_step_scale(run: Run, rounds: int = 4) -> float:
    """Kernel multiplier at which the replay's mean TPOT equals the measured one (fixed-point
    iteration; decode steps scale with it almost in proportion)."""
    target = float(np.nanmean(run.tpot_s))
    f = 1.0
    for _ in range(rounds):
        f *= target / float(np.nanmean(replay(run, f)["tpot_s"]))
    return f


def _geomean(x: list[float]) -> float:
    return float(np.exp(np.mean(np.log(x))))


@dataclass(frozen=True)
class VersionFit:
    """:func:`fit_version_scales`' result.

    Attributes:
        scales: by ``backend/system/version``, the version's measured step time (all its runs).
        own: by run name, the run's own multiplier.
        group: by run name, its ``backend/system/version`` (runs of a version the databases
            have, or without backend data, are absent).
    """

    scales: dict[str, VersionScale]
    own: dict[str, float]
    group: dict[str, str]

    def held_out(self, name: str) -> tuple[float, list[str]]:
        """Multiplier for validating run ``name``: the geometric mean of the other runs' own
        multipliers of its backend, GPU and version (1 when there are none), and their names."""
        key = self.group.get(name)
        others = sorted(n for n, k in self.group.items() if k == key and n != name)
        return (_geomean([self.own[n] for n in others]), others) if others else (1.0, [])


def fit_version_scales(runs: list[Run]) -> VersionFit:
    """Fit each run whose vLLM version the databases lack (:func:`fit_step_scale`) and, per
    ``backend/system/version``, the geometric mean of its runs' multipliers."""
    own: dict[str, float] = {}
    group: dict[str, str] = {}
    base: dict[str, str] = {}
    for run in runs:
        miss = missing_version(run)
        if miss is not None:
            own[run.name] = fit_step_scale(run)
            group[run.name], base[miss[0]] = miss
    scales = {
        key: VersionScale(
            database_version=version,
            step_scale=_geomean([own[n] for n, k in group.items() if k == key]),
            runs=tuple(sorted(n for n, k in group.items() if k == key)),
            source="mean TPOT of measured runs, geometric mean of their fits",
        )
        for key, version in base.items()
    }
    return VersionFit(scales, own, group)


def validate_run(
    run: Run, step_scale: float = 1.0, fitted_on: list[str] | None = None
) -> dict[str, Any]:
    """Replay ``run`` with kernels x ``step_scale`` (fitted on the runs ``fitted_on``) and
    compare with its measurements (times in ms in the table)."""
    got = replay(run, step_scale)
    meas = _metrics(run.ttft_s, run.tpot_s, run.latency_s)
    pred = _metrics(got["ttft_s"], got["tpot_s"], got["latency_s"])
    table = [
        (k, 1e3 * meas[k], 1e3 * pred[k], pred[k] / meas[k] - 1.0, run.theirs.get(k, "—"))
        for k in meas
    ]
    covered = bool(got["covered"])
    if covered:
        cm = CostModel(run.model, run.gpu, run.gpus, serving=run.serving, mode="agg")
        src = cm.describe()["decode"]
        source = "vllm backend (" + src.split(": ", 2)[-1].split(",")[0] + ")"
        if allreduce_correction(run, run_scenario(run)) is not None:
            source += f"; all-reduces at vLLM {run.vllm_version}'s measured speed"
        if fitted_on:
            source += (
                f"; kernels x {step_scale:.3f}: vLLM {run.vllm_version}'s step time fitted on "
                + ", ".join(fitted_on)
            )
    else:
        source = "fitted roofline (no backend data for this GPU)"
    return {
        "backend_covered": covered,
        "source": source,
        "kv_blocks": int(got["kv_blocks"]),
        "step_scale": step_scale,
        "step_scale_fitted_on": list(fitted_on or []),
        "ttft_p90_error": pred["TTFT P90"] / meas["TTFT P90"] - 1.0,
        "ttft_mean_error": pred["TTFT Mean"] / meas["TTFT Mean"] - 1.0,
        "tpot_mean_error": pred["TPOT Mean"] / meas["TPOT Mean"] - 1.0,
        "tpot_p90_error": pred["TPOT P90"] / meas["TPOT P90"] - 1.0,
        "latency_mean_error": pred["Latency Mean"] / meas["Latency Mean"] - 1.0,
        "table": table,
    }
