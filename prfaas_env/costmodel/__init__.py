"""Calibrated cost model for prefill, decode and KV transfer.

See :class:`~prfaas_env.costmodel.core.CostModel`; ``python -m prfaas_env.costmodel --help``
prints a table for a model on a GPU.
"""

from prfaas_env.costmodel.core import CalibrationRangeWarning, CostModel, check_tokens

__all__ = ["CalibrationRangeWarning", "CostModel", "check_tokens"]
