"""Cost tables: the calibrated cost model tabulated for the simulator's compiled event loop.

The simulator cannot call :class:`~prfaas_env.costmodel.CostModel` per event (it is NumPy
code with ~100 µs of overhead per call), so each cluster's costs are tabulated once on
log-spaced grids and interpolated inside compiled code. The tables are derived from the
cost model and nothing else, so the cost model stays the single source of truth; the
interpolation error is bounded by ``tests/test_sim_costs.py`` (under 1 % everywhere on the
grid's range, typically under 0.1 %).

- Prefill time ``T(u, c)`` for ``u`` uncached and ``c`` cached tokens: bilinear interpolation
  of ``log T`` over ``(log2 u, log2(1 + c))`` with 8 points per octave of ``u`` and 4 per
  octave of ``c``.
- Decode step time ``T(n, ctx)`` for batch ``n`` and ``ctx`` context tokens held by the batch:
  exact in ``n`` (one row per batch size), linear interpolation of ``log T`` over
  ``log2(ctx / n)`` with 8 points per octave.
- KV bytes of a sequence are exact: a fixed part (linear-attention state), a per-token part
  (full-attention layers) and per-token parts capped at each sliding window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from prfaas_env.costmodel import CostModel
from prfaas_env.sim.jit import compiled

MAX_PROMPT_TOKENS = 262_144  # largest prompt the tables cover (2^18 tokens)
_LOG2_MAX = 18.0
_U_STEP = 1.0 / 8.0  # grid step of log2(uncached tokens)
_C_STEP = 1.0 / 4.0  # grid step of log2(1 + cached tokens)
_X_STEP = 1.0 / 8.0  # grid step of log2(context tokens per sequence)


@dataclass(frozen=True)
class CostTables:
    """Tabulated costs of every cluster of a topology (index = cluster).

    Attributes:
        prefill_log_t: ``[clusters, nu, nc]`` natural log of prefill seconds on the grid.
        decode_log_t: ``[clusters, max_batch + 1, nx]`` natural log of decode-step seconds
            (row 0 unused: an empty batch takes no time).
        kv_fixed: KV bytes every sequence holds regardless of length (linear-attention state).
        kv_per_token: KV bytes per token of full-attention layers.
        swa_per_token: ``[groups]`` KV bytes per token of each sliding-window group.
        swa_window: ``[groups]`` window of each sliding-window group, tokens.
    """

    prefill_log_t: NDArray[np.float64]
    decode_log_t: NDArray[np.float64]
    kv_fixed: float
    kv_per_token: float
    swa_per_token: NDArray[np.float64]
    swa_window: NDArray[np.float64]


def prefill_grid() -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Grid points of the prefill table: (uncached tokens, cached tokens)."""
    u = 2.0 ** np.arange(0.0, _LOG2_MAX + 1e-9, _U_STEP)
    c = 2.0 ** np.arange(0.0, _LOG2_MAX + 1e-9, _C_STEP) - 1.0
    return u, c


def decode_grid() -> NDArray[np.float64]:
    """Grid points of the decode table's context axis: context tokens per sequence."""
    return 2.0 ** np.arange(0.0, _LOG2_MAX + 1e-9, _X_STEP)


def build_tables(models: list[CostModel], max_batches: list[int]) -> CostTables:
    """Tabulate ``models[i]`` (cluster i's cost model) with decode rows up to ``max_batches[i]``.

    All models must describe the same LLM (one topology serves one model).
    """
    if not models:
        raise ValueError("build_tables: at least one cluster is required")
    spec = models[0].model
    u, c = prefill_grid()
    x = decode_grid()
    width = max(max(max_batches), 1)
    pre = np.empty((len(models), u.size, c.size))
    dec = np.zeros((len(models), width + 1, x.size))
    uu, cc = np.meshgrid(u, c, indexing="ij")
    for i, (cm, mb) in enumerate(zip(models, max_batches, strict=True)):
        pre[i] = np.log(cm.prefill_time_continuous_s(uu, cc))
        n = np.arange(1, mb + 1, dtype=np.float64)[:, None]
        dec[i, 1 : mb + 1] = np.log(cm.decode_step_time_continuous_s(n, n * x[None, :]))
    swa = [g for g in spec.groups if g.attention.type == "swa"]
    return CostTables(
        prefill_log_t=pre,
        decode_log_t=dec,
        kv_fixed=float(spec.state_bytes_per_request),
        kv_per_token=float(spec.kv_bytes_per_token),
        swa_per_token=np.array(
            [g.count * g.attention.kv_bytes_per_token(spec.kv_bytes) for g in swa], dtype=float
        ),
        swa_window=np.array([float(g.attention.window) for g in swa], dtype=float),
    )


@compiled
def _interp_index(x: float, step: float, n: int) -> tuple[int, float]:
    """Cell index and fraction of ``x`` on a grid ``0, step, 2 step, ...`` of ``n`` points."""
    pos = x / step
    if pos <= 0.0:
        return 0, 0.0
    if pos >= n - 1:
        return n - 2, 1.0
    i = int(pos)
    return i, pos - i


@compiled
def prefill_time(log_t: NDArray[np.float64], uncached: float, cached: float) -> float:
    """Prefill seconds of one request (``log_t`` is one cluster's table); 0 for no tokens."""
    if uncached <= 0.0:
        return 0.0
    iu, fu = _interp_index(np.log2(uncached), _U_STEP, log_t.shape[0])
    if cached > 0.0:
        ic, fc = _interp_index(np.log2(1.0 + cached), _C_STEP, log_t.shape[1])
    else:  # what _interp_index gives for log2(1 + 0) = 0, without the libm call
        ic, fc = 0, 0.0
    a = log_t[iu, ic] * (1.0 - fc) + log_t[iu, ic + 1] * fc
    b = log_t[iu + 1, ic] * (1.0 - fc) + log_t[iu + 1, ic + 1] * fc
    return np.exp(a * (1.0 - fu) + b * fu)


@compiled
def decode_step_time(log_t: NDArray[np.float64], batch: int, context_tokens: float) -> float:
    """Seconds of one decode step of ``batch`` sequences holding ``context_tokens`` in all."""
    if batch <= 0:
        return 0.0
    per_seq = max(context_tokens / batch, 1.0)
    ix, fx = _interp_index(np.log2(per_seq), _X_STEP, log_t.shape[1])
    return np.exp(log_t[batch, ix] * (1.0 - fx) + log_t[batch, ix + 1] * fx)


@compiled
def kv_bytes(
    fixed: float,
    per_token: float,
    swa_per_token: NDArray[np.float64],
    swa_window: NDArray[np.float64],
    tokens: float,
) -> float:
    """KV-cache bytes of a sequence of ``tokens`` tokens (exact, see module docstring)."""
    out = fixed + per_token * tokens
    for g in range(swa_per_token.shape[0]):
        out += swa_per_token[g] * min(tokens, swa_window[g])
    return out
