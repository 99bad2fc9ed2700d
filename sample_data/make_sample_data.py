"""Write the bundled synthetic sample scene (lr.tif, ref.tif, cd.tif, hr.tif), seeded and exact."""

from __future__ import annotations

import argparse
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform, transform_bounds

F = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]
Rgb = tuple[float, float, float]
Tree = tuple[float, float, float, float]  # centre u, v (m), crown radius (m), height (m)

SCALE = 8  # LR pixel size / HR pixel size
HR_RES_M = 0.5
HR_SIZE_PX = 384  # 192 m square
WEST_M, NORTH_M = 512_000.0, 5_094_000.0  # HR/LR top-left corner in UTM 33N (about 15.16E 46.0N)
UTM = CRS.from_epsg(32633)
WEB_MERCATOR = CRS.from_epsg(3857)
CANVAS_MARGIN_M = 8.0  # the scene is rendered this far beyond the LR footprint
REF_MARGIN_M = 12.0  # ref.tif reaches this far beyond it (nodata 0 past the rendering)
REF_GROUND_RES_M = 0.6
CD_RES_M = 1.0
CD_DILATION_M = 2.0  # two cd.tif pixels
DATE_REF, DATE_NOW = "2019-08-21", "2023-06-14"
ROAD = ((60.0, -40.0), (76.0, 96.0), (102.0, 240.0))  # centre line vertices (u, v), m
ROAD_HALF_WIDTH_M = 3.3
GTIFF: dict[str, Any] = {
    "driver": "GTiff",
    "dtype": "uint8",
    "tiled": True,
    "compress": "deflate",
    "predictor": 2,
    "zlevel": 9,
    "interleave": "pixel",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class Building:
    """A box with a gable, hip or flat roof; ``u``/``v`` in m east/south of the HR corner."""

    u: float
    v: float
    length: float  # along the ridge, m
    width: float  # m
    angle: float  # ridge direction, degrees clockwise from east (image axes)
    eave: float = 5.0  # m above ground
    pitch: float = 40.0  # degrees; 0 is a flat roof
    roof: Rgb = (0.60, 0.31, 0.22)
    hip: bool = False
    chimney: bool = True
    panels: bool = False  # solar panels on the face toward +b (south for angle ~0)


@dataclass(frozen=True, kw_only=True, slots=True)
class Epoch:
    """Everything that differs between the two acquisition dates."""

    date: str
    sun_azimuth: float  # degrees clockwise from north
    sun_elevation: float  # degrees
    buildings: tuple[Building, ...]
    driveways: tuple[Building, ...]  # gravel boxes (footprint only)
    field_b: str  # "wheat" or "ploughed"
    tree_growth: float  # crown radius factor
    extra_trees: tuple[Tree, ...]  # trees felled before the other date
    gamma: float  # display = radiance ** gamma * gain + haze
    gain: Rgb
    haze: float
    blur_px: float  # optics, Gaussian sigma in 0.5 m pixels


HOUSE_1 = Building(u=88, v=20, length=13, width=9, angle=83)
HOUSE_2_OLD = Building(u=93, v=52, length=12, width=8.5, angle=83, roof=(0.55, 0.33, 0.25))
HOUSE_2_NEW = Building(u=93, v=52, length=12, width=8.5, angle=83, roof=(0.27, 0.27, 0.29))
GARAGE_2 = Building(
    u=99.3,
    v=51.2,
    length=6,
    width=4,
    angle=83,
    eave=3,
    pitch=0,
    roof=(0.47, 0.47, 0.46),
    chimney=False,
)
BARN = Building(
    u=134,
    v=26,
    length=22,
    width=11,
    angle=10,
    eave=5.5,
    pitch=20,
    roof=(0.53, 0.53, 0.51),
    chimney=False,
)
HOUSE_7 = Building(u=166, v=96, length=11, width=9, angle=2, hip=True, roof=(0.47, 0.29, 0.23))
NEW_HOUSES = (
    Building(u=100, v=86, length=11, width=8, angle=-7, roof=(0.72, 0.40, 0.29), panels=True),
    Building(u=130, v=64, length=10, width=8, angle=83, hip=True, roof=(0.31, 0.31, 0.34)),
    Building(u=107, v=121, length=12, width=9, angle=85, roof=(0.66, 0.37, 0.27)),
)
OLD_HOUSES = (HOUSE_1, BARN, HOUSE_7)


def _road_u(v: float) -> float:
    """Easting offset (m) of the road centre line at southing offset ``v`` (m)."""
    for (u0, v0), (u1, v1) in itertools.pairwise(ROAD):
        if v <= v1:
            return u0 + (u1 - u0) * (v - v0) / (v1 - v0)
    raise ValueError(f"v={v} m is south of the road end")


def _driveway(house: Building) -> Building:
    """A 3 m wide gravel drive from the road edge to the middle of ``house``."""
    start = _road_u(house.v + 3.0) + ROAD_HALF_WIDTH_M
    return Building(
        u=(start + house.u) / 2, v=house.v + 3.0, length=house.u - start, width=3.0, angle=0.0
    )


def epochs() -> tuple[Epoch, Epoch]:
    """Return the scene at the ref date (late-summer afternoon) and at the LR/HR date (June)."""
    drives = tuple(_driveway(b) for b in (HOUSE_1, HOUSE_2_OLD, BARN))
    ref = Epoch(
        date=DATE_REF,
        sun_azimuth=218.0,
        sun_elevation=41.0,
        buildings=(*OLD_HOUSES, HOUSE_2_OLD),
        driveways=drives,
        field_b="ploughed",
        tree_growth=0.92,
        extra_trees=((108.0, 119.0, 3.6, 9.0), (127.0, 62.0, 2.6, 7.0)),
        gamma=1.08,
        gain=(1.05, 1.0, 0.97),
        haze=0.02,
        blur_px=0.7,
    )
    now = Epoch(
        date=DATE_NOW,
        sun_azimuth=152.0,
        sun_elevation=57.0,
        buildings=(*OLD_HOUSES, HOUSE_2_NEW, GARAGE_2, *NEW_HOUSES),
        driveways=drives + tuple(_driveway(b) for b in NEW_HOUSES),
        field_b="wheat",
        tree_growth=1.0,
        extra_trees=(),
        gamma=1.0,
        gain=(1.0, 1.0, 1.0),
        haze=0.0,
        blur_px=0.45,
    )
    return ref, now


# ---------------------------------------------------------------- noise and geometry


def _blur(a: F, sigma_px: float) -> F:
    """Gaussian blur (periodic, via FFT) of a (..., H, W) array; ``sigma_px`` in pixels."""
    fy = np.fft.fftfreq(a.shape[-2])[:, None]
    fx = np.fft.rfftfreq(a.shape[-1])[None, :]
    kernel = np.exp(-2.0 * math.pi**2 * sigma_px**2 * (fx**2 + fy**2))  # (H, W//2+1)
    return np.fft.irfft2(np.fft.rfft2(a) * kernel, s=a.shape[-2:])


def _noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> F:
    """Zero-mean, unit-std Gaussian-correlated noise with correlation length ``sigma_px``."""
    n = _blur(rng.standard_normal(shape), sigma_px)  # (H, W)
    unit: F = (n - n.mean()) / n.std()
    return unit


def _cover(sdf: F, res: float) -> F:
    """Anti-aliased coverage in [0, 1] of the region ``sdf < 0`` (m) for ``res`` m pixels."""
    return np.clip(0.5 - sdf / res, 0.0, 1.0)


def _box(u: F, v: F, b: Building, grow: float = 0.0) -> tuple[F, F, F]:
    """Signed distance (m) to ``b``'s footprint grown by ``grow`` m, and local axes a, b (m)."""
    c, s = math.cos(math.radians(b.angle)), math.sin(math.radians(b.angle))
    a_ax = (u - b.u) * c + (v - b.v) * s  # along the ridge
    b_ax = -(u - b.u) * s + (v - b.v) * c  # across the ridge
    qa = np.abs(a_ax) - b.length / 2 - grow
    qb = np.abs(b_ax) - b.width / 2 - grow
    outside = np.hypot(np.maximum(qa, 0.0), np.maximum(qb, 0.0))
    return outside + np.minimum(np.maximum(qa, qb), 0.0), a_ax, b_ax


def _road(u: F, v: F) -> tuple[F, F, F]:
    """Distance (m) to the road centre line, signed offset (m, east > 0) and arc length (m)."""
    best, east, arc = np.full(u.shape, np.inf), np.zeros(u.shape), np.zeros(u.shape)
    start = 0.0
    for (u0, v0), (u1, v1) in itertools.pairwise(ROAD):
        du, dv = u1 - u0, v1 - v0
        length = math.hypot(du, dv)
        t = np.clip(((u - u0) * du + (v - v0) * dv) / length**2, 0.0, 1.0)
        dist = np.hypot(u - u0 - t * du, v - v0 - t * dv)
        closer = dist < best
        best = np.where(closer, dist, best)
        east = np.where(closer, ((u - u0) * dv - (v - v0) * du) / length, east)
        arc = np.where(closer, start + t * length, arc)
        start += length
    return best, east, arc


def _fields(u: F, v: F) -> tuple[F, F]:
    """Signed distances (m) to field A (north-west) and field B (south-west, the changed one)."""
    west = _road(u, v)[1] + 7.0  # the fields stop 7 m west of the road centre
    return np.maximum(west, v - 86.0), np.maximum(west, 93.0 - v)


def _pond(u: F, v: F, wobble: F) -> F:
    """Approximate signed distance (m) to the pond shore, pushed out by ``wobble`` (m)."""
    c, s = math.cos(math.radians(-25.0)), math.sin(math.radians(-25.0))
    a = ((u - 152.0) * c + (v - 160.0) * s) / 25.0  # ellipse semi-axes 25 m and 15 m
    b = (-(u - 152.0) * s + (v - 160.0) * c) / 15.0
    k = np.hypot(a, b) + 1e-9
    return (k - 1.0) * k / np.hypot(a / 25.0, b / 15.0) + wobble  # first-order distance


def _trees(rng: np.random.Generator) -> list[Tree]:
    """Tree crowns present at both dates: groves, an avenue, a hedge row and garden trees."""
    trees: list[Tree] = []
    for cu, cv, spread, n in (
        (178.0, 12.0, 11.0, 30),
        (184.0, 150.0, 9.0, 14),
        (126.0, 180.0, 7.0, 8),
    ):
        for _ in range(n):
            du, dv = rng.normal(0.0, spread, size=2)
            trees.append((cu + du, cv + dv, rng.uniform(2.8, 5.0), rng.uniform(10.0, 16.0)))
    for v in np.arange(138.0, 210.0, 9.0):
        trees.append((_road_u(v) + 7.0, v, rng.uniform(2.6, 3.4), rng.uniform(8.0, 10.0)))
    u = -14.0
    while u < 64.0:
        trees.append((u, 89.5 + rng.normal(0.0, 0.6), rng.uniform(1.8, 3.0), rng.uniform(5.0, 8.0)))
        u += rng.uniform(3.2, 5.0)
    for tu, tv in ((106, 36), (112, 8), (120, 100), (150, 58), (150, 118), (186, 72), (146, 196)):
        trees.append((float(tu), float(tv), rng.uniform(3.0, 4.6), rng.uniform(8.0, 12.0)))
    crowns = np.array(trees)  # (N, 4)
    tu_, tv_, radius = crowns[:, 0], crowns[:, 1], crowns[:, 2]
    clear = np.minimum.reduce(
        [_box(tu_, tv_, b, grow=1.0)[0] for b in (*OLD_HOUSES, HOUSE_2_NEW, GARAGE_2, *NEW_HOUSES)]
    )
    clear = np.minimum(clear, _road(tu_, tv_)[0] - ROAD_HALF_WIDTH_M - 1.2)
    keep = (clear > 0.4 * radius) & (_pond(tu_, tv_, np.zeros_like(tu_)) > 0.5 * radius)
    return [tree for tree, k in zip(trees, keep, strict=True) if k]


@dataclass(frozen=True, kw_only=True, slots=True)
class Canvas:
    """The 0.5 m UTM rendering grid and its date-independent textures."""

    u: F  # (H, W) pixel centres, m east of the HR corner
    v: F  # (H, W) pixel centres, m south of the HR corner
    res: float  # m
    noise: dict[str, F]  # (H, W) unit-std textures
    trees: list[Tree]


def make_canvas(rng: np.random.Generator) -> Canvas:
    """The LR footprint plus ``CANVAS_MARGIN_M`` on every side, with textures drawn from ``rng``."""
    n = round((HR_SIZE_PX * HR_RES_M + 2 * CANVAS_MARGIN_M) / HR_RES_M)
    centres = -CANVAS_MARGIN_M + (np.arange(n) + 0.5) * HR_RES_M  # (W,)
    u, v = np.meshgrid(centres, centres)  # (H, W) each
    scales = {
        "low": 40.0,
        "mid": 8.0,
        "patch": 3.0,
        "clump": 1.1,
        "fine": 0.6,
        "fine2": 0.6,
        "grain": 0.35,
    }
    noise = {name: _noise(rng, (n, n), sigma) for name, sigma in scales.items()}
    return Canvas(u=u, v=v, res=HR_RES_M, noise=noise, trees=_trees(rng))


# ---------------------------------------------------------------- rendering


def _rgb(colour: Rgb, texture: F | float = 1.0) -> F:
    """``colour`` times a (H, W) brightness ``texture``: a (3, H, W) (or (3, 1, 1)) albedo."""
    return np.array(colour)[:, None, None] * texture


def _paint(albedo: F, cover: F, colour: F) -> None:
    """Blend ``colour`` (3, H, W) into ``albedo`` (3, H, W) in place, with weight ``cover``."""
    albedo += cover * (colour - albedo)


def _ground(cv: Canvas, ep: Epoch) -> F:
    """Albedo (3, H, W) at ground level: meadow, fields, gardens, drives, road and pond."""
    u, v, n, res = cv.u, cv.v, cv.noise, cv.res
    albedo = _rgb(
        (0.37, 0.43, 0.22),
        1.0 + 0.07 * n["low"] + 0.05 * n["mid"] + 0.05 * n["patch"] + 0.04 * n["fine"],
    )
    albedo[0] += 0.02 * n["mid"]  # dry patches turn yellow
    # fields: maize rows in A; B ripening wheat with tramlines, or ploughed soil
    sdf_a, sdf_b = _fields(u, v)
    along = u * math.cos(-0.12) + v * math.sin(-0.12)  # m across the rows
    crop = np.clip(0.5 + 0.9 * np.cos(2 * math.pi * along / 1.5) + 0.25 * n["patch"], 0, 1)
    soil = _rgb((0.47, 0.40, 0.30), 1.0 + 0.04 * n["fine"])
    maize = _rgb((0.24, 0.38, 0.13), 1.0 + 0.08 * n["fine"])
    _paint(albedo, _cover(sdf_a, res), soil + crop * (0.85 + 0.1 * n["low"]) * (maize - soil))
    if ep.field_b == "wheat":
        field_b = _rgb(
            (0.71, 0.62, 0.36),
            1.0 + 0.05 * n["mid"] + 0.05 * n["fine"] + 0.025 * np.cos(2 * math.pi * along / 2.0),
        )
        tram = np.abs(np.abs(((along + 4.0) % 21.0) - 10.5) - 0.9)  # m to a wheel track
        _paint(field_b, np.clip(1.0 - tram / 0.35, 0.0, 1.0), _rgb((0.50, 0.47, 0.30)))
    else:
        field_b = _rgb(
            (0.44, 0.35, 0.27),
            1.0 + 0.07 * np.cos(2 * math.pi * along / 1.2) + 0.05 * n["fine"] + 0.06 * n["mid"],
        )
    _paint(albedo, _cover(sdf_b, res), field_b)
    # gardens around the houses: mowing stripes, hedges
    for b in ep.buildings:
        if b.pitch > 0:
            sdf, a_ax, _ = _box(u, v, b, grow=6.0)
            stripes = np.where(np.cos(2 * math.pi * a_ax / 2.4) > 0, 1.02, 0.98)
            lawn = _rgb(
                (0.34, 0.44, 0.22), stripes * (1.0 + 0.04 * (n["fine"] + n["mid"] + n["low"]))
            )
            _paint(albedo, _cover(sdf, res), lawn)
            hedge = _cover(np.abs(sdf + 0.6) - 0.45 - 0.25 * n["clump"], res)
            _paint(albedo, hedge, _rgb((0.18, 0.27, 0.12), 1.0 + 0.1 * n["fine"]))
    # gravel drives; the road: gravel shoulder, asphalt with wheel tracks, lane markings
    gravel = _rgb((0.60, 0.57, 0.52), 1.0 + 0.08 * n["grain"])
    for d in ep.driveways:
        _paint(albedo, _cover(_box(u, v, d)[0], res), gravel)
    dist, _, arc = _road(u, v)
    _paint(albedo, _cover(dist - ROAD_HALF_WIDTH_M - 1.0 - 0.4 * n["patch"], res) * 0.8, gravel)
    wheel = np.clip(1.0 - np.minimum(np.abs(dist - 0.8), np.abs(dist - 2.5)) / 0.5, 0.0, 1.0)
    asphalt = _rgb(
        (0.30, 0.30, 0.31),
        (1.0 + 0.05 * n["fine2"] + 0.04 * n["mid"] + 0.03 * n["grain"]) * (1.0 - 0.06 * wheel),
    )
    _paint(albedo, _cover(dist - ROAD_HALF_WIDTH_M, res), asphalt)
    marking = _rgb((0.86, 0.86, 0.83))
    _paint(albedo, _cover(np.abs(dist - ROAD_HALF_WIDTH_M + 0.3) - 0.15, res), marking)
    _paint(albedo, _cover(dist - 0.15, res) * ((arc % 9.0) < 3.0), marking)  # 3 m dashes
    # pond: reeds and mud on the bank, shallow then deep water, faint ripples
    shore = _pond(u, v, 1.3 * n["mid"])
    reeds = _rgb((0.33, 0.36, 0.20), 1.0 + 0.12 * n["clump"])
    _paint(albedo, _cover(shore - 2.5 - 2.0 * n["mid"], res) * (n["patch"] > 0.0), reeds)
    _paint(albedo, _cover(shore - 1.0 - 0.6 * n["patch"], res), _rgb((0.42, 0.37, 0.28)))
    depth = np.clip(-shore / 4.0, 0.0, 1.0)  # 0 at the shore, 1 from 4 m out
    ripple = (
        0.004
        * (1.0 + n["low"].clip(-1, 1))
        * (
            np.sin(2 * math.pi * (0.8 * u + 0.6 * v) / 1.7 + 3.0 * n["mid"])
            + np.sin(2 * math.pi * (-0.5 * u + 0.87 * v) / 2.3 + 3.0 * n["patch"])
        )
    )
    water = np.stack([0.19 - 0.12 * depth, 0.23 - 0.10 * depth, 0.19 - 0.05 * depth])  # (3, H, W)
    _paint(albedo, np.clip(0.5 - shore / 1.2, 0.0, 1.0), water * (1.0 + 0.02 * n["patch"]) + ripple)
    return albedo


def _buildings(cv: Canvas, ep: Epoch, albedo: F) -> tuple[F, F, F]:
    """Paint roofs into ``albedo``; return the roof height (m) and slopes dh/du, dh/dv (H, W)."""
    u, v, n = cv.u, cv.v, cv.noise
    height, gu, gv = np.zeros(u.shape), np.zeros(u.shape), np.zeros(u.shape)
    for b in ep.buildings:
        sdf, a_ax, b_ax = _box(u, v, b)
        t = math.tan(math.radians(b.pitch))
        across, lengthwise = b.width / 2 - np.abs(b_ax), b.length / 2 - np.abs(a_ax)
        hip_end = np.logical_and(b.hip, lengthwise < across)
        h = b.eave + t * np.where(hip_end, lengthwise, across)  # (H, W)
        dh_da = np.where(hip_end, -np.sign(a_ax) * t, 0.0)
        dh_db = np.where(hip_end, 0.0, -np.sign(b_ax) * t)
        roof = _rgb(b.roof, 1.0 + 0.05 * n["fine"] + 0.03 * n["mid"])
        ridge = np.minimum(across, lengthwise) if b.hip else across
        roof *= np.where((ridge < 0.25) & (b.pitch > 0), 1.12, 1.0) * np.where(sdf > -0.35, 0.8, 1)
        if b.panels:
            on_panel = (np.abs(a_ax) < b.length / 2 - 1.5) & (b_ax > 0.8) & (across > 0.7)
            frames = np.where(np.cos(2 * math.pi * a_ax / 1.7) > 0.9, 1.15, 1.0)  # panel rims
            roof = np.where(on_panel, _rgb((0.11, 0.13, 0.19), frames), roof)
        c, s = math.cos(math.radians(b.angle)), math.sin(math.radians(b.angle))
        if b.chimney:
            stack = Building(
                u=b.u + c * b.length / 4 - s * b.width / 4,
                length=0.9,
                width=0.9,
                v=b.v + s * b.length / 4 + c * b.width / 4,
                angle=b.angle,
            )
            inside = _box(u, v, stack)[0] < 0
            h = np.where(inside, b.eave + t * b.width / 2 + 0.6, h)
            dh_da, dh_db = np.where(inside, 0.0, dh_da), np.where(inside, 0.0, dh_db)
            roof = np.where(inside, _rgb((0.33, 0.22, 0.19)), roof)
        top = (sdf < 0) & (h > height)
        height = np.where(top, h, height)
        gu = np.where(top, dh_da * c - dh_db * s, gu)
        gv = np.where(top, dh_da * s + dh_db * c, gv)
        _paint(albedo, _cover(sdf, cv.res), roof)
    return height, gu, gv


def _canopy(cv: Canvas, ep: Epoch, albedo: F) -> F:
    """Paint tree crowns into ``albedo``; return the crown surface height (H, W) in m."""
    height, tint = np.zeros(cv.u.shape), np.ones(cv.u.shape)
    origin = cv.u[0, 0] - cv.res / 2
    for k, (tu, tv, radius, top) in enumerate([*cv.trees, *ep.extra_trees]):
        r = radius * ep.tree_growth
        c0, r0 = (max(0, int((x - r - 1 - origin) / cv.res)) for x in (tu, tv))
        c1, r1 = (int((x + r + 1 - origin) / cv.res) + 2 for x in (tu, tv))
        win = (slice(r0, r1), slice(c0, c1))
        d2 = ((cv.u[win] - tu) ** 2 + (cv.v[win] - tv) ** 2) / r**2
        h = top * np.sqrt(np.clip(1.0 - d2, 0.0, 1.0))  # ellipsoidal crown
        higher = h > height[win]
        height[win] = np.where(higher, h, height[win])
        tint[win] = np.where(higher, 0.85 + 0.3 * ((k * 0.618) % 1.0), tint[win])
    leaves = np.maximum(np.where(height > 0, height + 1.1 * cv.noise["clump"] - 0.4, 0.0), 0.0)
    crown = _rgb((0.15, 0.26, 0.10), tint * (1.0 + 0.1 * cv.noise["fine"]))  # (3, H, W)
    crown[0] *= 0.9 + 0.12 * (tint - 0.85)  # some crowns more yellow
    _paint(albedo, np.clip(leaves / 0.6, 0.0, 1.0), crown)
    return leaves


def _shadow(height: F, res: float, azimuth: float, elevation: float) -> F:
    """Cast-shadow fraction in [0, 1] of a (H, W) height field (m), marching toward the sun."""
    du, dv = math.sin(math.radians(azimuth)), -math.cos(math.radians(azimuth))
    rise = math.tan(math.radians(elevation))
    shadow = np.zeros(height.shape, dtype=bool)
    rows, cols = height.shape
    for k in range(1, math.ceil(height.max() / rise / res) + 1):
        di, dj = round(k * dv), round(k * du)
        ahead = np.zeros_like(height)  # ahead[i, j] = height[i + di, j + dj]
        ahead[max(-di, 0) : rows - max(di, 0), max(-dj, 0) : cols - max(dj, 0)] = height[
            max(di, 0) : rows + min(di, 0), max(dj, 0) : cols + min(dj, 0)
        ]
        shadow |= ahead > height + k * res * rise
    return np.clip(_blur(shadow.astype(np.float64), 0.7), 0.0, 1.0)  # soft penumbra


def render(cv: Canvas, ep: Epoch) -> U8:
    """Render the scene on ``cv`` as seen at ``ep``'s date: a (3, H, W) uint8 RGB image."""
    albedo = _ground(cv, ep)  # (3, H, W)
    roof_h, roof_gu, roof_gv = _buildings(cv, ep, albedo)
    tree_h = _canopy(cv, ep, albedo)
    tree_gv, tree_gu = np.gradient(tree_h, cv.res)
    on_tree = tree_h > roof_h
    gu = np.clip(np.where(on_tree, tree_gu, roof_gu), -2.5, 2.5)
    gv = np.clip(np.where(on_tree, tree_gv, roof_gv), -2.5, 2.5)
    # Lambert shading of the surface normal (-gu, -gv, 1); flat sunlit ground gets 1
    az, el = math.radians(ep.sun_azimuth), math.radians(ep.sun_elevation)
    sun = (math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el))
    cos_i = (sun[2] - gu * sun[0] - gv * sun[1]) / np.sqrt(gu**2 + gv**2 + 1.0)
    lit = 1.0 - _shadow(np.maximum(roof_h, tree_h), cv.res, ep.sun_azimuth, ep.sun_elevation)
    direct = np.clip(cos_i, 0.0, None) / sun[2] * lit
    ambient = 0.32 * np.where(on_tree, 0.85 + 0.15 * cv.noise["clump"].clip(-1, 1), 1.0)
    light = _rgb((0.90, 0.98, 1.18), ambient) + _rgb((0.70, 0.68, 0.65), direct)  # sky + sun
    image = np.clip(_blur(albedo * light, ep.blur_px), 0.0, 1.0)
    image = image**ep.gamma * np.array(ep.gain)[:, None, None] + ep.haze
    rgb: U8 = np.clip(np.round(image * 255), 1, 255).astype(np.uint8)
    return rgb


# ---------------------------------------------------------------- rasters and files


def change_mask(u: F, v: F) -> U8:
    """1 where land cover changed between the dates, dilated by ``CD_DILATION_M``; else 0.

    Args:
        u, v: (H, W) pixel centres in m east/south of the HR corner.
    """
    changed = [*NEW_HOUSES, *(_driveway(b) for b in NEW_HOUSES), HOUSE_2_NEW, GARAGE_2]
    sdf = np.minimum.reduce([_box(u, v, b)[0] for b in changed])  # (H, W)
    return (np.minimum(sdf, _fields(u, v)[1]) <= CD_DILATION_M).astype(np.uint8)


def warp_ref(image: U8) -> tuple[U8, Affine]:
    """Reproject the canvas rendering ``image`` (3, H, W) to EPSG:3857, cubic, ~0.6 m ground.

    Returns:
        The (3, h, w) image (0 = nodata past the rendering, valid pixels >= 1) and its
        transform: the LR footprint plus ``REF_MARGIN_M``, snapped to whole pixels.
    """
    size_m = HR_SIZE_PX * HR_RES_M
    src_transform = Affine(
        HR_RES_M, 0.0, WEST_M - CANVAS_MARGIN_M, 0.0, -HR_RES_M, NORTH_M + CANVAS_MARGIN_M
    )
    _, lat = transform(UTM, "EPSG:4326", [WEST_M + size_m / 2], [NORTH_M - size_m / 2])
    res = round(REF_GROUND_RES_M / math.cos(math.radians(lat[0])), 4)  # Mercator scale 1/cos
    m = REF_MARGIN_M
    left, bottom, right, top = transform_bounds(
        UTM,
        WEB_MERCATOR,
        WEST_M - m,
        NORTH_M - size_m - m,
        WEST_M + size_m + m,
        NORTH_M + m,
        densify_pts=21,
    )
    left, top = math.floor(left / res) * res, math.ceil(top / res) * res
    shape = (math.ceil((top - bottom) / res), math.ceil((right - left) / res))
    dst_transform = Affine(res, 0.0, left, 0.0, -res, top)
    grids: dict[str, Any] = {
        "src_transform": src_transform,
        "src_crs": UTM,
        "dst_nodata": 0,
        "dst_transform": dst_transform,
        "dst_crs": WEB_MERCATOR,
    }
    ref = np.zeros((3, *shape), dtype=np.uint8)  # (3, h, w)
    reproject(image, ref, resampling=Resampling.cubic, **grids)
    valid = np.zeros(shape, dtype=np.uint8)  # (h, w)
    reproject(np.ones(image.shape[1:], np.uint8), valid, resampling=Resampling.nearest, **grids)
    return np.where(valid > 0, np.maximum(ref, 1), 0).astype(np.uint8), dst_transform


def block_mean(hr: U8, scale: int) -> U8:
    """Area-average (C, H, W) ``hr`` over ``scale`` x ``scale`` blocks, rounded to uint8."""
    c, h, w = hr.shape
    blocks = hr.reshape(c, h // scale, scale, w // scale, scale).astype(np.float64)
    lr: U8 = np.round(blocks.mean(axis=(2, 4))).astype(np.uint8)  # (C, H/scale, W/scale)
    return lr


def write_tif(
    path: Path,
    data: U8,
    *,
    crs: CRS,
    transform: Affine,
    block_px: int,
    tags: dict[str, str],
    nodata: int | None = None,
) -> None:
    """Write (C, H, W) uint8 ``data`` as a tiled deflate GeoTIFF; 3 bands are tagged RGB."""
    count, height, width = data.shape
    extra = {"photometric": "RGB"} if count == 3 else {}
    with rasterio.open(
        path,
        "w",
        **GTIFF,
        **extra,
        width=width,
        height=height,
        count=count,
        crs=crs,
        transform=transform,
        nodata=nodata,
        blockxsize=block_px,
        blockysize=block_px,
    ) as dst:
        dst.write(data)
        for band, name in enumerate(("red", "green", "blue") if count == 3 else ("change",), 1):
            dst.set_band_description(band, name)
        dst.update_tags(**tags)


def generate(out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Render the scene and write lr.tif, ref.tif, cd.tif and hr.tif into ``out_dir``.

    Args:
        out_dir: output folder, created if missing; existing files are overwritten.
        seed: seeds every texture and the random tree placement (>= 0).

    Returns:
        The path of each file by name ("lr", "ref", "cd", "hr").
    """
    canvas = make_canvas(np.random.default_rng(np.random.SeedSequence(seed)))
    ep_ref, ep_now = epochs()
    m = round(CANVAS_MARGIN_M / HR_RES_M)
    hr = render(canvas, ep_now)[:, m : m + HR_SIZE_PX, m : m + HR_SIZE_PX]  # (3, H, W)
    ref, ref_transform = warp_ref(render(canvas, ep_ref))  # (3, h, w)
    centres = (np.arange(round(HR_SIZE_PX * HR_RES_M / CD_RES_M)) + 0.5) * CD_RES_M
    cd = change_mask(*np.meshgrid(centres, centres))[None]  # (1, H/2, W/2)
    hr_transform = Affine(HR_RES_M, 0.0, WEST_M, 0.0, -HR_RES_M, NORTH_M)
    about = f"synthetic scene, sample_data/make_sample_data.py --seed {seed}, CC0-1.0"
    now = {"SAMPLE_DATA": about, "ACQUISITION_DATE": DATE_NOW}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / f"{name}.tif" for name in ("lr", "ref", "cd", "hr")}
    write_tif(
        paths["lr"],
        block_mean(hr, SCALE),
        crs=UTM,
        block_px=16,
        tags=now,
        transform=hr_transform * Affine.scale(SCALE),
    )
    write_tif(
        paths["ref"],
        ref,
        crs=WEB_MERCATOR,
        transform=ref_transform,
        block_px=128,
        nodata=0,
        tags={"SAMPLE_DATA": about, "ACQUISITION_DATE": DATE_REF},
    )
    write_tif(
        paths["cd"],
        cd,
        crs=UTM,
        block_px=64,
        transform=Affine(CD_RES_M, 0.0, WEST_M, 0.0, -CD_RES_M, NORTH_M),
        tags={"SAMPLE_DATA": about, "CHANGE": f"1 = changed between {DATE_REF} and {DATE_NOW}"},
    )
    write_tif(paths["hr"], hr, crs=UTM, transform=hr_transform, block_px=128, tags=now)
    return paths


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python sample_data/make_sample_data.py [--out DIR] [--seed 0]``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="output folder (default: the folder of this script)",
    )
    parser.add_argument("--seed", type=int, default=0, help="texture seed (default: 0)")
    args = parser.parse_args(argv)
    for name, path in generate(args.out, args.seed).items():
        print(f"{name:>3}: {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
