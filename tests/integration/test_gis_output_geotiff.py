"""Issue 12, items 2, 4 and 6: GIS-ready GeoTIFFs, the dry run's time estimate, and the
--dtype / --nodata overrides, through real `refdiff upscale` runs on the bundled sample."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp

from refdiff_cli.geo.band_statistics import BandStatistics
from refdiff_cli.geo.write import RasterWriter
from tests.conftest import SAMPLE_DATA, run_cli

RGB = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
STATISTICS = ("MINIMUM", "MAXIMUM", "MEAN", "STDDEV", "VALID_PERCENT")


def upscale(out: Path, *extra: str) -> tuple[int, str, str]:
    """``refdiff upscale`` of the sample scene with the bicubic engine (fast) into ``out``."""
    result = run_cli(
        [
            "upscale",
            str(SAMPLE_DATA / "lr.tif"),
            "--ref",
            str(SAMPLE_DATA / "ref.tif"),
            "--mask",
            str(SAMPLE_DATA / "cd.tif"),
            "-o",
            str(out),
            "--engine",
            "bicubic",
            *extra,
        ]
    )
    return result.returncode, result.stdout, result.stderr


def check_statistics(src: rasterio.DatasetReader) -> None:
    """Every band's STATISTICS_* tags are those of its valid pixels."""
    for band in range(1, src.count + 1):
        tags = src.tags(band)
        values = src.read(band, masked=True).compressed().astype(np.float64)
        assert float(tags["STATISTICS_MINIMUM"]) == values.min()
        assert float(tags["STATISTICS_MAXIMUM"]) == values.max()
        assert math.isclose(float(tags["STATISTICS_MEAN"]), values.mean(), rel_tol=1e-9)
        assert math.isclose(float(tags["STATISTICS_STDDEV"]), values.std(), rel_tol=1e-9)
        percent = 100 * values.size / (src.width * src.height)
        assert math.isclose(float(tags["STATISTICS_VALID_PERCENT"]), percent, rel_tol=1e-5)


@pytest.mark.parametrize("cog", [False, True])
def test_default_output_has_overviews_rgb_descriptions_and_statistics(
    tmp_path: Path, cog: bool
) -> None:
    out = tmp_path / "sr.tif"
    code, _, stderr = upscale(out, *(["--cog"] if cog else []))
    assert code == 0, stderr
    with rasterio.open(out) as src:
        assert src.overviews(1) == [2]  # 384 px: one level fits a 256 px block
        assert src.colorinterp == RGB
        assert src.descriptions == ("red", "green", "blue")
        assert src.tags()["REFDIFF_COMPLETE"] == "1"
        if cog:
            assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        check_statistics(src)
        full = src.read().astype(np.float64)  # (3, 384, 384)
    with rasterio.open(out, overview_level=0) as overview:
        half = overview.read().astype(np.float64)  # (3, 192, 192)
    averaged = full.reshape(3, 192, 2, 192, 2).mean(axis=(2, 4))
    assert np.abs(half - averaged).max() <= 1  # AVERAGE resampling, rounded to uint8
    assert [p.name for p in tmp_path.iterdir()] == ["sr.tif"], "temp files were left behind"


def uint16_grid() -> object:
    class Grid:
        crs = "EPSG:32633"
        transform = Affine(0.5, 0, 500_000, 0, -0.5, 5_000_000)
        width = 600
        height = 520

    return Grid()


@pytest.mark.parametrize(("rgb", "expected"), [(True, RGB), (False, (ColorInterp.gray,))])
def test_writer_declares_rgb_for_any_dtype_and_builds_overviews_before_publishing(
    tmp_path: Path, rgb: bool, expected: tuple[ColorInterp, ...]
) -> None:
    """uint16 RGB is grey/undefined by GDAL's default; the writer says red, green, blue."""
    data = np.random.default_rng(0).integers(1, 20000, (3, 520, 600), dtype=np.uint16)
    valid = np.ones((520, 600), dtype=bool)
    valid[:40] = False
    out = tmp_path / "rgb.tif"
    writer = RasterWriter(
        out, uint16_grid(), count=3, dtype="uint16", nodata=0, overviews=True, rgb=rgb
    )
    with writer:
        for row in range(0, 520, writer.block_rows):
            rows = slice(row, row + writer.block_rows)
            writer.write_strip(row, data[:, rows], valid[rows])
        writer.finalize({})
    with rasterio.open(out) as src:
        assert src.colorinterp[: len(expected)] == expected
        assert src.overviews(1) == [2, 4]  # 600 x 520 px down to one 256 px block
        check_statistics(src)
        assert src.tags(1)["STATISTICS_VALID_PERCENT"] == f"{100 * 480 / 520:.6g}"


def test_band_statistics_merge_strips_exactly() -> None:
    values = np.random.default_rng(1).normal(1000.0, 50.0, (64, 30)).astype(np.float32)
    values[3, 4] = np.nan
    stats = BandStatistics()
    for part in np.split(values, [5, 6, 40]):
        stats.add(part, None, -9999.0)
    finite = values[~np.isnan(values)].astype(np.float64)
    assert stats.count == finite.size
    assert math.isclose(stats.mean, finite.mean(), rel_tol=1e-12)
    assert math.isclose(math.sqrt(stats.m2 / stats.count), finite.std(), rel_tol=1e-9)
    assert stats.tags(64 * 30)["STATISTICS_MINIMUM"] == f"{finite.min():.17g}"
    assert BandStatistics().tags(10) == {}


def test_dtype_rounds_half_to_even_and_clamps_never_wraps(tmp_path: Path) -> None:
    """int8 of the same SR: rint of the float32 output, clamped to -128..127 (no 200 -> -56)."""
    code, _, stderr = upscale(tmp_path / "f.tif", "--dtype", "float32")
    assert code == 0, stderr
    code, _, stderr = upscale(tmp_path / "i.tif", "--dtype", "int8", "--nodata", "-128")
    assert code == 0, stderr
    with rasterio.open(tmp_path / "f.tif") as src:
        assert src.dtypes == ("float32",) * 3
        assert src.colorinterp == RGB
        floats = src.read()  # (3, H, W) float32, unrounded
    with rasterio.open(tmp_path / "i.tif") as src:
        assert src.dtypes == ("int8",) * 3
        assert src.nodata == -128
        small = src.read()
    assert not np.array_equal(floats, np.rint(floats)), "the float output is unrounded"
    expected = np.clip(np.rint(floats), -128, 127)
    expected[expected == -128] = -127  # a valid pixel never takes the nodata value
    np.testing.assert_array_equal(small, expected.astype(np.int8))
    assert (small == 127).mean() > 0.1, "the sample has many values above 127: clamped"


def test_nodata_override_is_declared(tmp_path: Path) -> None:
    out = tmp_path / "sr.tif"
    code, _, stderr = upscale(out, "--dtype", "uint16", "--nodata", "65535")
    assert code == 0, stderr
    with rasterio.open(out) as src:
        assert src.dtypes == ("uint16",) * 3
        assert src.nodata == 65535
        assert int(src.read().max()) <= 255  # values are not rescaled


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--nodata", "300"], ("--nodata 300", "uint8", "0 to 255")),
        (["--dtype", "int8", "--nodata", "200"], ("--nodata 200", "int8", "--dtype")),
        (["--dtype", "uint16", "--nodata", "1.5"], ("--nodata 1.5", "uint16", "whole number")),
        (["--nodata", "nan"], ("--nodata nan", "uint8", "0 to 255")),
        (["--nodata", "none"], ("--nodata", "a number or nan")),
        (["--dtype", "int64"], ("--dtype", "'int64'", "uint8, int8")),
        (["--nodata", "inf", "--dtype", "float32"], ("--nodata", "finite")),
    ],
)
def test_bad_dtype_or_nodata_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], names: tuple[str, ...]
) -> None:
    code, _, stderr = upscale(tmp_path / "sr.tif", *args)
    assert code == 2, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("refdiff: error: ")
    for name in names:
        assert name in last, last
    assert not (tmp_path / "sr.tif").exists()


def test_dry_run_measures_a_batch_and_prints_the_expected_time(tmp_path: Path) -> None:
    out = tmp_path / "sr.tif"
    code, stdout, stderr = upscale(out, "--dry-run", "--json", "--batch-size", "2")
    assert code == 0, stderr
    estimate = json.loads(stdout)["report"]["time_estimate"]
    assert estimate["batch_tiles"] == 1 and estimate["batches"] == 1  # one 384 px tile
    assert estimate["device"] == "cpu"
    assert 0 < estimate["batch_seconds"] <= estimate["seconds"] < 120
    code, stdout, stderr = upscale(out, "--dry-run")
    assert code == 0, stderr
    plan = " ".join(stdout.split())
    assert "expected run time about " in plan
    assert "a batch of 1 tile took " in plan and " s on cpu" in plan
    assert not out.exists()
