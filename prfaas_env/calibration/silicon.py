"""Replay of aiconfigurator's end-to-end measurements (``silicon_sample.csv``) with the cost model.

``silicon_sample.csv`` ships inside aiconfigurator-core: benchmark points measured by NVIDIA
with TensorRT-LLM, vLLM and SGLang (closed loop at a fixed concurrency, fixed input and
output lengths), aggregated (prefill and decode on the same GPUs) or disaggregated (prefill
and decode pools), each with its parallelism and precision, and the measured mean TTFT and
TPOT.

Each distinct configuration (rows repeated over measurement dates are merged, their median
kept) whose model and GPU the catalog covers is predicted by :func:`replay_row`: the cost
model of the row's configuration (measured backend, fitted serving overhead) composed with
the closed loop the benchmark ran. :func:`replay_row` is the one place the replay lives;
the simulator's closed-loop co-located replay can take its place row by row.

The closed loop, per attention rank (``c`` requests in flight, prompt ``I``, output ``O``):

* Little's law ties the arrival rate to the time a request spends in the system:
  ``lambda = c / (TTFT + (O - 1) * TPOT)``.
* Aggregated: every engine step decodes the running sequences and prefills, on average,
  ``p = lambda * I * T`` prompt tokens (chunked by the token budget ``K``); the step time ``T``
  is :meth:`~prfaas_env.costmodel.CostModel.mixed_step_time_s` of that mix, and TPOT is ``T``.
  A new request waits for the step in flight (``T / 2``), queues behind other prompts in the
  budget (M/D/1 wait at ``rho = p / K``) and then prefills ``ceil(I / K)`` chunks.
  When ``p`` would exceed ``K`` the loop is prefill-bound: ``lambda = K / (I * T)`` and TTFT
  follows from Little's law.
* Disaggregated: TPOT is the decode step of the row's decode batch; prefill ranks serve
  requests at ``mu`` per second (their prefill time); TTFT adds the M/D/c wait at
  ``rho = lambda / mu`` (Sakasegawa's approximation), the KV transfer and the decode steps
  before the first token; when ``rho`` would reach 1 the loop is prefill-bound and TTFT
  follows from Little's law.
* Both add the fitted serving overhead (:class:`~prfaas_env.costmodel.ServingOverhead`).
"""

from __future__ import annotations

import csv
import math
import statistics
import warnings
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from prfaas_env.architecture import ModelSpec, get_model, model_names
from prfaas_env.costmodel import CostModel, ServingOverhead, ServingSpec
from prfaas_env.costmodel.serving import NO_OVERHEAD
from prfaas_env.errors import ConfigError
from prfaas_env.hardware import get_gpu, gpu_names

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
        concurrency: requests in flight in the whole deployment.
        ttft_s, tpot_s: measured (median over repeats), s.
        repeats: how many rows of the file were merged.
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


def load_rows(path: Path) -> tuple[list[SiliconRow], dict[str, int]]:
    """Distinct configurations of ``path`` whose model and GPU the catalog covers.

    Returns the rows and counts of what was left out and why.
    """
    with path.open(newline="", encoding="utf-8") as f:
        raw = list(csv.DictReader(f))
    merged: dict[tuple, list[dict[str, str]]] = defaultdict(list)
    for r in raw:
        merged[tuple((k, v) for k, v in r.items() if k not in _SKIP)].append(r)
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
        if r["mode"] == "agg":
            pools = {"agg": _pool(r, "")}
            conc = pools["agg"].batch * pools["agg"].attention_dp * pools["agg"].pp
        else:
            pools = {"prefill": _pool(r, "prefill_"), "decode": _pool(r, "decode_")}
            d = pools["decode"]
            conc = d.batch * d.attention_dp * d.workers
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


# ---- the closed-loop replay ------------------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    """Predicted mean TTFT and TPOT of a row, s, and the loop's regime."""

    ttft_s: float
    tpot_s: float
    regime: str  # "open": prefill keeps up; "prefill-bound": queues build before prefill


def _f(x: np.ndarray | float) -> float:
    return float(np.asarray(x).reshape(-1)[0])


def replay_row(row: SiliconRow, cms: dict[str, CostModel], overhead: ServingOverhead) -> Prediction:
    """Predicted TTFT and TPOT of ``row`` (see the module docstring for the closed loop)."""
    if row.mode == "agg":
        return _replay_agg(row, cms["agg"], row.pools["agg"], overhead)
    return _replay_disagg(row, cms["prefill"], cms["decode"], overhead)


def _replay_agg(row: SiliconRow, cm: CostModel, pool: Pool, ov: ServingOverhead) -> Prediction:
    c = pool.batch  # requests in flight per attention rank
    i, o, k = float(row.isl), float(row.osl), float(TOKEN_BUDGET)
    ctx = i + o / 2.0
    ranks = float(pool.attention_dp)

    def non(n: float) -> float:
        return _f(cm.non_attention_time_s(np.array(n)))

    pre_attn = max(_f(cm.prefill_time_continuous_s(np.array(i), np.array(0.0))) - non(i), 0.0)
    pre_attn *= ov.prefill_scale

    def step(p: float, b: float) -> float:
        """One engine step of a rank: ``p`` prompt tokens and ``b`` decoding sequences."""
        dec_attn = 0.0
        if b > 0:
            inst = np.array(b * ranks)
            dec_attn = max(_f(cm.decode_step_time_continuous_s(inst, inst * ctx)) - non(b), 0.0)
        kernels = non(p + b) + pre_attn * p / i + dec_attn
        return ov.step_scale * kernels + _f(ov.step_time_s(b))

    # KV memory bounds the requests that run at once; the others wait for a slot
    per_request = _f(cm.kv_bytes(np.array(int(i + o / 2.0))))  # held on average
    cap = cm.kv_capacity_bytes(MEMORY_FRACTION) / ranks
    n = float(min(c, max(1, math.floor(cap / per_request))))
    chunks = math.ceil(i / k)
    first = min(i, k)
    ttft, tpot = 0.0, step(0.0, n)
    regime = "open"
    for _ in range(200):
        cycle = ttft + (o - 1.0) * tpot
        lam = n / max(cycle, 1e-9)
        p = lam * i * tpot
        b = n * (o - 1.0) * tpot / max(cycle, 1e-9)  # sequences in their decode phase
        if p >= k:
            regime = "prefill-bound"
            t = step(k, max(b, 0.0))
            lam = k / (i * t)
            new_tpot = t
            new_ttft = max(n / lam - (o - 1.0) * t, 0.0)
        else:
            regime = "open"
            t = step(p, b)
            rho = p / k
            t_full = step(first, b)
            wait = t / 2.0 + rho / (2.0 * (1.0 - rho)) * t_full
            new_tpot = t
            new_ttft = ov.request_s + wait + chunks * t_full
        if abs(new_ttft - ttft) < 1e-7 and abs(new_tpot - tpot) < 1e-9:
            break
        ttft = 0.5 * ttft + 0.5 * new_ttft
        tpot = 0.5 * tpot + 0.5 * new_tpot
    cycle = ttft + (o - 1.0) * tpot
    steady = ttft + (c - n) / n * cycle  # requests beyond the KV limit wait for completions
    if n < c:
        regime = "memory-bound"
    # the first wave: every request of the benchmark starts at once and prefills in turn
    t_k = step(k, 0.0)
    pos = np.arange(1, c + 1, dtype=float)
    done = np.where(
        pos <= n,
        np.ceil(np.minimum(pos, n) * i / k) * t_k,
        np.ceil(n * i / k) * t_k + np.ceil((pos - n) / n) * cycle,
    )
    wave = ov.request_s + float(np.mean(done))
    return Prediction((wave + (BENCHMARK_WAVES - 1) * steady) / BENCHMARK_WAVES, tpot, regime)


def _mdc_wait(rho: float, servers: int, service_s: float) -> float:
    """Mean wait in an M/D/c queue (Sakasegawa's M/M/c approximation, halved for
    deterministic service), s."""
    if rho <= 0:
        return 0.0
    mmc = rho ** (math.sqrt(2.0 * (servers + 1.0)) - 1.0) / (servers * (1.0 - rho)) * service_s
    return 0.5 * mmc


def _replay_disagg(
    row: SiliconRow, cp: CostModel, cd: CostModel, ov: ServingOverhead
) -> Prediction:
    pp, dp = row.pools["prefill"], row.pools["decode"]
    i, o = float(row.isl), float(row.osl)
    ctx = i + o / 2.0
    batch = float(dp.batch * dp.attention_dp)  # sequences per decode instance
    tpot = ov.step_scale * _f(
        cd.decode_step_time_continuous_s(np.array(batch), np.array(batch * ctx))
    ) + _f(ov.step_time_s(float(dp.batch)))
    # one prefill rank prefills its batch of requests at once
    bp = float(pp.batch)
    non_i = _f(cp.non_attention_time_s(i))
    t_one = _f(cp.prefill_time_continuous_s(np.array(i), np.array(0.0)))
    t_batch = _f(cp.non_attention_time_s(bp * i)) + bp * max(t_one - non_i, 0.0)
    ranks = pp.workers * pp.attention_dp
    mu = ranks * bp / t_batch  # requests per second the prefill pool sustains
    nic = cp.gpu.nic_gbps * 1e9 / 8.0 * pp.gpus
    transfer = _f(cp.kv_bytes(np.array(int(i)))) / nic
    t_batch *= ov.prefill_scale
    base = ov.request_s + t_batch + transfer + ov.first_token_decode_steps * tpot
    c = float(row.concurrency)
    ttft, regime = base, "open"
    for _ in range(200):
        lam = c / (ttft + (o - 1.0) * tpot)
        rho = lam / mu
        if rho >= 0.98:
            regime = "prefill-bound"
            new = max(c / mu - (o - 1.0) * tpot, base)
        else:
            regime = "open"
            new = base + _mdc_wait(rho, ranks, t_batch / bp)
        if abs(new - ttft) < 1e-7:
            break
        ttft = 0.5 * ttft + 0.5 * new
    # the first wave: all requests reach the prefill ranks at once
    waves = math.ceil(c / (ranks * bp))
    first_wave = base + t_batch * (waves - 1) / 2.0
    ttft = (first_wave + (BENCHMARK_WAVES - 1) * ttft) / BENCHMARK_WAVES
    return Prediction(ttft, tpot, regime)


def with_overhead(ov: ServingOverhead, **changes: float) -> ServingOverhead:
    """``ov`` with some terms replaced."""
    return replace(ov, **changes)
