"""GPU catalog: peak throughput, memory and interconnect of each GPU type.

The shipped catalog is ``catalog/gpus.yaml``; users add their own GPUs with
:func:`register_gpus` (same YAML format). Figures are per GPU and in SI units once loaded:
FLOP/s, bytes, bytes/s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from prfaas_env.errors import (
    ConfigError,
    Registry,
    check_keys,
    number,
)

_GPU_KEYS_REQUIRED = (
    "bf16_tflops",
    "hbm_gb",
    "hbm_bandwidth_tbps",
    "nvlink_gbps",
    "nic_gbps",
    "source",
)
_GPU_KEYS_OPTIONAL = (
    "description",
    "architecture",
    "fp8_tflops",
    "aliases",
    "derived_from",
    "aic_system",
)


@dataclass(frozen=True)
class GPUSpec:
    """Spec-sheet figures of one GPU type.

    Attributes:
        name: catalog key, e.g. ``"h200-sxm"``.
        bf16_tflops: dense BF16 tensor-core peak, TFLOPS.
        fp8_tflops: dense FP8 tensor-core peak, TFLOPS; ``None`` if the GPU has no FP8 units.
        hbm_gb: device memory, GB (1e9 bytes).
        hbm_bandwidth_tbps: device-memory bandwidth, TB/s (1e12 bytes/s).
        nvlink_gbps: GPU-to-GPU bandwidth inside a node, GB/s per direction.
        nic_gbps: scale-out NIC bandwidth per GPU, Gbit/s.
        architecture: GPU generation (``hopper``, ``ampere``, ...), used to pick kernel
            efficiencies for GPUs without their own measurements.
        derived_from: for a user GPU, a catalog GPU whose measured kernel efficiencies it borrows.
        source: where the figures come from.
        backend_system: the system name of this GPU in aiconfigurator's measured databases
            (``aic_system`` in the YAML), or None if it has none.
    """

    name: str
    bf16_tflops: float
    fp8_tflops: float | None
    hbm_gb: float
    hbm_bandwidth_tbps: float
    nvlink_gbps: float
    nic_gbps: float
    source: str
    architecture: str = "unknown"
    description: str = ""
    derived_from: str | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)
    backend_system: str | None = None

    @property
    def bf16_flops(self) -> float:
        """Dense BF16 peak in FLOP/s."""
        return self.bf16_tflops * 1e12

    def peak_flops(self, weight_bytes: float) -> float:
        """Peak FLOP/s for matmuls with weights stored at ``weight_bytes`` per parameter.

        FP8 weights run on FP8 tensor cores when the GPU has them. Weight-only quantisation
        below 8 bits (INT4) dequantises to BF16 and runs at BF16 speed.
        """
        if weight_bytes == 1 and self.fp8_tflops is not None:
            return self.fp8_tflops * 1e12
        return self.bf16_flops

    @property
    def hbm_bytes(self) -> float:
        """Device memory in bytes."""
        return self.hbm_gb * 1e9

    @property
    def hbm_bytes_per_s(self) -> float:
        """Device-memory bandwidth in bytes/s."""
        return self.hbm_bandwidth_tbps * 1e12

    @property
    def nvlink_bytes_per_s(self) -> float:
        """Intra-node GPU-to-GPU bandwidth per direction in bytes/s."""
        return self.nvlink_gbps * 1e9


def _parse_gpu(name: str, raw: Any, where: str) -> GPUSpec:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping of GPU fields, got {raw!r}")
    check_keys(raw, where, _GPU_KEYS_REQUIRED, _GPU_KEYS_OPTIONAL)
    fp8 = raw.get("fp8_tflops")
    aliases = raw.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise ConfigError(f"{where}.aliases: expected a list of names, got {aliases!r}")
    return GPUSpec(
        name=name,
        bf16_tflops=number(raw, "bf16_tflops", where, minimum=0, exclusive_minimum=True),
        fp8_tflops=None
        if fp8 is None
        else number(raw, "fp8_tflops", where, minimum=0, exclusive_minimum=True),
        hbm_gb=number(raw, "hbm_gb", where, minimum=0, exclusive_minimum=True),
        hbm_bandwidth_tbps=number(
            raw, "hbm_bandwidth_tbps", where, minimum=0, exclusive_minimum=True
        ),
        nvlink_gbps=number(raw, "nvlink_gbps", where, minimum=0, exclusive_minimum=True),
        nic_gbps=number(raw, "nic_gbps", where, minimum=0, exclusive_minimum=True),
        source=str(raw["source"]),
        architecture=str(raw.get("architecture", "unknown")),
        description=str(raw.get("description", "")),
        derived_from=raw.get("derived_from"),
        aliases=tuple(aliases),
        backend_system=None if raw.get("aic_system") is None else str(raw["aic_system"]),
    )


_REGISTRY: Registry[GPUSpec] = Registry("GPU", "gpus", _parse_gpu, lambda g: g.aliases)


def parse_gpu_file(path: str | Path) -> dict[str, GPUSpec]:
    """Parse a GPU catalog YAML file (top-level key ``gpus``) into specs keyed by name."""
    return _REGISTRY.parse_file(path)


_REGISTRY.add(parse_gpu_file(Path(str(resources.files("prfaas_env") / "catalog" / "gpus.yaml"))))


def register_gpus(path: str | Path) -> list[str]:
    """Add the GPUs of a user YAML file (same format as the shipped catalog).

    Returns the names added. A user GPU may set ``derived_from: <catalog gpu>`` to borrow that
    GPU's measured kernel efficiencies; otherwise those of its ``architecture`` are used.
    """
    new = parse_gpu_file(path)
    known = set(_REGISTRY.entries) | set(new)
    for name, spec in new.items():
        if spec.derived_from is not None and spec.derived_from not in known:
            raise ConfigError(
                f"{path}: gpus.{name}.derived_from: unknown GPU {spec.derived_from!r}; "
                f"known: {', '.join(sorted(known))}"
            )
    return _REGISTRY.add(new)


def gpu_names() -> list[str]:
    """Names of all known GPUs (shipped and registered)."""
    return _REGISTRY.names()


def get_gpu(name: str | GPUSpec) -> GPUSpec:
    """Look up a GPU by catalog name or alias (case-insensitive).

    Raises:
        UnknownNameError: the name is not known; the message lists the known names.
    """
    return name if isinstance(name, GPUSpec) else _REGISTRY.get(name)
