"""The diffusion engine on CUDA: half precision stays finite and near fp32 (needs CUDA)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.conftest import SAMPLE_DATA, run_cli, write_tiny_model

pytestmark = pytest.mark.gpu

SAMPLE = [
    str(SAMPLE_DATA / "lr.tif"),
    "--ref",
    str(SAMPLE_DATA / "ref.tif"),
    "--mask",
    str(SAMPLE_DATA / "cd.tif"),
]


def run(model: Path, out: Path, precision: str) -> np.ndarray:
    result = run_cli(
        [
            "upscale",
            *SAMPLE,
            "-o",
            str(out),
            "--model",
            str(model),
            "--device",
            "cuda",
            "--precision",
            precision,
            "--steps",
            "4",
            "--seed",
            "1",
            "--batch-size",
            "8",
        ]
    )
    assert result.returncode == 0, result.stderr
    with rasterio.open(out) as sr:
        return sr.read().astype(np.float64)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_is_finite_and_close_to_fp32(precision: str, tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "tiny.safetensors", lively=True)
    full = run(model, tmp_path / "fp32.tif", "fp32")
    half = run(model, tmp_path / f"{precision}.tif", precision)
    assert full.std() > 5 and half.std() > 5  # no black or flat tiles
    assert np.abs(half - full).mean() < 8.0  # DN on 0..255
