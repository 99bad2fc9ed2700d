"""Pixel fidelity metrics of SR vs HR images: PSNR, SSIM and both on the BT.601 luma (Y).

All functions take images in band-row-col order ``(C, H, W)``, compute in float64 and are pure
(no I/O). ``sr`` is the super-resolved image, ``hr`` the ground truth. A ``region`` is an
``(H, W)`` boolean array selecting the pixels a metric averages over (None = all pixels).
Invalid input (shape mismatch, non-finite values, ``data_range <= 0``) raises ``ValueError``.
The ``*_core`` functions take arrays already validated and cropped (``metrics/validation.py``).
"""

from __future__ import annotations

import math
from typing import TypeAlias

import numpy as np
from numpy.typing import ArrayLike

from refdiff_cli.metrics.validation import (
    BoolArray,
    FloatArray,
    as_pair,
    check_data_range,
    prepare,
)

#: A metric's (H, W) pixel selection: bool, or nonzero = selected; None = all pixels.
Region: TypeAlias = ArrayLike | None

#: Gaussian SSIM window of Wang et al. 2004: sigma 1.5, 11 taps (radius 5 = int(3.5 * 1.5 + 0.5)).
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _gaussian_taps() -> FloatArray:
    x = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)  # (11,)
    taps: FloatArray = np.exp(-0.5 * x**2 / SSIM_SIGMA**2)
    normalised: FloatArray = taps / taps.sum()
    return normalised


_TAPS = _gaussian_taps()


# --- cores on validated, cropped float64 arrays ------------------------------------------------


def psnr_core(sr: FloatArray, hr: FloatArray, mask: BoolArray, data_range: float) -> float:
    """PSNR in dB over all bands and the mask's pixels; inf if equal there, nan without pixels."""
    if not mask.any():
        return math.nan
    diff = (sr - hr)[:, mask]  # (C, N)
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return math.inf
    return float(10.0 * np.log10(data_range**2 / mse))


def _blur(arr: FloatArray) -> FloatArray:
    """Separable Gaussian filter of (C, H, W) along H and W, edges mirrored (scipy 'reflect')."""
    _, height, width = arr.shape
    r = SSIM_RADIUS
    padded = np.pad(arr, ((0, 0), (r, r), (0, 0)), mode="symmetric")  # (C, H + 2r, W)
    rows = np.zeros_like(arr)  # (C, H, W)
    for i, tap in enumerate(_TAPS):
        rows += tap * padded[:, i : i + height, :]
    padded = np.pad(rows, ((0, 0), (0, 0), (r, r)), mode="symmetric")  # (C, H, W + 2r)
    out = np.zeros_like(arr)  # (C, H, W)
    for i, tap in enumerate(_TAPS):
        out += tap * padded[:, :, i : i + width]
    return out


def ssim_map(sr: FloatArray, hr: FloatArray, data_range: float) -> FloatArray:
    """Channel-averaged SSIM map (H, W) of Wang et al. 2004, eq. 13, population covariance."""
    height, width = sr.shape[1:]
    if min(height, width) < 2 * SSIM_RADIUS + 1:
        raise ValueError(
            f"SSIM needs images of at least {2 * SSIM_RADIUS + 1}x{2 * SSIM_RADIUS + 1} pixels "
            f"after the border crop, got {width}x{height}"
        )
    ux, uy = _blur(sr), _blur(hr)  # (C, H, W) local means
    vx = _blur(sr * sr) - ux * ux
    vy = _blur(hr * hr) - uy * uy
    vxy = _blur(sr * hr) - ux * uy
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    num = (2 * ux * uy + c1) * (2 * vxy + c2)
    den = (ux**2 + uy**2 + c1) * (vx + vy + c2)
    per_band = num / den  # (C, H, W)
    result: FloatArray = per_band.mean(axis=0)  # (H, W)
    return result


def _interior(shape_hw: tuple[int, ...]) -> BoolArray:
    inside = np.zeros(shape_hw, dtype=np.bool_)  # (H, W)
    r = SSIM_RADIUS
    inside[r:-r, r:-r] = True
    return inside


def ssim_reduce(ssim_values: FloatArray, mask: BoolArray) -> float:
    """Mean of an (H, W) SSIM map over the mask's pixels in the window interior; nan if none."""
    selected = mask & _interior(ssim_values.shape)
    if not selected.any():
        return math.nan
    return float(ssim_values[selected].mean())


def ssim_core(sr: FloatArray, hr: FloatArray, mask: BoolArray, data_range: float) -> float:
    """Mean SSIM over the mask (``ssim_map`` reduced by ``ssim_reduce``)."""
    return ssim_reduce(ssim_map(sr, hr, data_range), mask)


def y_core(img: FloatArray, data_range: float) -> FloatArray:
    """(1, H, W) luma of a validated (3, H, W) RGB image (see :func:`rgb_to_y`)."""
    if img.shape[0] != 3:
        raise ValueError(f"the Y channel needs a 3-band RGB image, got {img.shape[0]} band(s)")
    r, g, b = img / data_range
    luma = (16.0 + 65.481 * r + 128.553 * g + 24.966 * b) / 255.0 * data_range  # (H, W)
    result: FloatArray = luma[None]  # (1, H, W)
    return result


# --- public metrics ----------------------------------------------------------------------------


def psnr(
    sr: ArrayLike, hr: ArrayLike, *, data_range: float, region: Region = None, border: int = 0
) -> float:
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` in dB.

    Args:
        sr: super-resolved image (C, H, W), any numeric dtype.
        hr: ground truth of the same shape.
        data_range: peak value range of the data (e.g. 255 for 8-bit), > 0.
        region: (H, W) mask of the pixels to use (non-bool: nonzero = used); None = all.
        border: pixels cropped from every side of images and region before anything else.

    Returns:
        PSNR in dB over all bands and the region's pixels; ``inf`` when they are identical,
        ``nan`` when the region has no pixels.
    """
    sr64, hr64, mask = prepare(sr, hr, region, border)
    return psnr_core(sr64, hr64, mask, check_data_range(data_range))


def ssim(
    sr: ArrayLike, hr: ArrayLike, *, data_range: float, region: Region = None, border: int = 0
) -> float:
    """Structural similarity (Wang et al. 2004) with an 11x11 Gaussian window, sigma 1.5.

    K1 = 0.01, K2 = 0.03, population covariance: with ``region=None`` this equals
    ``skimage.metrics.structural_similarity(sr, hr, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=data_range, channel_axis=0)`` on the cropped images.
    The SSIM map is computed per band and averaged over bands; its mean is taken over the pixels
    at least 5 pixels (the window radius) inside the cropped image, as skimage does. With a
    region, the mean is over region pixels in that same interior: edge pixels never count, and a
    region pixel's local window may reach pixels outside the region.

    Args:
        sr: super-resolved image (C, H, W), at least 11x11 after the border crop.
        hr: ground truth of the same shape.
        data_range: peak value range of the data, > 0 (sets the constants C1 and C2).
        region: (H, W) mask of the pixels to average (non-bool: nonzero = used); None = all.
        border: pixels cropped from every side of images and region first.

    Returns:
        Mean SSIM in [-1, 1] (1 for identical images); ``nan`` when no region pixel is in the
        interior.
    """
    sr64, hr64, mask = prepare(sr, hr, region, border)
    return ssim_core(sr64, hr64, mask, check_data_range(data_range))


def rgb_to_y(img: ArrayLike, *, data_range: float) -> FloatArray:
    """ITU-R BT.601 luma of an RGB image, as MATLAB's ``rgb2ycbcr`` (the SR literature's Y).

    With R, G, B scaled to [0, 1] by ``data_range``,
    ``Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255 * data_range``, so values of an image in
    [0, data_range] land in [16/255, 235/255] * data_range.

    Args:
        img: (3, H, W) image, bands in R, G, B order, values in [0, data_range].
        data_range: peak value range of the data, > 0.

    Returns:
        (1, H, W) float64 luma in the same units as the input.
    """
    arr = np.asarray(img)
    if arr.ndim != 3:
        raise ValueError(f"img has shape {arr.shape}; it must be (3, H, W)")
    img64, _ = as_pair(arr, arr)
    return y_core(img64, check_data_range(data_range))


def _luma_inputs(
    sr: ArrayLike, hr: ArrayLike, region: Region, border: int, data_range: float
) -> tuple[FloatArray, FloatArray, BoolArray, float]:
    """The luma of both cropped images, the region mask and the data range: a core's arguments."""
    sr64, hr64, mask = prepare(sr, hr, region, border)
    dr = check_data_range(data_range)
    return y_core(sr64, dr), y_core(hr64, dr), mask, dr


def psnr_y(
    sr: ArrayLike, hr: ArrayLike, *, data_range: float, region: Region = None, border: int = 0
) -> float:
    """:func:`psnr` on the :func:`rgb_to_y` luma of two (3, H, W) RGB images, same data_range."""
    return psnr_core(*_luma_inputs(sr, hr, region, border, data_range))


def ssim_y(
    sr: ArrayLike, hr: ArrayLike, *, data_range: float, region: Region = None, border: int = 0
) -> float:
    """:func:`ssim` on the :func:`rgb_to_y` luma of two (3, H, W) RGB images, same data_range."""
    return ssim_core(*_luma_inputs(sr, hr, region, border, data_range))
