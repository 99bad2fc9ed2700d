"""Raster grids: the output grid of an upscale, pixel windows, footprints and ground pixel sizes."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol

import numpy as np
import pyproj
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from refdiff_cli.data.tiling import PixelWindow

#: Points per footprint edge when a footprint is projected into another CRS.
FOOTPRINT_DENSIFY = 32


class GridLike(Protocol):
    """What the writer needs of a grid (``Grid`` fits): CRS, affine transform, size."""

    @property
    def crs(self) -> Any: ...
    @property
    def transform(self) -> Any: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Grid:
    """A georeferenced pixel grid: CRS, affine transform (rotation allowed) and size.

    Attributes:
        crs: coordinate reference system.
        transform: pixel (col, row) -> CRS (x, y) of the pixel's top-left corner.
        width, height: size in pixels (>= 1).
    """

    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return (self.height, self.width)

    def window_transform(self, window: PixelWindow) -> Affine:
        """Transform of the sub-grid that starts at ``window``'s top-left pixel."""
        return self.transform * Affine.translation(window.col_off, window.row_off)

    def window_grid(self, window: PixelWindow) -> Grid:
        """The sub-grid covered by ``window`` (same CRS and pixel size)."""
        return Grid(
            crs=self.crs,
            transform=self.window_transform(window),
            width=window.width,
            height=window.height,
        )

    def footprint(self) -> shapely.Polygon:
        """The grid's outline in its own CRS (exact for rotated transforms)."""
        corners = [(0, 0), (self.width, 0), (self.width, self.height), (0, self.height)]
        return shapely.Polygon([self.transform * corner for corner in corners])

    def footprint_in(self, crs: CRS) -> shapely.Polygon | None:
        """The grid's outline projected into ``crs``, densified so curved edges stay curved.

        The outline is walked in pixel space and every point is projected, so a footprint
        crossing the antimeridian stays one continuous polygon in a projected target CRS
        (never test overlap in EPSG:4326 boxes: reliability.md, section 2.2).

        Returns:
            The polygon, or None when fewer than 3 points can be projected.
        """
        steps = np.linspace(0.0, 1.0, FOOTPRINT_DENSIFY, endpoint=False)
        w, h = float(self.width), float(self.height)
        cols = np.concatenate(
            [steps * w, np.full_like(steps, w), w - steps * w, np.zeros_like(steps)]
        )
        rows = np.concatenate(
            [np.zeros_like(steps), steps * h, np.full_like(steps, h), h - steps * h]
        )
        a, b, c, d, e, f = tuple(self.transform)[:6]
        xs, ys = a * cols + b * rows + c, d * cols + e * rows + f
        if crs != self.crs:
            transformer = pyproj.Transformer.from_crs(self.crs, crs, always_xy=True)
            xs, ys = transformer.transform(xs, ys, errcheck=False)
        points = np.column_stack([xs, ys])
        points = points[np.isfinite(points).all(axis=1)]
        if len(points) < 3:
            return None
        polygon = shapely.make_valid(shapely.Polygon(points))
        return polygon if polygon.area > 0 else None

    def bounds_text(self) -> str:
        """(left, bottom, right, top) of the footprint's envelope, for messages."""
        left, bottom, right, top = self.footprint().bounds
        return f"({left:.2f}, {bottom:.2f}, {right:.2f}, {top:.2f})"


def upscaled(grid: Grid, scale: int) -> Grid:
    """The output grid of an upscale: same CRS and bounds, pixel size divided by ``scale``.

    ``transform * Affine.scale(1 / scale)`` divides all four linear terms, rotation included.

    Args:
        grid: the LR grid.
        scale: integer factor >= 1.
    """
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    return Grid(
        crs=grid.crs,
        transform=grid.transform * Affine.scale(1.0 / scale),
        width=grid.width * scale,
        height=grid.height * scale,
    )


def coverage(target: Grid, other: Grid) -> float:
    """Fraction (0..1) of ``target``'s footprint covered by ``other``'s, in target's CRS."""
    own = target.footprint()
    projected = other.footprint_in(target.crs)
    if projected is None or own.area == 0:
        return 0.0
    return float(min(1.0, own.intersection(projected).area / own.area))


def to_window(window: PixelWindow) -> Window:
    """The rasterio ``Window`` of a pixel window."""
    return Window(window.col_off, window.row_off, window.width, window.height)


def ground_pixel_size(grid: Grid) -> float:
    """Mean ground size of one pixel in metres, measured on the ellipsoid at the grid centre.

    Map units are not ground metres in general: a Web Mercator pixel of 0.86 units is 0.6 m
    on the ground at 46 N. The centre pixel's two edges are taken to the CRS's own
    geographic coordinates and measured on its ellipsoid; the result is their geometric mean.
    """
    crs = pyproj.CRS.from_user_input(grid.crs)
    geodetic = crs.geodetic_crs or pyproj.CRS.from_epsg(4326)
    cx, cy = grid.width / 2, grid.height / 2
    points = [
        grid.transform * (cx, cy),
        grid.transform * (cx + 1, cy),
        grid.transform * (cx, cy + 1),
    ]
    xs, ys = zip(*points, strict=True)
    lons, lats = pyproj.Transformer.from_crs(crs, geodetic, always_xy=True).transform(xs, ys)
    geod = geodetic.get_geod() or pyproj.Geod(ellps="WGS84")
    _, _, along_x = geod.inv(lons[0], lats[0], lons[1], lats[1])
    _, _, along_y = geod.inv(lons[0], lats[0], lons[2], lats[2])
    return math.sqrt(abs(along_x) * abs(along_y))
