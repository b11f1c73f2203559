"""Model catalog: LLM architectures and the quantities derived from them.

A :class:`ModelSpec` is built from the architecture alone (layer counts, attention type per
layer, MLP or mixture-of-experts shape, bytes per weight and per KV element). From it follow
the parameter counts, the FLOPs of a prefill or decode pass, the weight bytes a pass reads and
the KV-cache size of a prompt. Nothing here is a timing; timings live in
:mod:`prfaas_env.costmodel`.

Conventions: token counts are NumPy arrays or scalars (vectorised); FLOPs count a
multiply-add as 2; bytes are bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from prfaas_env.errors import (
    ConfigError,
    Registry,
    check_keys,
    number,
)

ATTENTION_TYPES = ("gqa", "swa", "mla", "linear")
MLP_TYPES = ("dense", "moe")


@dataclass(frozen=True)
class AttentionSpec:
    """One attention block type.

    ``type`` is ``gqa`` (dense multi/grouped-query), ``swa`` (sliding window of ``window``
    tokens), ``mla`` (multi-head latent attention: the cache holds a ``kv_lora_rank`` latent plus
    a ``qk_rope_head_dim`` key per token) or ``linear`` (a constant-size recurrent state of
    ``num_heads x head_dim x head_dim`` elements of ``state_bytes`` bytes, no per-token cache).
    """

    type: str
    num_heads: int
    num_kv_heads: int = 0
    head_dim: int = 0
    window: int = 0
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    state_bytes: float = 4.0

    def params(self, hidden: int) -> float:
        """Weight parameters of one layer of this block."""
        h, n = hidden, self.num_heads
        if self.type in ("gqa", "swa"):
            d = self.head_dim
            return h * n * d + 2 * h * self.num_kv_heads * d + n * d * h
        if self.type == "mla":
            qk = self.qk_nope_head_dim + self.qk_rope_head_dim
            q = (
                (h * self.q_lora_rank + self.q_lora_rank * n * qk)
                if self.q_lora_rank
                else h * n * qk
            )
            kv_a = h * (self.kv_lora_rank + self.qk_rope_head_dim)
            kv_b = self.kv_lora_rank * n * (self.qk_nope_head_dim + self.v_head_dim)
            return q + kv_a + kv_b + n * self.v_head_dim * h
        # linear (KDA-like): q, k, v, output and output-gate projections, low-rank forget gate,
        # per-head beta.
        d = self.head_dim
        return 4 * h * n * d + 2 * (h * d + d * n * d) + h * n

    def kv_bytes_per_token(self, kv_bytes: float) -> float:
        """Per-token KV-cache bytes of one layer (0 for linear attention)."""
        if self.type in ("gqa", "swa"):
            return 2 * self.num_kv_heads * self.head_dim * kv_bytes
        if self.type == "mla":
            return (self.kv_lora_rank + self.qk_rope_head_dim) * kv_bytes
        return 0.0

    def state_bytes_per_request(self) -> float:
        """Fixed per-request state of one layer in bytes (linear attention only)."""
        if self.type == "linear":
            return self.num_heads * self.head_dim * self.head_dim * self.state_bytes
        return 0.0

    def prefill_pair_flops(self) -> float:
        """FLOPs per (query, key) pair in one layer during prefill (scores plus weighted sum)."""
        if self.type in ("gqa", "swa"):
            return 2 * self.num_heads * 2 * self.head_dim
        if self.type == "mla":
            qk = self.qk_nope_head_dim + self.qk_rope_head_dim
            return 2 * self.num_heads * (qk + self.v_head_dim)
        return 0.0

    def decode_pair_flops(self) -> float:
        """FLOPs per (query, key) pair during decode; MLA runs in the absorbed latent form."""
        if self.type == "mla":
            return 2 * self.num_heads * (2 * self.kv_lora_rank + self.qk_rope_head_dim)
        return self.prefill_pair_flops()

    def linear_flops_per_token(self) -> float:
        """FLOPs per token of the recurrent-state update and read-out (linear attention)."""
        if self.type == "linear":
            return 4 * self.num_heads * self.head_dim * self.head_dim
        return 0.0


@dataclass(frozen=True)
class MLPSpec:
    """One feed-forward block type: ``dense`` (gated or not) or ``moe`` (routed experts)."""

    type: str
    intermediate_size: int = 0
    gated: bool = True
    num_experts: int = 0
    experts_per_token: int = 0
    shared_experts: int = 0
    expert_intermediate_size: int = 0

    def _ffn(self, hidden: int, inter: int) -> float:
        return (3 if self.gated else 2) * hidden * inter

    def dense_params(self, hidden: int) -> float:
        """Parameters every token uses (dense MLP, or shared experts plus router)."""
        if self.type == "dense":
            return self._ffn(hidden, self.intermediate_size)
        return self.shared_experts * self._ffn(hidden, self.expert_intermediate_size) + (
            hidden * self.num_experts
        )

    def expert_params(self, hidden: int) -> float:
        """Parameters of one routed expert (0 for a dense MLP)."""
        if self.type == "dense":
            return 0.0
        return self._ffn(hidden, self.expert_intermediate_size)


@dataclass(frozen=True)
class LayerGroup:
    """``count`` layers that share one attention block type and one MLP block type."""

    count: int
    attention: AttentionSpec
    mlp: MLPSpec


@dataclass(frozen=True)
class ModelSpec:
    """An LLM architecture and its derived costs.

    Attributes:
        name: catalog key.
        hidden_size: model width.
        vocab_size: vocabulary size.
        tie_embeddings: whether the LM head shares the embedding matrix.
        weight_bytes: bytes per (non-expert) parameter as served.
        expert_weight_bytes: bytes per routed-expert parameter.
        kv_bytes: bytes per KV-cache element.
        groups: the layer groups.
        published_total_b, published_active_b: published parameter counts, billions.
        calibration_proxy: a model with the same architecture whose end-to-end calibration
            this one uses when it has none of its own.
        backend_model: the model's name in aiconfigurator's model configurations
            (``aic_model`` in the YAML), or None if it has none.
    """

    name: str
    hidden_size: int
    vocab_size: int
    tie_embeddings: bool
    weight_bytes: float
    expert_weight_bytes: float
    kv_bytes: float
    groups: tuple[LayerGroup, ...]
    published_total_b: float | None = None
    published_active_b: float | None = None
    description: str = ""
    source: str = ""
    calibration_proxy: str | None = None
    backend_model: str | None = None

    # ---- parameter counts -------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """Number of transformer layers."""
        return sum(g.count for g in self.groups)

    def layer_count(self, attention_type: str) -> int:
        """Number of layers whose attention block is of ``attention_type``."""
        return sum(g.count for g in self.groups if g.attention.type == attention_type)

    @property
    def embedding_params(self) -> float:
        """Embedding plus (untied) LM-head parameters."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_embeddings else 2)

    @property
    def lm_head_params(self) -> float:
        """Parameters of the output projection (used once per generated token)."""
        return float(self.vocab_size * self.hidden_size)

    @cached_property
    def dense_layer_params(self) -> float:
        """Parameters in the layers that every token uses (attention, dense MLP, shared experts)."""
        h = self.hidden_size
        return float(
            sum(g.count * (g.attention.params(h) + g.mlp.dense_params(h)) for g in self.groups)
        )

    @cached_property
    def expert_params_total(self) -> float:
        """Parameters of all routed experts of all layers."""
        h = self.hidden_size
        return float(sum(g.count * g.mlp.num_experts * g.mlp.expert_params(h) for g in self.groups))

    @cached_property
    def total_params(self) -> float:
        """All parameters."""
        return self.dense_layer_params + self.expert_params_total + self.embedding_params

    @cached_property
    def active_params(self) -> float:
        """Parameters used per token (routed experts counted ``experts_per_token`` times)."""
        return self.dense_layer_params + self.routed_active_params + self.embedding_params

    @cached_property
    def routed_active_params(self) -> float:
        """Routed-expert parameters used per token (``experts_per_token`` experts per layer)."""
        h = self.hidden_size
        return float(
            sum(g.count * g.mlp.experts_per_token * g.mlp.expert_params(h) for g in self.groups)
        )

    @cached_property
    def dense_matmul_flops_per_token(self) -> float:
        """Matmul FLOPs per token of the weights every token uses (plus linear-attention state
        updates); excludes routed experts and the LM head."""
        lin_state = sum(g.count * g.attention.linear_flops_per_token() for g in self.groups)
        return 2.0 * self.dense_layer_params + lin_state

    @cached_property
    def expert_matmul_flops_per_token(self) -> float:
        """Matmul FLOPs per token in routed experts."""
        return 2.0 * self.routed_active_params

    @cached_property
    def weight_bytes_total(self) -> float:
        """Bytes of all weights as served."""
        return (
            self.dense_layer_params + self.embedding_params
        ) * self.weight_bytes + self.expert_params_total * self.expert_weight_bytes

    # ---- KV cache ---------------------------------------------------------------------
    @cached_property
    def kv_bytes_per_token(self) -> float:
        """KV-cache bytes per token over all layers with a full-length cache (GQA, MLA)."""
        return float(
            sum(
                g.count * g.attention.kv_bytes_per_token(self.kv_bytes)
                for g in self.groups
                if g.attention.type in ("gqa", "mla")
            )
        )

    @cached_property
    def state_bytes_per_request(self) -> float:
        """Fixed per-request bytes: the recurrent state of all linear-attention layers."""
        return float(sum(g.count * g.attention.state_bytes_per_request() for g in self.groups))

    def kv_bytes_for(self, tokens: ArrayLike) -> NDArray[np.float64]:
        """KV-cache bytes held for a sequence of ``tokens`` tokens (vectorised).

        Full-attention layers hold every token; sliding-window layers hold at most ``window``
        tokens; linear-attention layers hold a constant state.
        """
        n = np.asarray(tokens, dtype=np.float64)
        out = self.kv_bytes_per_token * n + self.state_bytes_per_request
        for g in self.groups:
            if g.attention.type == "swa":
                per = g.count * g.attention.kv_bytes_per_token(self.kv_bytes)
                out = out + per * np.minimum(n, g.attention.window)
        return out

    # ---- FLOPs and bytes of a pass ----------------------------------------------------
    def _pairs(self, n: NDArray[np.float64], c: NDArray[np.float64], window: float) -> NDArray:
        """Causal (query, key) pairs: n new tokens after c cached ones, keys capped at window."""
        full = n * c + n * (n + 1) / 2
        if window <= 0:
            return full
        k = np.clip(window - c, 0.0, n)  # queries whose whole prefix fits in the window
        return k * c + k * (k + 1) / 2 + (n - k) * window

    def prefill_flops(
        self, new_tokens: ArrayLike, cached_tokens: ArrayLike = 0
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """FLOPs of prefilling ``new_tokens`` after ``cached_tokens`` already in the cache.

        Returns ``(matmul_flops, attention_flops)``: weight matmuls (linear in new tokens, plus
        the linear-attention state update) and attention score/value work (grows with the
        product of new tokens and context).
        """
        n = np.asarray(new_tokens, dtype=np.float64)
        c = np.asarray(cached_tokens, dtype=np.float64)
        per_token = self.dense_matmul_flops_per_token + self.expert_matmul_flops_per_token
        matmul = per_token * n + 2 * self.lm_head_params * (n > 0)
        attn = np.zeros(np.broadcast(n, c).shape)
        for g in self.groups:
            a = g.attention
            if a.type in ("gqa", "mla", "swa"):
                w = a.window if a.type == "swa" else 0
                attn = attn + g.count * a.prefill_pair_flops() * self._pairs(n, c, w)
        matmul, attn = np.broadcast_arrays(matmul, attn)
        return matmul, attn

    def decode_flops(
        self, batch: ArrayLike, context_tokens: ArrayLike
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """FLOPs of one decode step for ``batch`` sequences holding ``context_tokens`` in total.

        Returns ``(matmul_flops, attention_flops)``.
        """
        b = np.asarray(batch, dtype=np.float64)
        ctx = np.asarray(context_tokens, dtype=np.float64)
        per_token = self.dense_matmul_flops_per_token + self.expert_matmul_flops_per_token
        matmul = (per_token + 2 * self.lm_head_params) * b
        attn = np.zeros(np.broadcast(b, ctx).shape)
        for g in self.groups:
            a = g.attention
            if a.type in ("gqa", "mla"):
                attn = attn + g.count * a.decode_pair_flops() * ctx
            elif a.type == "swa":
                attn = attn + g.count * a.decode_pair_flops() * np.minimum(ctx, b * a.window)
        matmul, attn = np.broadcast_arrays(matmul, attn)
        return matmul, attn

    def weight_bytes_read(self, tokens_in_pass: ArrayLike) -> NDArray[np.float64]:
        """Weight bytes one forward pass over ``tokens_in_pass`` tokens reads from memory.

        Dense weights are read once per pass. For routed experts the expected number of
        distinct experts a layer touches with T tokens is ``E * (1 - (1 - k/E) ** T)`` under
        uniform routing (an assumption; real routing is skewed, which touches fewer).
        """
        t = np.asarray(tokens_in_pass, dtype=np.float64)
        h = self.hidden_size
        dense = (self.dense_layer_params + self.lm_head_params) * self.weight_bytes
        experts = np.zeros_like(t)
        for g in self.groups:
            m = g.mlp
            if m.type == "moe":
                e = float(m.num_experts)
                touched = e * (1.0 - (1.0 - m.experts_per_token / e) ** np.maximum(t, 0.0))
                experts = experts + g.count * touched * m.expert_params(h)
        return dense + experts * self.expert_weight_bytes

    def decode_kv_bytes_read(self, batch: ArrayLike, context_tokens: ArrayLike) -> NDArray:
        """KV and state bytes one decode step reads (states are also written back)."""
        b = np.asarray(batch, dtype=np.float64)
        ctx = np.asarray(context_tokens, dtype=np.float64)
        out = self.kv_bytes_per_token * ctx + 2 * self.state_bytes_per_request * b
        for g in self.groups:
            if g.attention.type == "swa":
                per = g.count * g.attention.kv_bytes_per_token(self.kv_bytes)
                out = out + per * np.minimum(ctx, b * g.attention.window)
        return out

    def kernels_per_layer(self) -> float:
        """Average GPU kernels launched per layer in one pass (for fixed launch latency)."""
        total = 0.0
        for g in self.groups:
            attn = 4.0  # fused QKV projection, norm, attention, output projection
            # dense: gate-up, activation, down; MoE adds router, dispatch and combine
            mlp = 3.0 if g.mlp.type == "dense" else 6.0
            total += g.count * (attn + mlp)
        return total / max(self.num_layers, 1)


# ---- catalog loading ------------------------------------------------------------------
_ATTN_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "gqa": (("num_heads", "num_kv_heads", "head_dim"), ()),
    "swa": (("num_heads", "num_kv_heads", "head_dim", "window"), ()),
    "mla": (
        ("num_heads", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"),
        ("q_lora_rank",),
    ),
    "linear": (("num_heads", "head_dim"), ("state_bytes",)),
}


def _parse_attention(raw: Any, where: str) -> AttentionSpec:
    if not isinstance(raw, Mapping) or "type" not in raw:
        raise ConfigError(
            f"{where}: expected a mapping with 'type' in {', '.join(ATTENTION_TYPES)}"
        )
    kind = raw["type"]
    if kind not in _ATTN_FIELDS:
        raise ConfigError(
            f"{where}.type: {kind!r} is not allowed; allowed: {', '.join(ATTENTION_TYPES)}"
        )
    req, opt = _ATTN_FIELDS[kind]
    check_keys(raw, where, ("type", *req), opt)
    kw: dict[str, Any] = {"type": kind}
    for k in req + opt:
        if k == "state_bytes":
            kw[k] = number(raw, k, where, minimum=0, exclusive_minimum=True, default=4.0)
        else:
            kw[k] = number(raw, k, where, minimum=0, integer=True, default=0)
    if kw.get("num_heads", 0) < 1:
        raise ConfigError(f"{where}.num_heads: must be >= 1")
    return AttentionSpec(**kw)


def _parse_mlp(raw: Any, where: str) -> MLPSpec:
    if not isinstance(raw, Mapping) or raw.get("type") not in MLP_TYPES:
        raise ConfigError(f"{where}: expected a mapping with 'type' in {', '.join(MLP_TYPES)}")
    if raw["type"] == "dense":
        check_keys(raw, where, ("type", "intermediate_size"), ("gated",))
        return MLPSpec(
            type="dense",
            intermediate_size=number(raw, "intermediate_size", where, minimum=1, integer=True),
            gated=bool(raw.get("gated", True)),
        )
    check_keys(
        raw,
        where,
        ("type", "num_experts", "experts_per_token", "expert_intermediate_size"),
        ("shared_experts", "gated"),
    )
    e = number(raw, "num_experts", where, minimum=1, integer=True)
    k = number(raw, "experts_per_token", where, minimum=1, maximum=e, integer=True)
    return MLPSpec(
        type="moe",
        num_experts=e,
        experts_per_token=k,
        shared_experts=number(raw, "shared_experts", where, minimum=0, integer=True, default=0),
        expert_intermediate_size=number(
            raw, "expert_intermediate_size", where, minimum=1, integer=True
        ),
        gated=bool(raw.get("gated", True)),
    )


_MODEL_REQUIRED = (
    "hidden_size",
    "vocab_size",
    "weight_bytes",
    "kv_bytes",
    "attention",
    "mlp",
    "layers",
)
_MODEL_OPTIONAL = (
    "description",
    "source",
    "published",
    "tie_embeddings",
    "expert_weight_bytes",
    "calibration_proxy",
    "aic_model",
)


def _parse_model(name: str, raw: Any, where: str) -> ModelSpec:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping of model fields")
    check_keys(raw, where, _MODEL_REQUIRED, _MODEL_OPTIONAL)
    for key in ("attention", "mlp"):
        if not isinstance(raw[key], Mapping) or not raw[key]:
            raise ConfigError(f"{where}.{key}: expected a non-empty mapping of name -> block")
    attn = {
        str(k): _parse_attention(v, f"{where}.attention.{k}") for k, v in raw["attention"].items()
    }
    mlp = {str(k): _parse_mlp(v, f"{where}.mlp.{k}") for k, v in raw["mlp"].items()}
    layers = raw["layers"]
    if not isinstance(layers, list) or not layers:
        raise ConfigError(f"{where}.layers: expected a non-empty list of {{count, attention, mlp}}")
    groups = []
    for i, lg in enumerate(layers):
        lw = f"{where}.layers[{i}]"
        if not isinstance(lg, Mapping):
            raise ConfigError(f"{lw}: expected a mapping {{count, attention, mlp}}")
        check_keys(lg, lw, ("count", "attention", "mlp"))
        if lg["attention"] not in attn:
            raise ConfigError(
                f"{lw}.attention: {lg['attention']!r} not defined; defined: {', '.join(attn)}"
            )
        if lg["mlp"] not in mlp:
            raise ConfigError(f"{lw}.mlp: {lg['mlp']!r} not defined; defined: {', '.join(mlp)}")
        groups.append(
            LayerGroup(
                number(lg, "count", lw, minimum=1, integer=True),
                attn[lg["attention"]],
                mlp[lg["mlp"]],
            )
        )
    pub = raw.get("published") or {}
    wb = number(raw, "weight_bytes", where, minimum=0, exclusive_minimum=True)
    return ModelSpec(
        name=name,
        hidden_size=number(raw, "hidden_size", where, minimum=1, integer=True),
        vocab_size=number(raw, "vocab_size", where, minimum=1, integer=True),
        tie_embeddings=bool(raw.get("tie_embeddings", False)),
        weight_bytes=wb,
        expert_weight_bytes=number(
            raw, "expert_weight_bytes", where, minimum=0, exclusive_minimum=True, default=wb
        ),
        kv_bytes=number(raw, "kv_bytes", where, minimum=0, exclusive_minimum=True),
        groups=tuple(groups),
        published_total_b=pub.get("total_b"),
        published_active_b=pub.get("active_b"),
        description=str(raw.get("description", "")).strip(),
        source=str(raw.get("source", "")),
        calibration_proxy=raw.get("calibration_proxy"),
        backend_model=None if raw.get("aic_model") is None else str(raw["aic_model"]),
    )


_REGISTRY: Registry[ModelSpec] = Registry("model", "models", _parse_model)


def parse_model_file(path: str | Path) -> dict[str, ModelSpec]:
    """Parse a model catalog YAML file (top-level key ``models``) into specs keyed by name."""
    return _REGISTRY.parse_file(path)


_REGISTRY.add(
    parse_model_file(Path(str(resources.files("prfaas_env") / "catalog" / "models.yaml")))
)


def register_models(path: str | Path) -> list[str]:
    """Add the models of a user YAML file (same format as the shipped catalog)."""
    return _REGISTRY.add(parse_model_file(path))


def model_names() -> list[str]:
    """Names of all known models (shipped and registered)."""
    return _REGISTRY.names()


def get_model(name: str | ModelSpec) -> ModelSpec:
    """Look up a model by catalog name (case-insensitive).

    Raises:
        UnknownNameError: the name is not known; the message lists the known names.
    """
    return name if isinstance(name, ModelSpec) else _REGISTRY.get(name)
