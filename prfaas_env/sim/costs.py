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

Co-located engines (:func:`tables_for`) compose each engine step as
:meth:`~prfaas_env.costmodel.CostModel.mixed_step_time_s` does, from three more tables per
cluster and two constants, all per attention data-parallel rank:

- ``NA(n)``: the non-attention work (weights, experts, communication) of a pass over ``n``
  tokens, linear interpolation of ``log NA`` over ``log2 n`` (8 points per octave);
- ``PA(n, c)``: the attention of a prefill chunk of ``n`` tokens after ``c`` tokens already
  in the cache (prefill time less its own non-attention work), on the prefill grid;
- ``DA(b, x)``: the decode attention of ``b`` sequences holding ``x`` tokens each (a decode
  step less its non-attention work and serving overhead), on the decode grid;
- the serving overhead of a step, ``step_s + per_sequence_step_s * decodes``.

A step of one rank that prefills chunks ``(n_i, c_i)`` and decodes ``b`` sequences holding
``ctx`` tokens takes ``NA(sum n_i + b) + sum PA(n_i, c_i) + DA(b, ctx / b) + step_s +
per_sequence_step_s * b``. A co-located cluster's prefill table holds the time of a prompt
prefilled alone in chunks of ``max_num_batched_tokens`` (what a router reads as its unloaded
prefill time). Attention parts that the cost model clips to 0 are stored as 1e-12 s.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from prfaas_env.costmodel import CostModel
from prfaas_env.sim.jit import compiled

if TYPE_CHECKING:
    from prfaas_env.sim.topology import Topology

MAX_PROMPT_TOKENS = 262_144  # largest prompt the tables cover (2^18 tokens)
_LOG2_MAX = 18.0
_U_STEP = 1.0 / 8.0  # grid step of log2(uncached tokens)
_C_STEP = 1.0 / 4.0  # grid step of log2(1 + cached tokens)
_X_STEP = 1.0 / 8.0  # grid step of log2(context tokens per sequence)
_N_STEP = 1.0 / 8.0  # grid step of log2(tokens of a pass), co-located non-attention table
_N_LOG2_MAX = 20.0  # largest pass the co-located tables cover (2^20 tokens)
ATTENTION_FLOOR_S = 1e-12  # what a clipped (zero) attention part is stored as


def _empty(*shape: int) -> NDArray[np.float64]:
    return np.zeros(shape)


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
    request_s: NDArray[np.float64] = field(default_factory=lambda: _empty(0))
    frontend_s: NDArray[np.float64] = field(default_factory=lambda: _empty(0))
    co_na_log_t: NDArray[np.float64] = field(default_factory=lambda: _empty(0, 1))
    co_pa_log_t: NDArray[np.float64] = field(default_factory=lambda: _empty(0, 1, 1))
    co_da_log_t: NDArray[np.float64] = field(default_factory=lambda: _empty(0, 1, 1))
    co_step_s: NDArray[np.float64] = field(default_factory=lambda: _empty(0))
    co_seq_s: NDArray[np.float64] = field(default_factory=lambda: _empty(0))


def prefill_grid() -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Grid points of the prefill table: (uncached tokens, cached tokens)."""
    u = 2.0 ** np.arange(0.0, _LOG2_MAX + 1e-9, _U_STEP)
    c = 2.0 ** np.arange(0.0, _LOG2_MAX + 1e-9, _C_STEP) - 1.0
    return u, c


def decode_grid() -> NDArray[np.float64]:
    """Grid points of the decode table's context axis: context tokens per sequence."""
    return 2.0 ** np.arange(0.0, _LOG2_MAX + 1e-9, _X_STEP)


def step_grid() -> NDArray[np.float64]:
    """Grid points of the co-located non-attention table: tokens of a pass."""
    return 2.0 ** np.arange(0.0, _N_LOG2_MAX + 1e-9, _N_STEP)


def build_tables(
    models: list[CostModel],
    max_batches: list[int],
    decode_models: list[CostModel] | None = None,
) -> CostTables:
    """Tabulate ``models[i]`` (cluster i's cost model) with decode rows up to ``max_batches[i]``
    (from ``decode_models[i]`` when given: a PD cluster whose decode pool differs).

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
    dms = models if decode_models is None else decode_models
    for i, (cm, mb) in enumerate(zip(models, max_batches, strict=True)):
        pre[i] = np.log(cm.prefill_time_continuous_s(uu, cc))
        n = np.arange(1, mb + 1, dtype=np.float64)[:, None]
        dec[i, 1 : mb + 1] = np.log(dms[i].decode_step_time_continuous_s(n, n * x[None, :]))
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


def tables_for(
    topology: Topology,
    models: list[CostModel] | None = None,
    decode_models: list[CostModel] | None = None,
) -> CostTables:
    """The cost tables of every cluster of ``topology``: prefill and decode tables as
    :func:`build_tables` (a PD cluster's decode rows from its decode pool), the per-request
    serving overhead of each decoding cluster, and the step tables of co-located engines
    (see the module docstring). ``models`` / ``decode_models`` replace the topology's cost
    models (the same configurations with another serving overhead, for calibration)."""
    cl = topology.clusters
    pre_models = topology.cost_models() if models is None else models
    if decode_models is None:
        decode_models = topology.decode_cost_models() if models is None else models
    dec_models = decode_models
    max_batches = [1 if c.colocated else c.max_batch for c in cl]
    same = all(a is b for a, b in zip(pre_models, dec_models, strict=True))
    base = build_tables(pre_models, max_batches, None if same else dec_models)
    request_s = np.array(
        [dm.overhead.request_s if c.decodes else 0.0 for c, dm in zip(cl, dec_models, strict=True)]
    )
    co = [i for i, c in enumerate(cl) if c.colocated]
    frontend_s = np.array(
        [
            dm.overhead.frontend_s if c.colocated else 0.0
            for c, dm in zip(cl, dec_models, strict=True)
        ]
    )
    if not co:
        return replace(base, request_s=request_s, frontend_s=frontend_s)
    u, cgrid = prefill_grid()
    x = decode_grid()
    nn = step_grid()
    seqs = max(cl[i].max_num_seqs for i in co)
    na = np.zeros((len(cl), nn.size))
    pa = np.zeros((len(cl), u.size, cgrid.size))
    da = np.zeros((len(cl), seqs + 1, x.size))
    step_s = np.zeros(len(cl))
    seq_s = np.zeros(len(cl))
    prefill = base.prefill_log_t.copy()
    uu, cc = np.meshgrid(u, cgrid, indexing="ij")
    for i in co:
        cm = dec_models[i]
        ov = cm.overhead
        ranks = float(cm.prefill_parallelism)
        na[i] = np.log(np.maximum(cm.non_attention_time_s(nn), ATTENTION_FLOOR_S))
        attn = cm.prefill_time_continuous_s(uu, cc) - cm.non_attention_time_s(uu)
        pa[i] = np.log(np.maximum(attn, ATTENTION_FLOOR_S))
        b = np.arange(1, cl[i].max_num_seqs + 1, dtype=np.float64)[:, None]
        whole = cm.decode_step_time_continuous_s(b * ranks, b * ranks * x[None, :])
        attn = whole - ov.step_time_s(b) - cm.non_attention_time_s(b)
        da[i, 1 : cl[i].max_num_seqs + 1] = np.log(np.maximum(attn, ATTENTION_FLOOR_S))
        step_s[i] = ov.step_s
        seq_s[i] = ov.per_sequence_step_s
        _chunked_prefill_table(
            na[i], pa[i], step_s[i], float(cl[i].max_num_batched_tokens), u, cgrid, prefill[i]
        )
    return replace(
        base,
        prefill_log_t=prefill,
        request_s=request_s,
        frontend_s=frontend_s,
        co_na_log_t=na,
        co_pa_log_t=pa,
        co_da_log_t=da,
        co_step_s=step_s,
        co_seq_s=seq_s,
    )


@compiled
def _chunked_prefill_table(
    na_log_t: NDArray[np.float64],
    pa_log_t: NDArray[np.float64],
    step_s: float,
    budget: float,
    u: NDArray[np.float64],
    c: NDArray[np.float64],
    out: NDArray[np.float64],
) -> None:
    """``out[i, j]``: log of the seconds an engine takes to prefill ``u[i]`` tokens after
    ``c[j]`` cached ones alone, in chunks of ``budget`` tokens (one step per chunk)."""
    for i in range(u.shape[0]):
        for j in range(c.shape[0]):
            t = 0.0
            done = 0.0
            while done < u[i]:
                n = min(budget, u[i] - done)
                t += pass_time(na_log_t, n) + prefill_time(pa_log_t, n, c[j] + done) + step_s
                done += n
            out[i, j] = np.log(t)


@compiled
def pass_time(log_t: NDArray[np.float64], tokens: float) -> float:
    """Non-attention seconds of a pass over ``tokens`` tokens (``log_t``: one cluster's
    co-located ``NA`` table); 0 for no tokens."""
    if tokens <= 0.0:
        return 0.0
    i, f = _interp_index(np.log2(tokens), _N_STEP, log_t.shape[0])
    return np.exp(log_t[i] * (1.0 - f) + log_t[i + 1] * f)


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
