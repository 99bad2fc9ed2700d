"""Runs without a change mask: upscale estimates it (and --mask-out writes the mask used);
evaluate --mask-source label | estimated | none, with the estimate scored against labels."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from refdiff_cli.geo.images import write_png
from tests.conftest import SAMPLE_DATA, RasterFactory, run_cli
from tests.integration.test_cli_upscale import HR_TRANSFORM, LR_TRANSFORM, scene

SAMPLE = {name: SAMPLE_DATA / f"{name}.tif" for name in ("lr", "ref", "cd")}


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def test_upscale_without_a_mask_estimates_it_and_mask_out_writes_it(tmp_path: Path) -> None:
    out, mask_out = tmp_path / "sr.tif", tmp_path / "used.tif"
    args = ["upscale", str(SAMPLE["lr"]), "--ref", str(SAMPLE["ref"]), "-o", str(out)]
    result = run_cli([*args, "--engine", "guided", "--mask-out", str(mask_out), "--json"])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["report"]
    assert report["mask_source"] == "estimated" and report["mask_out"] == str(mask_out)
    with rasterio.open(out) as sr, rasterio.open(mask_out) as used:
        assert (used.crs, used.transform, used.shape) == (sr.crs, sr.transform, sr.shape)
        assert used.dtypes == ("uint8",) and used.nodata == 255 and used.count == 1
        inputs = json.loads(sr.tags()["REFDIFF_INPUTS"])
        mask = used.read(1)
    assert inputs["mask"] == "estimated"
    assert set(np.unique(mask)) <= {0, 1} and 0 < (mask == 1).mean() < 1
    # The mask was what the engine used: where it says changed, guided is the bicubic output.
    bicubic = tmp_path / "bicubic.tif"
    assert run_cli([*args[:-1], str(bicubic), "--engine", "bicubic"]).returncode == 0
    diff = np.abs(read(out).astype(float) - read(bicubic).astype(float)).mean(axis=0)
    assert diff[mask == 1].mean() < 0.25 * diff[mask == 0].mean()


def test_mask_out_with_a_given_mask_is_that_mask_on_the_output_grid(
    make_raster: RasterFactory, tmp_path: Path
) -> None:
    lr = make_raster("lr.tif", scene(24, 32), transform=LR_TRANSFORM)
    ref = make_raster("ref.tif", scene(192, 256, seed=1), transform=HR_TRANSFORM)
    labels = np.zeros((192, 256), np.uint8)
    labels[40:90, 60:120] = 1
    cd = make_raster("cd.tif", labels, transform=HR_TRANSFORM)
    out, mask_out = tmp_path / "sr.tif", tmp_path / "used.tif"
    base = ["upscale", str(lr), "--ref", str(ref), "--engine", "bicubic"]
    result = run_cli([*base, "--mask", str(cd), "-o", str(out), "--mask-out", str(mask_out)])
    assert result.returncode == 0, result.stderr
    assert np.array_equal(read(mask_out)[0], labels)

    same = run_cli([*base, "-o", str(tmp_path / "x.tif"), "--mask-out", str(tmp_path / "x.tif")])
    assert same.returncode == 2 and "--mask-out" in same.stderr.splitlines()[-1]
    several = run_cli([*base, str(lr), "-o", str(tmp_path), "--mask-out", str(tmp_path / "m.tif")])
    assert several.returncode == 2 and "one LR input" in several.stderr


def test_a_list_file_row_without_a_mask_is_estimated(
    make_raster: RasterFactory, tmp_path: Path
) -> None:
    make_raster("lr.tif", scene(24, 32), transform=LR_TRANSFORM)
    make_raster("ref.tif", scene(192, 256, seed=1), transform=HR_TRANSFORM)
    listing = tmp_path / "jobs.csv"
    listing.write_text("lr,ref,output\nlr.tif,ref.tif,sr.tif\n", encoding="utf-8")
    result = run_cli(["upscale", "--from-list", str(listing), "--engine", "guided"])
    assert result.returncode == 0, result.stderr
    with rasterio.open(tmp_path / "sr.tif") as src:
        assert json.loads(src.tags()["REFDIFF_INPUTS"])["mask"] == "estimated"


@pytest.fixture(scope="module")
def pasted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cd folder from the sample scene's HR: references with another place pasted in."""
    root = tmp_path_factory.mktemp("pasted")
    hr = read(SAMPLE_DATA / "hr.tif")
    for name, (r, c) in {"a": (0, 0), "b": (128, 128)}.items():
        crop = hr[:, r : r + 256, c : c + 256]
        ref, label = crop.copy(), np.zeros((1, 256, 256), np.uint8)
        ref[:, 64:160, 96:192] = crop[:, ::-1, ::-1][:, 64:160, 96:192]
        label[:, 64:160, 96:192] = 255
        for folder, image in (("A", ref), ("B", crop), ("label", label)):
            (root / folder).mkdir(exist_ok=True)
            write_png(root / folder / f"{name}.png", image)
    return root


def evaluate_json(dataset: Path, source: str) -> dict:
    args = ["evaluate", str(dataset), "--methods", "bicubic,guided", "--scale", "8", "--json"]
    result = run_cli([*args, "--mask-source", source])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_evaluate_mask_sources(pasted: Path) -> None:
    label, estimated, none = (evaluate_json(pasted, s) for s in ("label", "estimated", "none"))
    psnr = {
        name: {m: r["methods"][m]["all"]["psnr"] for m in ("bicubic", "guided")}
        for name, r in (("label", label), ("estimated", estimated), ("none", none))
    }
    assert psnr["none"]["guided"] == psnr["none"]["bicubic"], "no mask: reference unused"
    assert psnr["label"]["guided"] > psnr["label"]["bicubic"] + 3
    assert psnr["estimated"]["guided"] > psnr["none"]["guided"] + 3
    assert label["mask_scores"] is None and none["mask_scores"] is None
    scores = estimated["mask_scores"]
    assert estimated["settings"]["mask_source"] == "estimated"
    assert scores["estimated"]["f1"] > 0.6 and scores["estimated"]["f1"] > scores["cva"]["f1"]
    assert all(0 <= v <= 1 for kind in scores.values() for v in kind.values())


def test_an_estimated_mask_registers_each_batch_once(
    make_raster: RasterFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The change estimate's registration is handed to the engine (and to the trust layer's
    weight): without it the guided engine registered every batch three times. The output is
    the same as the engine registering on its own."""
    from refdiff_cli import api
    from refdiff_cli.config import TilingConfig
    from refdiff_cli.reference import guided
    from refdiff_cli.upscale import pipeline

    lr = make_raster("lr.tif", scene(48, 64), transform=LR_TRANSFORM)
    ref = make_raster("ref.tif", scene(384, 512, seed=1), transform=HR_TRANSFORM)
    calls: list[int] = []
    register = guided.register

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return register(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(guided, "register", counted)
    tiling = TilingConfig(tile_px=256, overlap_px=128)
    options = {"engine": "guided", "tiling": tiling, "batch_size": 4}
    shared = tmp_path / "shared.tif"
    report = api.upscale(lr, ref, out=shared, trust_out=tmp_path / "t.tif", **options)
    batches = -(-report.tiles // 4)
    assert len(calls) == batches

    build = pipeline.engine_batch

    def without_shift(*args: object, **kwargs: object) -> object:
        batch, valid = build(*args, **kwargs)  # type: ignore[arg-type]
        return dataclasses.replace(batch, ref_shift=None), valid

    monkeypatch.setattr(pipeline, "engine_batch", without_shift)
    calls.clear()
    alone = tmp_path / "alone.tif"
    api.upscale(lr, ref, out=alone, trust_out=tmp_path / "t2.tif", **options)
    assert len(calls) == 3 * batches  # the estimate, the engine, the trust weight
    assert np.array_equal(read(shared), read(alone))
    assert np.array_equal(read(tmp_path / "t.tif"), read(tmp_path / "t2.tif"), equal_nan=True)
