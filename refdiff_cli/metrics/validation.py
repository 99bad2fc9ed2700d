"""Input checks shared by the fidelity metrics: image pairs, data range, scale, border, masks.

Images are band-row-col ``(C, H, W)``; checks return float64 copies or plain numbers and raise
``ValueError`` naming the offending argument.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

_ArrayT = TypeVar("_ArrayT", bound=NDArray[Any])


def as_pair(sr: ArrayLike, hr: ArrayLike) -> tuple[FloatArray, FloatArray]:
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


def check_data_range(data_range: float) -> float:
    """``data_range`` as a float; it must be finite and > 0."""
    value = float(data_range)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"data_range must be a finite number > 0, got {data_range!r}")
    return value


def check_scale(scale: float) -> float:
    """The super-resolution factor ``scale`` as a float; it must be finite and > 0."""
    value = float(scale)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    return value


def check_border(border: int, shape_hw: tuple[int, int]) -> int:
    """``border`` as an int; it must be >= 0 and leave pixels of an image of ``shape_hw``."""
    if isinstance(border, bool) or not isinstance(border, int | np.integer) or border < 0:
        raise ValueError(f"border must be an integer >= 0, got {border!r}")
    if 2 * int(border) >= min(shape_hw):
        raise ValueError(f"border {border} crops away the whole image of size {shape_hw}")
    return int(border)


def as_mask(mask: ArrayLike | None, shape_hw: tuple[int, int], name: str) -> BoolArray:
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


def crop(arr: _ArrayT, border: int) -> _ArrayT:
    """Crop ``border`` pixels from every side of the last two axes."""
    if border == 0:
        return arr
    cropped: _ArrayT = arr[..., border:-border, border:-border]  # type: ignore[assignment]
    return cropped


def prepare(
    sr: ArrayLike, hr: ArrayLike, region: ArrayLike | None, border: int
) -> tuple[FloatArray, FloatArray, BoolArray]:
    """Validated float64 images and their (H, W) region mask, all cropped by ``border``."""
    sr64, hr64 = as_pair(sr, hr)
    shape_hw = (sr64.shape[1], sr64.shape[2])
    border = check_border(border, shape_hw)
    mask = as_mask(region, shape_hw, "region")
    return crop(sr64, border), crop(hr64, border), crop(mask, border)
