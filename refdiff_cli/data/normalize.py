"""The one mapping between raster values (DN) and model space, used by prepare, train and upscale.

Image bands map linearly to model space, where the reference range [low, high] of each band
becomes [-1, 1]:

- uint8 rasters use the full 0..255 range, so every 8-bit image is scaled the same way;
- other data types use the band's own ``p_low`` / ``p_high`` percentiles (0.5 / 99.5 by
  default, recorded in the model card), computed over the whole raster's valid pixels.

The mapping does not clip: values beyond the percentiles land slightly outside [-1, 1] and come
back unchanged. Engines clamp what they feed the network (``data.resample.upsample``), and
``cast_to_dtype`` rounds and clamps on the way out, so nothing wraps around.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

#: Default percentiles of the stretch for non-uint8 rasters (the model card's normalisation).
DEFAULT_PERCENTILES = (0.5, 99.5)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Normalization:
    """How a model expects input values to be stretched (the card's ``normalization``).

    Attributes:
        p_low, p_high: percentiles (0..100, p_low < p_high) of each band that map to -1 and
            +1 for rasters that are not uint8.
    """

    p_low: float = DEFAULT_PERCENTILES[0]
    p_high: float = DEFAULT_PERCENTILES[1]

    def __post_init__(self) -> None:
        if not 0.0 <= self.p_low < self.p_high <= 100.0:
            raise ValueError(f"need 0 <= p_low < p_high <= 100, got {self.p_low}, {self.p_high}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, as stored in model cards and chip manifests."""
        return {"mode": "percentile", "p_low": self.p_low, "p_high": self.p_high}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        """Inverse of ``to_dict``; ValueError for another mode or bad percentiles."""
        if data.get("mode") != "percentile":
            raise ValueError(f"unknown normalisation mode {data.get('mode')!r}")
        return cls(p_low=float(data["p_low"]), p_high=float(data["p_high"]))

    @property
    def percentiles(self) -> tuple[float, float]:
        """(p_low, p_high)."""
        return (self.p_low, self.p_high)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class BandScaling:
    """Per-band linear map: DN ``low[b]`` -> -1 and ``high[b]`` -> +1 (low < high)."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.low) != len(self.high) or not self.low:
            raise ValueError(f"low {self.low} and high {self.high} must be equally long")
        for lo, hi in zip(self.low, self.high, strict=True):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"band range [{lo}, {hi}] is not a finite increasing range")

    @property
    def bands(self) -> int:
        """Number of bands."""
        return len(self.low)

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-ready dict (provenance tags, manifests)."""
        return {"low": list(self.low), "high": list(self.high)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BandScaling:
        """Inverse of ``to_dict``."""
        return cls(
            low=tuple(float(v) for v in data["low"]), high=tuple(float(v) for v in data["high"])
        )

    def _columns(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        low = np.asarray(self.low, dtype=np.float64)[:, None, None]  # (C, 1, 1)
        high = np.asarray(self.high, dtype=np.float64)[:, None, None]  # (C, 1, 1)
        return low, high


def scaling_for(
    dtype: npt.DTypeLike, band_percentiles: Sequence[tuple[float, float]]
) -> BandScaling:
    """The scaling of a raster: full range for uint8, else the bands' percentile values.

    Args:
        dtype: the raster's data type.
        band_percentiles: per band the DN values at (p_low, p_high) of the card's
            normalisation; ignored for uint8. A band whose two values are equal (a constant
            band) gets a range of one DN above its value, so it maps to -1 and back exactly.

    Returns:
        The per-band scaling.
    """
    count = len(band_percentiles)
    if np.dtype(dtype) == np.uint8:
        return BandScaling(low=(0.0,) * count, high=(255.0,) * count)
    low = tuple(float(lo) for lo, _ in band_percentiles)
    high = tuple(max(float(hi), float(lo) + 1.0) for lo, hi in band_percentiles)
    return BandScaling(low=low, high=high)


#: Floating bands: at most this many valid values per band are sampled for percentiles.
FLOAT_SAMPLE = 2_000_000


class PercentileAccumulator:
    """Per-band percentiles of the valid pixels, accumulated chunk by chunk.

    Integers of up to 16 bits use exact histograms (the result is the smallest value whose
    cumulative count reaches ``ceil(q / 100 * n)``); other types keep a regular sample of at
    most ``FLOAT_SAMPLE`` values per band. Feeding a raster whole or in chunks gives the same
    result for integer types, so upscale (chunked reads) and evaluate (arrays) agree.

    Args:
        dtype: the raster's data type.
        bands: number of bands C.
        pixels: total pixels that will be added (sets the float sampling step).
    """

    def __init__(self, dtype: npt.DTypeLike, bands: int, *, pixels: int) -> None:
        kind = np.dtype(dtype)
        self.exact = kind.kind in "iu" and kind.itemsize <= 2
        self.offset = -int(np.iinfo(kind).min) if self.exact else 0
        size = 1 << (8 * kind.itemsize) if self.exact else 0
        self.histograms = [np.zeros(size, dtype=np.int64) for _ in range(bands)]
        self.every = max(1, pixels // FLOAT_SAMPLE)
        self.samples: list[list[npt.NDArray[np.float64]]] = [[] for _ in range(bands)]

    def add(self, data: npt.NDArray[Any], valid: npt.NDArray[np.bool_]) -> None:
        """Add a chunk: ``data`` (C, h, w) and ``valid`` (h, w)."""
        for band in range(data.shape[0]):
            values = data[band][valid]
            if self.exact:
                counts = np.bincount(values.astype(np.int64) + self.offset)
                self.histograms[band][: counts.size] += counts
            else:
                self.samples[band].append(values[:: self.every].astype(np.float64))

    def percentiles(self, levels: tuple[float, float]) -> tuple[tuple[float, float], ...]:
        """Per band the values at percentiles ``levels`` (0..100) of everything added."""
        result = []
        for band in range(len(self.histograms)):
            if self.exact:
                cumulative = np.cumsum(self.histograms[band])
                total = int(cumulative[-1])
                picks = [
                    int(np.searchsorted(cumulative, max(1, math.ceil(q / 100 * total))))
                    - self.offset
                    for q in levels
                ]
                result.append((float(picks[0]), float(picks[1])))
            else:
                sample = np.concatenate(self.samples[band]) if self.samples[band] else np.zeros(1)
                low, high = np.percentile(sample, levels)
                result.append((float(low), float(high)))
        return tuple(result)


def band_percentiles(
    values: npt.NDArray[Any], valid: npt.NDArray[np.bool_], levels: tuple[float, float]
) -> tuple[tuple[float, float], ...]:
    """Percentiles of an in-memory raster (C, H, W) over its valid (H, W) pixels."""
    accumulator = PercentileAccumulator(values.dtype, values.shape[0], pixels=valid.size)
    accumulator.add(values, valid)
    return accumulator.percentiles(levels)


def to_model(values: npt.NDArray[Any], scaling: BandScaling) -> npt.NDArray[np.float32]:
    """Map DN values (C, H, W) to model space: ``2 (v - low) / (high - low) - 1`` per band.

    Args:
        values: (C, H, W) raster values in any real dtype; C == ``scaling.bands``.
        scaling: the raster's band scaling.

    Returns:
        (C, H, W) float32, [-1, 1] inside the reference range; not clipped.
    """
    if values.ndim != 3 or values.shape[0] != scaling.bands:
        raise ValueError(f"values {values.shape} do not have {scaling.bands} bands (C, H, W)")
    low, high = scaling._columns()
    return (2.0 * (values.astype(np.float64) - low) / (high - low) - 1.0).astype(np.float32)


def from_model(x: npt.NDArray[Any], scaling: BandScaling) -> npt.NDArray[np.float64]:
    """Inverse of ``to_model``: model space (C, H, W) back to DN values, float64, unclipped."""
    if x.ndim != 3 or x.shape[0] != scaling.bands:
        raise ValueError(f"x {x.shape} does not have {scaling.bands} bands (C, H, W)")
    low, high = scaling._columns()
    return (x.astype(np.float64) + 1.0) / 2.0 * (high - low) + low


def cast_to_dtype(
    values: npt.NDArray[Any], dtype: npt.DTypeLike, *, overwrite: bool = False
) -> tuple[npt.NDArray[Any], int]:
    """Round and clamp values into ``dtype`` (never wrap around) and count the clamped ones.

    Writing 300.7 into uint8 stores 44 and -5.0 into uint16 stores 65531 without a warning
    (reliability.md, finding 5); this is the only way refdiff converts to an output dtype.
    Float32 input stays float32 for targets of up to 16 bits (exact for every such integer),
    so a strip costs one temporary of its own size, or none with ``overwrite``.

    Args:
        values: real array of any shape; NaN becomes 0 for integer outputs (and is counted).
        dtype: target dtype (integer or floating).
        overwrite: for integer targets, round float32 ``values`` in place (the caller no
            longer needs them): a 256-row strip of an 8192 px wide RGB output saves 24 MiB.

    Returns:
        ``(cast, clamped)``: the converted array and how many values were out of range or NaN.
    """
    target = np.dtype(dtype)
    data = np.asarray(values)
    if target.kind in "iu":
        work = np.float32 if data.dtype == np.float32 and target.itemsize <= 2 else np.float64
        info = np.iinfo(target)
        if overwrite and data.dtype == work:
            rounded = np.rint(data, out=data)
        else:
            rounded = np.rint(data.astype(work, copy=False))  # a new array
        nan = np.isnan(rounded)
        # Three disjoint counts (NaN compares False): one boolean temporary at a time.
        clamped = int(np.count_nonzero(nan))
        clamped += int(np.count_nonzero(rounded < info.min))
        clamped += int(np.count_nonzero(rounded > info.max))
        rounded[nan] = 0.0
        np.clip(rounded, info.min, info.max, out=rounded)
        return rounded.astype(target), clamped
    if target.kind == "f":
        finfo = np.finfo(target)
        clamped = int(np.count_nonzero(np.abs(data) > finfo.max))
        return np.clip(data, finfo.min, finfo.max).astype(target), clamped
    raise ValueError(f"unsupported output dtype {target}")


def choose_output_nodata(
    dtype: npt.DTypeLike, lr_nodata: float | None, *, lr_has_invalid: bool
) -> float | None:
    """The nodata value of an output in ``dtype``, marking exactly the LR's invalid pixels.

    Args:
        dtype: output (= LR) data type.
        lr_nodata: the LR's declared nodata value, or None.
        lr_has_invalid: whether the LR has invalid pixels without a nodata value (internal
            mask, alpha band, NaN/inf).

    Returns:
        The LR's nodata when it declares a valid one; NaN for floating types; for integer
        types with invalid pixels but no nodata, the type's minimum (valid pixels that hold
        it are moved one DN up by ``reserve_nodata``); None when no nodata is needed.
    """
    target = np.dtype(dtype)
    if lr_nodata is not None and _representable(lr_nodata, target):
        return float(lr_nodata)
    if target.kind == "f":
        return math.nan
    if lr_has_invalid:
        return float(np.iinfo(target).min)
    return None


def reserve_nodata(
    values: npt.NDArray[Any], valid: npt.NDArray[np.bool_], nodata: float | None
) -> int:
    """Move valid integer values equal to ``nodata`` one DN towards the type's interior.

    Without this, a valid output pixel that happens to round to the nodata value would read
    as nodata in every GIS.

    Args:
        values: (C, H, W) integer output values, changed in place.
        valid: (H, W) bool, True where the output has data.
        nodata: the output's nodata value (None or NaN: nothing to do).

    Returns:
        How many values were moved.
    """
    if nodata is None or math.isnan(nodata) or values.dtype.kind not in "iu":
        return 0
    hits = (values == nodata) & valid[None]
    count = int(np.count_nonzero(hits))
    if count:
        moved = nodata + 1 if nodata == np.iinfo(values.dtype).min else nodata - 1
        values[hits] = moved
    return count


def _representable(value: float, dtype: np.dtype[Any]) -> bool:
    if dtype.kind == "f":
        return math.isnan(value) or abs(value) <= float(np.finfo(dtype).max)
    info = np.iinfo(dtype)
    return math.isfinite(value) and float(value).is_integer() and info.min <= value <= info.max
