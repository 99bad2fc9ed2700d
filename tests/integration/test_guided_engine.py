"""`refdiff upscale --engine guided` and `evaluate --methods guided`, as a user runs them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import rasterio

from tests.conftest import SAMPLE_DATA, run_cli, zero_sample_mask


def _psnr(path: Path) -> float:
    with rasterio.open(SAMPLE_DATA / "hr.tif") as src:
        hr = src.read().astype(np.float64)
    with rasterio.open(path) as src:
        out = src.read().astype(np.float64)
    return float(10 * np.log10(255.0**2 / ((out - hr) ** 2).mean()))


def test_guided_engine_transfers_a_perfect_reference_and_ignores_garbage(tmp_path: Path) -> None:
    mask = zero_sample_mask(tmp_path / "zero.tif")
    scores = {}
    for name, ref in (("perfect", SAMPLE_DATA / "hr.tif"), ("grey", tmp_path / "grey_ref.tif")):
        if name == "grey":
            with rasterio.open(SAMPLE_DATA / "hr.tif") as src:
                profile = src.profile
            with rasterio.open(ref, "w", **profile) as dst:
                dst.write(np.full((3, 384, 384), 128, dtype=np.uint8))
        out = tmp_path / f"{name}.tif"
        args = [str(SAMPLE_DATA / "lr.tif"), "--ref", str(ref), "--mask", str(mask)]
        done = run_cli(["upscale", *args, "-o", str(out), "--engine", "guided"])
        assert done.returncode == 0, done.stderr
        scores[name] = _psnr(out)
        with rasterio.open(out) as src:
            assert json.loads(src.tags()["REFDIFF_ENGINE"])["engine"] == "guided"
            with rasterio.open(SAMPLE_DATA / "hr.tif") as truth:
                assert src.crs == truth.crs and src.transform.almost_equals(truth.transform)
    bicubic = tmp_path / "bicubic.tif"
    args = [str(SAMPLE_DATA / "lr.tif"), "--ref", str(SAMPLE_DATA / "hr.tif"), "--mask", str(mask)]
    assert run_cli(["upscale", *args, "-o", str(bicubic), "--engine", "bicubic"]).returncode == 0
    assert scores["perfect"] > 40.0 > _psnr(bicubic) + 10
    assert abs(scores["grey"] - _psnr(bicubic)) < 0.01


def test_evaluate_scores_the_guided_method(tmp_path: Path) -> None:
    root = tmp_path / "cd"
    for sub in ("A", "B", "label"):
        (root / sub).mkdir(parents=True)
    with rasterio.open(SAMPLE_DATA / "hr.tif") as src:
        hr = src.read(window=((0, 256), (0, 256)))
    profile = {"driver": "PNG", "width": 256, "height": 256, "dtype": "uint8"}
    for sub, values in (("A", hr), ("B", hr), ("label", np.zeros((1, 256, 256), np.uint8))):
        with rasterio.open(root / sub / "x.png", "w", count=values.shape[0], **profile) as dst:
            dst.write(values)
    done = run_cli(["evaluate", str(root), "--methods", "bicubic,guided", "--json"])
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    methods = report["methods"]
    assert methods["guided"]["all"]["psnr"] > methods["bicubic"]["all"]["psnr"] + 15
    shutil.rmtree(root)
