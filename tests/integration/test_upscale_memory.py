"""Issue 9, item 3: huge declared sizes answer at once, and the memory estimate is true."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from tests.conftest import run_cli

#: The dry-run estimate must lie within [1, MAX_OVERESTIMATE] times the measured peak RSS.
MAX_OVERESTIMATE = 1.5


def write_tif(path: Path, data: np.ndarray, pixel_m: float, **profile: object) -> Path:
    options: dict[str, object] = {
        "driver": "GTiff",
        "width": data.shape[2],
        "height": data.shape[1],
        "count": data.shape[0],
        "dtype": data.dtype,
        "crs": "EPSG:32633",
        "transform": Affine(pixel_m, 0, 500_000, 0, -pixel_m, 5_000_000),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        **profile,
    }
    with rasterio.open(path, "w", **options) as dst:
        dst.write(data)
    return path


def small_ref_and_mask(
    folder: Path, size: int, pixel_m: float, height: int | None = None
) -> list[str]:
    rng = np.random.default_rng(1)
    shape = (height or size, size)
    ref = write_tif(folder / "ref.tif", rng.integers(0, 255, (3, *shape), np.uint8), pixel_m)
    mask = write_tif(folder / "mask.tif", (rng.random((1, *shape)) > 0.5).astype(np.uint8), pixel_m)
    return ["--ref", str(ref), "--mask", str(mask)]


def test_a_huge_declared_lr_gets_a_dry_run_answer_at_once(tmp_path: Path) -> None:
    """A sparse 10^6 x 10^6 LR (one block written): the dry run answers from the headers,
    with no pixel decoded and no tile list built (it ran for minutes, the planner past 3.4 GB).
    """
    lr = tmp_path / "huge.tif"
    n = 10**6
    with rasterio.open(
        lr,
        "w",
        driver="GTiff",
        width=n,
        height=n,
        count=3,
        dtype="uint16",
        crs="EPSG:32633",
        transform=Affine(0.8, 0, 500_000, 0, -0.8, 5_000_000),
        tiled=True,
        blockxsize=4096,
        blockysize=4096,
        compress="deflate",  # the one written block: a few kB, not 100 MB
        sparse_ok=True,
        BIGTIFF="YES",
    ) as dst:
        dst.write(np.full((3, 4096, 4096), 7, np.uint16), window=((0, 4096), (0, 4096)))
    args = ["upscale", str(lr), *small_ref_and_mask(tmp_path, 256, 0.1)]
    started = time.monotonic()
    result = run_cli(
        [*args, "-o", str(tmp_path / "sr.tif"), "--engine", "bicubic", "--dry-run", "--json"],
        timeout=120,
    )
    seconds = time.monotonic() - started
    assert seconds < 60, f"the dry run took {seconds:.0f} s"
    # 8e6 x 8e6 x 3 uint16 is 349 TiB: no disk has a tenth of it free.
    assert result.returncode == 4, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "not enough free space" in last and "349.2 TiB uncompressed" in last, last
    assert json.loads(result.stdout)["error"] == "OutputError"


def test_the_dry_run_memory_estimate_holds_a_measured_peak(tmp_path: Path) -> None:
    """The estimate of --dry-run lies between the peak RSS of the real run and 1.5 times it
    (bicubic, a 256^2 LR to 2048^2; the estimate was 2.68 GiB for 4.65 GiB measured).
    """
    rng = np.random.default_rng(0)
    lr = write_tif(tmp_path / "lr.tif", rng.integers(0, 255, (3, 256, 256), np.uint8), 8.0)
    args = ["upscale", str(lr), *small_ref_and_mask(tmp_path, 2048, 1.0), "--engine", "bicubic"]
    assert_estimate_holds(args, tmp_path / "sr.tif")


@pytest.mark.slow  # 12-20 s: a 12,288 x 512 px output, run twice
def test_the_estimate_counts_the_layers_of_a_wide_output(tmp_path: Path) -> None:
    """Issue 11: --mask-out and --trust-out add three channels to the strip buffer; a 12,288 px
    wide output peaked at 1.12 times the estimate that left them out."""
    rng = np.random.default_rng(0)
    lr = write_tif(tmp_path / "lr.tif", rng.integers(0, 255, (3, 64, 1536), np.uint8), 8.0)
    layers = ["--mask-out", str(tmp_path / "m.tif"), "--trust-out", str(tmp_path / "t.tif")]
    sources = small_ref_and_mask(tmp_path, 12288, 1.0, height=512)
    args = ["upscale", str(lr), *sources, "--engine", "bicubic", *layers]
    assert_estimate_holds(args, tmp_path / "sr.tif")


def assert_estimate_holds(args: list[str], out: Path) -> None:
    """The dry run's estimate of ``refdiff ARGS -o OUT`` is 1 to 1.5 times the run's peak RSS."""
    dry = run_cli([*args, "-o", str(out), "--dry-run", "--json"])
    assert dry.returncode == 0, dry.stderr
    estimate = json.loads(dry.stdout)["report"]["peak_memory_estimate_bytes"]
    # A fresh parent whose only child is the run: RUSAGE_CHILDREN is that run's peak RSS.
    measure = (
        "import resource, subprocess, sys\n"
        "subprocess.run([sys.executable, '-m', 'refdiff_cli', '-q', *sys.argv[1:]], check=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", measure, *args, "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    peak = int(run.stdout.strip().splitlines()[-1])
    assert out.is_file()
    ratio = estimate / peak
    assert 1.0 <= ratio <= MAX_OVERESTIMATE, (
        f"estimate {estimate / 2**20:.0f} MiB, measured peak {peak / 2**20:.0f} MiB"
    )
