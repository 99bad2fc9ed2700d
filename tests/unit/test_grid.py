"""Output grids and footprints: upscaled() keeps bounds, divides the pixel size (rotation too)."""

from __future__ import annotations

import math

import pytest
from affine import Affine
from hypothesis import given
from hypothesis import strategies as st
from rasterio.crs import CRS

from refdiff_cli.geo.grid import Grid, coverage, ground_pixel_size, upscaled

UTM = CRS.from_epsg(32633)


@given(
    res=st.floats(0.1, 100),
    angle=st.floats(-180, 180),
    south_up=st.booleans(),
    width=st.integers(1, 500),
    height=st.integers(1, 500),
    scale=st.sampled_from([2, 4, 8, 16]),
)
def test_upscaled_keeps_bounds_and_divides_the_pixel_size(
    res: float, angle: float, south_up: bool, width: int, height: int, scale: int
) -> None:
    flip = Affine.scale(1, -1 if not south_up else 1)
    transform = (
        Affine.translation(500_000, 5_000_000) * Affine.rotation(angle) * Affine.scale(res) * flip
    )
    lr = Grid(crs=UTM, transform=transform, width=width, height=height)
    out = upscaled(lr, scale)
    assert out.crs == lr.crs
    assert (out.height, out.width) == (height * scale, width * scale)
    assert out.transform.almost_equals(lr.transform * Affine.scale(1 / scale), precision=1e-9)
    for corner in [(0, 0), (width, 0), (0, height), (width, height)]:
        x0, y0 = lr.transform * corner
        x1, y1 = out.transform * (corner[0] * scale, corner[1] * scale)
        assert math.isclose(x0, x1, abs_tol=1e-6 * res) and math.isclose(y0, y1, abs_tol=1e-6 * res)
    assert math.isclose(ground_pixel_size(out) * scale, ground_pixel_size(lr), rel_tol=1e-4)


def test_coverage_in_another_crs() -> None:
    lr = Grid(crs=UTM, transform=Affine(4, 0, 500_000, 0, -4, 5_000_000), width=100, height=100)
    half = Grid(crs=UTM, transform=Affine(4, 0, 500_000, 0, -4, 5_000_000), width=50, height=100)
    assert coverage(lr, half) == pytest.approx(0.5, abs=1e-6)
    # The same footprint expressed in Web Mercator covers the LR fully.
    footprint = lr.footprint_in(CRS.from_epsg(3857))
    assert footprint is not None
    left, bottom, right, top = footprint.bounds
    mercator = Grid(
        crs=CRS.from_epsg(3857),
        transform=Affine(1.0, 0, left - 50, 0, -1.0, top + 50),
        width=int(right - left) + 100,
        height=int(top - bottom) + 100,
    )
    assert coverage(lr, mercator) == pytest.approx(1.0)
    far = Grid(crs=UTM, transform=Affine(4, 0, 600_000, 0, -4, 5_000_000), width=100, height=100)
    assert coverage(lr, far) == 0.0


def test_antimeridian_overlap_is_found_in_the_lr_crs() -> None:
    """A UTM 60N LR crossing 180 E and a 4326 ref across it: naive lon/lat boxes miss this."""
    lr = Grid(
        crs=CRS.from_epsg(32660),
        transform=Affine(30, 0, 800_000, 0, -30, 5_050_000),
        width=2000,
        height=1000,
    )
    ref = Grid(
        crs=CRS.from_epsg(4326),
        transform=Affine(0.001, 0, 179.0, 0, -0.001, 45.7),
        width=2500,  # 179.0 .. 181.5 (= -178.5)
        height=600,
    )
    assert coverage(lr, ref) > 0.5


def test_geographic_pixel_size_is_measured_in_metres() -> None:
    grid = Grid(
        crs=CRS.from_epsg(4326), transform=Affine(1e-4, 0, 15, 0, -1e-4, 46), width=10, height=10
    )
    size = ground_pixel_size(grid)
    assert 8.0 < size < 11.5  # 1e-4 degree at 46 N: ~7.7 m east-west, ~11.1 m north-south


def test_web_mercator_units_are_not_ground_metres() -> None:
    """0.8637 Web Mercator units at 46 N are 0.6 m on the ground (1 / cos(46 deg) larger)."""
    x, y = 1_687_700.0, 5_780_000.0  # about 15.16 E, 46.0 N
    grid = Grid(
        crs=CRS.from_epsg(3857), transform=Affine(0.8637, 0, x, 0, -0.8637, y), width=8, height=8
    )
    assert ground_pixel_size(grid) == pytest.approx(0.6, abs=0.01)
