"""Request-by-request replay of measured vLLM runs through a continuous-batching engine.

LLMServingSim's validation runs (``bench/examples/<GPU>/<model>/``: ``vllm/meta.json`` with
the engine settings, ``vllm/requests.jsonl`` with each request's lengths and timestamps,
``validation/summary.txt`` with LLMServingSim's own errors) are replayed here with the cost
model: requests arrive at their measured times and an engine schedules them as vLLM's V1
scheduler does:

* each step first serves the running requests in admission order (one token for a decoding
  request, the next chunk for one still prefilling), then admits waiting requests first come
  first served while the step's token budget (``max_num_batched_tokens``), the sequence
  limit (``max_num_seqs``) and free KV blocks allow; a prompt longer than the remaining
  budget is prefilled in chunks over several steps;
* KV blocks (``block_size`` tokens) are allocated as tokens are scheduled; when a running
  request needs a block and none is free, the most recently admitted request is preempted
  (its blocks freed, its prompt recomputed later);
* the step that completes a prompt emits its first token; each later step one more;
* data-parallel ranks (the expert-parallel MoE run) each schedule their own batch, new
  requests go to the rank with the fewest requests, and ranks step together (expert
  parallelism synchronises them), each step lasting as long as the slowest rank's;
* a step costs :meth:`~prfaas_env.costmodel.CostModel.mixed_step_time_s`'s composition: the
  non-attention work of all its tokens, the attention of each prefill chunk after its cached
  tokens, the decode attention of the batch, and the serving overhead of one step.

Prefix caching is on in the runs, but the request files carry no prompt content or block
hashes, so no prefix hits are modelled (each prompt is computed in full).

This engine is the validation's stand-in for the simulator's co-located instance: the same
settings drive both, and :func:`replay` is the boundary where one replaces the other.
"""

from __future__ import annotations

import json
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prfaas_env.costmodel import CostModel, ServingOverhead, ServingSpec
from prfaas_env.costmodel.serving import fitted_overhead

# Run folder name -> catalog names; meta.json names the checkpoint and the GPU.
RUN_MODELS = {
    "meta-llama/Llama-3.1-8B": "llama-3.1-8b",
    "Qwen/Qwen3-32B": "qwen3-32b",
    "Qwen/Qwen3-30B-A3B-Instruct-2507": "qwen3-30b-a3b",
}
RUN_GPUS = {"RTX4090": "rtx-4090", "RTXPRO6000": "rtx-pro-6000"}


@dataclass(frozen=True)
class EngineSettings:
    """vLLM engine settings of a run.

    Attributes:
        max_num_seqs: running requests per engine (data-parallel rank).
        max_num_batched_tokens: tokens per step per engine.
        kv_blocks: KV-cache blocks per engine.
        block_tokens: tokens per KV block.
        data_parallel: engines (data-parallel ranks) stepping together.
    """

    max_num_seqs: int
    max_num_batched_tokens: int
    kv_blocks: int
    block_tokens: int = 16
    data_parallel: int = 1


@dataclass
class _Req:
    idx: int
    arrival: float
    prompt: int
    output: int
    computed: int = 0  # tokens whose KV is in the cache
    generated: int = 0
    blocks: int = 0
    first: float = float("nan")
    last: float = float("nan")

    @property
    def prefilling(self) -> bool:
        return self.computed < self.prompt


@dataclass
class _Engine:
    free_blocks: int
    waiting: deque = field(default_factory=deque)
    running: list = field(default_factory=list)


def _step_cost(cm: CostModel, ov: ServingOverhead, chunks: list, decodes: list) -> float:
    """Seconds of one engine step: prefill ``chunks`` [(tokens, cached)] and ``decodes``
    [tokens held] on one data-parallel rank."""
    ranks = float(cm.serving.attention_dp)
    b = float(len(decodes))
    p = float(sum(n for n, _ in chunks))
    t = float(cm.non_attention_time_s(np.array(p + b)))
    if chunks:
        n = np.array([x for x, _ in chunks], float)
        c = np.array([y for _, y in chunks], float)
        t += float(
            np.sum(np.maximum(cm.prefill_time_continuous_s(n, c) - cm.non_attention_time_s(n), 0.0))
        )
    if decodes:
        inst = np.array(b * ranks)
        dec = cm.decode_step_time_continuous_s(inst, np.array(float(sum(decodes)) * ranks))
        dec = float(dec) - float(cm.overhead.step_time_s(b))
        t += max(dec - float(cm.non_attention_time_s(np.array(b))), 0.0)
    return t + float(ov.step_time_s(b))


def replay(
    arrivals_s: np.ndarray,
    prompt_tokens: np.ndarray,
    output_tokens: np.ndarray,
    cm: CostModel,
    settings: EngineSettings,
    overhead: ServingOverhead,
) -> tuple[np.ndarray, np.ndarray]:
    """Replay requests through the engine; returns (first-token time, last-token time), s.

    ``overhead.request_s`` is added to every first-token time (and to the last token's)
    after the engine emits it.
    """
    reqs = [
        _Req(i, float(a), int(p), max(int(o), 1))
        for i, (a, p, o) in enumerate(zip(arrivals_s, prompt_tokens, output_tokens, strict=True))
    ]
    order = sorted(reqs, key=lambda r: r.arrival)
    engines = [_Engine(settings.kv_blocks) for _ in range(settings.data_parallel)]
    bt, budget0 = settings.block_tokens, settings.max_num_batched_tokens
    now, nxt, done = 0.0, 0, 0
    while done < len(reqs):
        while nxt < len(order) and order[nxt].arrival <= now:
            eng = min(engines, key=lambda e: len(e.waiting) + len(e.running))
            eng.waiting.append(order[nxt])
            nxt += 1
        if all(not e.waiting and not e.running for e in engines):
            now = order[nxt].arrival
            continue
        plans = [_schedule(e, settings, bt, budget0) for e in engines]
        t = max(_step_cost(cm, overhead, ch, dec) for ch, dec, _ in plans)
        now += t
        for e, (_, _, sched) in zip(engines, plans, strict=True):
            for r, n in sched:
                was_prefill = r.prefilling
                r.computed += n
                if was_prefill and not r.prefilling:
                    r.generated = 1
                    r.first = now
                elif not was_prefill:
                    r.generated += 1
                if not r.prefilling and r.generated >= r.output:
                    r.last = now
                    e.running.remove(r)
                    e.free_blocks += r.blocks
                    r.blocks = 0
                    done += 1
    first = np.array([r.first for r in reqs]) + overhead.request_s
    last = np.array([r.last for r in reqs]) + overhead.request_s
    return first, last


def _schedule(e: _Engine, s: EngineSettings, bt: int, budget: int):
    """One step's plan for engine ``e``: (prefill chunks, decode contexts, [(req, tokens)])."""
    sched: list[tuple[_Req, int]] = []
    preempted = False
    i = 0
    while i < len(e.running) and budget > 0:
        r = e.running[i]
        n = min(r.prompt - r.computed, budget) if r.prefilling else 1
        need = -(-(r.computed + n) // bt) - r.blocks
        while need > e.free_blocks and e.running[-1] is not r:
            victim = e.running.pop()
            e.free_blocks += victim.blocks
            victim.blocks, victim.computed, victim.generated = 0, 0, 0
            e.waiting.appendleft(victim)
            preempted = True
        if need > e.free_blocks:
            break
        e.free_blocks -= need
        r.blocks += need
        budget -= n
        sched.append((r, n))
        i += 1
    while e.waiting and budget > 0 and len(e.running) < s.max_num_seqs and not preempted:
        r = e.waiting[0]
        n = min(r.prompt - r.computed, budget)
        need = -(-(r.computed + n) // bt) - r.blocks
        if need > e.free_blocks:
            break
        e.waiting.popleft()
        e.running.append(r)
        e.free_blocks -= need
        r.blocks += need
        budget -= n
        sched.append((r, n))
    chunks = [(n, r.computed) for r, n in sched if r.prefilling]
    decodes = [r.computed + 1 for r, _ in sched if not r.prefilling]
    return chunks, decodes, sched


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


def validate_run(run: Run) -> dict[str, Any]:
    """Replay ``run`` and compare with its measurements (times in ms in the table)."""
    cm = CostModel(
        run.model,
        run.gpu,
        run.gpus,
        serving=run.serving,
        mode="agg",
        where=f"llmservingsim run {run.name}",
    )
    covered = cm.backend_tables is not None
    ov = fitted_overhead("vllm", "agg") if covered else cm.overhead
    # The runs drive vLLM in process (no HTTP server): the per-request term is left out.
    ov_run = ServingOverhead(
        request_s=0.0,
        step_s=ov.step_s,
        per_sequence_step_s=ov.per_sequence_step_s,
        source=ov.source + " (per-request term left out: in-process engine, no HTTP server)",
    )
    settings = run.settings
    if settings.kv_blocks < 0:  # not recorded: from memory, as vLLM sizes it
        cap = cm.kv_capacity_bytes(0.9) / settings.data_parallel
        per_token = float(cm.kv_bytes(np.array(1))) - float(cm.kv_bytes(np.array(0)))
        blocks = int(cap / per_token) // settings.block_tokens
        settings = EngineSettings(**{**settings.__dict__, "kv_blocks": blocks})
    first, last = replay(run.arrivals_s, run.prompt_tokens, run.output_tokens, cm, settings, ov_run)
    out = run.output_tokens
    ttft = first - run.arrivals_s
    tpot = np.where(out > 1, (last - first) / np.maximum(out - 1, 1), np.nan)
    meas = _metrics(run.ttft_s, run.tpot_s, run.latency_s)
    pred = _metrics(ttft, tpot, last - run.arrivals_s)
    table = [
        (k, 1e3 * meas[k], 1e3 * pred[k], pred[k] / meas[k] - 1.0, run.theirs.get(k, "—"))
        for k in meas
    ]
    src = cm.describe()["decode"]
    return {
        "backend_covered": covered,
        "source": ("vllm backend (" + src.split(": ", 2)[-1].split(",")[0] + ")")
        if covered
        else "fitted roofline (no backend data for this GPU)",
        "kv_blocks": settings.kv_blocks,
        "ttft_p90_error": pred["TTFT P90"] / meas["TTFT P90"] - 1.0,
        "ttft_mean_error": pred["TTFT Mean"] / meas["TTFT Mean"] - 1.0,
        "tpot_mean_error": pred["TPOT Mean"] / meas["TPOT Mean"] - 1.0,
        "tpot_p90_error": pred["TPOT P90"] / meas["TPOT P90"] - 1.0,
        "latency_mean_error": pred["Latency Mean"] / meas["Latency Mean"] - 1.0,
        "table": table,
    }
