"""Kernel-level timing: a roofline over the model's passes with measured kernel efficiencies.

For one forward pass on an instance of ``G`` GPUs (tensor/expert parallel, work split evenly),
each component takes the time its bottleneck allows at the efficiency measured for that kind of
kernel on that GPU:

* weight matmuls: ``max(FLOPs / (G * peak * eff_gemm), weight bytes / (G * HBM bw * eff_mem))``
* prefill attention: ``FLOPs / (G * BF16 peak * eff_attn_prefill)``
* KV-cache traffic: ``bytes / (G * HBM bw * eff_attn_decode)`` (written in prefill, read in decode)
* all-reduce (G > 1): two per layer, ``latency + 2 (G-1)/G * bytes / (NVLink bw * eff_allreduce)``
* launch: ``layers * kernels per layer * launch latency``

The efficiencies are fitted per measured GPU from kernel timings
(:mod:`prfaas_env.calibration.fit`); a GPU without measurements borrows those of a measured GPU
of its generation, and only its spec-sheet peaks differ ("roofline scaling").
All times are seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from prfaas_env.architecture import ModelSpec
from prfaas_env.hardware import GPUSpec

ACTIVATION_BYTES = 2.0  # BF16 activations on the wire for all-reduce / all-to-all


@dataclass(frozen=True)
class KernelEfficiency:
    """Measured fractions of spec-sheet peaks reached by each kind of kernel on one GPU.

    Attributes:
        gemm_bf16, gemm_fp8: fraction of dense BF16 / FP8 peak FLOP/s in compute-bound GEMMs.
        memory: fraction of peak HBM bandwidth in memory-bound (small-batch) GEMMs.
        attention_prefill: fraction of BF16 peak FLOP/s in prefill (context) attention.
        attention_decode: fraction of peak HBM bandwidth reading the KV cache in decode.
        launch_s: fixed per-kernel latency floor, s.
        allreduce_latency_s: all-reduce latency at zero size, s.
        allreduce_bw: fraction of NVLink bandwidth reached by large all-reduces (bus bandwidth).
        measured_on: the GPU whose kernel timings these come from.
        source: the measurement files.
    """

    gemm_bf16: float
    gemm_fp8: float
    memory: float
    attention_prefill: float
    attention_decode: float
    launch_s: float
    allreduce_latency_s: float
    allreduce_bw: float
    measured_on: str
    source: str


@dataclass(frozen=True)
class PassTimes:
    """Roofline time of each component of one pass, seconds (arrays broadcast together)."""

    matmul_s: NDArray[np.float64]
    attention_s: NDArray[np.float64]
    kv_s: NDArray[np.float64]
    comm_s: NDArray[np.float64]
    launch_s: float
    tokens_in_pass: NDArray[np.float64]
    sequences: NDArray[np.float64]

    @property
    def non_attention_s(self) -> NDArray[np.float64]:
        """Everything except attention: matmuls, KV traffic, communication and launches."""
        return self.matmul_s + self.kv_s + self.comm_s + self.launch_s


def _matmul_time(
    model: ModelSpec,
    gpu: GPUSpec,
    eff: KernelEfficiency,
    gpus: int,
    dense_flops: NDArray[np.float64],
    expert_flops: NDArray[np.float64],
    weight_bytes: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Matmul time: the slower of compute (dense and expert weights at their dtypes) and weights."""

    def rate(wbytes: float) -> float:
        fp8 = wbytes == 1 and gpu.fp8_tflops is not None
        return gpu.peak_flops(wbytes) * (eff.gemm_fp8 if fp8 else eff.gemm_bf16)

    compute = dense_flops / rate(model.weight_bytes) + expert_flops / rate(
        model.expert_weight_bytes
    )
    memory = weight_bytes / (gpu.hbm_bytes_per_s * eff.memory)
    return np.maximum(compute, memory) / gpus


def _comm_time(
    model: ModelSpec, gpu: GPUSpec, eff: KernelEfficiency, gpus: int, tokens: NDArray[np.float64]
) -> NDArray[np.float64]:
    if gpus <= 1:
        return np.zeros_like(tokens)
    size = tokens * model.hidden_size * ACTIVATION_BYTES
    per_op = eff.allreduce_latency_s + 2.0 * (gpus - 1) / gpus * size / (
        gpu.nvlink_bytes_per_s * eff.allreduce_bw
    )
    return 2.0 * model.num_layers * per_op


def prefill_pass(
    model: ModelSpec,
    gpu: GPUSpec,
    eff: KernelEfficiency,
    gpus: int,
    new_tokens: ArrayLike,
    cached_tokens: ArrayLike = 0,
    batch: ArrayLike = 1,
) -> PassTimes:
    """Roofline components of prefilling ``batch`` requests of ``new_tokens`` uncached tokens each.

    ``cached_tokens`` is each request's prefix already in the KV cache (attention still reads it;
    its matmuls are skipped).
    """
    n = np.asarray(new_tokens, dtype=np.float64)
    c = np.asarray(cached_tokens, dtype=np.float64)
    b = np.asarray(batch, dtype=np.float64)
    tokens = b * n
    _, attn_flops = model.prefill_flops(n, c)
    dense = model.dense_matmul_flops_per_token * tokens + 2.0 * model.lm_head_params * b
    experts = model.expert_matmul_flops_per_token * tokens
    matmul = _matmul_time(model, gpu, eff, gpus, dense, experts, model.weight_bytes_read(tokens))
    attention = b * attn_flops / (gpus * gpu.bf16_flops * eff.attention_prefill)
    kv_written = b * (model.kv_bytes_for(c + n) - model.kv_bytes_for(c))
    kv = kv_written / (gpus * gpu.hbm_bytes_per_s * eff.attention_decode)
    launch = model.num_layers * model.kernels_per_layer() * eff.launch_s
    matmul, attention, kv, tokens, b = np.broadcast_arrays(matmul, attention, kv, tokens, b)
    comm = _comm_time(model, gpu, eff, gpus, tokens)
    return PassTimes(matmul, attention, kv, comm, launch, tokens, b)


def decode_pass(
    model: ModelSpec,
    gpu: GPUSpec,
    eff: KernelEfficiency,
    gpus: int,
    batch: ArrayLike,
    context_tokens: ArrayLike,
) -> PassTimes:
    """Roofline components of one decode step: ``batch`` sequences, ``context_tokens`` in total."""
    b = np.asarray(batch, dtype=np.float64)
    ctx = np.asarray(context_tokens, dtype=np.float64)
    dense = (model.dense_matmul_flops_per_token + 2.0 * model.lm_head_params) * b
    experts = model.expert_matmul_flops_per_token * b
    matmul = _matmul_time(model, gpu, eff, gpus, dense, experts, model.weight_bytes_read(b))
    _, attn_flops = model.decode_flops(b, ctx)
    kv_read = model.decode_kv_bytes_read(b, ctx)
    kv = (
        np.maximum(
            kv_read / (gpu.hbm_bytes_per_s * eff.attention_decode),
            attn_flops / (gpu.bf16_flops * eff.attention_prefill),
        )
        / gpus
    )
    launch = model.num_layers * model.kernels_per_layer() * eff.launch_s
    matmul, kv, b = np.broadcast_arrays(matmul, kv, b)
    comm = _comm_time(model, gpu, eff, gpus, b)
    return PassTimes(matmul, np.zeros_like(matmul), kv, comm, launch, b, b)
