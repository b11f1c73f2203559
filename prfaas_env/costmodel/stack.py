"""End-to-end calibration of a serving stack on top of the kernel roofline.

Measured end-to-end times include what kernels alone do not: scheduler and framework overhead per
pass, per-sequence bookkeeping, and the stack's own inefficiencies. A :class:`StackCalibration`
maps the roofline components of a pass (:class:`~prfaas_env.costmodel.kernels.PassTimes`) to an
end-to-end time:

* prefill: ``fixed_s + kernel_scale * non_attention + attention_scale * attention
  + knee_scale * matmul * max(0, 1 - knee_tokens / tokens_in_pass) + per_sequence_s * sequences``
* decode step: ``fixed_s + kernel_scale * non_attention + per_sequence_s * batch``

The knee term lets a stack become slower per token above ``knee_tokens`` tokens in one pass, as
the splitwise-sim measurements do between 2K and 4K tokens at tensor parallelism 4 and 8. With
the defaults (``fixed_s = 0``, scales 1) the time is the kernel roofline itself
("kernel-composed"). These two functions are the only place the formula lives; the fit and the
cost model both call them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray

from prfaas_env.costmodel.kernels import PassTimes

KERNEL_COMPOSED = "kernel-composed: no end-to-end measurement for this model, GPU and phase"


@dataclass(frozen=True)
class StackCalibration:
    """Coefficients of one (model, GPU, GPUs per instance, phase) end-to-end fit.

    Attributes:
        model, gpu, gpus: what was measured (catalog names, GPUs per instance).
        phase: ``"prefill"`` or ``"decode"``.
        fixed_s: fixed time per pass, s.
        kernel_scale: multiplier on the non-attention roofline time.
        attention_scale: multiplier on the prefill attention roofline time.
        knee_tokens: tokens per pass above which ``knee_scale`` applies (0 = no knee).
        knee_scale: extra multiplier on matmul time for the share of tokens above the knee.
        per_sequence_s: time per sequence in the pass (prefill batch or decode batch), s.
        tokens_range: measured range of tokens per request (prefill) or of batch size (decode).
        context_range: measured range of context tokens per request (decode only).
        source: measurement the fit used.
    """

    model: str
    gpu: str
    gpus: int
    phase: str
    fixed_s: float = 0.0
    kernel_scale: float = 1.0
    attention_scale: float = 1.0
    knee_tokens: float = 0.0
    knee_scale: float = 0.0
    per_sequence_s: float = 0.0
    tokens_range: tuple[float, float] = (1.0, 131072.0)
    context_range: tuple[float, float] = (0.0, 131072.0)
    source: str = KERNEL_COMPOSED

    def to_json(self) -> dict:
        """Plain-data form for ``coefficients.json``."""
        d = asdict(self)
        d["tokens_range"] = list(self.tokens_range)
        d["context_range"] = list(self.context_range)
        return d

    @classmethod
    def from_json(cls, d: dict) -> StackCalibration:
        """Inverse of :meth:`to_json`."""
        d = dict(d)
        d["tokens_range"] = tuple(d["tokens_range"])
        d["context_range"] = tuple(d["context_range"])
        return cls(**d)


def knee_share(tokens_in_pass: NDArray[np.float64], knee_tokens: float) -> NDArray[np.float64]:
    """Fraction of a pass's tokens above the knee (0 when there is no knee)."""
    if knee_tokens <= 0:
        return np.zeros_like(tokens_in_pass)
    return np.maximum(0.0, 1.0 - knee_tokens / np.maximum(tokens_in_pass, 1.0))


PREFILL_FEATURES = ("fixed", "non_attention", "attention", "knee", "sequences")
DECODE_FEATURES = ("fixed", "non_attention", "sequences")


def prefill_features(times: PassTimes, knee_tokens: float) -> NDArray[np.float64]:
    """Design matrix of prefill passes, columns as in ``PREFILL_FEATURES``."""
    ones = np.ones_like(times.matmul_s)
    knee = times.matmul_s * knee_share(times.tokens_in_pass, knee_tokens)
    return np.stack(
        [ones, times.non_attention_s, times.attention_s, knee, times.sequences], axis=-1
    )


def decode_features(times: PassTimes) -> NDArray[np.float64]:
    """Design matrix of decode steps, columns as in ``DECODE_FEATURES``."""
    ones = np.ones_like(times.matmul_s)
    return np.stack([ones, times.non_attention_s + times.attention_s, times.sequences], axis=-1)


def prefill_coefficients(cal: StackCalibration) -> NDArray[np.float64]:
    """Coefficient vector matching ``PREFILL_FEATURES``."""
    return np.array(
        [cal.fixed_s, cal.kernel_scale, cal.attention_scale, cal.knee_scale, cal.per_sequence_s]
    )


def decode_coefficients(cal: StackCalibration) -> NDArray[np.float64]:
    """Coefficient vector matching ``DECODE_FEATURES``."""
    return np.array([cal.fixed_s, cal.kernel_scale, cal.per_sequence_s])


def prefill_time_s(times: PassTimes, cal: StackCalibration) -> NDArray[np.float64]:
    """End-to-end prefill time of a pass, s."""
    return prefill_features(times, cal.knee_tokens) @ prefill_coefficients(cal)


def decode_time_s(times: PassTimes, cal: StackCalibration) -> NDArray[np.float64]:
    """End-to-end decode step time, s."""
    return decode_features(times) @ decode_coefficients(cal)
