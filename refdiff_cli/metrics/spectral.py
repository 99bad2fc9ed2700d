"""Spectral fidelity metrics of SR vs HR images: SAM (spectral angle) and ERGAS.

Images are band-row-col ``(C, H, W)``, computed in float64, pure (no I/O); ``region`` selects
the (H, W) pixels used (None = all). Invalid input raises ``ValueError``. The ``*_core``
functions take arrays already validated (``metrics/validation.py``).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from refdiff_cli.metrics.validation import BoolArray, FloatArray, check_scale, prepare


def sam_core(sr: FloatArray, hr: FloatArray, mask: BoolArray) -> float:
    """Mean spectral angle in degrees over the mask's pixels with nonzero vectors (else nan)."""
    a = sr[:, mask]  # (C, N)
    b = hr[:, mask]  # (C, N)
    na = np.linalg.norm(a, axis=0)  # (N,)
    nb = np.linalg.norm(b, axis=0)
    keep = (na > 0) & (nb > 0)
    if not keep.any():
        return math.nan
    ua = a[:, keep] / na[keep]
    ub = b[:, keep] / nb[keep]
    # Kahan's form 2 atan2(|u - v|, |u + v|): exact 0 for equal directions, stable near 0 and 180.
    angle = 2.0 * np.arctan2(np.linalg.norm(ua - ub, axis=0), np.linalg.norm(ua + ub, axis=0))
    return float(np.degrees(angle).mean())


def ergas_core(sr: FloatArray, hr: FloatArray, mask: BoolArray, scale: float) -> float:
    """ERGAS over the mask's pixels; nan without pixels or with a zero hr band mean."""
    if not mask.any():
        return math.nan
    a = sr[:, mask]  # (C, N)
    b = hr[:, mask]  # (C, N)
    mse = np.mean((a - b) ** 2, axis=1)  # (C,)
    mean_sq = np.mean(b, axis=1) ** 2  # (C,)
    if np.any(mean_sq == 0):
        return math.nan
    return float(100.0 / scale * np.sqrt(np.mean(mse / mean_sq)))


def sam(sr: ArrayLike, hr: ArrayLike, *, region: ArrayLike | None = None) -> float:
    """Mean spectral angle between the per-pixel band vectors of sr and hr, in degrees.

    Args:
        sr: super-resolved image (C, H, W) with C >= 2 bands.
        hr: ground truth of the same shape.
        region: (H, W) mask of the pixels to use (non-bool: nonzero = used); None = all.

    Returns:
        Mean angle in [0, 180] degrees (0 when all vectors are parallel). Pixels where either
        vector has zero norm have no angle and are skipped; ``nan`` when no pixel is left.
    """
    sr64, hr64, mask = prepare(sr, hr, region, 0)
    if sr64.shape[0] < 2:
        raise ValueError(f"SAM needs at least 2 bands, got {sr64.shape[0]}")
    return sam_core(sr64, hr64, mask)


def ergas(sr: ArrayLike, hr: ArrayLike, *, scale: float, region: ArrayLike | None = None) -> float:
    """Relative dimensionless global error: ``100 / scale * sqrt(mean_b RMSE_b^2 / mean_b(hr)^2)``.

    Args:
        sr: super-resolved image (C, H, W).
        hr: ground truth of the same shape.
        scale: super-resolution factor (HR pixels per LR pixel along one axis, e.g. 8), > 0.
        region: (H, W) mask of the pixels the RMSE and means use; None = all.

    Returns:
        ERGAS >= 0 (0 for identical images); ``nan`` when the region is empty or a band's hr mean
        over the region is 0 (the relative error of that band is undefined).
    """
    sr64, hr64, mask = prepare(sr, hr, region, 0)
    return ergas_core(sr64, hr64, mask, check_scale(scale))
