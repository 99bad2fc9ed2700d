"""The evaluate tool on tiny synthetic datasets: engines through sr_strips, splits, reports."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from refdiff_cli import __version__
from refdiff_cli.config import SamplerConfig, to_dict
from refdiff_cli.data import masks, normalize
from refdiff_cli.data.resample import downscale_bicubic, upsample
from refdiff_cli.data.tiling import plan_tiles
from refdiff_cli.errors import ConfigError, InputError, OutputError
from refdiff_cli.evaluate.methods import ArrayReader, HighPassEngine, RefEngine
from refdiff_cli.evaluate.options import EvalOptions
from refdiff_cli.evaluate.run import evaluate
from refdiff_cli.geo.images import read_image, write_png
from refdiff_cli.metrics.scores import PSNR_CAP_DB
from refdiff_cli.model.card import ModelCard
from refdiff_cli.model.checkpoint import save_model
from refdiff_cli.model.network import RefDiffUNet
from refdiff_cli.model.network_config import PRESETS
from refdiff_cli.upscale.engines import BicubicEngine, Engine
from refdiff_cli.upscale.pipeline import ModelSpace, sr_strips

RNG = np.random.default_rng(20240607)
OFFSET = 20  # DN by which A differs from B inside the changed block


def scene(rows: int, cols: int, seed: int) -> np.ndarray:
    """A smooth-plus-texture uint8 RGB image (3, rows, cols) in 30..220."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    base = 120 + 60 * np.sin(x / 7.0 + seed) * np.cos(y / 5.0)  # (rows, cols)
    noise = rng.normal(0, 12, size=(3, rows, cols))
    return np.clip(base[None] + noise, 30, 220).astype(np.uint8)


def make_cd(root: Path, *, height: int = 64, widths: tuple[int, ...] = (64, 64, 64)) -> Path:
    """cd folder: A == B except a changed block (A = B + OFFSET) in images a and b; c unchanged."""
    for name, width, block in zip(("a", "b", "c"), widths, (16, 24, 0), strict=True):
        hr = scene(height, width, seed=ord(name))
        label = np.zeros((1, height, width), dtype=np.uint8)
        label[0, 8 : 8 + block, 8 : 8 + block] = 255
        ref = hr.copy()
        ref[:, label[0] > 0] += OFFSET
        for folder, image in (("A", ref), ("B", hr), ("label", label)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            write_png(root / folder / f"{name}.png", image)
    return root


def run_pipeline(engine: Engine, reader: ArrayReader, space: ModelSpace, tile: int) -> np.ndarray:
    """The SR (C, H, W) float32 in LR values from upscale.sr_strips with a small tile plan."""
    height, width = reader.ref.shape[1:]
    plan = plan_tiles(
        (height, width),
        tile_px=tile,
        overlap_px=engine.overlap_px,
        margin_px=engine.margin_px,
        scale=engine.scale,
    )
    assert len(plan.tiles) > 1
    out = np.zeros(reader.ref.shape, dtype=np.float32)  # (C, H, W)
    for strip in sr_strips(reader, engine, plan, space, seed=0, batch_size=3, block_rows=8):
        out[:, strip.row_off : strip.row_off + strip.values.shape[1]] = strip.values
    return out


def float_space(lr: np.ndarray, ref: np.ndarray) -> ModelSpace:
    levels = normalize.DEFAULT_PERCENTILES
    every = np.ones(lr.shape[1:], dtype=bool)
    return ModelSpace(
        lr=normalize.scaling_for(lr.dtype, normalize.band_percentiles(lr, every, levels)),
        ref=normalize.scaling_for(
            ref.dtype, normalize.band_percentiles(ref, np.ones(ref.shape[1:], bool), levels)
        ),
        mask=masks.BINARY,
        mask_source="mask",
    )


def test_bicubic_through_the_array_reader_equals_untiled_bicubic() -> None:
    scale = 4
    lr = RNG.uniform(100, 900, size=(3, 40, 36)).astype(np.float32)  # (C, h, w)
    ref = RNG.uniform(0, 1, size=(3, 160, 144)).astype(np.float32)  # (C, H, W)
    mask = np.zeros((160, 144), dtype=np.float32)
    space = float_space(lr, ref)
    tiled = run_pipeline(BicubicEngine(scale), ArrayReader(lr, ref, mask), space, tile=64)
    whole = upsample(torch.from_numpy(normalize.to_model(lr, space.lr))[None], scale, clamp=False)
    np.testing.assert_allclose(
        normalize.to_model(tiled, space.lr), whole[0].numpy(), rtol=0, atol=1e-5
    )


def test_ref_engine_copies_the_reference_and_falls_back_to_bicubic() -> None:
    scale = 4
    lr = RNG.integers(0, 256, size=(3, 32, 32)).astype(np.uint8)
    ref = RNG.integers(0, 256, size=(3, 128, 128)).astype(np.uint8)
    ref_valid = np.ones((128, 128), dtype=bool)
    ref_valid[40:90, 50:] = False
    reader = ArrayReader(lr, ref, np.zeros((128, 128), np.uint8), ref_valid=ref_valid)
    space = ModelSpace(
        lr=normalize.scaling_for(np.uint8, [(0, 0)] * 3),
        ref=normalize.scaling_for(np.uint8, [(0, 0)] * 3),
        mask=masks.BINARY,
        mask_source="mask",
    )
    copied, _ = normalize.cast_to_dtype(run_pipeline(RefEngine(scale), reader, space, 64), np.uint8)
    bicubic, _ = normalize.cast_to_dtype(
        run_pipeline(BicubicEngine(scale), reader, space, 64), np.uint8
    )
    np.testing.assert_array_equal(copied[:, ref_valid], ref[:, ref_valid])
    np.testing.assert_array_equal(copied[:, ~ref_valid], bicubic[:, ~ref_valid])
    assert not np.array_equal(copied[:, ~ref_valid], ref[:, ~ref_valid])


def test_hpf_is_lr_up_where_changed_and_adds_the_reference_detail_elsewhere() -> None:
    scale = 4
    lr = RNG.uniform(0, 1000, size=(3, 24, 28)).astype(np.float32)
    ref = RNG.uniform(0, 1000, size=(3, 96, 112)).astype(np.float32)
    mask = np.zeros((96, 112), dtype=np.float32)
    mask[:, 50:] = 1.0  # right part changed
    changed = mask > 0
    space = float_space(lr, ref)
    reader = ArrayReader(lr, ref, mask)
    hpf = normalize.to_model(run_pipeline(HighPassEngine(scale), reader, space, 64), space.lr)
    lr_up = upsample(
        torch.from_numpy(normalize.to_model(lr, space.lr))[None].double(), scale, clamp=False
    )[0].numpy()
    ref_m = torch.from_numpy(normalize.to_model(ref, space.ref))[None].double()
    detail = (ref_m - upsample(downscale_bicubic(ref_m, scale), scale, clamp=False))[0].numpy()
    np.testing.assert_allclose(hpf[:, changed], lr_up[:, changed], atol=1e-5)
    np.testing.assert_allclose(hpf[:, ~changed], (lr_up + detail)[:, ~changed], atol=1e-5)
    assert np.abs(detail[:, ~changed]).mean() > 0.1  # the detail is really there


def test_ref_method_split_has_known_answers_and_counts(tmp_path: Path) -> None:
    root = make_cd(tmp_path / "cd")
    report = evaluate(root, EvalOptions(layout="cd", scale=8, methods=("bicubic", "ref")))
    ref = report.methods["ref"]
    # Unchanged pixels are copied exactly: infinite PSNR, capped in the mean and counted.
    assert ref["unchanged"]["psnr"] == PSNR_CAP_DB
    assert ref["unchanged"]["psnr_capped"] == 3
    assert ref["unchanged"]["ssim"] is not None and ref["unchanged"]["n_images"] == 3
    # Changed pixels are off by OFFSET DN in every band: PSNR = 20 log10(255 / OFFSET).
    assert ref["changed"]["psnr"] == pytest.approx(20 * math.log10(255 / OFFSET), abs=1e-9)
    assert ref["changed"]["n_images"] == 2  # image c has no changed pixel
    assert ref["changed"]["pixels"] == 16 * 16 + 24 * 24
    assert report.counts == {"images": 3, "changed": 2, "unchanged": 3, "cropped": 0}
    bicubic = report.methods["bicubic"]
    assert 15 < bicubic["all"]["psnr"] < 40 and bicubic["unchanged"]["psnr_capped"] == 0
    assert bicubic["unchanged"]["psnr"] < ref["unchanged"]["psnr"]


def test_crop_is_reported_and_limit_keeps_the_first_images(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_cd(tmp_path / "cd", widths=(70, 64, 64))
    report = evaluate(root, EvalOptions(scale=8, methods=("bicubic",), limit=2))
    assert report.images == ("a", "b") and report.to_dict()["n_images"] == 2
    assert report.cropped == ("a",) and report.counts["cropped"] == 1
    assert any("cropped" in w and "a" in w for w in report.warnings)
    assert "1 image(s) cropped" in caplog.text
    assert report.methods["bicubic"]["all"]["pixels"] == 2 * 64 * 64


def test_json_csv_and_figure(tmp_path: Path) -> None:
    root = make_cd(tmp_path / "cd")
    options = EvalOptions(
        scale=8,
        methods=("bicubic", "ref", "hpf"),
        csv_path=tmp_path / "metrics.csv",
        figure_path=tmp_path / "figure.png",
        figure_images=2,
        seed=3,
    )
    data = evaluate(root, options).to_dict()
    text = json.dumps(data, allow_nan=False)  # strict JSON: no inf or NaN anywhere
    assert json.loads(text)["methods"]["hpf"]["changed"]["n_images"] == 2
    assert {"n_images", "scale", "methods", "counts", "cropped", "settings"} <= set(data)
    assert data["scale"] == 8 and data["settings"]["seed"] == 3
    assert set(data["methods"]) == {"bicubic", "ref", "hpf"}
    for regions in data["methods"].values():
        assert set(regions) == {"all", "changed", "unchanged"}
        assert {"psnr", "ssim", "psnr_y", "ssim_y", "sam", "ergas", "lpips"} <= set(regions["all"])
    assert data["method_details"]["hpf"]["margin_px"] == 32
    assert data["settings"]["model_sha256"] is None and data["settings"]["steps"] is None

    with (tmp_path / "metrics.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 3 * 3 * 3  # images x methods x regions
    c_changed = [r for r in rows if r["image"] == "c" and r["region"] == "changed"]
    assert all(r["pixels"] == "0" and r["psnr"] == "" for r in c_changed)
    ref_unchanged = [r for r in rows if r["method"] == "ref" and r["region"] == "unchanged"]
    assert {r["psnr"] for r in ref_unchanged} == {"inf"}

    figure = read_image(tmp_path / "figure.png")
    columns = 1 + 3 + 3  # LR, methods, HR, Ref, mask
    unlabelled = (2 * 64 + 4, columns * 64 + (columns - 1) * 4)
    assert figure.shape[1] > unlabelled[0] and figure.shape[2] > unlabelled[1]  # + labels
    assert data["figure"]["images"] == ["b", "a"]  # most changed pixels first
    assert data["figure"]["columns"] == ["lr", "bicubic", "ref", "hpf", "hr", "reference", "mask"]
    label_w = figure.shape[2] - unlabelled[1]  # the image-name strip left of the panels
    header_h = (figure.shape[1] - unlabelled[0]) // 3  # header + two caption strips alike
    top, left = header_h + 64 + header_h + 4, label_w + 4 * (64 + 4)  # row "a", HR column
    hr_panel = figure[:, top : top + 64, left : left + 64]
    np.testing.assert_array_equal(hr_panel, read_image(root / "B" / "a.png"))


def test_sr_dir_matching_and_size_errors(tmp_path: Path) -> None:
    root = make_cd(tmp_path / "cd")
    perfect = tmp_path / "perfect"
    perfect.mkdir()
    for name in "abc":
        write_png(perfect / f"{name}_sr.png", read_image(root / "B" / f"{name}.png"))
    options = EvalOptions(scale=8, methods=(), sr_dirs=(("perfect", perfect),))
    report = evaluate(root, options)
    assert report.methods["perfect"]["all"]["psnr"] == PSNR_CAP_DB
    assert report.methods["perfect"]["all"]["psnr_capped"] == 3
    assert report.details["perfect"]["kind"] == "sr-dir"

    write_png(perfect / "b_sr.png", np.zeros((3, 64, 56), dtype=np.uint8))
    with pytest.raises(InputError, match=r"b_sr\.png is 56x64 px but the HR is 64x64"):
        evaluate(root, options)
    (perfect / "b_sr.png").unlink()
    with pytest.raises(InputError, match="no SR image named b"):
        evaluate(root, options)


def test_option_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_cd(tmp_path / "cd")
    with pytest.raises(ConfigError, match="unknown method"):
        EvalOptions(methods=("bicubic", "esrgan"))
    with pytest.raises(ConfigError, match="given twice"):
        EvalOptions(methods=("ref",), sr_dirs=(("x", tmp_path), ("x", tmp_path)))
    with pytest.raises(ConfigError, match="--border"):
        EvalOptions(border=-1)
    monkeypatch.setattr("refdiff_cli.evaluate.run.default_model_installed", lambda: False)
    with pytest.raises(ConfigError, match="no model is installed"):
        evaluate(root, EvalOptions(methods=("model",)))
    with pytest.raises(ConfigError, match="no image named zz"):
        evaluate(
            root,
            EvalOptions(
                methods=("bicubic",), figure_path=tmp_path / "f.png", figure_images=("zz",)
            ),
        )
    with pytest.raises(OutputError, match="does not exist"):
        evaluate(root, EvalOptions(methods=("bicubic",), csv_path=tmp_path / "no" / "m.csv"))


def test_paper_layout_uses_the_given_lr_and_grey_codes(tmp_path: Path) -> None:
    root = tmp_path / "paper"
    hr = scene(64, 64, seed=5)
    codes = np.zeros((1, 64, 64), dtype=np.uint8)
    codes[0, :32, :32] = 40  # class code 40: changed
    lr = np.full((3, 8, 8), 128, dtype=np.uint8)  # a flat LR, unlike HR downscaled
    for folder, image in (("HR_512", hr), ("Ref", hr), ("CD_mask", codes), ("Bic_LR_D8_8", lr)):
        (root / folder).mkdir(parents=True)
        write_png(root / folder / "t1.png", image)
    report = evaluate(root, EvalOptions(methods=("bicubic", "ref")))
    assert report.scale == 8 and report.layout == "paper"  # scale from Bic_LR_D8_8
    assert report.methods["ref"]["all"]["psnr"] == PSNR_CAP_DB
    assert report.methods["bicubic"]["changed"]["pixels"] == 32 * 32
    flat = np.full_like(hr, 128)
    expected = 10 * math.log10(255**2 / np.mean((hr.astype(float) - flat) ** 2))
    assert report.methods["bicubic"]["all"]["psnr"] == pytest.approx(expected, abs=1e-9)


def test_lpips_with_local_weights(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from refdiff_cli.metrics.perceptual import EXPECTED_SHAPES

    gen = torch.Generator().manual_seed(0)
    weights = {
        key: torch.rand(shape, generator=gen) * (1.0 if key.startswith("lin") else 0.05)
        for key, shape in EXPECTED_SHAPES.items()
    }
    save_file(weights, str(tmp_path / "lpips.safetensors"))
    root = make_cd(tmp_path / "cd")
    perfect = tmp_path / "perfect"
    perfect.mkdir()
    for name in "abc":
        write_png(perfect / f"{name}.png", read_image(root / "B" / f"{name}.png"))
    options = EvalOptions(
        scale=8,
        methods=("bicubic",),
        sr_dirs=(("perfect", perfect),),
        lpips_weights=tmp_path / "lpips.safetensors",
        device="cpu",
        csv_path=tmp_path / "m.csv",
    )
    report = evaluate(root, options)
    assert report.methods["perfect"]["all"]["lpips"] == 0.0
    assert report.methods["bicubic"]["all"]["lpips"] > 0.0
    assert report.methods["bicubic"]["changed"]["n_images"] == 2
    with (tmp_path / "m.csv").open(newline="") as stream:
        rows = {(r["image"], r["method"], r["region"]): r for r in csv.DictReader(stream)}
    assert rows[("c", "bicubic", "changed")]["lpips"] == ""  # no changed pixel in c
    assert float(rows[("a", "bicubic", "changed")]["lpips"]) > 0.0


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_non_uint8_data_range_is_the_hr_range_unless_given(tmp_path: Path) -> None:
    import rasterio

    root = tmp_path / "cd16"
    hr = (scene(64, 64, seed=9).astype(np.uint16) * 20 + 1000).astype(np.uint16)
    label = np.zeros((1, 64, 64), dtype=np.uint8)
    label[0, :20, :20] = 1
    for folder, image in (("A", hr), ("B", hr), ("label", label)):
        (root / folder).mkdir(parents=True)
        profile = {"driver": "GTiff", "width": 64, "height": 64, "count": image.shape[0]}
        with rasterio.open(root / folder / "x.tif", "w", dtype=image.dtype, **profile) as dst:
            dst.write(image)
    spread = float(hr.max()) - float(hr.min())
    auto = evaluate(root, EvalOptions(scale=8, methods=("bicubic",), csv_path=tmp_path / "m.csv"))
    with (tmp_path / "m.csv").open(newline="") as stream:
        assert {float(r["data_range"]) for r in csv.DictReader(stream)} == {spread}
    given = evaluate(root, EvalOptions(scale=8, methods=("bicubic",), data_range=65535.0))
    gain = 20 * math.log10(65535.0 / spread)  # PSNR = 20 log10(range) - 10 log10(MSE)
    psnr_auto, psnr_given = (
        auto.methods["bicubic"]["all"]["psnr"],
        given.methods["bicubic"]["all"]["psnr"],
    )
    assert psnr_given == pytest.approx(psnr_auto + gain, abs=1e-9)
    assert auto.settings["data_range"] == "auto" and given.settings["data_range"] == 65535.0


def tiny_model(path: Path, scale: int = 4) -> Path:
    """A random-initialised tiny-preset model file (2 deterministic Heun steps by default)."""
    card = ModelCard(
        name="tiny-test",
        preset="tiny",
        network=PRESETS["tiny"].to_dict(),
        scale=scale,
        bands=("red", "green", "blue"),
        normalization=normalize.Normalization().to_dict(),
        mask_encoding=masks.BINARY.to_dict(),
        train_tile_px=32,
        tile_px=32,
        overlap_px=12,
        margin_px=4,
        sampler=to_dict(SamplerConfig(steps=2)),
        refdiff_version=__version__,
    )
    save_model(path, RefDiffUNet(PRESETS["tiny"], seed=0), card)
    return path


def model_options(tmp_path: Path) -> tuple[Path, EvalOptions]:
    """One 16x16 cd image (a single tile) and a tiny model at scale 4, 2 Heun steps."""
    root = make_cd(tmp_path / "cd", height=16, widths=(16, 16, 16))
    model = tiny_model(tmp_path / "tiny.safetensors")
    options = EvalOptions(
        methods=("model", "bicubic"), model=model, steps=2, device="cpu", seed=7, limit=1
    )
    return root, options


def test_model_method_runs_end_to_end(tmp_path: Path) -> None:
    root, options = model_options(tmp_path)
    data = evaluate(root, options).to_dict()
    assert data["scale"] == 4  # from the model card
    assert data["settings"]["methods"] == ["model", "bicubic"]  # the order asked for
    settings: dict[str, Any] = data["settings"]
    assert settings["steps"] == 2 and len(settings["model_sha256"]) == 64
    assert data["method_details"]["model"]["engine"]["engine"] == "diffusion"
    assert data["method_details"]["model"]["tile_px"] == 32  # the card's (one 16 px tile)
    assert data["methods"]["model"]["all"]["psnr"] is not None
    assert data["methods"]["model"]["all"] != data["methods"]["bicubic"]["all"]


@pytest.mark.slow
def test_model_method_is_deterministic_with_a_seed(tmp_path: Path) -> None:
    root, options = model_options(tmp_path)
    first = evaluate(root, options).to_dict()
    again = evaluate(root, options).to_dict()
    other = evaluate(root, dataclasses.replace(options, seed=8)).to_dict()
    assert first["methods"] == again["methods"]
    assert first["methods"]["model"] != other["methods"]["model"]
    assert first["methods"]["bicubic"] == other["methods"]["bicubic"]
