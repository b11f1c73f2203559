"""Calibrated cost model for prefill, decode and KV transfer.

See :class:`~prfaas_env.costmodel.core.CostModel`; ``python -m prfaas_env.costmodel --help``
prints a table for a model on a GPU.
"""

from prfaas_env.costmodel.core import (
    BackendFallbackWarning,
    CalibrationRangeWarning,
    CostModel,
    check_tokens,
)
from prfaas_env.costmodel.serving import ServingOverhead, ServingSpec, parse_serving

__all__ = [
    "BackendFallbackWarning",
    "CalibrationRangeWarning",
    "CostModel",
    "ServingOverhead",
    "ServingSpec",
    "check_tokens",
    "parse_serving",
]
