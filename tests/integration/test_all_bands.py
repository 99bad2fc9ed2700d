"""Every LR band comes out: red, green, blue through the model, the rest through guided."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from refdiff_cli.errors import EXIT_INPUT, EXIT_USAGE
from tests.conftest import RasterFactory, run_cli

SCALE = 8
S2_BANDS = ("B02", "B03", "B04", "B08")  # blue, green, red, NIR


def _psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    return float(10 * np.log10(peak**2 / np.mean((a.astype(float) - b.astype(float)) ** 2)))


@pytest.fixture(scope="module")
def oscd_stack(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real 4-band Sentinel-2 scene of OSCD Rennes (256 px): later HR, earlier reference,
    and the later date averaged 8x as the LR; bands named B02 B03 B04 B08."""
    folder = tmp_path_factory.mktemp("oscd4")
    city = shared_data / "oscd" / "rennes"
    stacks = {}
    for date in ("imgs_1", "imgs_2"):
        arrays = []
        for name in S2_BANDS:
            (path,) = sorted((city / date).glob(f"*_{name}.tif"))
            with rasterio.open(path) as src:
                arrays.append(src.read(1)[:256, :256])
                crs, transform = src.crs, src.transform
        stacks[date] = np.stack(arrays)
    hr = stacks["imgs_2"]
    lr = hr.reshape(4, 32, SCALE, 32, SCALE).mean(axis=(2, 4))
    profile = dict(driver="GTiff", dtype="uint16", crs=crs, photometric="minisblack", count=4)
    paths = {}
    for name, data, grid in (
        ("hr", hr, transform),
        ("ref", stacks["imgs_1"], transform),
        ("lr", np.rint(lr).astype(np.uint16), transform * Affine.scale(SCALE)),
    ):
        paths[name] = folder / f"{name}.tif"
        with rasterio.open(
            paths[name], "w", width=data.shape[2], height=data.shape[1], transform=grid, **profile
        ) as dst:
            dst.write(data)
            dst.descriptions = S2_BANDS
    return paths


@pytest.mark.real_data
def test_real_sentinel2_stack_keeps_nir_and_guides_it(
    oscd_stack: dict[str, Path], tmp_path: Path
) -> None:
    """B02 B03 B04 B08: the model makes red, green, blue (found from the band names), NIR goes
    through guided with the same registration, and every band says which path it took."""
    out, rgb_only = tmp_path / "all.tif", tmp_path / "rgb.tif"
    common = ["--ref", str(oscd_stack["ref"]), "--engine", "diffusion", "--json"]
    result = run_cli(["upscale", str(oscd_stack["lr"]), *common, "-o", str(out)])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["report"]["bands"] == 4
    selected = run_cli(
        ["upscale", str(oscd_stack["lr"]), *common, "-b", "3,2,1", "-o", str(rgb_only)]
    )
    assert selected.returncode == 0, selected.stderr
    with (
        rasterio.open(out) as sr,
        rasterio.open(rgb_only) as rgb,
        rasterio.open(oscd_stack["hr"]) as truth,
    ):
        assert sr.count == 4 and sr.descriptions == S2_BANDS and sr.dtypes == ("uint16",) * 4
        paths = [(sr.tags(b)["REFDIFF_PATH"], sr.tags(b)["REFDIFF_REF_BAND"]) for b in (1, 2, 3, 4)]
        assert paths == [
            ("diffusion", "1"),
            ("diffusion", "2"),
            ("diffusion", "3"),
            ("guided", "4"),
        ]
        routes = json.loads(sr.tags()["REFDIFF_BANDS"])["paths"]
        assert [r["path"] for r in routes] == ["diffusion"] * 3 + ["guided"]
        data, hr = sr.read(), truth.read()
        # The model saw red, green, blue exactly as in an RGB-only run: the same bytes.
        np.testing.assert_array_equal(data[[2, 1, 0]], rgb.read())
    with rasterio.open(oscd_stack["lr"]) as src:
        nir_lr = src.read(4).astype(float)
    nir_bicubic = _bicubic_psnr(nir_lr, hr[3])
    nir_sr = _psnr(data[3], hr[3], float(np.percentile(hr[3], 99.5)))
    assert nir_sr >= nir_bicubic + 2.0, (nir_sr, nir_bicubic)  # measured 23.0 vs 18.2


def _bicubic_psnr(lr: np.ndarray, hr: np.ndarray) -> float:
    import torch

    from refdiff_cli.data.resample import upsample

    up = upsample(torch.from_numpy(lr)[None, None].float(), SCALE, clamp=False)[0, 0].numpy()
    return _psnr(up, hr, float(np.percentile(hr, 99.5)))


def _unnamed_stack(make_raster: RasterFactory) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    hr = (rng.random((4, 64, 64)) * 4000).astype(np.uint16)
    lr = hr.reshape(4, 8, SCALE, 8, SCALE).mean(axis=(2, 4)).astype(np.uint16)
    lr_transform = Affine(4.0 * SCALE, 0.0, 500_000.0, 0.0, -4.0 * SCALE, 5_000_000.0)
    return make_raster("lr.tif", lr, transform=lr_transform), make_raster("ref.tif", hr)


def test_model_asks_which_bands_are_rgb_when_nothing_says(
    make_raster: RasterFactory, tmp_path: Path
) -> None:
    lr, ref = _unnamed_stack(make_raster)
    args = ["upscale", str(lr), "--ref", str(ref), "-o", str(tmp_path / "o.tif"), "--dry-run"]
    refused = run_cli([*args, "--engine", "diffusion"])
    assert refused.returncode == EXIT_INPUT
    assert "none are marked red, green and blue" in refused.stderr and "--rgb" in refused.stderr
    accepted = run_cli([*args, "--engine", "diffusion", "--rgb", "3,2,1", "--json"])
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout)["report"]["bands"] == 4
    bad = run_cli([*args, "--rgb", "3,2,9"])
    assert bad.returncode == EXIT_USAGE and "--rgb" in bad.stderr


def test_ref_bidx_zero_sends_a_band_through_bicubic(
    make_raster: RasterFactory, tmp_path: Path
) -> None:
    lr, ref = _unnamed_stack(make_raster)
    out = tmp_path / "o.tif"
    result = run_cli(
        [
            *("upscale", str(lr), "--ref", str(ref), "-o", str(out)),
            *("--engine", "guided", "--ref-bidx", "1,2,3,0"),
        ]
    )
    assert result.returncode == 0, result.stderr
    with rasterio.open(out) as sr:
        assert sr.count == 4
        assert [sr.tags(b)["REFDIFF_PATH"] for b in (1, 2, 3, 4)] == ["guided"] * 3 + ["bicubic"]
        assert sr.tags(4)["REFDIFF_REF_BAND"] == "none"
