"""The calibrated cost model: prefill time, decode step time, KV-cache size, decode capacity.

One :class:`CostModel` serves one (model, GPU type, GPUs per instance). All methods take NumPy
arrays (or scalars) and are vectorised, because the simulator calls them in its hot loop. Times
are seconds, sizes bytes, token counts tokens.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray

from prfaas_env.architecture import ModelSpec, get_model
from prfaas_env.costmodel.kernels import KernelEfficiency, decode_pass, prefill_pass
from prfaas_env.costmodel.stack import StackCalibration, decode_time_s, prefill_time_s
from prfaas_env.hardware import GPUSpec, get_gpu

COEFFICIENTS = Path(__file__).resolve().parents[1] / "calibration" / "coefficients.json"
# Ranges the kernel measurements cover, used when no end-to-end fit applies.
KERNEL_PREFILL_TOKENS = (1.0, 32768.0)  # GEMM rows measured up to m = 32768
KERNEL_DECODE_BATCH = (1.0, 2048.0)  # decode-attention rows measured up to batch 2048
KERNEL_CONTEXT = (1.0, 131072.0)  # decode-attention rows measured up to 128K context


class CalibrationRangeWarning(UserWarning):
    """A query lies outside the range the coefficients were fitted on (the answer extrapolates)."""


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

    Raises:
        UnknownNameError: unknown model or GPU (the message lists the known ones).
        ValueError: ``gpus_per_instance`` is not a positive integer.
    """

    def __init__(
        self,
        model: str | ModelSpec,
        gpu: str | GPUSpec,
        gpus_per_instance: int = 8,
        *,
        coefficients: str | Path | None = None,
    ) -> None:
        self.model = get_model(model)
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
        coef = load_coefficients(str(coefficients) if coefficients else None)
        self.kernel_efficiency, self.kernel_source = self._resolve_kernels(coef)
        self.prefill_calibration, self.prefill_source = self._resolve_stack(coef, "prefill")
        self.decode_calibration, self.decode_source = self._resolve_stack(coef, "decode")
        self._warned: set[str] = set()

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
        cal = self.prefill_calibration
        _warn_range(
            self._warned,
            "prompt tokens (uncached + cached) for prefill",
            (n + c)[n > 0],
            cal.tokens_range[0],
            cal.tokens_range[1],
            self.prefill_source,
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
        cal = self.decode_calibration
        active = b > 0
        _warn_range(
            self._warned,
            "decode batch size",
            b[active],
            cal.tokens_range[0],
            cal.tokens_range[1],
            self.decode_source,
        )
        per_seq = (ctx / np.maximum(b, 1))[active]
        _warn_range(
            self._warned,
            "decode context tokens per sequence",
            per_seq,
            cal.context_range[0],
            cal.context_range[1],
            self.decode_source,
        )
        return self.decode_step_time_continuous_s(b, ctx)

    def decode_step_time_continuous_s(
        self, batch_size: NDArray[np.float64], context_tokens: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """:meth:`decode_step_time_s` for real-valued context, without checks or warnings."""
        b, ctx = np.broadcast_arrays(
            np.asarray(batch_size, float), np.asarray(context_tokens, float)
        )
        times = decode_pass(self.model, self.gpu, self.kernel_efficiency, self.gpus, b, ctx)
        return np.where(b > 0, decode_time_s(times, self.decode_calibration), 0.0)

    def kv_bytes(self, prompt_tokens: ArrayLike) -> NDArray[np.float64]:
        """KV-cache bytes of a request holding ``prompt_tokens`` tokens (what a transfer ships)."""
        return self.model.kv_bytes_for(check_tokens("prompt_tokens", prompt_tokens))

    def weight_bytes_per_gpu(self) -> float:
        """Weight bytes each GPU of an instance holds (weights split evenly), bytes."""
        return self.model.weight_bytes_total / self.gpus

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
        free = self.gpus * self.gpu.hbm_bytes * memory_fraction - self.model.weight_bytes_total
        per_req = self.model.kv_bytes_for(ctx)
        return np.maximum(np.floor(free / per_req), 0).astype(np.int64)

    def describe(self) -> dict[str, str]:
        """Where each part of this cost model's coefficients comes from."""
        return {
            "model": f"{self.model.name} ({self.model.source})",
            "gpu": f"{self.gpu.name} ({self.gpu.source})",
            "kernels": self.kernel_source,
            "prefill": self.prefill_source,
            "decode": self.decode_source,
        }
