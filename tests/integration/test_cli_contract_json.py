"""Issue 9, item 7: with --json, stdout carries one JSON document even when the run fails."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from tests.conftest import RasterFactory, run_cli

LR_TRANSFORM = Affine(4.0, 0.0, 500_000.0, 0.0, -4.0, 5_000_000.0)
HR_TRANSFORM = Affine(0.5, 0.0, 500_000.0, 0.0, -0.5, 5_000_000.0)
CLI = (sys.executable, "-m", "refdiff_cli")
BICUBIC = ("--engine", "bicubic")
BICUBIC_SMALL_TILES = (
    "--engine",
    "bicubic",
    "--tile",
    "64",
    "--overlap",
    "32",
    "--batch-size",
    "1",
)


def triplet(make_raster: RasterFactory, rows: int, cols: int) -> list[str]:
    """LR (rows x cols at 4 m), ref and mask at 0.5 m: the positional part of an upscale call."""
    rng = np.random.default_rng(0)
    lr = make_raster(
        "lr.tif", rng.integers(0, 255, (3, rows, cols), np.uint8), transform=LR_TRANSFORM
    )
    hr = rng.integers(0, 255, (3, rows * 8, cols * 8), np.uint8)
    ref = make_raster("ref.tif", hr, transform=HR_TRANSFORM)
    mask = make_raster("cd.tif", np.zeros((rows * 8, cols * 8), np.uint8), transform=HR_TRANSFORM)
    return [str(lr), "--ref", str(ref), "--mask", str(mask)]


def failed_document(stdout: str, exit_code: int) -> dict[str, object]:
    doc = json.loads(stdout)
    assert doc["status"] == "failed", doc
    assert doc["exit_code"] == exit_code, doc
    assert doc["message"], doc
    return doc


def test_bad_model_still_prints_json(make_raster: RasterFactory, tmp_path: Path) -> None:
    model = tmp_path / "bad.safetensors"
    model.write_bytes(b"not a safetensors file at all")
    args = triplet(make_raster, 24, 32)
    out = tmp_path / "sr.tif"
    result = run_cli(["upscale", *args, "-o", str(out), "--model", str(model), "--json"])
    assert result.returncode == 3, result.stderr
    doc = failed_document(result.stdout, 3)
    assert doc["error"] == "ModelError"
    assert result.stderr.strip().splitlines()[-1].startswith("refdiff: error:")
    assert not out.exists()


def test_bad_dataset_still_prints_json(tmp_path: Path) -> None:
    result = run_cli(["evaluate", str(tmp_path / "missing"), "--json"])
    assert result.returncode == 3, result.stderr
    failed_document(result.stdout, 3)


def test_bad_list_file_still_prints_json(tmp_path: Path) -> None:
    listing = tmp_path / "list.csv"
    listing.write_text("lr,ref\n")
    result = run_cli(["upscale", "--from-list", str(listing), "-o", str(tmp_path), "--json"])
    assert result.returncode == 3, result.stderr
    failed_document(result.stdout, 3)


def test_without_json_stdout_stays_empty_on_failure(tmp_path: Path) -> None:
    result = run_cli(["evaluate", str(tmp_path / "missing")])
    assert result.returncode == 3
    assert result.stdout == ""


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_print_a_message_and_json(
    sig: signal.Signals, code: int, make_raster: RasterFactory, tmp_path: Path
) -> None:
    args = triplet(make_raster, 256, 256)  # 2048 x 2048 output in 64 px tiles: many seconds
    out = tmp_path / "sr.tif"
    process = subprocess.Popen(
        [*CLI, "upscale", *args, "-o", str(out), *BICUBIC_SMALL_TILES, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:
        if "tiles" in line:  # the first progress line: the run is under way
            break
    process.send_signal(sig)
    stdout, rest = process.communicate(timeout=60)
    assert process.returncode == code, rest
    name = signal.Signals(sig).name
    last = rest.strip().splitlines()[-1]
    assert last == f"refdiff: error: interrupted by {name}; nothing was published", rest
    doc = failed_document(stdout, code)
    assert doc["error"] == "Interrupted"
    assert not out.exists()


def run_with_stdout_closed(args: list[str]) -> tuple[int, str]:
    """Run refdiff with the read end of its stdout closed: every write to stdout fails."""
    process = subprocess.Popen(
        [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    process.stdout.close()
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


@pytest.mark.parametrize("as_json", [False, True])
def test_a_reader_that_went_away_does_not_change_the_exit_code(
    make_raster: RasterFactory, tmp_path: Path, as_json: bool
) -> None:
    """`refdiff ... | head -c1`: typer 0.29 and rich turned the closed pipe into exit 1."""
    args = triplet(make_raster, 24, 32)
    out = tmp_path / "sr.tif"
    extra = ["--json"] if as_json else []
    code, stderr = run_with_stdout_closed(["upscale", *args, "-o", str(out), *BICUBIC, *extra])
    assert code == 0, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert out.is_file()
    code, stderr = run_with_stdout_closed(["upscale", *args, "-o", str(out), *BICUBIC, *extra])
    assert code == 4, stderr  # the output exists: the failure's own code, not 0 or 1
    assert stderr.strip().splitlines()[-1].endswith("(use --overwrite to replace it)")


def test_evaluate_table_to_a_reader_that_went_away(tmp_path: Path) -> None:
    from tests.integration.test_evaluate_cli import make_cd

    root = make_cd(tmp_path / "cd")
    code, stderr = run_with_stdout_closed(["evaluate", str(root), "--scale", "8"])
    assert code == 0, stderr
    assert "Traceback" not in stderr, stderr


def test_failure_documents_have_the_shapes_the_readme_gives(
    make_raster: RasterFactory, tmp_path: Path
) -> None:
    """README, "Exit codes": the four keys before a report, a single item's keys otherwise."""
    usage = run_cli(["upscale", "lr.tif", "--seed", "abc", "--json"])
    assert usage.returncode == 2, usage.stderr
    doc = failed_document(usage.stdout, 2)
    assert set(doc) == {"status", "exit_code", "error", "message"}
    assert doc["error"] == "UsageError"
    assert usage.stderr.strip().splitlines()[-1] == f"refdiff: error: {doc['message']}"

    args = triplet(make_raster, 8, 8)
    missing = run_cli(
        [
            "upscale",
            str(tmp_path / "missing.tif"),
            *args[1:],
            "-o",
            str(tmp_path / "o.tif"),
            *BICUBIC,
            "--json",
        ]
    )
    assert missing.returncode == 3, missing.stderr
    item = failed_document(missing.stdout, 3)
    assert set(item) == {"lr", "output", "status", "exit_code", "error", "message", "seconds"}
    assert item["error"] == "InputError"
