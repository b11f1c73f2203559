"""Replay of aiconfigurator's end-to-end measurements (``silicon_sample.csv``) with the cost model.

``silicon_sample.csv`` ships inside aiconfigurator-core: benchmark points measured by NVIDIA
with TensorRT-LLM, vLLM and SGLang (closed loop at a fixed concurrency, fixed input and
output lengths), aggregated (prefill and decode on the same GPUs) or disaggregated (prefill
and decode pools), each with its parallelism and precision, and the measured mean TTFT and
TPOT.

Each distinct configuration (rows repeated over measurement dates are merged, their median
kept) whose model and GPU the catalog covers is replayed by :func:`replay_row` in the
simulator, as the benchmark ran it. The benchmark's concurrency is the
``silicon_concurrency`` its ``silicon_data_source`` records (rows that differ only in it are
distinct measurements); the batch and worker columns give it only for rows that lack it.
An aggregated row whose recorded concurrency is a multiple of what its engine's batch holds
over its ranks ran that many engines; one is replayed with its share of the clients.
Disaggregated rows that record neither their decode batch nor their numbers of prefill and
decode workers cannot be replayed (the pools' sizes are unknown) and are left out.

* a closed loop at the row's concurrency (each completion starts the next request; the
  clients' first requests start together, or spread over a ramp), ``BENCHMARK_WAVES`` times
  the concurrency requests of the row's prompt and output lengths, and the means of TTFT and
  TPOT over them;
* aggregated rows on one co-located engine (:mod:`prfaas_env.sim`: continuous batching with
  chunked prefill in a budget of ``TOKEN_BUDGET`` tokens, KV blocks from
  ``MEMORY_FRACTION`` of memory, the row's attention data-parallel ranks stepping together);
* disaggregated rows on a PD cluster whose prefill and decode pools have the row's
  parallelism and numbers of workers (each prefill rank prefills one request at a time, KV
  over the GPUs' NICs, decode instances of the row's batch);
* the cost model of the row's configuration (measured backend, the row's precision); the
  validation adds the serving overhead under test
  (:class:`~prfaas_env.costmodel.ServingOverhead`) to the replay's TTFT and TPOT
  (:func:`prfaas_env.calibration.validate.fit_protocol`).

The simulator is the one timing model: the environment, the reference simulator and this
validation run the same dynamics.
"""

from __future__ import annotations

import csv
import re
import statistics
import warnings
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from prfaas_env.architecture import ModelSpec, get_model, model_names
from prfaas_env.costmodel import CostModel, ServingOverhead, ServingSpec
from prfaas_env.costmodel.serving import NO_OVERHEAD
from prfaas_env.errors import ConfigError
from prfaas_env.hardware import get_gpu, gpu_names
from prfaas_env.sim.costs import tables_for
from prfaas_env.sim.engine import VecSimulator
from prfaas_env.sim.scenario import parse_scenario

# Checkpoints the measurements name that the catalog models under another name (the same
# architecture; the precision columns of the row say how it was served).
CHECKPOINT_ALIASES = {
    "meta-llama/Llama-3.1-70B": "llama-3.1-70b",
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "nvidia/Llama-3.1-8B-Instruct-FP8": "llama-3.1-8b",
    "nvidia/DeepSeek-R1-NVFP4": "deepseek-r1",
    "nvidia/Qwen3-32B-NVFP4": "qwen3-32b",
    "Qwen/Qwen3-235B-A22B-FP8": "qwen3-235b-a22b",
}
TOKEN_BUDGET = 8192  # tokens per engine step (max_num_tokens / max_num_batched_tokens)
MEMORY_FRACTION = 0.9  # share of GPU memory for weights and KV (gpu_memory_utilization)
KV_BLOCK_TOKENS = 16  # tokens per KV block (vLLM's default block size)
# Requests a benchmark run sends, in multiples of its concurrency. All requests of the first
# multiple start at once (a wave that queues for prefill); later ones are spread out by it.
BENCHMARK_WAVES = 10
_MEASURE = ("silicon_ttft_ms", "silicon_tpot_ms")
_SKIP = ("id", "silicon_data_source", *_MEASURE)


def catalog_model_for(checkpoint: str) -> str | None:
    """Catalog model name of a checkpoint named in the measurements, or None."""
    if checkpoint in CHECKPOINT_ALIASES:
        return CHECKPOINT_ALIASES[checkpoint]
    for name in model_names():
        if get_model(name).backend_model == checkpoint:
            return name
    return None


def catalog_gpu_for(system: str) -> str | None:
    """Catalog GPU name of a backend system name, or None."""
    for name in gpu_names():
        if get_gpu(name).backend_system == system:
            return name
    return None


def _int(value: str, default: int = 1) -> int:
    """A parallelism or batch column; empty or 0 (unset in the file) means ``default``."""
    return int(value) if value not in ("", None, "0") else default


@dataclass(frozen=True)
class Pool:
    """Parallelism and batch of one pool of a measured configuration."""

    tp: int
    pp: int
    attention_dp: int
    moe_tp: int
    moe_ep: int
    batch: int  # sequences per attention rank
    workers: int = 1

    @property
    def gpus(self) -> int:
        """GPUs of one instance of the pool."""
        return self.tp * self.pp * self.attention_dp


@dataclass(frozen=True)
class SiliconRow:
    """One distinct measured configuration (repeats merged).

    Attributes:
        model, gpu: catalog names.
        checkpoint, system, backend, version, mode: as the file names them.
        isl, osl: prompt and output tokens.
        gemm_quant, moe_quant: precision modes (None: the checkpoint's).
        pools: ``{"agg": Pool}`` or ``{"prefill": Pool, "decode": Pool}``.
        concurrency: requests in flight in the whole deployment (in one engine of an
            aggregated deployment of several, ``replicas``).
        ttft_s, tpot_s: measured (median over repeats), s.
        repeats: how many rows of the file were merged.
        replicas: engines of an aggregated deployment whose clients' share ``concurrency``
            is (the recorded concurrency over it; 1 for the others).
    """

    model: str
    gpu: str
    checkpoint: str
    system: str
    backend: str
    version: str
    mode: str
    isl: int
    osl: int
    gemm_quant: str | None
    moe_quant: str | None
    pools: dict[str, Pool] = field(hash=False)
    concurrency: int
    ttft_s: float
    tpot_s: float
    repeats: int
    replicas: int = 1

    @property
    def configuration(self) -> str:
        """The configuration without the workload: model, GPU, backend, mode, precision and
        parallelism (what leave-one-configuration-out holds out)."""
        par = "/".join(
            f"{k}:tp{p.tp}pp{p.pp}adp{p.attention_dp}ep{p.moe_ep}" for k, p in self.pools.items()
        )
        return (
            f"{self.model} {self.gpu} {self.backend} {self.mode} "
            f"{self.gemm_quant or 'default'}/{self.moe_quant or 'default'} {par}"
        )

    @property
    def group(self) -> tuple[str, str, str, str]:
        """(model, GPU, backend, mode): the report's grouping."""
        return (self.model, self.gpu, self.backend, self.mode)


_CONCURRENCY = re.compile(r"(?:^|;)\s*silicon_concurrency=(\d+)")
NO_DISAGG_SIZES = (
    "disaggregated row without its decode batch and worker counts (pool sizes unknown)"
)


def recorded_concurrency(row: dict[str, str]) -> int | None:
    """The benchmark's concurrency (requests its clients keep in flight) as the row's
    ``silicon_data_source`` records it (``silicon_concurrency=N``), or None."""
    m = _CONCURRENCY.search(row.get("silicon_data_source") or "")
    return int(m.group(1)) if m else None


def _merge_key(row: dict[str, str]) -> tuple:
    """What makes two rows of the file the same measurement (repeats over dates): every
    column but the id, the source and the measurements, and the recorded concurrency."""
    cols = tuple((k, v) for k, v in row.items() if k not in _SKIP)
    return (*cols, ("silicon_concurrency", recorded_concurrency(row)))


def load_rows(path: Path) -> tuple[list[SiliconRow], dict[str, int]]:
    """Distinct configurations of ``path`` whose model and GPU the catalog covers.

    Returns the rows and counts of what was left out and why.
    """
    with path.open(newline="", encoding="utf-8") as f:
        raw = list(csv.DictReader(f))
    merged: dict[tuple, list[dict[str, str]]] = defaultdict(list)
    for r in raw:
        merged[_merge_key(r)].append(r)
    skipped: dict[str, int] = defaultdict(int)
    rows: list[SiliconRow] = []
    for _, reps in merged.items():
        r = reps[0]
        model = catalog_model_for(r["model_path"])
        gpu = catalog_gpu_for(r["system"])
        if model is None:
            skipped[f"model {r['model_path']} not in the catalog"] += 1
            continue
        if gpu is None:
            skipped[f"system {r['system']} not in the catalog"] += 1
            continue
        recorded = recorded_concurrency(r)
        if r["mode"] == "agg":
            pools = {"agg": _pool(r, "")}
            conc = pools["agg"].batch * pools["agg"].attention_dp * pools["agg"].pp
        else:
            if not r["decode_batch_size"] or not r["decode_num_workers"]:
                skipped[NO_DISAGG_SIZES] += 1
                continue
            pools = {"prefill": _pool(r, "prefill_"), "decode": _pool(r, "decode_")}
            d = pools["decode"]
            conc = d.batch * d.attention_dp * d.workers
        replicas = 1
        if recorded is not None and r["mode"] == "agg" and recorded > conc:
            # more clients than the engine's batch over its ranks holds: the deployment ran
            # recorded / conc engines (replicas) with the clients spread evenly over them
            # (what the 30 such rows record is a multiple of it, 4 to 32: their TTFTs show no
            # request waiting for another to finish); one engine is replayed with its share
            replicas = recorded // conc
        elif recorded is not None:
            conc = recorded
        rows.append(
            SiliconRow(
                model=model,
                gpu=gpu,
                checkpoint=r["model_path"],
                system=r["system"],
                backend=r["backend"],
                version=r["backend_version"],
                mode=r["mode"],
                isl=int(r["isl"]),
                osl=int(r["osl"]),
                gemm_quant=r["gemm_quant_mode"] or None,
                moe_quant=r["moe_quant_mode"] or None,
                pools=pools,
                concurrency=conc,
                ttft_s=statistics.median(float(x["silicon_ttft_ms"]) for x in reps) / 1e3,
                tpot_s=statistics.median(float(x["silicon_tpot_ms"]) for x in reps) / 1e3,
                repeats=len(reps),
                replicas=replicas,
            )
        )
    rows.sort(key=lambda x: (x.group, x.configuration, x.isl, x.osl, x.concurrency))
    return rows, dict(skipped)


def _pool(r: dict[str, str], prefix: str) -> Pool:
    tp = _int(r[f"{prefix}tp_size"])
    adp = _int(r[f"{prefix}attention_dp_size"])
    return Pool(
        tp=tp,
        pp=_int(r[f"{prefix}pp_size"]),
        attention_dp=adp,
        moe_tp=_int(r[f"{prefix}moe_tp_size"], tp * adp),
        moe_ep=_int(r[f"{prefix}moe_ep_size"], 1),
        batch=_int(r[f"{prefix}batch_size"]),
        workers=_int(r.get(f"{prefix}num_workers", ""), 1),
    )


# ---- cost models of a row -------------------------------------------------------------------
_CMS: dict[tuple, tuple[dict[str, CostModel], str]] = {}


def _spec(
    row: SiliconRow, pool: Pool, moe_quant: str | None, kv: str | None, moe: bool
) -> ServingSpec:
    return ServingSpec(
        backend=row.backend,
        version="current",
        weights=row.gemm_quant,
        moe_weights=moe_quant,
        kv_cache=kv,
        tp=pool.tp,
        pp=pool.pp,
        attention_dp=pool.attention_dp,
        moe_tp=pool.moe_tp if moe else None,
        moe_ep=pool.moe_ep if moe else None,
    )


def _moe(model: ModelSpec) -> bool:
    return any(g.mlp.type == "moe" for g in model.groups)


def cost_models(row: SiliconRow) -> tuple[dict[str, CostModel], str]:
    """Backend cost models (zero overhead) for each pool of ``row``, and a note saying which
    precision substitutions were needed. Raises ConfigError if none answers.

    The measured backend versions are mostly older than the package's databases, which hold
    one current version per backend: every row is predicted with ``current``. When the
    databases lack the row's exact precision pair, the KV cache (and attention) fall back to
    BF16 and per-tensor FP8 experts to block-scaled FP8, in that order.
    """
    model = get_model(row.model)
    moe = (row.moe_quant or row.gemm_quant) if _moe(model) else None
    tries: list[tuple[str | None, str | None, str]] = [(moe, None, "")]
    tries.append((moe, "bfloat16", "KV cache BF16 (no data for the default KV precision)"))
    if moe == "fp8":
        tries.append(("fp8_block", None, "experts fp8_block (no per-tensor FP8 MoE data)"))
        tries.append(("fp8_block", "bfloat16", "experts fp8_block, KV cache BF16"))
    last: Exception | None = None
    key = (row.configuration,)
    if key in _CMS:
        return _CMS[key]
    for mq, kv, note in tries:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a fallback to the fitted model is a failure here
                out = {
                    name: CostModel(
                        model,
                        row.gpu,
                        pool.gpus,
                        serving=_spec(row, pool, mq, kv, moe is not None),
                        overhead=NO_OVERHEAD,
                        where=f"silicon row {row.configuration}",
                    )
                    for name, pool in row.pools.items()
                }
            _CMS[key] = (out, note)
            return out, note
        except (ConfigError, UserWarning) as exc:
            last = exc
    raise ConfigError(f"{row.configuration}: no backend data: {last}")


# ---- the replay in the simulator -----------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    """Mean TTFT and TPOT of a replayed row, s, and the loop's regime."""

    ttft_s: float
    tpot_s: float
    regime: str  # "queued": requests waited longer for their prefill than it took; "open"


def _serving(cm: CostModel) -> dict[str, Any]:
    """The ``serving:`` mapping of a cost model's configuration."""
    sv = cm.serving
    out: dict[str, Any] = {
        "backend": sv.backend,
        "version": sv.version or "current",
        "tp": sv.tp,
        "pp": sv.pp,
        "attention_dp": sv.attention_dp,
    }
    for key in ("weights", "moe_weights", "kv_cache"):
        if getattr(sv, key) is not None:
            out[key] = getattr(sv, key)
    if _moe(cm.model):
        out["moe_tp"], out["moe_ep"] = sv.moe_tp, sv.moe_ep
    return out


def row_scenario(row: SiliconRow, cms: dict[str, CostModel]) -> dict[str, Any]:
    """The scenario mapping of the benchmark that measured ``row`` (see the module
    docstring)."""
    if row.mode == "agg":
        pool, cm = row.pools["agg"], cms["agg"]
        cluster: dict[str, Any] = {
            "datacenter": "dc",
            "role": "colocated",
            "gpu": row.gpu,
            "gpus_per_instance": pool.gpus,
            "instances": 1,
            "max_num_seqs": max(pool.batch * pool.pp, 1),
            "max_num_batched_tokens": TOKEN_BUDGET,
            "kv_block_tokens": KV_BLOCK_TOKENS,
            "memory_fraction": MEMORY_FRACTION,
            "serving": _serving(cm),
        }
    else:
        pp, dp = row.pools["prefill"], row.pools["decode"]
        cp, cd = cms["prefill"], cms["decode"]
        cluster = {
            "datacenter": "dc",
            "role": "pd",
            "gpu": row.gpu,
            "gpus_per_instance": dp.gpus,
            "prefill_instances": pp.workers,
            "decode_instances": dp.workers,
            "max_batch": max(dp.batch * dp.attention_dp, 1),
            "memory_fraction": MEMORY_FRACTION,
            "rdma_gbps": cp.gpu.nic_gbps * pp.gpus,
            "serving": _serving(cd),
            "prefill_pool": {"gpus_per_instance": pp.gpus, "serving": _serving(cp)},
            "decode_pool": {"gpus_per_instance": dp.gpus, "serving": _serving(cd)},
        }
    return {
        "topology": {"model": row.model, "datacenters": ["dc"], "clusters": {"bench": cluster}},
        "workload": {
            "kind": "synthetic",
            "arrival": {"process": "closed_loop", "concurrency": row.concurrency},
            "input": {"distribution": "fixed", "tokens": row.isl},
            "output": {"distribution": "fixed", "tokens": row.osl},
        },
    }


def _with_overhead(cm: CostModel, overhead: ServingOverhead) -> CostModel:
    """``cm``'s configuration with another serving overhead."""
    return CostModel(
        cm.model, cm.gpu, cm.gpus, serving=cm.serving, overhead=overhead, where="silicon row"
    )


def replay_row(
    row: SiliconRow, cms: dict[str, CostModel], overhead: ServingOverhead, ramp_s: float = 0.0
) -> Prediction:
    """Replay ``row``'s benchmark in the simulator (see the module docstring) with the cost
    models ``cms`` (one per pool) and serving ``overhead``, the clients' first requests
    spread evenly over ``ramp_s`` seconds (0: all together). Raises ConfigError when the
    configuration does not fit (weights or the longest request's KV cache)."""
    where = f"silicon row {row.configuration} isl {row.isl} osl {row.osl} c {row.concurrency}"
    raw = row_scenario(row, cms)
    raw["workload"]["arrival"]["ramp_s"] = float(ramp_s)
    sc = parse_scenario(raw, where)
    if row.mode == "agg":
        tables = tables_for(sc.topology, [_with_overhead(cms["agg"], overhead)])
    else:
        tables = tables_for(
            sc.topology,
            [_with_overhead(cms["prefill"], overhead)],
            [_with_overhead(cms["decode"], overhead)],
        )
    rec = replay_to_end(sc, tables, BENCHMARK_WAVES * row.concurrency).records(0)
    first, finish, arrival = rec["first_token_s"], rec["finish_s"], rec["arrival_s"]
    ttft = first - arrival
    tpot = (finish - first) / max(row.osl - 1, 1)
    wait = rec["prefill_start_s"] - arrival
    prefill = rec["prefill_end_s"] - rec["prefill_start_s"]
    regime = "queued" if float(np.mean(wait)) > float(np.mean(prefill)) else "open"
    return Prediction(float(np.mean(ttft)), float(np.mean(tpot)), regime)


def replay_to_end(sc: Any, tables: Any, n: int) -> VecSimulator:
    """A one-env simulator of ``sc`` (seed 0, cost ``tables``) that has run ``n`` requests,
    every one on route 0, until all finished: its ``records(0)`` holds them (times in s)."""
    sim = VecSimulator(sc, 1, record=n, tables=tables)
    sim.reset(seed=0)
    route = np.zeros(1, np.int64)
    for _ in range(n):
        sim.step(route, checked=True)
    sim.drain()
    return sim


def with_overhead(ov: ServingOverhead, **changes: float) -> ServingOverhead:
    """``ov`` with some terms replaced."""
    return replace(ov, **changes)
