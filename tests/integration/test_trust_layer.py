"""--trust-out: the reference weight and the uncertainty of every output pixel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio

from tests.conftest import SAMPLE_DATA, SAMPLE_INPUTS, run_cli


def test_trust_layers_of_a_guided_run(tmp_path: Path) -> None:
    out, trust = tmp_path / "sr.tif", tmp_path / "trust.tif"
    args = ["upscale", *SAMPLE_INPUTS, "-o", str(out), "--engine", "guided"]
    result = run_cli([*args, "--trust-out", str(trust), "--json"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["report"]["trust_out"] == str(trust)
    with rasterio.open(out) as sr, rasterio.open(trust) as layers:
        assert (layers.crs, layers.transform, layers.shape) == (sr.crs, sr.transform, sr.shape)
        assert layers.count == 2 and layers.dtypes == ("float32", "float32")
        assert np.isnan(layers.nodata)
        assert layers.descriptions[0].startswith("reference weight")
        assert layers.descriptions[1].startswith("uncertainty")
        weight, uncertainty = layers.read()
        grid = (sr.crs, sr.transform, sr.shape)
    with rasterio.open(SAMPLE_DATA / "cd.tif") as cd:
        changed = np.kron(cd.read(1), np.ones((2, 2), np.uint8)) == 1  # 1 m mask on 0.5 m
    assert cd.crs == grid[0] and changed.shape == grid[2]
    assert weight.min() >= 0 and weight.max() <= 1
    inner = np.zeros_like(changed)
    inner[40:-40, 40:-40] = True  # away from tile-blend ramps at the scene border
    assert weight[changed & inner].max() < 0.05, "no reference detail where the land changed"
    assert weight[~changed].mean() > 0.3
    assert uncertainty.min() > 0
    # Where the reference is used, the expected error is smaller (same texture otherwise).
    assert uncertainty[weight > 0.9].mean() < uncertainty[weight < 0.1].mean()
    # The image does not depend on asking for the layers.
    plain = tmp_path / "plain.tif"
    plain_run = run_cli(["upscale", *SAMPLE_INPUTS, "-o", str(plain), "--engine", "guided"])
    assert plain_run.returncode == 0
    with rasterio.open(out) as a, rasterio.open(plain) as b:
        assert np.array_equal(a.read(), b.read())


def test_trust_out_must_name_its_own_file(tmp_path: Path) -> None:
    out = tmp_path / "sr.tif"
    args = ["upscale", *SAMPLE_INPUTS, "-o", str(out), "--engine", "bicubic"]
    same = run_cli([*args, "--trust-out", str(out)])
    assert same.returncode == 2 and "--trust-out" in same.stderr.splitlines()[-1]
    clash = run_cli(
        [*args, "--mask-out", str(tmp_path / "m.tif"), "--trust-out", str(tmp_path / "m.tif")]
    )
    assert clash.returncode == 2 and "is --mask-out itself" in clash.stderr.splitlines()[-1]
    assert not out.exists()
