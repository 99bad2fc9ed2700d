"""Per-image metric reports over the all/changed/unchanged regions, their means over images,
and the precision/recall scores of a change mask.

The metrics themselves are in ``metrics/pixel.py`` (PSNR, SSIM, Y channel) and
``metrics/spectral.py`` (SAM, ERGAS); images are band-row-col ``(C, H, W)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from refdiff_cli.metrics.pixel import psnr_core, ssim_map, ssim_reduce, y_core
from refdiff_cli.metrics.spectral import ergas_core, sam_core
from refdiff_cli.metrics.validation import (
    as_mask,
    as_pair,
    check_border,
    check_data_range,
    check_scale,
    crop,
)

MetricValue = float | int | None
RegionMetrics = dict[str, MetricValue]

#: Infinite PSNR (an exactly reproduced image or region) counts as this many dB in means.
PSNR_CAP_DB = 100.0

#: Region names of :func:`image_metrics`, in output order.
REGIONS = ("all", "changed", "unchanged")

_PSNR_KEYS = ("psnr", "psnr_y")


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
    sr64, hr64 = as_pair(sr, hr)
    bands, height, width = sr64.shape
    shape_hw = (height, width)
    border = check_border(border, shape_hw)
    dr = check_data_range(data_range)
    factor = check_scale(scale)
    changed_mask = crop(as_mask(changed, shape_hw, "changed"), border)
    valid_mask = crop(as_mask(valid, shape_hw, "valid"), border)
    sr64, hr64 = crop(sr64, border), crop(hr64, border)

    use_y = rgb and bands == 3
    names = ["psnr", "ssim"] + (["psnr_y", "ssim_y"] if use_y else [])
    names += (["sam"] if bands >= 2 else []) + ["ergas"]
    ssim_values = ssim_map(sr64, hr64, dr)  # (H, W)
    if use_y:
        sr_y, hr_y = y_core(sr64, dr), y_core(hr64, dr)
        ssim_y_values = ssim_map(sr_y, hr_y, dr)

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
        entry["psnr"] = _defined(psnr_core(sr64, hr64, mask, dr))
        entry["ssim"] = _defined(ssim_reduce(ssim_values, mask))
        if use_y:
            entry["psnr_y"] = _defined(psnr_core(sr_y, hr_y, mask, dr))
            entry["ssim_y"] = _defined(ssim_reduce(ssim_y_values, mask))
        if bands >= 2:
            entry["sam"] = _defined(sam_core(sr64, hr64, mask))
        entry["ergas"] = _defined(ergas_core(sr64, hr64, mask, factor))
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
