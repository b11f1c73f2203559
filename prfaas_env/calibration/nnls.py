"""Small non-negative least squares on relative error, by exhaustive active sets.

The stack fits have at most four features, so trying every subset of active features is exact,
fast and needs nothing beyond NumPy.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
from numpy.typing import NDArray


def fit_relative_nnls(
    features: NDArray[np.float64], target: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Coefficients ``b >= 0`` minimising ``sum(((features @ b) - target) / target) ** 2)``.

    Args:
        features: ``(n_points, n_features)`` design matrix.
        target: ``(n_points,)`` positive measured values.
    """
    x = np.asarray(features, dtype=np.float64) / target[:, None]
    y = np.ones_like(target, dtype=np.float64)
    n_feat = x.shape[1]
    # Solve on unit-norm columns so that features of very different scales (or tiny ones)
    # do not make the least-squares solves ill-conditioned; all-zero columns stay out.
    norms = np.linalg.norm(x, axis=0)
    usable = norms > 0
    x = np.where(usable, x / np.where(usable, norms, 1.0), 0.0)
    best, best_err = np.zeros(n_feat), float(np.sum(y**2))
    for size in range(1, n_feat + 1):
        for subset in combinations(range(n_feat), size):
            cols = list(subset)
            if not usable[cols].all():
                continue
            coef, *_ = np.linalg.lstsq(x[:, cols], y, rcond=None)
            if np.any(coef < 0) or not np.all(np.isfinite(coef)):
                continue
            full = np.zeros(n_feat)
            full[cols] = coef
            err = float(np.sum((x @ full - y) ** 2))
            if err < best_err - 1e-15:
                best, best_err = full, err
    return np.where(usable, best / np.where(usable, norms, 1.0), 0.0)
