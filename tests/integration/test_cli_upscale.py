"""End-to-end `refdiff upscale` in a subprocess: exit codes, messages, nothing lost or partial."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from tests.conftest import RasterFactory, run_cli

SCALE = 8
LR_TRANSFORM = Affine(4.0, 0.0, 500_000.0, 0.0, -4.0, 5_000_000.0)
HR_TRANSFORM = Affine(0.5, 0.0, 500_000.0, 0.0, -0.5, 5_000_000.0)


def scene(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB uint8 test image (3, rows, cols)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols] / max(rows, cols)
    bands = [
        np.sin(6 * x + k) * np.cos(4 * y - k) * 80 + 120 + rng.normal(0, 3, x.shape)
        for k in range(3)
    ]
    return np.clip(np.stack(bands), 0, 255).astype(np.uint8)


@pytest.fixture
def triplet(make_raster: RasterFactory) -> dict[str, Path]:
    """A valid LR (24x32 at 4 m), ref and mask (192x256 at 0.5 m) over the same UTM footprint."""
    lr = make_raster("lr.tif", scene(24, 32), transform=LR_TRANSFORM)
    ref = make_raster("ref.tif", scene(192, 256, seed=1), transform=HR_TRANSFORM)
    mask = np.zeros((192, 256), np.uint8)
    mask[40:90, 60:120] = 1
    cd = make_raster("cd.tif", mask, transform=HR_TRANSFORM)
    return {"lr": lr, "ref": ref, "mask": cd}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def upscale_args(t: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "upscale",
        str(t["lr"]),
        "--ref",
        str(t["ref"]),
        "--mask",
        str(t["mask"]),
        "-o",
        str(out),
        "--engine",
        "bicubic",
        *extra,
    ]


def assert_nothing_lost(result, inputs: dict[str, str], out: Path) -> None:
    """N1-N4 of the test plan: inputs unchanged, no output, no temp litter, a useful last line."""
    for path, digest in inputs.items():
        assert sha256(Path(path)) == digest, f"input {path} was modified"
    assert result.returncode != 0
    folder = out.parent if out.parent.exists() else None
    if folder is not None:
        assert not [p for p in folder.iterdir() if p.name.endswith(".partial")], (
            "temp file left behind"
        )
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("refdiff: error:"), last


def snapshot(t: dict[str, Path]) -> dict[str, str]:
    return {str(p): sha256(p) for p in t.values() if p.is_file()}


def test_upscale_writes_georeferenced_output(triplet: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "sr.tif"
    result = run_cli([*upscale_args(triplet, out), "--json"])
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "written"
    with rasterio.open(triplet["lr"]) as lr, rasterio.open(out) as sr:
        assert sr.crs == lr.crs
        assert sr.transform == lr.transform * Affine.scale(1 / SCALE)
        assert (sr.height, sr.width) == (lr.height * SCALE, lr.width * SCALE)
        assert sr.bounds == pytest.approx(lr.bounds)
        assert sr.dtypes[0] == "uint8"
        tags = sr.tags()
        assert tags["REFDIFF_COMPLETE"] == "1"
        assert tags["REFDIFF_SCALE"] == "8"
        data = sr.read()
        # Right and bottom edges written: the last rows/cols carry image values, not nodata.
        assert data[:, -1, :].any() and data[:, :, -1].any()
        # Bicubic of a smooth image: the 8x8 block means match the LR closely.
        blocks = data.reshape(3, lr.height, SCALE, lr.width, SCALE).mean(axis=(2, 4))
        assert np.abs(blocks - lr.read().astype(float)).mean() < 4


def test_dry_run_writes_nothing(triplet: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "sr.tif"
    result = run_cli([*upscale_args(triplet, out), "--dry-run", "--json"])
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "dry-run"
    assert summary["report"]["width"] == 256 and summary["report"]["height"] == 192
    assert summary["report"]["tiles"] >= 1
    assert not out.exists()


def test_existing_output_needs_overwrite(triplet: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "sr.tif"
    out.write_bytes(b"precious")
    inputs = snapshot(triplet) | {str(out): sha256(out)}
    result = run_cli(upscale_args(triplet, out))
    assert result.returncode == 4
    assert "--overwrite" in result.stderr
    for path, digest in inputs.items():
        assert sha256(Path(path)) == digest
    assert run_cli([*upscale_args(triplet, out), "--overwrite"]).returncode == 0
    with rasterio.open(out) as sr:
        assert sr.tags()["REFDIFF_COMPLETE"] == "1"


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
def test_output_equal_to_an_input_is_refused(
    triplet: dict[str, Path], tmp_path: Path, how: str
) -> None:
    if how == "same":
        out = triplet["lr"]
    else:
        out = tmp_path / "alias.tif"
        (os.symlink if how == "symlink" else os.link)(triplet["lr"], out)
    inputs = snapshot(triplet)
    result = run_cli([*upscale_args(triplet, out), "--overwrite"])
    assert result.returncode in (2, 4)
    assert "input" in result.stderr
    for path, digest in inputs.items():
        assert sha256(Path(path)) == digest


def test_missing_output_folder(triplet: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "nope" / "sr.tif"
    result = run_cli(upscale_args(triplet, out))
    assert result.returncode == 4
    assert "does not exist" in result.stderr
    assert not out.parent.exists()


def bad_input_cases(
    make_raster: RasterFactory, tmp_path: Path, t: dict[str, Path]
) -> dict[str, tuple[dict[str, Path], int, str]]:
    lr_bytes = t["lr"].read_bytes()
    cases: dict[str, tuple[dict[str, Path], int, str]] = {}
    cases["missing"] = ({**t, "lr": tmp_path / "missing.tif"}, 3, "missing.tif")
    (tmp_path / "dir.tif").mkdir()
    cases["directory"] = ({**t, "lr": tmp_path / "dir.tif"}, 3, "dir.tif")
    (tmp_path / "text.tif").write_text("not a raster")
    cases["not a raster"] = ({**t, "lr": tmp_path / "text.tif"}, 3, "text.tif")
    (tmp_path / "trunc.tif").write_bytes(lr_bytes[: len(lr_bytes) // 2])
    cases["truncated"] = ({**t, "lr": tmp_path / "trunc.tif"}, 3, "trunc.tif")
    nocrs = make_raster("nocrs.tif", scene(24, 32), crs=None, transform=LR_TRANSFORM)
    cases["no crs"] = ({**t, "lr": nocrs}, 3, "rio edit-info")
    far = make_raster(
        "far.tif", scene(192, 256), transform=HR_TRANSFORM * Affine.translation(40_000, 0)
    )
    cases["no overlap"] = ({**t, "ref": far}, 3, "far.tif")
    four = make_raster(
        "ref4.tif",
        np.concatenate([scene(192, 256), scene(192, 256)[:1]]),
        transform=HR_TRANSFORM,
        photometric="minisblack",  # 4 data bands (GDAL would make band 4 alpha otherwise)
    )
    # More reference bands than LR bands, none named: which is which is anyone's guess.
    cases["band mismatch"] = ({**t, "ref": four}, 3, "--ref-bidx")
    empty = make_raster(
        "empty.tif", np.zeros((3, 24, 32), np.uint8), transform=LR_TRANSFORM, nodata=0
    )
    cases["all nodata"] = ({**t, "lr": empty}, 3, "no valid pixels")
    coarse = make_raster(
        "coarse.tif", scene(48, 64), transform=Affine(2.0, 0, 500_000.0, 0, -2.0, 5_000_000.0)
    )
    cases["scale mismatch"] = ({**t, "lr": coarse}, 3, "x4")
    bare_mask = make_raster("bare_cd.tif", np.zeros((192, 256), np.uint8), crs=None, transform=None)
    cases["mask without georeferencing"] = ({**t, "mask": bare_mask}, 3, "--mask-grid")
    return cases


CASE_NAMES = [
    "missing",
    "directory",
    "not a raster",
    "truncated",
    "no crs",
    "no overlap",
    "band mismatch",
    "all nodata",
    "scale mismatch",
    "mask without georeferencing",
]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_inputs(
    case: str, triplet: dict[str, Path], make_raster: RasterFactory, tmp_path: Path
) -> None:
    inputs, code, needle = bad_input_cases(make_raster, tmp_path, triplet)[case]
    out = tmp_path / "out" / "sr.tif"
    out.parent.mkdir()
    before = snapshot(inputs)
    result = run_cli(upscale_args(inputs, out))
    assert result.returncode == code, result.stderr
    assert needle in result.stderr, result.stderr
    assert not out.exists()
    assert_nothing_lost(result, before, out)


def test_mask_grid_option_accepts_bare_mask(
    triplet: dict[str, Path], make_raster: RasterFactory, tmp_path: Path
) -> None:
    bare = make_raster("bare_cd.tif", np.zeros((192, 256), np.uint8), crs=None, transform=None)
    out = tmp_path / "sr.tif"
    result = run_cli([*upscale_args({**triplet, "mask": bare}, out), "--mask-grid", "ref"])
    assert result.returncode == 0, result.stderr


def test_partial_ref_coverage_warns(
    triplet: dict[str, Path], make_raster: RasterFactory, tmp_path: Path
) -> None:
    half = make_raster("half.tif", scene(96, 256, seed=1), transform=HR_TRANSFORM)
    out = tmp_path / "sr.tif"
    result = run_cli([*upscale_args({**triplet, "ref": half}, out), "--json"])
    assert result.returncode == 0, result.stderr
    assert "50" in result.stderr and "%" in result.stderr
    assert json.loads(result.stdout)["report"]["ref_coverage"] == pytest.approx(0.5, abs=0.02)
    with rasterio.open(out) as sr:
        assert float(sr.tags()["REFDIFF_REF_COVERAGE"]) == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("lr_shape", [(1, 1), (7, 13)])
def test_lr_smaller_than_one_tile(
    lr_shape: tuple[int, int], make_raster: RasterFactory, triplet: dict[str, Path], tmp_path: Path
) -> None:
    lr = make_raster("small.tif", scene(*lr_shape), transform=LR_TRANSFORM)
    out = tmp_path / "sr.tif"
    result = run_cli(upscale_args({**triplet, "lr": lr}, out))
    assert result.returncode == 0, result.stderr
    with rasterio.open(out) as sr:
        assert sr.shape == (lr_shape[0] * SCALE, lr_shape[1] * SCALE)
        assert sr.read_masks(1).all(), "every output pixel must be covered"


def test_batch_with_a_failing_item(triplet: dict[str, Path], tmp_path: Path) -> None:
    out_dir = tmp_path / "outs"
    out_dir.mkdir()
    listing = tmp_path / "jobs.csv"
    listing.write_text(
        "lr,ref,mask\n"
        f"{triplet['lr']},{triplet['ref']},{triplet['mask']}\n"
        f"{tmp_path / 'missing.tif'},{triplet['ref']},{triplet['mask']}\n"
    )
    result = run_cli(
        [
            "upscale",
            "--from-list",
            str(listing),
            "-o",
            str(out_dir),
            "--engine",
            "bicubic",
            "--json",
        ]
    )
    assert result.returncode == 5, result.stderr
    summary = json.loads(result.stdout)
    statuses = [item["status"] for item in summary["items"]]
    assert statuses == ["written", "failed"]
    assert summary["items"][1]["error"] == "InputError"
    assert (out_dir / "lr_sr.tif").exists() and not (out_dir / "missing_sr.tif").exists()
    again = run_cli(
        [
            "upscale",
            "--from-list",
            str(listing),
            "-o",
            str(out_dir),
            "--engine",
            "bicubic",
            "--skip-existing",
            "--json",
        ]
    )
    assert again.returncode == 5
    assert [item["status"] for item in json.loads(again.stdout)["items"]] == ["skipped", "failed"]


def test_same_seed_same_bytes_any_batch_size(triplet: dict[str, Path], tmp_path: Path) -> None:
    outs = []
    for batch_size in (1, 3):
        out = tmp_path / f"sr{batch_size}.tif"
        args = [
            *upscale_args(triplet, out),
            "--batch-size",
            str(batch_size),
            "--tile",
            "64",
            "--overlap",
            "32",
        ]
        assert run_cli(args).returncode == 0
        with rasterio.open(out) as sr:
            outs.append(sr.read())
    assert np.array_equal(outs[0], outs[1])


def test_help_and_version_are_fast_and_clean() -> None:
    result = run_cli(["--version"])
    assert result.returncode == 0 and result.stdout.startswith("refdiff ")
    result = run_cli(["upscale", "--help"])
    assert result.returncode == 0
    for option in (
        "--ref",
        "--mask",
        "--output",
        "--overwrite",
        "--seed",
        "--device",
        "--precision",
        "--tile",
        "--co",
        "--cog",
        "--dry-run",
        "--json",
    ):
        assert option in result.stdout


def test_usage_error_exit_code(triplet: dict[str, Path], tmp_path: Path) -> None:
    result = run_cli([*upscale_args(triplet, tmp_path / "o.tif"), "--bidx", "x"])
    assert result.returncode == 2
    assert "-b/--bidx" in result.stderr


def test_dry_run_prints_the_plan_for_people(triplet: dict[str, Path], tmp_path: Path) -> None:
    result = run_cli([*upscale_args(triplet, tmp_path / "sr.tif"), "--dry-run"])
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "256 x 192 px x 3 bands uint8, EPSG:32633, pixel 0.5 x 0.5" in text
    assert "uncompressed" in text and "free" in text and "peak memory about" in text
    assert not (tmp_path / "sr.tif").exists()
