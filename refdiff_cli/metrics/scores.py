"""Fidelity metrics (PSNR, SSIM, Y-channel, SAM, ERGAS) of SR vs HR images, per mask region.

All functions take images in band-row-col order ``(C, H, W)``, compute in float64 and are pure
(no I/O). ``sr`` is the super-resolved image, ``hr`` the ground truth. A ``region`` is an
``(H, W)`` boolean array selecting the pixels a metric averages over (None = all pixels).
Invalid input (shape mismatch, non-finite values, ``data_range <= 0``) raises ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
MetricValue = float | int | None
RegionMetrics = dict[str, MetricValue]

#: Gaussian SSIM window of Wang et al. 2004: sigma 1.5, 11 taps (radius 5 = int(3.5 * 1.5 + 0.5)).
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

#: Infinite PSNR (an exactly reproduced image or region) counts as this many dB in means.
PSNR_CAP_DB = 100.0

#: Region names of :func:`image_metrics`, in output order.
REGIONS = ("all", "changed", "unchanged")

_PSNR_KEYS = ("psnr", "psnr_y")

_ArrayT = TypeVar("_ArrayT", bound=NDArray[Any])


def _gaussian_taps() -> FloatArray:
    x = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)  # (11,)
    taps: FloatArray = np.exp(-0.5 * x**2 / SSIM_SIGMA**2)
    normalised: FloatArray = taps / taps.sum()
    return normalised


_TAPS = _gaussian_taps()


# --- validation ---------------------------------------------------------------------------------


def _as_pair(sr: ArrayLike, hr: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Validate two (C, H, W) images of equal shape and return them as float64."""
    sr_arr = np.asarray(sr)
    hr_arr = np.asarray(hr)
    if sr_arr.shape != hr_arr.shape or sr_arr.ndim != 3:
        raise ValueError(
            f"sr has shape {sr_arr.shape} and hr {hr_arr.shape}: both must be the same (C, H, W)"
        )
    if min(sr_arr.shape) == 0:
        raise ValueError(f"sr and hr have an empty shape {sr_arr.shape}")
    sr64 = sr_arr.astype(np.float64)
    hr64 = hr_arr.astype(np.float64)
    for name, arr in (("sr", sr64), ("hr", hr64)):
        if not np.isfinite(arr).all():
            raise ValueError(
                f"{name} contains NaN or inf values; fill nodata with a finite value and exclude "
                "it with a region/valid mask"
            )
    return sr64, hr64


def _check_data_range(data_range: float) -> float:
    value = float(data_range)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"data_range must be a finite number > 0, got {data_range!r}")
    return value


def _check_border(border: int, shape_hw: tuple[int, int]) -> int:
    if isinstance(border, bool) or not isinstance(border, int | np.integer) or border < 0:
        raise ValueError(f"border must be an integer >= 0, got {border!r}")
    if 2 * int(border) >= min(shape_hw):
        raise ValueError(f"border {border} crops away the whole image of size {shape_hw}")
    return int(border)


def _as_mask(mask: ArrayLike | None, shape_hw: tuple[int, int], name: str) -> BoolArray:
    """Return an (H, W) bool mask (all True for None); non-bool arrays mean ``!= 0``."""
    if mask is None:
        return np.ones(shape_hw, dtype=np.bool_)
    arr = np.asarray(mask)
    if arr.shape != shape_hw:
        raise ValueError(f"{name} has shape {arr.shape}; it must be (H, W) = {shape_hw}")
    if arr.dtype == np.bool_:
        return arr
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf values; pass a boolean mask")
    nonzero: BoolArray = np.not_equal(arr, 0)
    return nonzero


def _crop(arr: _ArrayT, border: int) -> _ArrayT:
    """Crop ``border`` pixels from every side of the last two axes."""
    if border == 0:
        return arr
    cropped: _ArrayT = arr[..., border:-border, border:-border]  # type: ignore[assignment]
    return cropped


def _prepare(
    sr: ArrayLike, hr: ArrayLike, region: ArrayLike | None, border: int
) -> tuple[FloatArray, FloatArray, BoolArray]:
    sr64, hr64 = _as_pair(sr, hr)
    shape_hw = (sr64.shape[1], sr64.shape[2])
    border = _check_border(border, shape_hw)
    mask = _as_mask(region, shape_hw, "region")
    return _crop(sr64, border), _crop(hr64, border), _crop(mask, border)


# --- cores on validated, cropped float64 arrays ------------------------------------------------


def _psnr_core(sr: FloatArray, hr: FloatArray, mask: BoolArray, data_range: float) -> float:
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


def _ssim_map(sr: FloatArray, hr: FloatArray, data_range: float) -> FloatArray:
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


def _ssim_reduce(ssim_map: FloatArray, mask: BoolArray) -> float:
    selected = mask & _interior(ssim_map.shape)
    if not selected.any():
        return math.nan
    return float(ssim_map[selected].mean())


def _sam_core(sr: FloatArray, hr: FloatArray, mask: BoolArray) -> float:
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


def _ergas_core(sr: FloatArray, hr: FloatArray, mask: BoolArray, scale: float) -> float:
    if not mask.any():
        return math.nan
    a = sr[:, mask]  # (C, N)
    b = hr[:, mask]  # (C, N)
    mse = np.mean((a - b) ** 2, axis=1)  # (C,)
    mean_sq = np.mean(b, axis=1) ** 2  # (C,)
    if np.any(mean_sq == 0):
        return math.nan
    return float(100.0 / scale * np.sqrt(np.mean(mse / mean_sq)))


def _y_core(img: FloatArray, data_range: float) -> FloatArray:
    if img.shape[0] != 3:
        raise ValueError(f"the Y channel needs a 3-band RGB image, got {img.shape[0]} band(s)")
    r, g, b = img / data_range
    luma = (16.0 + 65.481 * r + 128.553 * g + 24.966 * b) / 255.0 * data_range  # (H, W)
    result: FloatArray = luma[None]  # (1, H, W)
    return result


# --- public metrics ----------------------------------------------------------------------------


def psnr(
    sr: ArrayLike,
    hr: ArrayLike,
    *,
    data_range: float,
    region: ArrayLike | None = None,
    border: int = 0,
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
    sr64, hr64, mask = _prepare(sr, hr, region, border)
    return _psnr_core(sr64, hr64, mask, _check_data_range(data_range))


def ssim(
    sr: ArrayLike,
    hr: ArrayLike,
    *,
    data_range: float,
    region: ArrayLike | None = None,
    border: int = 0,
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
    sr64, hr64, mask = _prepare(sr, hr, region, border)
    return _ssim_reduce(_ssim_map(sr64, hr64, _check_data_range(data_range)), mask)


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
    img64, _ = _as_pair(arr, arr)
    return _y_core(img64, _check_data_range(data_range))


def psnr_y(
    sr: ArrayLike,
    hr: ArrayLike,
    *,
    data_range: float,
    region: ArrayLike | None = None,
    border: int = 0,
) -> float:
    """:func:`psnr` on the :func:`rgb_to_y` luma of two (3, H, W) RGB images, same data_range."""
    sr64, hr64, mask = _prepare(sr, hr, region, border)
    dr = _check_data_range(data_range)
    return _psnr_core(_y_core(sr64, dr), _y_core(hr64, dr), mask, dr)


def ssim_y(
    sr: ArrayLike,
    hr: ArrayLike,
    *,
    data_range: float,
    region: ArrayLike | None = None,
    border: int = 0,
) -> float:
    """:func:`ssim` on the :func:`rgb_to_y` luma of two (3, H, W) RGB images, same data_range."""
    sr64, hr64, mask = _prepare(sr, hr, region, border)
    dr = _check_data_range(data_range)
    return _ssim_reduce(_ssim_map(_y_core(sr64, dr), _y_core(hr64, dr), dr), mask)


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
    sr64, hr64, mask = _prepare(sr, hr, region, 0)
    if sr64.shape[0] < 2:
        raise ValueError(f"SAM needs at least 2 bands, got {sr64.shape[0]}")
    return _sam_core(sr64, hr64, mask)


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
    sr64, hr64, mask = _prepare(sr, hr, region, 0)
    value = float(scale)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    return _ergas_core(sr64, hr64, mask, value)


# --- per-image report and means ----------------------------------------------------------------


def _defined(value: float) -> float | None:
    return None if math.isnan(value) else value


def image_metrics(
    sr: ArrayLike,
    hr: ArrayLike,
    *,
    changed: ArrayLike,
    valid: ArrayLike | None = None,
    data_range: float,
    scale: float,
    border: int = 0,
    rgb: bool = True,
) -> dict[str, dict[str, MetricValue]]:
    """All metrics of one image over the whole, changed and unchanged regions.

    Regions (all after cropping ``border`` pixels from every side): ``"all"`` = valid,
    ``"changed"`` = changed & valid, ``"unchanged"`` = ~changed & valid.

    Args:
        sr: super-resolved image (C, H, W).
        hr: ground truth of the same shape.
        changed: (H, W) change mask (non-bool: nonzero = changed).
        valid: (H, W) mask of pixels with data in both images; None = all valid.
        data_range: peak value range for PSNR and SSIM, > 0.
        scale: super-resolution factor for ERGAS, > 0.
        border: pixels cropped from every side before any metric.
        rgb: whether a 3-band image is R, G, B (enables the Y-channel metrics).

    Returns:
        ``{region: {"pixels": int, "psnr", "ssim", ["psnr_y", "ssim_y"], ["sam"], "ergas"}}``.
        ``psnr_y``/``ssim_y`` appear only for 3-band images with ``rgb=True``, ``sam`` only for
        images with >= 2 bands. A region without pixels has ``pixels`` 0 and None for every
        metric; a metric that is undefined for a region (e.g. SSIM with no region pixel in the
        window interior, ERGAS with a zero hr mean) is None too. PSNR may be ``inf``.

    Raises:
        ValueError: shapes differ, values are not finite, ``data_range``/``scale``/``border``
            are invalid, or the cropped image is smaller than the 11x11 SSIM window.
    """
    sr64, hr64 = _as_pair(sr, hr)
    bands, height, width = sr64.shape
    shape_hw = (height, width)
    border = _check_border(border, shape_hw)
    dr = _check_data_range(data_range)
    factor = float(scale)
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    changed_mask = _crop(_as_mask(changed, shape_hw, "changed"), border)
    valid_mask = _crop(_as_mask(valid, shape_hw, "valid"), border)
    sr64, hr64 = _crop(sr64, border), _crop(hr64, border)

    use_y = rgb and bands == 3
    names = ["psnr", "ssim"] + (["psnr_y", "ssim_y"] if use_y else [])
    names += (["sam"] if bands >= 2 else []) + ["ergas"]
    ssim_map = _ssim_map(sr64, hr64, dr)
    if use_y:
        sr_y, hr_y = _y_core(sr64, dr), _y_core(hr64, dr)
        ssim_y_map = _ssim_map(sr_y, hr_y, dr)

    regions = {
        "all": valid_mask,
        "changed": changed_mask & valid_mask,
        "unchanged": ~changed_mask & valid_mask,
    }
    report: dict[str, dict[str, MetricValue]] = {}
    for name, mask in regions.items():
        pixels = int(mask.sum())
        entry: dict[str, MetricValue] = {"pixels": pixels}
        if pixels == 0:
            entry.update(dict.fromkeys(names))
            report[name] = entry
            continue
        entry["psnr"] = _defined(_psnr_core(sr64, hr64, mask, dr))
        entry["ssim"] = _defined(_ssim_reduce(ssim_map, mask))
        if use_y:
            entry["psnr_y"] = _defined(_psnr_core(sr_y, hr_y, mask, dr))
            entry["ssim_y"] = _defined(_ssim_reduce(ssim_y_map, mask))
        if bands >= 2:
            entry["sam"] = _defined(_sam_core(sr64, hr64, mask))
        entry["ergas"] = _defined(_ergas_core(sr64, hr64, mask, factor))
        report[name] = entry
    return report


def mean_metrics(
    per_image: Sequence[Mapping[str, Mapping[str, MetricValue]]],
) -> dict[str, dict[str, MetricValue]]:
    """Mean of :func:`image_metrics` reports over images, per region and metric.

    A metric's mean is over the images where it is defined (not None and not NaN); it is None
    when no image defines it. Infinite PSNR (``psnr``, ``psnr_y``: an exactly reproduced region)
    would make a mean infinite and hide every other image, so it enters the mean as
    :data:`PSNR_CAP_DB` (100 dB) and ``"<metric>_capped"`` counts the images capped that way.
    Each region also gets ``"n_images"`` (images whose region has pixels) and ``"pixels"`` (their
    total pixel count).

    Args:
        per_image: one report per image, as returned by :func:`image_metrics`.

    Returns:
        ``{region: {"n_images": int, "pixels": int, metric: mean or None,
        "psnr_capped": int, ...}}`` for every region present in any report.
    """
    region_names: list[str] = []
    for report in per_image:
        region_names += [name for name in report if name not in region_names]
    means: dict[str, dict[str, MetricValue]] = {}
    for region in region_names:
        entries = [report[region] for report in per_image if region in report]
        with_pixels = [entry for entry in entries if (entry.get("pixels") or 0) > 0]
        out: dict[str, MetricValue] = {
            "n_images": len(with_pixels),
            "pixels": int(sum(int(entry.get("pixels") or 0) for entry in entries)),
        }
        metric_names: list[str] = []
        for entry in entries:
            metric_names += [k for k in entry if k != "pixels" and k not in metric_names]
        for metric in metric_names:
            values: list[float] = []
            capped = 0
            for entry in entries:
                value = entry.get(metric)
                if value is None or math.isnan(value):
                    continue
                if metric in _PSNR_KEYS and value == math.inf:
                    value, capped = PSNR_CAP_DB, capped + 1
                if not math.isfinite(value):
                    raise ValueError(f"{region}/{metric} has the non-finite value {value}")
                values.append(float(value))
            out[metric] = float(np.mean(values)) if values else None
            if metric in _PSNR_KEYS:
                out[f"{metric}_capped"] = capped
        means[region] = out
    return means


def mask_counts(predicted: ArrayLike, truth: ArrayLike) -> dict[str, int]:
    """True/false positives/negatives of a binary change mask against labels (1 = changed)."""
    p, t = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    if p.shape != t.shape:
        raise ValueError(f"predicted {p.shape} and truth {t.shape} differ in shape")
    return {
        "tp": int(np.count_nonzero(p & t)),
        "fp": int(np.count_nonzero(p & ~t)),
        "fn": int(np.count_nonzero(~p & t)),
        "tn": int(np.count_nonzero(~p & ~t)),
    }


def mask_scores(counts: dict[str, int]) -> dict[str, float]:
    """Precision, recall, F1 and IoU from ``mask_counts`` (summed over images if pooled).

    A score whose denominator is empty (no predicted or no labelled change) is 1.0 when
    prediction and labels agree that nothing changed, else 0.0.
    """
    tp, fp, fn = float(counts["tp"]), float(counts["fp"]), float(counts["fn"])
    empty = 1.0 if fp + fn == 0 else 0.0

    def ratio(num: float, den: float) -> float:
        return num / den if den else empty

    return {
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "iou": ratio(tp, tp + fp + fn),
    }
