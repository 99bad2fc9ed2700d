"""The bundled default model: pinned, documented, and the README's main job on the sample scene."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio

from refdiff_cli.files import file_sha256
from refdiff_cli.metrics import psnr
from refdiff_cli.model import checkpoint
from refdiff_cli.model.checkpoint import load_model
from tests.conftest import SAMPLE_DATA, run_cli


def test_the_shipped_model_loads_with_its_pinned_sha256_and_fits_the_size_budget() -> None:
    assert checkpoint.default_model_installed()
    assert file_sha256(checkpoint.DEFAULT_MODEL_PATH) == checkpoint.DEFAULT_MODEL_SHA256
    assert checkpoint.DEFAULT_MODEL_PATH.stat().st_size <= 20 * 2**20
    loaded = load_model(None)
    assert (loaded.card.name, loaded.card.scale, len(loaded.card.bands)) == (
        "refdiff-small-x8",
        8,
        3,
    )


def test_the_card_records_data_licences_steps_and_validation_beating_bicubic() -> None:
    training = load_model(None).card.training
    assert set(training["data"]) == {"levir", "dsifn", "egy", "sztaki", "paddlers", "oscd"}
    assert all(entry["licence"] for entry in training["data"].values())
    assert training["steps_trained"] > 0
    validation_sources = {s["name"] for s in training["sources"] if s["split"] == "val"}
    training_sources = {s["name"] for s in training["sources"] if s["split"] == "train"}
    assert validation_sources and not validation_sources & training_sources
    for report in training["validation_reports"]:
        for region in ("all", "unchanged"):
            model, bicubic = report["model"][region], report["bicubic"][region]
            assert model["psnr"] > bicubic["psnr"], (region, model, bicubic)
            assert model["ssim"] > bicubic["ssim"], (region, model, bicubic)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def test_readme_main_job_upscales_the_sample_with_the_default_model(tmp_path: Path) -> None:
    """What ./scripts/run-sample.sh runs: georeferenced 8x output, closer to HR than bicubic."""
    args = [
        "upscale",
        str(SAMPLE_DATA / "lr.tif"),
        "--ref",
        str(SAMPLE_DATA / "ref.tif"),
        "--mask",
        str(SAMPLE_DATA / "cd.tif"),
        "--seed",
        "0",
        "--json",
    ]
    model_out, bicubic_out = tmp_path / "sr.tif", tmp_path / "bicubic.tif"
    result = run_cli([*args, "-o", str(model_out)])
    assert result.returncode == 0, result.stderr
    assert run_cli([*args, "-o", str(bicubic_out), "--engine", "bicubic"]).returncode == 0

    with rasterio.open(model_out) as out, rasterio.open(SAMPLE_DATA / "hr.tif") as hr:
        assert out.crs == hr.crs and out.transform.almost_equals(hr.transform)
        assert (out.width, out.height, out.count) == (hr.width, hr.height, hr.count)
        engine = json.loads(out.tags()["REFDIFF_ENGINE"])
        assert engine["engine"] == "diffusion" and engine["model"] == "refdiff-small-x8"
        assert out.tags()["REFDIFF_MODEL_SHA256"] == checkpoint.DEFAULT_MODEL_SHA256
    hr_pixels = _read(SAMPLE_DATA / "hr.tif")
    model_psnr = psnr(_read(model_out), hr_pixels, data_range=255)
    bicubic_psnr = psnr(_read(bicubic_out), hr_pixels, data_range=255)
    assert model_psnr > bicubic_psnr + 0.5, (model_psnr, bicubic_psnr)
