"""The calibrated cost model: prefill time, decode step time, KV-cache size, decode capacity.

One :class:`CostModel` serves one (model, GPU type, GPUs per instance). All methods take NumPy
arrays (or scalars) and are vectorised, because the simulator calls them in its hot loop. Times
are seconds, sizes bytes, token counts tokens.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray

from prfaas_env.architecture import ModelSpec, get_model
from prfaas_env.costmodel.kernels import KernelEfficiency, decode_pass, prefill_pass
from prfaas_env.costmodel.serving import (
    NO_OVERHEAD,
    ServingOverhead,
    ServingSpec,
    VersionScale,
    fitted_overhead,
    version_scale,
)
from prfaas_env.costmodel.stack import StackCalibration, decode_time_s, prefill_time_s
from prfaas_env.hardware import GPUSpec, get_gpu

COEFFICIENTS = Path(__file__).resolve().parents[1] / "calibration" / "coefficients.json"
# Ranges the kernel measurements cover, used when no end-to-end fit applies.
KERNEL_PREFILL_TOKENS = (1.0, 32768.0)  # GEMM rows measured up to m = 32768
KERNEL_DECODE_BATCH = (1.0, 2048.0)  # decode-attention rows measured up to batch 2048
KERNEL_CONTEXT = (1.0, 131072.0)  # decode-attention rows measured up to 128K context


class CalibrationRangeWarning(UserWarning):
    """A query lies outside the range the coefficients were fitted on (the answer extrapolates)."""


class BackendFallbackWarning(UserWarning):
    """A cluster asked for a measured backend that has no data for it; the fitted model answers."""


@dataclass(frozen=True)
class Coefficients:
    """Contents of ``coefficients.json``: kernel efficiencies and end-to-end stack fits."""

    kernels: dict[str, KernelEfficiency]
    derived_from: dict[str, str]
    stacks: tuple[StackCalibration, ...]


@lru_cache(maxsize=8)
def load_coefficients(path: str | None = None) -> Coefficients:
    """Load a coefficient file (default: the one shipped in the package)."""
    p = Path(path) if path else COEFFICIENTS
    doc = json.loads(p.read_text(encoding="utf-8"))
    return Coefficients(
        kernels={k: KernelEfficiency(**v) for k, v in doc["kernels"].items()},
        derived_from=dict(doc["derived_from"]),
        stacks=tuple(StackCalibration.from_json(s) for s in doc["stacks"]),
    )


def check_tokens(name: str, value: ArrayLike, *, allow_zero: bool = True) -> NDArray[np.float64]:
    """Validate a token-count argument and return it as a float64 array.

    Raises:
        ValueError: naming ``name``, if any entry is NaN, infinite, negative, not an integer, or
            zero when ``allow_zero`` is false.
    """
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected token counts (integers), got {value!r}") from exc
    bad = ~np.isfinite(arr)
    if np.any(bad):
        raise ValueError(f"{name}: NaN or infinite token count at index {_first(bad)}")
    bad = arr < (0 if allow_zero else 1)
    if np.any(bad):
        lim = "non-negative" if allow_zero else ">= 1"
        raise ValueError(f"{name}: token counts must be {lim}; got {arr[bad].flat[0]!r}")
    bad = arr != np.floor(arr)
    if np.any(bad):
        raise ValueError(f"{name}: token counts must be integers; got {arr[bad].flat[0]!r}")
    return arr


def _first(mask: NDArray[np.bool_]) -> object:
    idx = np.argwhere(mask)[0]
    return int(idx[0]) if idx.size == 1 else tuple(int(i) for i in idx)


def _warn_range(
    warned: set[str], quantity: str, values: NDArray, lo: float, hi: float, src: str
) -> None:
    """Warn (once per cost model and quantity) when values leave the calibrated range."""
    if values.size == 0 or quantity in warned:
        return
    vmin, vmax = float(values.min()), float(values.max())
    if vmin >= lo and vmax <= hi:
        return
    warned.add(quantity)
    warnings.warn(
        f"{quantity} outside the calibrated range [{lo:g}, {hi:g}] (got {vmin:g}..{vmax:g}); "
        f"extrapolating from {src}",
        CalibrationRangeWarning,
        stacklevel=3,
    )


class CostModel:
    """Calibrated costs of serving ``model`` on instances of ``gpus_per_instance`` x ``gpu``.

    Args:
        model: catalog name (see :func:`prfaas_env.architecture.model_names`) or a ModelSpec.
        gpu: catalog name or alias (see :func:`prfaas_env.hardware.gpu_names`) or a GPUSpec.
        gpus_per_instance: GPUs of one prefill or decode instance (tensor/expert parallel).
        coefficients: path to a coefficient file; default the shipped one.
        serving: backend, precision and parallelism
            (:class:`~prfaas_env.costmodel.serving.ServingSpec`); default: none, i.e. the
            fitted roofline at the catalog's precision with all GPUs tensor parallel.
        overhead: serving overhead added to backend answers; default the fitted one of the
            backend in ``mode`` (none without a backend). A ``serving.version`` the databases
            lack on this GPU but with a measured
            :class:`~prfaas_env.costmodel.serving.VersionScale` is served from the database
            version's tables with the kernels scaled by it (on top of this overhead's).
        mode: ``agg`` (prefill and decode on the same instances) or ``disagg``: which fitted
            serving overhead applies.
        where: name of the cluster, for error messages.

    With a backend in ``serving`` the backend's measured databases answer prefill, decode and
    non-attention times (tabulated once, see :mod:`prfaas_env.costmodel.aic`); where it has
    no data (GPU or model not covered, package not installed) the fitted model answers, a
    :class:`BackendFallbackWarning` says so, and :meth:`describe` names the source.

    Raises:
        UnknownNameError: unknown model or GPU (the message lists the known ones).
        ValueError: ``gpus_per_instance`` is not a positive integer.
        ConfigError: ``serving`` asks for something the backend does not have (the message
            names ``where`` and the key and lists what is available).
    """

    def __init__(
        self,
        model: str | ModelSpec,
        gpu: str | GPUSpec,
        gpus_per_instance: int = 8,
        *,
        coefficients: str | Path | None = None,
        serving: ServingSpec | None = None,
        overhead: ServingOverhead | None = None,
        mode: str = "agg",
        where: str = "cost model",
    ) -> None:
        base_model = get_model(model)
        self.gpu = get_gpu(gpu)
        if (
            isinstance(gpus_per_instance, bool)
            or not isinstance(gpus_per_instance, (int, np.integer))
            or gpus_per_instance < 1
        ):
            raise ValueError(
                f"gpus_per_instance: expected a positive integer, got {gpus_per_instance!r}"
            )
        self.gpus = int(gpus_per_instance)
        is_moe = any(g.mlp.type == "moe" for g in base_model.groups)
        self.serving = (serving or ServingSpec()).resolved(self.gpus, is_moe, where)
        self.model = self.serving.apply_precision(base_model)
        coef = load_coefficients(str(coefficients) if coefficients else None)
        self.kernel_efficiency, self.kernel_source = self._resolve_kernels(coef)
        self.prefill_calibration, self.prefill_source = self._resolve_stack(coef, "prefill")
        self.decode_calibration, self.decode_source = self._resolve_stack(coef, "decode")
        self._warned: set[str] = set()
        self.version_scale: VersionScale | None = version_scale(
            self.serving.backend, self.gpu.backend_system, self.serving.version
        )
        self.backend_tables, self.backend_note = self._resolve_backend(where)
        if overhead is not None:
            self.overhead = overhead
        elif self.backend_tables is not None:
            # a measured version's scale stands in for the model's multiplier (fitted on rows
            # of other versions): both carry the stack's speed, so they do not stack
            model_fit = None if self.version_scale is not None else base_model.name
            self.overhead = fitted_overhead(self.serving.backend, mode, model_fit)
        else:
            self.overhead = NO_OVERHEAD
        if self.backend_tables is None:
            self.version_scale = None
        elif self.version_scale is not None:
            vs = self.version_scale
            self.overhead = replace(
                self.overhead, step_scale=self.overhead.step_scale * vs.step_scale
            )
            self.backend_note += (
                f"; kernels x {vs.step_scale:.3f} for {self.serving.backend} "
                f"{self.serving.version} ({vs.source})"
            )

    def _resolve_backend(self, where: str):  # -> tuple[BackendTables | None, str]
        if self.serving.backend is None:
            return None, ""
        from prfaas_env.costmodel import aic

        spec = self.serving
        if self.version_scale is not None:  # a measured version: the database version's tables
            spec = replace(spec, version=self.version_scale.database_version)
        try:
            t = aic.load_backend(self.model, self.gpu, spec, f"{where}.serving")
        except aic.BackendUnavailable as exc:
            note = (
                f"{self.serving.backend} requested but {exc}; the fitted model answers "
                "(see 'prefill' and 'decode')"
            )
            warnings.warn(f"{where}: {note}", BackendFallbackWarning, stacklevel=3)
            return None, note
        k = t.key
        return t, (
            f"aiconfigurator-core {k.package_version}: {k.backend} {k.version} on {k.system}, "
            f"{k.model}, {self.serving.label()} (data: {t.provenance})"
        )

    @property
    def prefill_parallelism(self) -> int:
        """Requests one instance prefills at once (its attention data-parallel ranks)."""
        return self.serving.attention_dp

    @property
    def kv_replication(self) -> float:
        """How many copies of each sequence's KV cache an instance holds.

        Only modelled with a measured backend (the fitted model assumes 1): tensor-parallel
        ranks beyond the KV heads hold copies (MLA's latent cache is one head, so every
        tensor-parallel rank holds all of it).
        """
        if self.backend_tables is None:
            return 1.0
        tp = self.serving.tp or 1
        heads = [
            (1 if g.attention.type == "mla" else g.attention.num_kv_heads)
            for g in self.model.groups
            if g.attention.type in ("gqa", "swa", "mla")
        ]
        if not heads:
            return 1.0
        return float(max(1.0, tp / max(min(heads), 1)))

    # ---- resolution of coefficients -----------------------------------------------------
    def _resolve_kernels(self, coef: Coefficients) -> tuple[KernelEfficiency, str]:
        if self.gpu.name in coef.kernels:
            return coef.kernels[self.gpu.name], f"measured on {self.gpu.name}"
        base = self.gpu.derived_from or coef.derived_from.get(
            self.gpu.architecture, coef.derived_from["unknown"]
        )
        return (
            coef.kernels[base],
            f"derived: {base} kernel efficiencies scaled to {self.gpu.name} spec-sheet peaks",
        )

    def _resolve_stack(self, coef: Coefficients, phase: str) -> tuple[StackCalibration, str]:
        names = [self.model.name] + (
            [self.model.calibration_proxy] if self.model.calibration_proxy else []
        )
        for name in names:
            cands = [s for s in coef.stacks if s.model == name and s.phase == phase]
            if not cands:
                continue
            exact = [s for s in cands if s.gpu == self.gpu.name and s.gpus == self.gpus]
            if exact and name == self.model.name:
                return exact[0], f"measured: {exact[0].source}"

            def rank(s: StackCalibration) -> tuple:
                same_arch = get_gpu(s.gpu).architecture == self.gpu.architecture
                return (s.gpu != self.gpu.name, not same_arch, abs(s.gpus - self.gpus), s.gpu)

            best = min(cands, key=rank)
            return best, (
                f"derived: end-to-end fit of {best.model} on {best.gpus} x {best.gpu} "
                f"({best.source}) applied to this GPU's roofline"
            )
        default = StackCalibration(
            model=self.model.name,
            gpu=self.gpu.name,
            gpus=self.gpus,
            phase=phase,
            tokens_range=KERNEL_PREFILL_TOKENS if phase == "prefill" else KERNEL_DECODE_BATCH,
            context_range=KERNEL_CONTEXT,
        )
        return default, "kernel-composed: no end-to-end measurement of this model (roofline only)"

    def _ranges(self, phase: str) -> tuple[tuple[tuple[float, float], tuple[float, float]], str]:
        """((tokens or batch range), (context range)) the answers of ``phase`` cover, and
        their source."""
        t = self.backend_tables
        if t is not None:
            if phase == "prefill":
                return ((1.0, float(t.u[-1] + t.c[-1])), (0.0, float(t.c[-1]))), self.backend_note
            batch = float(t.b[-1] * self.serving.attention_dp)
            return ((1.0, batch), (1.0, float(t.x[-1]))), self.backend_note
        cal = self.prefill_calibration if phase == "prefill" else self.decode_calibration
        src = self.prefill_source if phase == "prefill" else self.decode_source
        return (cal.tokens_range, cal.context_range), src

    # ---- public API ---------------------------------------------------------------------
    def prefill_time_s(
        self, uncached_tokens: ArrayLike, cached_tokens: ArrayLike = 0
    ) -> NDArray[np.float64]:
        """Time to prefill one request on one instance, s.

        Args:
            uncached_tokens: prompt tokens to compute (not found in the prefix cache).
            cached_tokens: prompt tokens already cached (matmuls skipped; attention reads them).

        A request with 0 uncached tokens costs 0 s (nothing to compute).
        """
        n, c = np.broadcast_arrays(
            check_tokens("uncached_tokens", uncached_tokens),
            check_tokens("cached_tokens", cached_tokens),
        )
        rng, src = self._ranges("prefill")
        _warn_range(
            self._warned,
            "prompt tokens (uncached + cached) for prefill",
            (n + c)[n > 0],
            rng[0][0],
            rng[0][1],
            src,
        )
        return self.prefill_time_continuous_s(n, c)

    def prefill_time_continuous_s(
        self, uncached_tokens: NDArray[np.float64], cached_tokens: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """:meth:`prefill_time_s` for real-valued token counts, without checks or warnings.

        For tabulation on log-spaced grids (see :mod:`prfaas_env.sim.costs`); the formula is
        the same one :meth:`prefill_time_s` evaluates.
        """
        n, c = np.broadcast_arrays(
            np.asarray(uncached_tokens, float), np.asarray(cached_tokens, float)
        )
        if self.backend_tables is not None:
            t = self.backend_tables.prefill_s(n, c)
            ov = self.overhead
            if ov.step_scale != 1.0 or ov.prefill_scale != 1.0:
                non = self.backend_tables.non_attention_s(n)
                t = ov.step_scale * (t + (ov.prefill_scale - 1.0) * np.maximum(t - non, 0.0))
            return np.where(n > 0, t, 0.0)
        times = prefill_pass(self.model, self.gpu, self.kernel_efficiency, self.gpus, n, c)
        return np.where(n > 0, prefill_time_s(times, self.prefill_calibration), 0.0)

    def decode_step_time_s(
        self, batch_size: ArrayLike, context_tokens: ArrayLike
    ) -> NDArray[np.float64]:
        """Time of one decode step of a batch on one instance, s.

        Args:
            batch_size: sequences in the batch (each produces one token).
            context_tokens: tokens held in the KV cache by the whole batch (sum over sequences).

        An empty batch costs 0 s.
        """
        b, ctx = np.broadcast_arrays(
            check_tokens("batch_size", batch_size), check_tokens("context_tokens", context_tokens)
        )
        rng, src = self._ranges("decode")
        active = b > 0
        _warn_range(self._warned, "decode batch size", b[active], rng[0][0], rng[0][1], src)
        per_seq = (ctx / np.maximum(b, 1))[active]
        _warn_range(
            self._warned,
            "decode context tokens per sequence",
            per_seq,
            rng[1][0],
            rng[1][1],
            src,
        )
        return self.decode_step_time_continuous_s(b, ctx)

    def decode_step_time_continuous_s(
        self, batch_size: NDArray[np.float64], context_tokens: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """:meth:`decode_step_time_s` for real-valued context, without checks or warnings."""
        b, ctx = np.broadcast_arrays(
            np.asarray(batch_size, float), np.asarray(context_tokens, float)
        )
        if self.backend_tables is not None:
            per_rank = np.ceil(b / self.serving.attention_dp)
            step = self.overhead.step_scale * self.backend_tables.decode_s(
                per_rank, ctx / np.maximum(b, 1.0)
            )
            return np.where(b > 0, step + self.overhead.step_time_s(per_rank), 0.0)
        times = decode_pass(self.model, self.gpu, self.kernel_efficiency, self.gpus, b, ctx)
        return np.where(b > 0, decode_time_s(times, self.decode_calibration), 0.0)

    def non_attention_time_s(self, tokens: ArrayLike) -> NDArray[np.float64]:
        """Time of the weight, expert and communication work of one pass over ``tokens``
        tokens (everything but attention), s; 0 for no tokens.

        From the backend where it answers; otherwise the lesser of a decode step of
        ``tokens`` sequences holding one token each (attention negligible) and a prefill of
        ``tokens`` tokens (the fitted decode model charges every sequence a per-sequence
        cost that a pass over prompt tokens does not pay: for more than a few hundred tokens
        the prefill is the closer account of the weight work).
        """
        n = np.asarray(tokens, dtype=np.float64)
        if self.backend_tables is not None:
            t = self.overhead.step_scale * self.backend_tables.non_attention_s(n)
            return np.where(n > 0, t, 0.0)
        return np.minimum(
            self.decode_step_time_continuous_s(n, n),
            self.prefill_time_continuous_s(n, np.zeros_like(n)),
        )

    def mixed_step_time_s(
        self,
        prefill_tokens: ArrayLike,
        prefill_cached_tokens: ArrayLike,
        decode_batch: ArrayLike,
        decode_context_tokens: ArrayLike,
    ) -> NDArray[np.float64]:
        """One engine step that prefills a chunk and decodes a batch together, s.

        Args:
            prefill_tokens: prompt tokens computed in this step (a chunk of one request).
            prefill_cached_tokens: tokens of that request already in the KV cache (earlier
                chunks or a prefix-cache hit).
            decode_batch: sequences decoding one token in this step (per instance).
            decode_context_tokens: tokens those sequences hold in total.

        The weights are read once for all tokens of the step: the time is the non-attention
        work of ``prefill_tokens + decode_batch`` tokens plus each part's attention (its time
        alone minus its own non-attention work), plus the serving overhead of one step.
        """
        p = np.asarray(prefill_tokens, dtype=np.float64)
        c = np.asarray(prefill_cached_tokens, dtype=np.float64)
        b = np.asarray(decode_batch, dtype=np.float64)
        ctx = np.asarray(decode_context_tokens, dtype=np.float64)
        ranks = self.serving.attention_dp
        b_rank = np.ceil(b / ranks)
        shared = self.non_attention_time_s(p + b_rank)
        pre_attn = np.maximum(
            self.prefill_time_continuous_s(p, c) - self.non_attention_time_s(p), 0.0
        )
        dec_only = self.decode_step_time_continuous_s(b, ctx) - np.where(
            b > 0, self.overhead.step_time_s(b_rank), 0.0
        )
        dec_attn = np.maximum(dec_only - self.non_attention_time_s(b_rank), 0.0)
        busy = (p > 0) | (b > 0)
        step = shared + pre_attn + dec_attn + self.overhead.step_time_s(b_rank)
        return np.where(busy, step, 0.0)

    def kv_bytes(self, prompt_tokens: ArrayLike) -> NDArray[np.float64]:
        """KV-cache bytes of a request holding ``prompt_tokens`` tokens (what a transfer ships)."""
        return self.model.kv_bytes_for(check_tokens("prompt_tokens", prompt_tokens))

    def weight_bytes_per_gpu(self) -> float:
        """Weight bytes each GPU of an instance holds, bytes.

        Without a serving spec the weights are split evenly; with attention data parallel,
        the attention and dense weights are split over ``tp * pp`` GPUs (each
        data-parallel rank holds a copy) and the experts over all of them.
        """
        sv = self.serving
        if sv.attention_dp == 1:
            return self.model.weight_bytes_total / self.gpus
        m = self.model
        dense = (m.dense_layer_params + m.embedding_params) * m.weight_bytes
        experts = m.expert_params_total * m.expert_weight_bytes
        return dense / ((sv.tp or 1) * sv.pp) + experts / self.gpus

    def weight_bytes_per_instance(self) -> float:
        """Weight bytes one instance holds over all its GPUs (copies included), bytes."""
        if self.serving.attention_dp == 1:
            return self.model.weight_bytes_total
        return self.weight_bytes_per_gpu() * self.gpus

    def kv_capacity_bytes(self, memory_fraction: float = 0.9) -> float:
        """KV-cache bytes (one copy per sequence, as :meth:`kv_bytes` counts them) that fit
        next to the weights on one instance; negative when the weights alone do not fit."""
        hbm = self.gpus * self.gpu.hbm_bytes * memory_fraction
        return (hbm - self.weight_bytes_per_instance()) / self.kv_replication

    def max_decode_batch(
        self, context_tokens_per_request: ArrayLike, memory_fraction: float = 0.9
    ) -> NDArray[np.int64]:
        """Largest number of sequences whose KV cache fits next to the weights on one instance.

        Args:
            context_tokens_per_request: tokens each sequence holds (prompt plus generated).
            memory_fraction: share of HBM usable for weights plus KV (the rest is activations,
                framework and communication buffers), in (0, 1].

        Returns 0 where the weights alone do not fit.
        """
        if not 0 < memory_fraction <= 1:
            raise ValueError(f"memory_fraction: must be in (0, 1], got {memory_fraction!r}")
        ctx = check_tokens("context_tokens_per_request", context_tokens_per_request)
        free = self.kv_capacity_bytes(memory_fraction)
        per_req = self.model.kv_bytes_for(ctx)
        return np.maximum(np.floor(free / per_req), 0).astype(np.int64)

    def describe(self) -> dict[str, str]:
        """Where each quantity of this cost model comes from (one source per key)."""
        m = self.model
        precision = (
            f"weights {m.weight_bytes:g} B, experts {m.expert_weight_bytes:g} B, "
            f"KV {m.kv_bytes:g} B per element"
        )
        out = {
            "model": f"{m.name} ({m.source})",
            "gpu": f"{self.gpu.name} ({self.gpu.source})",
            "serving": self.serving.label(),
            "precision": precision,
        }
        if self.backend_tables is not None:
            src = f"measured backend: {self.backend_note}"
            out.update(
                {
                    "kernels": src,
                    "prefill": src,
                    "decode": src,
                    "non_attention": src,
                    "overhead": _describe_overhead(self.overhead),
                }
            )
        else:
            out.update(
                {
                    "kernels": self.kernel_source,
                    "prefill": self.prefill_source,
                    "decode": self.decode_source,
                    "non_attention": f"fitted decode model ({self.decode_source})",
                    "overhead": _describe_overhead(self.overhead),
                }
            )
            if self.backend_note:
                out["backend"] = f"fallback: {self.backend_note}"
        out["kv_bytes"] = f"from the architecture at {m.kv_bytes:g} B per element"
        out["decode_capacity"] = (
            f"HBM x memory_fraction less weights ({self.weight_bytes_per_instance() / 1e9:.1f} "
            f"GB per instance), KV copies per sequence {self.kv_replication:g}"
        )
        return out


def _describe_overhead(o: ServingOverhead) -> str:
    if o == NO_OVERHEAD:
        return o.source
    return (
        f"request {o.request_s * 1e3:.1f} ms, kernels x {o.step_scale:.3f}, "
        f"step {o.step_s * 1e3:.2f} ms + "
        f"{o.per_sequence_step_s * 1e6:.1f} us per sequence, first token after "
        f"{o.first_token_decode_steps} decode step(s) ({o.source})"
    )
