"""How the reference and the mask line up with the LR: the LR/ref pixel-size ratio, footprint
coverage, the grid a mask is read on (``--mask-grid``) and the source pixels a warp reads."""

from __future__ import annotations

import logging
import math
from typing import Literal

from refdiff_cli.data.tiling import PixelWindow
from refdiff_cli.errors import InputError
from refdiff_cli.geo.grid import Grid, coverage, ground_pixel_size, upscaled
from refdiff_cli.geo.raster_info import RasterInfo, require_grid

logger = logging.getLogger(__name__)

#: The grid a mask is read on (``--mask-grid``): its own, the reference's or the LR's.
MaskGrid = Literal["own", "ref", "lr"]
#: LR/ref ground pixel size ratios within this factor of the scale are accepted.
GSD_TOLERANCE = 1.5
#: Extra source pixels decoded around the part of ref/mask that the warp reads (kernel reach).
WARP_PAD_PX = 4


def grid_for_mask(
    info: RasterInfo, how: MaskGrid, lr: Grid, ref: Grid, scale: int, *, role: str = "lr"
) -> Grid:
    """The grid the mask is read on, per ``--mask-grid`` ("lr": the image's, named ``role``)."""
    image = role.upper()
    if how == "own":
        if info.grid is None:
            raise InputError(
                f"mask {info.path} has no georeferencing",
                hint="georeference it, or pass --mask-grid ref (or image) if it is on the same "
                f"pixel grid as the reference (or the {image})",
            )
        return info.grid
    candidates = [ref] if how == "ref" else [lr, upscaled(lr, scale)]
    for grid in candidates:
        if grid.shape == info.shape:
            return grid
    shapes = " or ".join(dict.fromkeys(f"{g.width}x{g.height}" for g in candidates))
    option = "ref" if how == "ref" else f"image (the {image}'s grid)"
    raise InputError(  # sizes width x height, as the tables print them
        f"mask {info.path} is {info.shape[1]}x{info.shape[0]} px; --mask-grid {option} needs "
        f"{shapes} px",
        hint="the mask must be on exactly that pixel grid, or georeference it",
    )


def check_scale(lr: RasterInfo, lr_grid: Grid, ref: RasterInfo, ref_grid: Grid, scale: int) -> None:
    lr_gsd, ref_gsd = ground_pixel_size(lr_grid), ground_pixel_size(ref_grid)
    ratio = lr_gsd / ref_gsd
    if scale / GSD_TOLERANCE <= ratio <= scale * GSD_TOLERANCE:
        return
    if lr.role == "hr":  # prepare: the reference must share the HR's pixel size
        raise InputError(
            f"ref {ref.path} has {ref_gsd:.3g} m pixels, but the HR {lr.path} has {lr_gsd:.3g} m "
            f"(x{ratio:.3g}); the reference must have the HR's pixel size",
            hint=f"resample the reference onto the HR's pixel size, e.g. gdalwarp -t_srs "
            f"{lr_grid.crs.to_string()} -tr {abs(lr_grid.transform.a):.6g} "
            f"{abs(lr_grid.transform.e):.6g} -r cubic {ref.path} ref_resampled.tif",
        )
    raise InputError(
        f"the upscale is x{scale}, but {lr.role} {lr.path} ({lr_gsd:.3g} m) / ref {ref.path} "
        f"({ref_gsd:.3g} m) = x{ratio:.3g}; the ref needs {lr_gsd / scale:.3g} m pixels",
        hint="use a model (or --scale for bicubic) that fits, or resample the inputs",
    )


def coverage_or_fail(lr: RasterInfo, other: RasterInfo, grid: Grid, messages: list[str]) -> float:
    lr_grid = require_grid(lr)
    fraction = coverage(lr_grid, grid)
    if fraction <= 0.0:
        projected = grid.footprint_in(lr_grid.crs)
        theirs = (
            "unknown"
            if projected is None
            else "(" + ", ".join(f"{v:.2f}" for v in projected.bounds) + ")"
        )
        raise InputError(
            f"{other.role} {other.path} does not overlap {lr.role} {lr.path}: {lr.role} bounds "
            f"{lr_grid.bounds_text()}, {other.role} bounds {theirs} in {lr_grid.crs.to_string()}",
            hint=f"pass a {other.role} that covers the LR area",
        )
    if fraction < 0.999:
        message = (
            f"{other.role} {other.path} covers {100 * fraction:.1f} % of {lr.role} {lr.path}; the "
            "uncovered part is reconstructed from the LR alone"
        )
        logger.warning("%s", message)
        messages.append(message)
    return fraction


def needed_window(source: Grid, lr: Grid) -> PixelWindow:
    """The pixels of ``source`` that warping onto the LR footprint reads (padded, clipped)."""
    outline = lr.footprint_in(source.crs)
    if outline is None:
        return PixelWindow(0, 0, source.height, source.width)
    inverse = ~source.transform
    cols, rows = zip(*(inverse * xy for xy in outline.exterior.coords), strict=True)
    col0 = max(0, math.floor(min(cols)) - WARP_PAD_PX)
    row0 = max(0, math.floor(min(rows)) - WARP_PAD_PX)
    col1 = min(source.width, math.ceil(max(cols)) + WARP_PAD_PX)
    row1 = min(source.height, math.ceil(max(rows)) + WARP_PAD_PX)
    if col1 <= col0 or row1 <= row0:
        return PixelWindow(0, 0, source.height, source.width)
    return PixelWindow(row0, col0, row1 - row0, col1 - col0)
