"""Warping a reference or mask onto an output grid (GDAL WarpedVRT with an alpha band) and
reading its values with their validity."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import rasterio.errors
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from refdiff_cli.data.tiling import PixelWindow
from refdiff_cli.errors import InputError
from refdiff_cli.geo.gdal_errors import gdal_text
from refdiff_cli.geo.grid import Grid, to_window
from refdiff_cli.geo.raster_info import RasterInfo

#: Working memory of each warped reader (ref, mask), MB; GDAL warps a tile in chunks within it.
WARP_MEMORY_MB = 16


def read_vrt(
    vrt: Any, info: RasterInfo, bands: Sequence[int], window: PixelWindow
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """Read ``bands`` of a warped VRT in ``window``: values (C, H, W) float32, validity (H, W)."""
    alpha = vrt.count  # add_alpha appends the validity band last
    try:
        data = vrt.read([*bands, alpha], window=to_window(window))  # (C + 1, H, W)
    except rasterio.errors.RasterioError as exc:
        raise InputError(
            f"{info.role} {info.path} could not be read while warping: {gdal_text(exc)}",
            hint="check that the file is intact and was not changed during the run",
        ) from exc
    values = data[:-1].astype(np.float32)  # (C, H, W)
    valid = data[-1] > 0
    if values.dtype.kind == "f":
        valid &= np.isfinite(values).all(axis=0)
    return values, valid


def warped(src: Any, grid: Grid, resampling: Resampling, *, source_grid: Grid | None = None) -> Any:
    """A WarpedVRT of ``src`` on ``grid`` with an alpha band marking where it has data."""
    options: dict[str, Any] = {}
    if source_grid is not None and src.crs is None:
        options.update(src_crs=source_grid.crs, src_transform=source_grid.transform)
    return WarpedVRT(
        src,
        crs=grid.crs,
        transform=grid.transform,
        width=grid.width,
        height=grid.height,
        resampling=resampling,
        add_alpha=True,
        warp_mem_limit=WARP_MEMORY_MB,
        **options,
    )
