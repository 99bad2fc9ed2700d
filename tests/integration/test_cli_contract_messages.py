"""Issue 9, item 10 (leftovers): warnings and messages a user can act on (subprocess runs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from tests.conftest import RasterFactory, run_cli
from tests.integration.test_cli_upscale import HR_TRANSFORM, LR_TRANSFORM, scene, upscale_args

#: The prepare test's HR at 0.5 m, and a reference at 1 m (twice as coarse).
COARSE_TRANSFORM = Affine(1.0, 0.0, 500_000.0, 0.0, -1.0, 5_000_000.0)


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


@pytest.fixture
def ref_and_mask(make_raster: RasterFactory) -> dict[str, Path]:
    ref = make_raster("ref.tif", scene(192, 256, seed=1), transform=HR_TRANSFORM)
    cd = make_raster("cd.tif", np.zeros((192, 256), np.uint8), transform=HR_TRANSFORM)
    return {"ref": ref, "mask": cd}


def test_an_alpha_lr_band_left_out_is_named_in_a_warning(
    ref_and_mask: dict[str, Path], make_raster: RasterFactory, tmp_path: Path
) -> None:
    """An RGBA LR: band 4 is alpha (GDAL's default for 4 bands of uint8) and was dropped
    without a word; the output had 3 bands."""
    rgba = np.concatenate([scene(24, 32), np.full((1, 24, 32), 255, np.uint8)])
    lr = make_raster("rgba.tif", rgba, transform=LR_TRANSFORM, photometric="RGB", alpha="YES")
    out = tmp_path / "sr.tif"
    result = run_cli([*upscale_args({**ref_and_mask, "lr": lr}, out), "--json"])
    assert result.returncode == 0, result.stderr
    assert "band 4 of 4 is an alpha band" in result.stderr and "rgba.tif" in result.stderr
    report = json.loads(result.stdout)["report"]
    assert report["bands"] == 3
    assert any("band 4 of 4 is an alpha band" in w for w in report["warnings"])
    explicit = run_cli([*upscale_args({**ref_and_mask, "lr": lr}, out), "-b", "1,2,3"])
    assert explicit.returncode == 4, explicit.stderr  # the output exists now
    assert "alpha band" not in explicit.stderr, "bands chosen with -b need no warning"


def test_sizes_in_errors_are_width_x_height(
    ref_and_mask: dict[str, Path], make_raster: RasterFactory, tmp_path: Path
) -> None:
    """A bare 200 px wide, 100 px high mask against a 256 x 192 reference grid."""
    bare = make_raster("bare.tif", np.zeros((100, 200), np.uint8), crs=None, transform=None)
    lr = make_raster("lr.tif", scene(24, 32), transform=LR_TRANSFORM)
    args = upscale_args({**ref_and_mask, "lr": lr, "mask": bare}, tmp_path / "sr.tif")
    result = run_cli([*args, "--mask-grid", "ref"])
    assert result.returncode == 3, result.stderr
    assert "is 200x100 px; --mask-grid ref needs 256x192 px" in last_line(result.stderr)


def prepare_csv(make_raster: RasterFactory, tmp_path: Path, *, ref_transform: Affine) -> Path:
    hr = make_raster("sets/hr.tif", scene(96, 96), transform=HR_TRANSFORM)
    make_raster("sets/ref.tif", scene(96, 96, seed=1), transform=ref_transform)
    make_raster("sets/mask.tif", np.zeros((96, 96), np.uint8), transform=HR_TRANSFORM)
    csv = hr.parent / "list.csv"
    csv.write_text("hr,ref,mask\nhr.tif,ref.tif,mask.tif\n")
    return csv


def test_prepare_says_what_resolution_the_reference_needs(
    make_raster: RasterFactory, tmp_path: Path
) -> None:
    """It said 'the model is x1', though prepare has no model."""
    csv = prepare_csv(make_raster, tmp_path, ref_transform=COARSE_TRANSFORM)
    args = ["prepare", str(csv), "-o", str(tmp_path / "chips"), "--chip", "32"]
    result = run_cli([*args, "--dry-run"])
    assert result.returncode == 3, result.stderr
    last = last_line(result.stderr)
    assert "model" not in last
    assert "ref.tif has 1 m pixels, but the HR" in last and "has 0.5 m" in last, last
    assert "the reference must have the HR's pixel size" in last
    assert "gdalwarp -t_srs EPSG:32633 -tr 0.5 0.5 -r cubic" in last


def test_upscale_names_the_reference_pixel_size_it_needs(
    ref_and_mask: dict[str, Path], make_raster: RasterFactory, tmp_path: Path
) -> None:
    coarse = make_raster("lr.tif", scene(24, 32), transform=Affine(2.0, 0, 500_000, 0, -2.0, 5e6))
    result = run_cli(upscale_args({**ref_and_mask, "lr": coarse}, tmp_path / "sr.tif"))
    assert result.returncode == 3, result.stderr
    last = last_line(result.stderr)
    assert "the upscale is x8" in last and "the ref needs 0.25 m pixels" in last, last


def test_a_file_that_lost_only_its_trailing_metadata_is_refused(
    ref_and_mask: dict[str, Path], make_raster: RasterFactory, tmp_path: Path
) -> None:
    """GDAL opens it with a warning and drops the tag (here the GDAL metadata at the end)."""
    import rasterio

    lr = make_raster("lr.tif", scene(24, 32), transform=LR_TRANSFORM, nodata=0)
    with rasterio.open(lr, "r+") as dst:  # metadata written last lands at the file's end
        dst.update_tags(SOURCE="a long provenance note " * 20)
    data = lr.read_bytes()
    lr.write_bytes(data[:-16])
    with rasterio.open(lr) as src:  # GDAL itself still reads every pixel
        assert src.read().shape == (3, 24, 32)
    result = run_cli(upscale_args({**ref_and_mask, "lr": lr}, tmp_path / "sr.tif"))
    assert result.returncode == 3, result.stderr
    last = last_line(result.stderr)
    assert "lr.tif is truncated or corrupt" in last and "GDALMetadata" in last, last
    assert not (tmp_path / "sr.tif").exists()
