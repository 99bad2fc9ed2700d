"""The bundled sample scene: reproducible from its generator, on the grids its README promises."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp, Resampling
from rasterio.warp import reproject, transform
from shapely.geometry import Polygon, box

from tests.conftest import SAMPLE_DATA

NAMES = ("lr", "ref", "cd", "hr")
RGB = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four files written afresh by ``make_sample_data.py --seed 0`` into a temp folder."""
    out = tmp_path_factory.mktemp("sample")
    subprocess.run(
        [sys.executable, str(SAMPLE_DATA / "make_sample_data.py"), "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


def _read(path: Path) -> tuple[np.ndarray, dict[str, object]]:
    with rasterio.open(path) as src:
        meta = {
            "profile": {k: v for k, v in src.profile.items() if k != "crs"},
            "crs": src.crs.to_wkt(),
            "descriptions": src.descriptions,
            "colorinterp": src.colorinterp,
            "tags": src.tags(),
            "structure": src.tags(ns="IMAGE_STRUCTURE"),
        }
        return src.read(), meta


@pytest.mark.parametrize("name", NAMES)
def test_regenerated_file_matches_the_committed_one(regenerated: Path, name: str) -> None:
    committed, fresh = SAMPLE_DATA / f"{name}.tif", regenerated / f"{name}.tif"
    if committed.read_bytes() == fresh.read_bytes():
        return
    # Another zlib/libdeflate build compresses differently, and GDAL's cubic warper may round a
    # few ref pixels the other way: then the pixels and the metadata must still agree.
    old, old_meta = _read(committed)
    new, new_meta = _read(fresh)
    fix = "run `python sample_data/make_sample_data.py` and commit the four files"
    assert new_meta == old_meta, f"{name}.tif metadata differs from the generator's: {fix}"
    tolerance = 1 if name == "ref" else 0
    diff = np.abs(new.astype(np.int16) - old.astype(np.int16))
    assert diff.max() <= tolerance, f"{name}.tif pixels differ from the generator's: {fix}"
    assert (diff > 0).mean() < 0.001


def test_files_are_small_tiled_deflate_geotiffs() -> None:
    total = 0
    for name in NAMES:
        path = SAMPLE_DATA / f"{name}.tif"
        total += path.stat().st_size
        with rasterio.open(path) as src:
            assert src.driver == "GTiff"
            assert src.dtypes == ("uint8",) * src.count
            assert src.compression is not None and src.compression.value == "DEFLATE"
            assert src.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "2"
            for rows, cols in src.block_shapes:
                assert rows % 16 == 0 and cols % 16 == 0
            if src.count == 3:
                assert src.descriptions == ("red", "green", "blue")
                assert src.colorinterp == RGB
    assert total < 500 * 1024, f"sample data grew to {total / 1024:.0f} KiB"


def test_lr_is_the_8x8_block_mean_of_hr_on_the_same_footprint() -> None:
    with rasterio.open(SAMPLE_DATA / "hr.tif") as hr, rasterio.open(SAMPLE_DATA / "lr.tif") as lr:
        assert hr.crs.to_epsg() == lr.crs.to_epsg() == 32633
        assert hr.res == (0.5, 0.5) and hr.shape == (384, 384) and lr.shape == (48, 48)
        assert lr.transform == hr.transform * Affine.scale(8)
        assert lr.bounds == hr.bounds
        west, north = hr.transform.c, hr.transform.f
        lon, lat = transform(hr.crs, "EPSG:4326", [west], [north])
        assert 14.0 < lon[0] < 16.0 and 45.5 < lat[0] < 46.5
        hr_data, lr_data = hr.read().astype(np.float64), lr.read().astype(np.float64)
    means = hr_data.reshape(3, 48, 8, 48, 8).mean(axis=(2, 4))  # (3, 48, 48)
    assert np.abs(lr_data - means).max() <= 0.5
    assert hr_data.std() > 20  # a scene, not a flat fill


def test_ref_is_an_older_web_mercator_image_covering_the_lr() -> None:
    with rasterio.open(SAMPLE_DATA / "ref.tif") as ref, rasterio.open(SAMPLE_DATA / "lr.tif") as lr:
        assert ref.crs.to_epsg() == 3857 and ref.nodata == 0
        assert ref.tags()["ACQUISITION_DATE"] < lr.tags()["ACQUISITION_DATE"]
        cx, cy = (ref.bounds.left + ref.bounds.right) / 2, (ref.bounds.bottom + ref.bounds.top) / 2
        _, lat = transform(ref.crs, "EPSG:4326", [cx], [cy])
        assert ref.res[0] == ref.res[1]
        assert ref.res[0] * math.cos(math.radians(lat[0])) == pytest.approx(0.6, abs=0.01)
        steps = np.linspace(0.0, 1.0, 21)
        left, bottom, right, top = ref.bounds
        ring_x = [*(left + (right - left) * steps), *([right] * 21)]
        ring_x += [*(right - (right - left) * steps), *([left] * 21)]
        ring_y = [*([top] * 21), *(top - (top - bottom) * steps)]
        ring_y += [*([bottom] * 21), *(bottom + (top - bottom) * steps)]
        xs, ys = transform(ref.crs, lr.crs, ring_x, ring_y)
        footprint = Polygon(zip(xs, ys, strict=True))
        assert footprint.contains(box(*lr.bounds))
        assert footprint.area < 1.5 * box(*lr.bounds).area  # only slightly larger
        valid = np.zeros((1, *lr.shape), dtype=np.uint8)  # (1, 48, 48)
        reproject(
            ref.dataset_mask()[None],
            valid,
            src_transform=ref.transform,
            src_crs=ref.crs,
            dst_transform=lr.transform,
            dst_crs=lr.crs,
            resampling=Resampling.min,
        )
    assert (valid == 255).all(), "ref nodata reaches into the LR footprint"


def test_cd_is_a_1m_utm_change_mask_over_the_lr_footprint() -> None:
    with rasterio.open(SAMPLE_DATA / "cd.tif") as cd, rasterio.open(SAMPLE_DATA / "lr.tif") as lr:
        assert cd.crs.to_epsg() == 32633 and cd.count == 1
        assert cd.res == (1.0, 1.0) and cd.bounds == lr.bounds
        mask = cd.read(1)
    assert set(np.unique(mask)) == {0, 1}
    assert 0.05 < mask.mean() < 0.5


def test_hr_and_ref_differ_much_more_where_the_mask_says_changed() -> None:
    with (
        rasterio.open(SAMPLE_DATA / "hr.tif") as hr,
        rasterio.open(SAMPLE_DATA / "ref.tif") as ref,
        rasterio.open(SAMPLE_DATA / "cd.tif") as cd,
    ):
        grid = {"dst_transform": hr.transform, "dst_crs": hr.crs}
        ref_on_hr = np.zeros((3, *hr.shape), dtype=np.uint8)  # (3, 384, 384)
        reproject(
            ref.read(),
            ref_on_hr,
            src_transform=ref.transform,
            src_crs=ref.crs,
            src_nodata=0,
            resampling=Resampling.cubic,
            **grid,
        )
        mask = np.zeros(hr.shape, dtype=np.uint8)  # (384, 384)
        reproject(
            cd.read(1),
            mask,
            src_transform=cd.transform,
            src_crs=cd.crs,
            resampling=Resampling.nearest,
            **grid,
        )
        hr_data = hr.read()
    assert (ref_on_hr > 0).all()
    diff = np.abs(hr_data.astype(np.float64) - ref_on_hr).mean(axis=0)  # (384, 384)
    inside, outside = diff[mask == 1].mean(), diff[mask == 0].mean()
    assert outside > 2.0  # other date, other sun, other radiometry
    assert inside > 3.0 * outside, (inside, outside)
