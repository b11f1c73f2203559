"""Calibration of the cost model against GPU measurements.

``python -m prfaas_env.calibration.fit`` refits every coefficient from the measurement extract
committed in ``data/`` (or re-extracts it from the raw profiles with ``--profiles DIR``), writes
``coefficients.json`` and the fidelity report ``docs/calibration.md``.
"""
