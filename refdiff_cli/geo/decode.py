"""Decoding an input's pixel blocks: a window's values with their validity, and the full scan
of the preflight (a corrupt block fails here, before any model work)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import rasterio.errors

from refdiff_cli.data.normalize import PercentileAccumulator
from refdiff_cli.data.tiling import PixelWindow
from refdiff_cli.errors import InputError
from refdiff_cli.geo.gdal_errors import gdal_text
from refdiff_cli.geo.grid import to_window
from refdiff_cli.geo.raster_info import RasterInfo, open_geotiff

#: Pixels decoded per read while validating an input.
SCAN_CHUNK_PIXELS = 4 * 1024 * 1024
#: Distinct mask values kept for encoding inference; more means "not a class map".
MAX_MASK_VALUES = 256


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Scan:
    """What a full decode of (part of) a raster found."""

    valid_pixels: int
    total_pixels: int
    percentiles: tuple[tuple[float, float], ...]
    values: dict[float, int] | None  # band 1 value -> valid pixel count (masks); None if many


def scan(
    info: RasterInfo,
    bands: Sequence[int],
    *,
    window: PixelWindow | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
    distinct: bool = False,
) -> Scan:
    """Decode every block of ``bands`` inside ``window`` and gather statistics.

    A truncated or corrupt file opens fine and fails only when a missing block is read
    (reliability.md, finding 4), so this runs before any model work.

    Args:
        info: the raster.
        bands: 1-based bands to decode.
        window: the part to decode (None: all of it).
        percentiles: (p_low, p_high) per band, in 0..100.
        distinct: collect the distinct values of the first band (for masks).

    Raises:
        InputError: a block does not decode (naming the rows), or no pixel is valid.
    """
    height, width = info.shape
    win = window or PixelWindow(0, 0, height, width)
    step = max(1, SCAN_CHUNK_PIXELS // max(1, win.width * len(bands)))
    stats = PercentileAccumulator(info.dtype, len(bands), pixels=win.height * win.width)
    values: dict[float, int] | None = {} if distinct else None
    valid_total = 0
    with open_geotiff(info.path, info.role) as src:
        for row in range(win.row_off, win.row_end, step):
            rows = min(step, win.row_end - row)
            chunk = PixelWindow(row, win.col_off, rows, win.width)
            data, valid = read_window(src, info, bands, chunk)
            valid_total += int(np.count_nonzero(valid))
            stats.add(data, valid)
            if values is not None:
                found, counts = np.unique(data[0][valid], return_counts=True)
                for value, count in zip(found.tolist(), counts.tolist(), strict=True):
                    values[value] = values.get(value, 0) + count
                if len(values) > MAX_MASK_VALUES:
                    values = None
    if valid_total == 0:
        where = "" if window is None else " where it overlaps the LR"
        raise InputError(
            f"{info.role} {info.path} has no valid pixels{where} (all nodata or masked)",
            hint="check its nodata value and extent",
        )
    return Scan(
        valid_pixels=valid_total,
        total_pixels=win.height * win.width,
        percentiles=stats.percentiles(percentiles),
        values=values,
    )


def read_window(
    src: Any, info: RasterInfo, bands: Sequence[int], window: PixelWindow
) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_]]:
    """Values (C, h, w) and validity (h, w) of ``bands`` in ``window`` (InputError if corrupt)."""
    try:
        data = src.read(list(bands), window=to_window(window))  # (C, h, w)
        masks = src.read_masks(list(bands), window=to_window(window))  # (C, h, w)
    except rasterio.errors.RasterioError as exc:
        raise InputError(
            f"{info.role} {info.path} is truncated or corrupt "
            f"(rows {window.row_off}-{window.row_end - 1}): {gdal_text(exc)}",
            hint="re-create or re-download the file",
        ) from exc
    if data.shape[1:] != (window.height, window.width):
        raise InputError(f"{info.role} {info.path}: read {data.shape[1:]} pixels for {window}")
    valid = (masks > 0).all(axis=0)
    if data.dtype.kind == "f":
        valid &= np.isfinite(data).all(axis=0)
    return data, valid
