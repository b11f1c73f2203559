"""NVIDIA aiconfigurator's measured kernel databases as a cost-model backend.

`aiconfigurator-core <https://pypi.org/project/aiconfigurator-core/>`_ (Apache-2.0) ships
kernel timings measured with TensorRT-LLM, vLLM and SGLang on H100, H200, B200, B300, GB200,
GB300, A100, L40S and RTX PRO 6000, and a compiled estimator composing them into the time of
a prefill pass or a decode step for a given model, parallelism and precision
(``aiconfigurator_core.sdk.EngineHandle``).

This module asks that estimator once per cluster configuration, on fixed grids, when a
scenario loads, and keeps the answers as :class:`BackendTables` (log-time tables the cost
model interpolates; the simulator never calls the backend). Tables are cached on disk by a
digest of everything that determines them (package version, model, system, backend and its
resolved version, parallelism, precision, grids), so a second load neither compiles nor
even imports the package. Lookup order: tables shipped in ``prfaas_env/costmodel/tables/``,
then the user cache (``backend_tables/`` in :func:`prfaas_env.user_cache.cache_root`), then
the backend.

What the backend answers (all per instance, in seconds):

* ``prefill``: one request of ``u`` uncached tokens after ``c`` cached ones
  (``predict_prefill_latency(1, u + c, prefix=c)``);
* ``decode``: one decode step of ``b`` sequences per attention rank, each holding ``x``
  tokens (``decode_step_latency(b, x - 1, 1)``, which evaluates the step at context ``x``);
* ``non_attention``: the weight, MoE and communication part of a pass over ``n`` tokens
  (``mixed_step_breakdown``'s shared part), for steps mixing prefill chunks and decodes.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import json
import logging
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from prfaas_env.costmodel.serving import version_scales
from prfaas_env.errors import ConfigError
from prfaas_env.user_cache import cache_root

PACKAGE = "aiconfigurator-core"
INSTALL_HINT = "pip install 'prfaas-env[aic]' (or: pip install aiconfigurator-core)"
SHIPPED_DIR = Path(__file__).resolve().parent / "tables"
GRID_VERSION = 2  # bump when what a table holds or how it is computed changes
# Grids (log2 axes). Batch and context nodes are rounded to integers (the backend takes ints).
_U_LOG2 = np.arange(0.0, 18.0 + 1e-9, 0.5)  # uncached prefill tokens 1 .. 262144
_C_LOG2 = np.arange(0.0, 18.0 + 1e-9, 1.0)  # log2(1 + cached tokens) 0 .. 18
_B_LOG2 = np.arange(0.0, 12.0 + 1e-9, 0.5)  # decode sequences per rank 1 .. 4096
_X_LOG2 = np.arange(0.0, 18.0 + 1e-9, 0.5)  # context tokens per sequence 1 .. 262144
MAX_BATCH_PER_RANK = 4096


class BackendUnavailable(Exception):
    """The backend cannot answer for this configuration; the fitted model answers instead."""


class BackendDataMissing(ConfigError):
    """The backend's databases lack a kernel this configuration needs (an input error)."""


def installed_version() -> str | None:
    """Version of the installed aiconfigurator-core, or None if it is not installed."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None


def _quiet() -> contextlib.AbstractContextManager:
    """Silence the package's logging and prints while it compiles or answers."""
    logging.getLogger("aiconfigurator_core").setLevel(logging.ERROR)
    return contextlib.redirect_stdout(io.StringIO())


@lru_cache(maxsize=1)
def _package_dir() -> Path:
    import aiconfigurator_core

    return Path(aiconfigurator_core.__file__).resolve().parent


def silicon_sample_path() -> Path:
    """Path of aiconfigurator's ``silicon_sample.csv`` (end-to-end measurements it ships)."""
    return _package_dir() / "systems" / "silicon_sample.csv"


def backend_models() -> list[str]:
    """Model names the installed package has configurations for (``org/name``)."""
    cfg = _package_dir() / "model_configs"
    return sorted(
        p.name.removesuffix("_config.json").replace("--", "/", 1) for p in cfg.glob("*_config.json")
    )


def backend_systems() -> dict[str, list[str]]:
    """Systems with measured data and the backends measured on each."""
    data = _package_dir() / "systems" / "data"
    out: dict[str, list[str]] = {}
    for d in sorted(data.iterdir()):
        gemm = d / "gemm"
        if gemm.is_dir():
            out[d.name] = sorted(p.name for p in gemm.iterdir() if p.is_dir())
    return out


def backend_versions(system: str, backend: str) -> dict[str, str]:
    """Version aliases of ``backend`` on ``system`` (``current``/``previous``/``next`` ->
    literal version), as the package's version slots define them."""
    from aiconfigurator_core.sdk import perf_database

    with _quiet():
        slots = perf_database.get_version_slots(system, backend) or {}
    return {k: v for k, v in slots.items() if v}


@dataclass(frozen=True)
class BackendKey:
    """Everything that determines a configuration's tables (its digest names the cache file).

    Attributes:
        model: backend model name (``org/name``).
        system: backend system name (``h200_sxm``...).
        backend: ``trtllm``, ``vllm`` or ``sglang``.
        version: literal backend version the databases were measured with.
        tp, pp, attention_dp, moe_tp, moe_ep: parallelism.
        gemm_quant, moe_quant, kv_quant: precision modes (None: the backend's default for
            the model's checkpoint).
        package_version: aiconfigurator-core version.
    """

    model: str
    system: str
    backend: str
    version: str
    tp: int
    pp: int
    attention_dp: int
    moe_tp: int
    moe_ep: int
    gemm_quant: str | None
    moe_quant: str | None
    kv_quant: str | None
    package_version: str

    def digest(self) -> str:
        """Hex digest of the key and the grid definition."""
        doc = json.dumps({**asdict(self), "grid": GRID_VERSION}, sort_keys=True)
        return hashlib.sha256(doc.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class BackendTables:
    """The backend's answers on fixed grids (natural log of seconds).

    Attributes:
        key: the configuration.
        prefill_log_t: ``[len(U), len(C)]`` prefill of one request.
        decode_log_t: ``[len(B), len(X)]`` decode step per attention rank.
        non_attention_log_t: ``[len(U)]`` non-attention part of a pass over U tokens.
        u, c, b, x: grid nodes (tokens, cached tokens, sequences per rank, context tokens).
        provenance: the backend's own label of which data answered (e.g. ``silicon``).
    """

    key: BackendKey
    prefill_log_t: NDArray[np.float64]
    decode_log_t: NDArray[np.float64]
    non_attention_log_t: NDArray[np.float64]
    u: NDArray[np.float64]
    c: NDArray[np.float64]
    b: NDArray[np.float64]
    x: NDArray[np.float64]
    provenance: str

    # ---- lookup (vectorised, real-valued arguments) -------------------------------------
    def prefill_s(self, uncached: NDArray, cached: NDArray) -> NDArray[np.float64]:
        """Prefill seconds of one request (``uncached`` > 0)."""
        return np.exp(
            _bilinear(
                self.prefill_log_t,
                np.log2(self.u),
                np.log2(1.0 + self.c),
                np.log2(np.maximum(uncached, 1.0)),
                np.log2(1.0 + np.maximum(cached, 0.0)),
            )
        )

    def decode_s(self, batch_per_rank: NDArray, context_per_seq: NDArray) -> NDArray[np.float64]:
        """Decode-step seconds of ``batch_per_rank`` sequences holding ``context_per_seq``
        tokens each."""
        return np.exp(
            _bilinear(
                self.decode_log_t,
                np.log2(self.b),
                np.log2(self.x),
                np.log2(np.maximum(batch_per_rank, 1.0)),
                np.log2(np.maximum(context_per_seq, 1.0)),
            )
        )

    def non_attention_s(self, tokens: NDArray) -> NDArray[np.float64]:
        """Seconds of the non-attention part of a pass over ``tokens`` tokens."""
        lx = np.log2(self.u)
        return np.exp(np.interp(np.log2(np.maximum(tokens, 1.0)), lx, self.non_attention_log_t))

    # ---- persistence ----------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write the tables as ``.npz`` with the key beside them."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(
            tmp,
            key=json.dumps(asdict(self.key)),
            provenance=self.provenance,
            prefill_log_t=self.prefill_log_t,
            decode_log_t=self.decode_log_t,
            non_attention_log_t=self.non_attention_log_t,
            u=self.u,
            c=self.c,
            b=self.b,
            x=self.x,
        )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> BackendTables:
        """Inverse of :meth:`save`."""
        with np.load(path, allow_pickle=False) as z:
            return cls(
                key=BackendKey(**json.loads(str(z["key"]))),
                provenance=str(z["provenance"]),
                **{
                    k: np.array(z[k])
                    for k in (
                        "prefill_log_t",
                        "decode_log_t",
                        "non_attention_log_t",
                        "u",
                        "c",
                        "b",
                        "x",
                    )
                },
            )


def _bilinear(
    table: NDArray, ax0: NDArray, ax1: NDArray, q0: NDArray, q1: NDArray
) -> NDArray[np.float64]:
    """Bilinear interpolation on a (possibly non-uniform) grid, linear extrapolation off it."""
    q0, q1 = np.broadcast_arrays(np.asarray(q0, float), np.asarray(q1, float))
    i = np.clip(np.searchsorted(ax0, q0, side="right") - 1, 0, ax0.size - 2)
    j = np.clip(np.searchsorted(ax1, q1, side="right") - 1, 0, ax1.size - 2)
    f0 = (q0 - ax0[i]) / (ax0[i + 1] - ax0[i])
    f1 = (q1 - ax1[j]) / (ax1[j + 1] - ax1[j])
    a = table[i, j] * (1 - f1) + table[i, j + 1] * f1
    b = table[i + 1, j] * (1 - f1) + table[i + 1, j + 1] * f1
    return a * (1 - f0) + b * f0


def _int_nodes(log2_axis: NDArray) -> NDArray[np.float64]:
    return np.unique(np.round(2.0**log2_axis)).astype(np.float64)


def cache_dir() -> Path:
    """Folder of the user's table cache (``backend_tables`` in the user cache)."""
    return cache_root() / "backend_tables"


_MEMORY: dict[str, BackendTables] = {}


def cached_tables(key: BackendKey) -> BackendTables | None:
    """Tables for ``key`` from memory, the shipped folder or the user cache, if present."""
    d = key.digest()
    if d in _MEMORY:
        return _MEMORY[d]
    for folder in (SHIPPED_DIR, cache_dir()):
        p = folder / f"{d}.npz"
        if p.is_file():
            try:
                t = BackendTables.load(p)
            except (OSError, ValueError, KeyError):
                continue  # a damaged cache file is rebuilt
            if t.key == key:
                _MEMORY[d] = t
                return t
    return None


# ---- compiling and tabulating -----------------------------------------------------------------
def compile_handle(key: BackendKey) -> Any:
    """An ``EngineHandle`` for ``key`` (raises the package's own errors)."""
    from aiconfigurator_core.sdk import EngineHandle

    with _quiet():
        return EngineHandle.compile(
            key.model,
            key.system,
            key.backend,
            backend_version=key.version,
            tp_size=key.tp,
            pp_size=key.pp,
            attention_dp_size=key.attention_dp,
            moe_tp_size=key.moe_tp,
            moe_ep_size=key.moe_ep,
            gemm_quant_mode=key.gemm_quant,
            moe_quant_mode=key.moe_quant,
            kvcache_quant_mode=key.kv_quant,
            # attention runs at the KV cache's precision when that is set
            fmha_quant_mode=key.kv_quant if key.kv_quant in ("bfloat16", "fp8") else None,
        )


def probe(handle: Any) -> None:
    """One prefill and one decode query: raises if the databases lack a needed kernel."""
    with _quiet():
        handle.predict_prefill_latency(1, 1024, 0)
        handle.decode_step_latency(4, 1023, 1)


def tabulate(key: BackendKey, handle: Any | None = None) -> BackendTables:
    """Evaluate the backend on the grids (about 1,700 calls) and return the tables."""
    h = handle if handle is not None else compile_handle(key)
    u = _int_nodes(_U_LOG2)
    c = np.unique(np.round(2.0**_C_LOG2) - 1.0)
    b = _int_nodes(_B_LOG2)
    x = _int_nodes(_X_LOG2)
    pre = np.empty((u.size, c.size))
    dec = np.empty((b.size, x.size))
    non = np.empty(u.size)
    with _quiet():
        for i, ui in enumerate(u):
            for j, cj in enumerate(c):
                pre[i, j] = h.predict_prefill_latency(1, int(ui + cj), int(cj))
            non[i] = h.mixed_step_breakdown(int(ui), 0, int(ui), 2, 0)[1]
        for i, bi in enumerate(b):
            for j, xj in enumerate(x):
                dec[i, j] = h.decode_step_latency(int(bi), int(max(xj - 1, 1)), 1)
        prov = h.last_provenance() or "silicon"
    ms = 1e-3
    for name, arr in (("prefill", pre), ("decode", dec), ("non-attention", non)):
        if not np.all(np.isfinite(arr) & (arr > 0)):
            raise BackendDataMissing(
                f"{key.backend} {key.version} on {key.system}: the backend returned a "
                f"non-positive or non-finite {name} time for {key.model}"
            )
    return BackendTables(
        key=key,
        prefill_log_t=np.log(pre * ms),
        decode_log_t=np.log(dec * ms),
        non_attention_log_t=np.log(np.maximum(non, 1e-6) * ms),
        u=u,
        c=c,
        b=b,
        x=x,
        provenance=str(prov),
    )


def get_tables(key: BackendKey, handle: Any | None = None) -> BackendTables:
    """Tables for ``key``: from a cache when present, else tabulated and cached on disk."""
    t = cached_tables(key)
    if t is not None:
        return t
    t = tabulate(key, handle)
    try:
        t.save(cache_dir() / f"{key.digest()}.npz")
    except OSError:
        pass  # a read-only home still works, only slower on the next load
    _MEMORY[key.digest()] = t
    return t


# ---- from a cluster's serving spec to tables ---------------------------------------------------
VERSION_ALIASES = ("current", "previous", "next")
# Precisions tried when listing what the backend has data for.
_TRY_WEIGHTS = (None, "bfloat16", "fp8", "fp8_block", "nvfp4", "int4_wo")
_TRY_KV = (None, "bfloat16", "fp8")


def _request(model: str, system: str, spec: Any, version: str, package: str) -> BackendKey:
    return BackendKey(
        model=model,
        system=system,
        backend=spec.backend,
        version=version,
        tp=int(spec.tp),
        pp=int(spec.pp),
        attention_dp=int(spec.attention_dp),
        moe_tp=int(spec.moe_tp),
        moe_ep=int(spec.moe_ep),
        gemm_quant=spec.weights,
        moe_quant=spec.moe_weights,
        kv_quant=spec.kv_cache,
        package_version=package,
    )


def _shipped_match(model: str, system: str, spec: Any) -> BackendTables | None:
    """Shipped or cached tables for this request from any package version (used when the
    package is not installed). A literal version matches only itself; ``current`` matches
    tables of any version (they were made with whatever package was current then); the
    other aliases name a version relative to the installed package, so without it they
    match nothing."""
    want = spec.version or "current"
    if want in VERSION_ALIASES and want != "current":
        return None
    for folder in (SHIPPED_DIR, cache_dir()):
        if not folder.is_dir():
            continue
        for p in sorted(folder.glob("*.npz")):
            try:
                t = BackendTables.load(p)
            except (OSError, ValueError, KeyError):
                continue
            k = t.key
            literal_ok = want == "current" or k.version == want
            probe_key = _request(model, system, spec, k.version, k.package_version)
            if literal_ok and probe_key == k:
                return t
    return None


def resolve_version(system: str, backend: str, requested: str | None, where: str) -> str:
    """Literal version for ``requested`` (an alias or a literal the database lists)."""
    slots = backend_versions(system, backend)
    req = requested or "current"
    if req in VERSION_ALIASES:
        if req not in slots:
            raise ConfigError(
                f"{where}.version: {backend} on {system} has no {req!r} version; available: "
                + ", ".join(f"{k} = {v}" for k, v in slots.items())
            )
        return slots[req]
    if req not in slots.values():
        prefix = f"{backend}/{system}/"
        measured = [k[len(prefix) :] for k in version_scales() if k.startswith(prefix)]
        raise ConfigError(
            f"{where}.version: {backend} on {system} has no data for version {req!r}; "
            "available: "
            + ", ".join(f"{v} ({k})" for k, v in slots.items())
            + "".join(f", {v} (measured step time over the database's)" for v in measured)
        )
    return req


LIST_AVAILABLE = {"on": True}  # validation turns the (slow) listing off


def available_precisions(key: BackendKey) -> list[str]:
    """The (weights, KV cache) precision pairs the backend answers for this configuration."""
    ok: list[str] = []
    if not LIST_AVAILABLE["on"]:
        return ["(not listed)"]
    for w in _TRY_WEIGHTS:
        for kv in _TRY_KV:
            k = BackendKey(**{**asdict(key), "gemm_quant": w, "moe_quant": None, "kv_quant": kv})
            try:
                probe(compile_handle(k))
            except Exception:  # any failure means "no data for this pair"
                continue
            ok.append(f"weights {w or 'default'} / kv_cache {kv or 'default'}")
    return ok


def load_backend(model: Any, gpu: Any, spec: Any, where: str) -> BackendTables:
    """Tables of ``model`` served by ``spec`` (resolved :class:`ServingSpec`) on ``gpu``.

    Raises:
        BackendUnavailable: the backend cannot answer here (package not installed, GPU or
            model without backend data); the caller falls back to the fitted model.
        ConfigError: the request names something the backend does not have (backend on this
            system, version, parallelism, precision): the message lists what it has.
    """
    if gpu.backend_system is None:
        raise BackendUnavailable(f"no {spec.backend} database for GPU {gpu.name}")
    if model.backend_model is None:
        raise BackendUnavailable(f"the backend has no configuration for model {model.name}")
    system, name = gpu.backend_system, model.backend_model
    package = installed_version()
    if package is None:
        t = _shipped_match(name, system, spec)
        if t is not None:
            return t
        why = ""
        if (spec.version or "current") in VERSION_ALIASES[1:]:
            why = f"; version {spec.version!r} is relative to the installed package's data"
        raise BackendUnavailable(f"{PACKAGE} is not installed ({INSTALL_HINT}){why}")
    systems = backend_systems()
    if system not in systems:
        raise BackendUnavailable(f"{PACKAGE} {package} has no measured data for {system}")
    if spec.backend not in systems[system]:
        raise ConfigError(
            f"{where}.backend: {spec.backend!r} has no data on {gpu.name} ({system}); "
            f"available: {', '.join(systems[system])}"
        )
    if name not in backend_models():
        raise BackendUnavailable(f"{PACKAGE} {package} has no configuration for {name}")
    version = resolve_version(system, spec.backend, spec.version, where)
    key = _request(name, system, spec, version, package)
    t = cached_tables(key)
    if t is not None:
        return t
    try:
        handle = compile_handle(key)
    except (ValueError, KeyError) as exc:
        raise ConfigError(
            f"{where}: {spec.backend} cannot build {name} as {spec.label()}: {exc}"
        ) from exc
    try:
        probe(handle)
    except Exception as exc:  # the package raises its own PerfDataNotAvailableError
        if type(exc).__name__ not in ("PerfDataNotAvailableError", "ValueError", "RuntimeError"):
            raise
        avail = available_precisions(key)
        listing = "; ".join(avail) if avail else "no precision pair answers"
        raise BackendDataMissing(
            f"{where}.weights/kv_cache: {spec.backend} {version} on {system} has no data for "
            f"{name} as {spec.label()} ({str(exc).splitlines()[0][:160]}); with this "
            f"parallelism it answers for: {listing}"
        ) from exc
    return get_tables(key, handle)


# ---- all-reduce data of another backend version ------------------------------------------------
# vLLM's custom all-reduce handles messages below 8 MiB (``CustomAllreduce(max_size=8192 * 1024)``
# in vllm/distributed/device_communicators/custom_all_reduce.py); larger ones go to NCCL, whose
# data does not depend on the vLLM version.
VLLM_CUSTOM_ALLREDUCE_MAX_BYTES = 8 * 2**20
_ACTIVATION_BYTES = 2.0  # bf16 activations


def _allreduce_latency(system: str, backend: str, version: str, gpus: int) -> Any | None:
    """``f(elements) -> seconds`` of one CUDA-graph custom all-reduce over ``gpus`` GPUs from
    the backend's database for ``version``, or None if it has no such data."""
    path = (
        _package_dir()
        / "systems"
        / "data"
        / system
        / "comm"
        / backend
        / version
        / "custom_allreduce_perf.parquet"
    )
    if not path.is_file():
        return None
    import pandas as pd

    d = pd.read_parquet(path)
    d = d[(d["num_gpus"] == gpus) & d["backend"].astype(str).str.endswith("graph")]
    if len(d) < 2:
        return None
    d = d.sort_values("message_size")
    lx = np.log(d["message_size"].to_numpy(float))
    ly = np.log(d["latency"].to_numpy(float) * 1e-3)
    return lambda n: np.exp(np.interp(np.log(np.maximum(np.asarray(n, float), 1.0)), lx, ly))


def allreduce_version_delta_s(
    key: BackendKey, version: str, hidden_size: int, num_layers: int
) -> Any | None:
    """What a pass over ``n`` tokens gains (s, per ``f(n)``) when its tensor-parallel
    all-reduces run at the speed the database measured for ``version`` of the backend rather
    than ``key.version`` (the version of the kernel tables).

    Only for vLLM with tensor parallelism and only for messages the custom all-reduce
    handles (two all-reduces of ``n x hidden_size`` activations per layer). None when there
    is nothing to correct (same version, no tensor parallelism, another backend, or no
    all-reduce data for either version).
    """
    tp = int(key.tp)
    if key.backend != "vllm" or tp < 2 or version == key.version:
        return None
    new = _allreduce_latency(key.system, key.backend, version, tp)
    old = _allreduce_latency(key.system, key.backend, key.version, tp)
    if new is None or old is None:
        return None

    def delta(tokens: NDArray) -> NDArray[np.float64]:
        elems = np.asarray(tokens, float) * hidden_size
        custom = elems * _ACTIVATION_BYTES < VLLM_CUSTOM_ALLREDUCE_MAX_BYTES
        d = 2.0 * num_layers * (new(elems) - old(elems))
        return np.where(custom & (elems > 0), d, 0.0)

    return delta
