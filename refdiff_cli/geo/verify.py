"""Reading written GeoTIFFs back: block-by-block verification, and the completion tag that
marks a complete refdiff output."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.crs
import rasterio.errors
from rasterio.windows import Window

from refdiff_cli.errors import OutputError
from refdiff_cli.geo.env import rasterio_env
from refdiff_cli.geo.gdal_errors import gdal_io
from refdiff_cli.geo.grid import GridLike

#: Tag written last, after every other tag; an output without it is not a complete result.
COMPLETE_TAG = "REFDIFF_COMPLETE"


def read_completion_tags(path: Path) -> dict[str, str] | None:
    """Return the tags of a complete refdiff output, or None (missing, unreadable, incomplete).

    Only the header is read; files published by :class:`RasterWriter` were verified block by
    block before publishing, so ``REFDIFF_COMPLETE=1`` stands for a complete file.
    """
    try:
        with rasterio_env(), rasterio.open(path) as src:
            tags: dict[str, str] = src.tags()
    except (rasterio.errors.RasterioError, OSError):
        return None
    return tags if tags.get(COMPLETE_TAG) == "1" else None


def verify_raster(
    path: Path,
    *,
    grid: GridLike | None = None,
    strips: Mapping[int, tuple[int, int]] | None = None,
    tags: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Re-open a written raster, decode every block (overviews too) and return its tags.

    Args:
        path: the raster to check.
        grid: when given, the size, CRS and transform the raster must have.
        strips: ``{row_off: (rows, crc32)}`` of the full-width strips as written; each must read
            back with the same CRC32. Without it every block is decoded and not compared.
        tags: when given, tags the raster must carry with these values.

    Raises:
        OutputError: it does not open, a block does not decode or differs, the georeferencing
            differs, a tag is missing or ``REFDIFF_COMPLETE=1`` is absent.
    """
    with gdal_io(path, "verifying"), rasterio.open(path) as src:
        problems = _header_problems(src, grid)
        if strips is not None:
            for row_off, (rows, crc) in sorted(strips.items()):
                values = src.read(window=Window(0, row_off, src.width, rows))  # (C, rows, W)
                if zlib.crc32(np.ascontiguousarray(values).data) != crc:
                    problems.append(f"rows {row_off}-{row_off + rows - 1} read back differently")
        else:
            _decode_all(src)
        for level in range(len(src.overviews(1))):
            with rasterio.open(path, overview_level=level) as overview:
                _decode_all(overview)
        found: dict[str, str] = src.tags()
    missing = [k for k, v in {**(tags or {}), COMPLETE_TAG: "1"}.items() if found.get(k) != v]
    if missing:
        problems.append(f"tags {', '.join(missing)} missing or different")
    if problems:
        raise OutputError(
            f"verification of {path} failed: {'; '.join(problems)}",
            hint="the file was not published; rerun",
        )
    return found


def _header_problems(src: Any, grid: GridLike | None) -> list[str]:
    if grid is None:
        return []
    problems = []
    if (src.width, src.height) != (grid.width, grid.height):
        problems.append(f"size {src.width}x{src.height}, expected {grid.width}x{grid.height}")
    if grid.crs is not None and src.crs != rasterio.crs.CRS.from_user_input(grid.crs):
        problems.append(f"CRS {src.crs}, expected {grid.crs}")
    if not src.transform.almost_equals(grid.transform):
        problems.append(
            f"transform {tuple(src.transform)[:6]}, expected {tuple(grid.transform)[:6]}"
        )
    return problems


def _decode_all(src: Any) -> None:
    for _, window in src.block_windows(1):
        src.read(window=window)  # (C, h, w), decoded and dropped
