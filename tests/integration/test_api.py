"""The Python API (``refdiff_cli.api``): the same reports and files as the CLI, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from refdiff_cli import api
from refdiff_cli.errors import ConfigError, InputError
from refdiff_cli.evaluate.run import EvalReport
from refdiff_cli.upscale.batch import BatchReport
from refdiff_cli.upscale.job import UpscaleReport
from tests.conftest import SAMPLE_DATA, run_cli
from tests.integration.test_evaluate_cli import make_cd

LR, REF, CD = (SAMPLE_DATA / name for name in ("lr.tif", "ref.tif", "cd.tif"))


def test_upscale_with_a_mask_matches_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "api.tif"
    report = api.upscale(str(LR), str(REF), str(CD), out=str(out), engine="guided")
    assert isinstance(report, UpscaleReport)
    assert report.status == "written" and report.output == out and out.is_file()
    assert report.mask_source == "file" and report.engine["engine"] == "guided"
    assert (report.width, report.height, report.bands, report.dtype) == (384, 384, 3, "uint8")

    cli_out = tmp_path / "cli.tif"
    args = ["--ref", str(REF), "--mask", str(CD), "-o", str(cli_out), "--engine", "guided"]
    result = run_cli(["upscale", str(LR), *args, "--json"])
    assert result.returncode == 0, result.stderr
    cli_report = json.loads(result.stdout)["report"]
    mine = report.to_dict()
    for key in ("width", "height", "bands", "dtype", "crs", "transform", "tiles", "engine"):
        assert mine[key] == cli_report[key], key
    with rasterio.open(LR) as lr, rasterio.open(out) as sr, rasterio.open(cli_out) as cli:
        assert sr.crs == lr.crs == cli.crs
        assert sr.transform == lr.transform * Affine.scale(1 / 8) == cli.transform
        assert sr.profile == cli.profile
        assert np.array_equal(sr.read(), cli.read())
        assert sr.tags()["REFDIFF_PARAMS_HASH"] == cli.tags()["REFDIFF_PARAMS_HASH"]


def test_upscale_without_a_mask_estimates_it(tmp_path: Path) -> None:
    out, used = tmp_path / "sr.tif", tmp_path / "mask.tif"
    report = api.upscale(LR, REF, out=out, mask_out=used, engine="guided", seed=3)
    assert report.mask_source == "estimated" and report.mask_out == used
    with rasterio.open(out) as sr, rasterio.open(used) as mask:
        assert sr.tags()["REFDIFF_COMPLETE"] == "1"
        assert (mask.crs, mask.transform, mask.shape) == (sr.crs, sr.transform, sr.shape)
        assert set(np.unique(mask.read(1))) <= {0, 1, 255}


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "sr.tif"
    report = api.upscale(LR, REF, CD, out=out, engine="bicubic", dry_run=True)
    assert report.status == "dry-run" and report.time_estimate is not None
    assert not out.exists()


def test_upscale_batch_reports_each_item(tmp_path: Path) -> None:
    jobs = [
        {"lr": LR, "ref": REF, "mask": CD, "output": tmp_path / "a.tif"},
        {"lr": tmp_path / "missing.tif", "ref": str(REF), "output": str(tmp_path / "b.tif")},
    ]
    report = api.upscale_batch(jobs, engine="bicubic", tiling={"tile_px": 128})
    assert isinstance(report, BatchReport)
    assert [item.status for item in report.items] == ["written", "failed"]
    assert report.exit_code == 5 and report.items[1].error_class == "InputError"
    assert report.items[0].report is not None and report.items[0].report.tile_px == 128


def test_errors_are_raised_with_the_cli_messages(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"missing\.tif") as caught:
        api.upscale(tmp_path / "missing.tif", REF, out=tmp_path / "sr.tif", engine="bicubic")
    assert caught.value.exit_code == 3
    with pytest.raises(ConfigError, match="is the output itself"):
        api.upscale(LR, REF, out=tmp_path / "sr.tif", mask_out=tmp_path / "sr.tif")
    with pytest.raises(ConfigError, match="skip_existing"):
        api.upscale(LR, REF, out=tmp_path / "sr.tif", skip_existing=True)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"engin": "guided"}, ["unknown option 'engin'", "did you mean 'engine'"]),
        ({"seed": "1"}, ["seed='1'", "an int"]),
        ({"bands": "3,2,1"}, ["bands='3,2,1'", "sequence of ints"]),
        ({"engine": "fast"}, ["engine='fast'", "'guided'"]),
        ({"tiling": {"tile": 64}}, ["TilingConfig", "tile"]),
        ({"ref_strength": 9.0}, ["--ref-strength"]),
    ],
)
def test_bad_upscale_options(tmp_path: Path, options: dict[str, object], words: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        api.upscale(LR, REF, out=tmp_path / "sr.tif", **options)
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message
    assert not (tmp_path / "sr.tif").exists()


def test_unknown_keyword_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        api.evaluate(tmp_path, metods=("bicubic",))
    assert "metods" in caught.value.message
    assert caught.value.hint is not None and "methods" in caught.value.hint
    assert "mask_source" in caught.value.hint
    with pytest.raises(ConfigError, match="unknown key 'lrr'"):
        api.upscale_batch([{"lrr": LR, "ref": REF, "output": tmp_path / "x.tif"}])


def test_evaluate_matches_the_cli(tmp_path: Path) -> None:
    root = make_cd(tmp_path / "cd")
    report = api.evaluate(str(root), methods=["bicubic", "guided"], scale=8, seed=1)
    assert isinstance(report, EvalReport)
    assert report.images == ("p1", "p2")
    psnr = report.methods["guided"]["all"]["psnr"]
    assert isinstance(psnr, float) and 10 < psnr < 100
    args = ["--methods", "bicubic,guided", "--scale", "8", "--seed", "1", "--json"]
    result = run_cli(["evaluate", str(root), *args])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["methods"] == report.to_dict()["methods"]


def test_importing_the_api_loads_no_model_or_torch() -> None:
    code = (
        "import sys, refdiff_cli.api;"
        "print(','.join(m for m in ('torch', 'rasterio') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
