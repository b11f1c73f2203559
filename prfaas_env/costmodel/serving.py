"""How a cluster serves its model: engine backend, precision, parallelism and serving overhead.

A :class:`ServingSpec` is the per-cluster ``serving:`` mapping of a scenario file (see
docs/costmodel.md)::

    serving:
      backend: trtllm          # trtllm | vllm | sglang (measured kernel databases), or none
      version: current         # a version the backend's database has, or current/previous/next
      weights: fp8             # GEMM weight precision (bf16, fp8, fp8_block, nvfp4, int4_wo, ...)
      moe_weights: fp8_block   # routed-expert precision (default: the backend's choice)
      kv_cache: fp8            # KV-cache precision: bf16 or fp8
      tp: 8                    # tensor parallel (attention)
      pp: 1                    # pipeline parallel
      attention_dp: 1          # attention data parallel (ranks with their own batch)
      moe_tp: 1                # expert tensor parallel    (moe_tp * moe_ep = tp * attention_dp)
      moe_ep: 8                # expert parallel

Every key is optional. Without ``backend`` the cost model is the fitted roofline of
:mod:`prfaas_env.costmodel.kernels` and :mod:`prfaas_env.costmodel.stack`, exactly as before
this mapping existed; precision keys then change the bytes the roofline reads and the KV
cache holds. With ``backend`` the backend's measured databases answer what they cover.

:class:`ServingOverhead` holds what kernels do not see (per-request fixed cost, scheduler
overhead per engine step and per sequence in it, the decode steps before the first token);
its fitted values live in ``calibration/serving_overhead.json`` (written by
``python -m prfaas_env.calibration.validate``). :class:`VersionScale` holds the measured step
time of a backend version the kernel databases lack on a GPU (same file, ``version_scale``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from prfaas_env.architecture import ModelSpec
from prfaas_env.errors import ConfigError, check_keys, number

BACKENDS = ("trtllm", "vllm", "sglang")
# User-facing precision names -> the backend's quantisation mode names (aiconfigurator's).
WEIGHT_PRECISIONS = {
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp8": "fp8",
    "fp8_block": "fp8_block",
    "fp8_static": "fp8_static",
    "nvfp4": "nvfp4",
    "fp4": "nvfp4",
    "int4_wo": "int4_wo",
    "int4": "int4_wo",
    "int8_wo": "int8_wo",
    "w4afp8": "w4afp8",
}
KV_PRECISIONS = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp8": "fp8", "int8": "int8"}
# Bytes per weight / KV element of each backend mode (nvfp4: 4-bit values plus one FP8 scale
# per 16 values, as aiconfigurator counts them).
MODE_BYTES = {
    "bfloat16": 2.0,
    "fp8": 1.0,
    "fp8_block": 1.0,
    "fp8_static": 1.0,
    "int8_wo": 1.0,
    "int8": 1.0,
    "nvfp4": 9.0 / 16.0,
    "int4_wo": 0.5,
    "w4afp8": 0.5,
}
SERVING_KEYS = (
    "backend",
    "version",
    "weights",
    "moe_weights",
    "kv_cache",
    "tp",
    "pp",
    "attention_dp",
    "moe_tp",
    "moe_ep",
)
OVERHEAD_FILE = Path(__file__).resolve().parents[1] / "calibration" / "serving_overhead.json"


@dataclass(frozen=True)
class ServingSpec:
    """Engine backend, precision and parallelism of one cluster's instances.

    Attributes:
        backend: ``trtllm``, ``vllm``, ``sglang``, or ``None`` (fitted roofline only).
        version: backend version (a literal version of its database or an alias
            ``current``/``previous``/``next``); ``None`` means ``current``.
        weights: GEMM weight precision as a backend mode name (``bfloat16``, ``fp8``, ...);
            ``None`` keeps the model's catalog precision.
        moe_weights: routed-expert weight precision (mode name), ``None`` as for weights.
        kv_cache: KV-cache precision (mode name); ``None`` keeps the catalog's.
        tp, pp, attention_dp: tensor, pipeline and attention-data parallel degrees;
            ``tp * pp * attention_dp`` GPUs make one instance. ``tp = None`` means all of
            the instance's GPUs (divided by ``pp * attention_dp``).
        moe_tp, moe_ep: expert tensor and expert parallel degrees; their product equals
            ``tp * attention_dp``. ``None`` means pure tensor parallel experts.
    """

    backend: str | None = None
    version: str | None = None
    weights: str | None = None
    moe_weights: str | None = None
    kv_cache: str | None = None
    tp: int | None = None
    pp: int = 1
    attention_dp: int = 1
    moe_tp: int | None = None
    moe_ep: int | None = None

    def resolved(self, gpus_per_instance: int, is_moe: bool, where: str) -> ServingSpec:
        """This spec with ``tp``, ``moe_tp`` and ``moe_ep`` filled in for an instance of
        ``gpus_per_instance`` GPUs; raises ConfigError naming ``where`` if they disagree."""
        tp = self.tp
        if tp is None:
            width = self.pp * self.attention_dp
            if gpus_per_instance % width:
                raise ConfigError(
                    f"{where}.serving: gpus_per_instance {gpus_per_instance} is not a multiple "
                    f"of pp * attention_dp = {width}"
                )
            tp = gpus_per_instance // width
        if tp * self.pp * self.attention_dp != gpus_per_instance:
            raise ConfigError(
                f"{where}.serving: tp * pp * attention_dp = {tp} * {self.pp} * "
                f"{self.attention_dp} = {tp * self.pp * self.attention_dp} GPUs, but the "
                f"instance has gpus_per_instance = {gpus_per_instance}"
            )
        attn_width = tp * self.attention_dp
        moe_tp, moe_ep = self.moe_tp, self.moe_ep
        if not is_moe and (moe_tp not in (None, 1) or moe_ep not in (None, 1)):
            if (moe_tp or 1) * (moe_ep or 1) != attn_width:
                raise ConfigError(
                    f"{where}.serving.moe_ep: the model has no mixture-of-experts layers; "
                    "leave moe_tp and moe_ep unset"
                )
        if moe_tp is None and moe_ep is None:
            moe_tp, moe_ep = attn_width, 1
        elif moe_tp is None:
            moe_tp = attn_width // moe_ep if attn_width % moe_ep == 0 else 0
        elif moe_ep is None:
            moe_ep = attn_width // moe_tp if attn_width % moe_tp == 0 else 0
        if moe_tp * moe_ep != attn_width:
            raise ConfigError(
                f"{where}.serving.moe_ep: moe_tp * moe_ep must equal tp * attention_dp = "
                f"{attn_width}; got moe_tp = {self.moe_tp}, moe_ep = {self.moe_ep}"
            )
        return replace(self, tp=tp, moe_tp=moe_tp, moe_ep=moe_ep)

    def apply_precision(self, model: ModelSpec) -> ModelSpec:
        """``model`` with the bytes per weight and per KV element this spec serves it at."""
        changes: dict[str, float] = {}
        if self.weights is not None:
            changes["weight_bytes"] = MODE_BYTES[self.weights]
            if self.moe_weights is None:
                changes["expert_weight_bytes"] = MODE_BYTES[self.weights]
        if self.moe_weights is not None:
            changes["expert_weight_bytes"] = MODE_BYTES[self.moe_weights]
        if self.kv_cache is not None:
            changes["kv_bytes"] = MODE_BYTES[self.kv_cache]
        if not changes or all(getattr(model, k) == v for k, v in changes.items()):
            return model
        return replace(model, **changes)

    def label(self) -> str:
        """Short description, e.g. ``trtllm current, tp8 ep8, fp8 weights, fp8 KV``."""
        parts = [f"{self.backend or 'fitted roofline'}"]
        if self.backend:
            parts[0] += f" {self.version or 'current'}"
        par = f"tp{self.tp}"
        if self.pp > 1:
            par += f" pp{self.pp}"
        if self.attention_dp > 1:
            par += f" adp{self.attention_dp}"
        if self.moe_ep and self.moe_ep > 1:
            par += f" ep{self.moe_ep}"
        parts.append(par)
        if self.weights:
            parts.append(f"{self.weights} weights")
        if self.moe_weights:
            parts.append(f"{self.moe_weights} experts")
        if self.kv_cache:
            parts.append(f"{self.kv_cache} KV")
        return ", ".join(parts)


def _choice(raw: Mapping[str, Any], key: str, where: str, allowed: Mapping[str, str]) -> str | None:
    if raw.get(key) is None:
        return None
    value = str(raw[key]).lower()
    if value not in allowed:
        raise ConfigError(
            f"{where}.{key}: {raw[key]!r} is not a known precision; allowed: "
            f"{', '.join(sorted(allowed))}"
        )
    return allowed[value]


def parse_serving(raw: Any, where: str) -> ServingSpec:
    """Parse a cluster's ``serving:`` mapping; errors name ``where`` and the key.

    Only the form is checked here; whether the backend has data for the combination is
    checked when the cost model is built (:mod:`prfaas_env.costmodel.aic`).
    """
    if raw is None:
        return ServingSpec()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping with keys {', '.join(SERVING_KEYS)}")
    check_keys(raw, where, [], SERVING_KEYS)
    backend = raw.get("backend")
    if backend is not None:
        backend = str(backend).lower()
        if backend in ("none", "roofline", "fitted"):
            backend = None
        elif backend not in BACKENDS:
            raise ConfigError(
                f"{where}.backend: {raw['backend']!r} is not known; allowed: "
                f"{', '.join(BACKENDS)}, none"
            )
    version = raw.get("version")
    if version is not None and backend is None:
        raise ConfigError(f"{where}.version: set only together with a backend")
    degree: dict[str, Any] = {}
    for key in ("tp", "pp", "attention_dp", "moe_tp", "moe_ep"):
        degree[key] = number(raw, key, where, minimum=1, maximum=1024, integer=True, default=None)
    return ServingSpec(
        backend=backend,
        version=None if version is None else str(version),
        weights=_choice(raw, "weights", where, WEIGHT_PRECISIONS),
        moe_weights=_choice(raw, "moe_weights", where, WEIGHT_PRECISIONS),
        kv_cache=_choice(raw, "kv_cache", where, KV_PRECISIONS),
        tp=degree["tp"],
        pp=degree["pp"] or 1,
        attention_dp=degree["attention_dp"] or 1,
        moe_tp=degree["moe_tp"],
        moe_ep=degree["moe_ep"],
    )


# ---- serving overhead ---------------------------------------------------------------------
@dataclass(frozen=True)
class ServingOverhead:
    """Serving costs the kernels do not see, for one backend and deployment mode.

    Attributes:
        request_s: fixed cost per request before its first token (HTTP and tokenisation,
            scheduling, sampling and detokenising the first token), s.
        step_s: scheduler and framework time per engine step (adds to every step), s.
        per_sequence_step_s: per-step cost per sequence in the batch (bookkeeping,
            sampling, detokenisation), s.
        first_token_decode_steps: decode steps a request waits for before its first token
            is returned (0 when the prefill pass emits it; 1 when disaggregated serving
            hands the request to a decode instance that emits it).
        step_scale: measured engine-step time over the kernel databases' step time (the
            databases are of one backend version; the measurements of others).
        prefill_scale: the same for the attention work of prefill.
        frontend_s: time the serving frontend (HTTP, tokenisation) spends on each request
            before the engine sees it, one request at a time (the simulator queues requests
            for it at a co-located cluster), s.
        source: where the values come from (fit and its data, or "none").
    """

    request_s: float = 0.0
    step_s: float = 0.0
    per_sequence_step_s: float = 0.0
    first_token_decode_steps: int = 0
    step_scale: float = 1.0
    prefill_scale: float = 1.0
    frontend_s: float = 0.0
    source: str = "none: no serving overhead (kernel or fitted end-to-end times only)"

    def step_time_s(self, batch: Any) -> Any:
        """Overhead of one engine step of ``batch`` sequences, s."""
        return self.step_s + self.per_sequence_step_s * batch

    def to_json(self) -> dict[str, Any]:
        """Plain-data form for ``serving_overhead.json``."""
        return asdict(self)


NO_OVERHEAD = ServingOverhead()


@lru_cache(maxsize=4)
def _overhead_doc(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        return {}
    return json.loads(p.read_text(encoding="utf-8"))


def reload_overheads() -> None:
    """Forget the fitted overheads read so far (after the fit rewrote their file)."""
    _overhead_doc.cache_clear()


@dataclass(frozen=True)
class VersionScale:
    """Step time of a backend version the kernel databases do not have on a GPU, measured in
    end-to-end runs of that version, over the database version's kernel step time.

    A cluster whose ``serving.version`` names such a version is served from the database
    version's tables with every kernel time multiplied by ``step_scale`` (it multiplies the
    serving overhead's own :attr:`ServingOverhead.step_scale`).

    Attributes:
        database_version: the version of the kernel tables it scales (a literal version).
        step_scale: measured step time over the tables' step time (dimensionless).
        runs: the measured runs it was fitted on.
        source: how it was fitted.
    """

    database_version: str
    step_scale: float
    runs: tuple[str, ...] = ()
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        """Plain-data form for ``serving_overhead.json``."""
        return {**asdict(self), "runs": list(self.runs)}


def version_scale(
    backend: str | None, system: str | None, version: str | None, path: Path | None = None
) -> VersionScale | None:
    """The measured :class:`VersionScale` of ``backend`` ``version`` on backend system
    ``system`` (e.g. ``rtx_pro_6000_server``), or None if none was fitted."""
    if backend is None or system is None or version is None:
        return None
    return version_scales(path).get(f"{backend}/{system}/{version}")


def version_scales(path: Path | None = None) -> dict[str, VersionScale]:
    """Every fitted :class:`VersionScale`, by ``backend/system/version``."""
    doc = _overhead_doc(str(path or OVERHEAD_FILE))
    return {
        k: VersionScale(**{**v, "runs": tuple(v.get("runs", ()))})
        for k, v in doc.get("version_scale", {}).items()
    }


def fitted_overhead(
    backend: str | None, mode: str = "agg", model: str | None = None, path: Path | None = None
) -> ServingOverhead:
    """The fitted :class:`ServingOverhead` of ``backend`` in deployment ``mode``
    (``agg``: prefill and decode on the same instances; ``disagg``: separate pools), with
    ``model``'s fitted kernel multiplier as its ``step_scale`` where the fit has one
    (``model_scale``: the backend's end-to-end step time of that model over the databases'
    kernel time).

    Returns :data:`NO_OVERHEAD` without a backend or without a fit for it.
    """
    if backend is None:
        return NO_OVERHEAD
    doc = _overhead_doc(str(path or OVERHEAD_FILE))
    entry = doc.get("overhead", {}).get(f"{backend}/{mode}")
    if entry is None:
        return NO_OVERHEAD
    ov = ServingOverhead(**entry)
    scale = doc.get("model_scale", {}).get(f"{backend}/{mode}", {}).get(model or "")
    if scale is None:
        return ov
    return replace(
        ov,
        step_scale=float(scale),
        source=f"{ov.source}; kernels x {float(scale):.3f} for {model} (fitted to its rows)",
    )
