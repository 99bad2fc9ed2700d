"""--ref-strength: 0 ignores the reference, 1 is the engine as trained, values between blend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.conftest import SAMPLE_DATA, SAMPLE_INPUTS, run_cli


def upscale(out: Path, *extra: str) -> np.ndarray:
    result = run_cli(["upscale", *SAMPLE_INPUTS, "-o", str(out), *extra])
    assert result.returncode == 0, result.stderr
    with rasterio.open(out) as src:
        return src.read().astype(np.float64)


def test_guided_strength_zero_is_bicubic_and_half_is_halfway(tmp_path: Path) -> None:
    bicubic = upscale(tmp_path / "b.tif", "--engine", "bicubic")
    guided = upscale(tmp_path / "g.tif", "--engine", "guided")
    none = upscale(tmp_path / "g0.tif", "--engine", "guided", "--ref-strength", "0")
    half = upscale(tmp_path / "g5.tif", "--engine", "guided", "--ref-strength", "0.5")
    assert np.array_equal(none, bicubic)
    assert np.abs(guided - bicubic).mean() > 1.0, "the reference matters on the sample"
    # Halfway up to rounding to DN and clipping at 0/255.
    assert np.abs(half - (bicubic + guided) / 2).mean() < 1.0


def test_model_strength_zero_is_the_model_without_a_reference(tmp_path: Path) -> None:
    """S = 0 is the reference-off prediction: the same as a mask saying everything changed."""
    changed = tmp_path / "all_changed.tif"
    with rasterio.open(SAMPLE_DATA / "cd.tif") as src:
        profile, shape = src.profile, src.shape
    with rasterio.open(changed, "w", **profile) as dst:
        dst.write(np.ones((1, *shape), np.uint8))
    inputs = [*SAMPLE_INPUTS[:-1], str(changed)]
    result = run_cli(["upscale", *inputs, "-o", str(tmp_path / "off.tif"), "--engine", "diffusion"])
    assert result.returncode == 0, result.stderr
    with rasterio.open(tmp_path / "off.tif") as src:
        off = src.read().astype(np.float64)
    zero = upscale(tmp_path / "m0.tif", "--engine", "diffusion", "--ref-strength", "0")
    one = upscale(tmp_path / "m1.tif", "--engine", "diffusion", "--ref-strength", "1")
    default = upscale(tmp_path / "m.tif", "--engine", "diffusion")
    assert np.abs(zero - off).max() <= 1.0  # float rounding of the rebased state, then DN
    assert np.array_equal(one, default)
    assert np.abs(one - zero).mean() > 1.0


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--engine", "guided", "--ref-strength", "-1"], "--ref-strength"),
        (["--engine", "guided", "--ref-strength", "5"], "from 0 to 4"),
        (["--engine", "guided", "--ref-strength", "nan"], "--ref-strength"),
        (["--engine", "bicubic", "--ref-strength", "2"], "no effect on the bicubic engine"),
    ],
)
def test_bad_strengths_exit_2(tmp_path: Path, extra: list[str], needle: str) -> None:
    result = run_cli(["upscale", *SAMPLE_INPUTS, "-o", str(tmp_path / "x.tif"), *extra])
    assert result.returncode == 2 and needle in result.stderr.splitlines()[-1]
    assert not (tmp_path / "x.tif").exists()
