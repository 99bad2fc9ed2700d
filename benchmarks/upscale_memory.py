"""Peak memory and time of `refdiff upscale --engine bicubic` for growing outputs (one table).

Usage: python benchmarks/upscale_memory.py [--sizes 2048 8192 16384] [--workdir DIR] [--keep]

For each output edge N (pixels, x8), the script writes a synthetic LR of N/8 px, a reference
at 1.33x the output pixel size (so the LR/ref ratio is x6, accepted by an x8 engine) and a
mask at the LR resolution, all in UTM, then runs the real CLI in a child process and reads
the child's peak RSS from wait4(). The target (issue 2): peak RSS under 1.5 GB, growing far
slower than the output.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

SCALE = 8
LR_PIXEL_M = 4.0
REF_PIXEL_M = LR_PIXEL_M / 6
ORIGIN = (500_000.0, 5_000_000.0)
BLOCK = 512


def write_scene(path: Path, size: int, pixel_m: float, bands: int, seed: int) -> None:
    """A smooth-plus-noise uint8 scene of size x size pixels, written block row by block row."""
    transform = Affine(pixel_m, 0, ORIGIN[0], 0, -pixel_m, ORIGIN[1])
    rng = np.random.default_rng(seed)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": bands,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": transform,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "bigtiff": "IF_SAFER",
    }
    with rasterio.open(path, "w", **profile) as dst:
        cols = np.arange(size)[None, :] * pixel_m
        for row in range(0, size, BLOCK):
            rows = min(BLOCK, size - row)
            y = (row + np.arange(rows))[:, None] * pixel_m
            base = [np.sin(cols / 37.0 + b) * np.cos(y / 53.0 - b) * 70 + 128 for b in range(bands)]
            noise = rng.normal(0, 6, size=(bands, rows, size))
            block = np.clip(np.stack(base) + noise, 0, 255).astype(np.uint8)  # (C, rows, size)
            dst.write(block, window=rasterio.windows.Window(0, row, size, rows))


def run(args: list[str]) -> tuple[int, float, int]:
    """Run the CLI; return (exit code, seconds, peak RSS bytes of the child)."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "refdiff_cli", *args], stdout=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - started
    return os.waitstatus_to_exitcode(status), seconds, usage.ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192, 16384])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the generated rasters")
    options = parser.parse_args()
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="refdiff-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for size in options.sizes:
            lr, ref, mask, out = (
                workdir / f"{name}_{size}.tif" for name in ("lr", "ref", "cd", "sr")
            )
            write_scene(lr, size // SCALE, LR_PIXEL_M, 3, seed=1)
            write_scene(ref, round(size / SCALE * LR_PIXEL_M / REF_PIXEL_M), REF_PIXEL_M, 3, seed=2)
            write_scene(mask, size // SCALE, LR_PIXEL_M, 1, seed=3)
            code, seconds, rss = run(
                [
                    "-q",
                    "upscale",
                    str(lr),
                    "--ref",
                    str(ref),
                    "--mask",
                    str(mask),
                    "-o",
                    str(out),
                    "--engine",
                    "bicubic",
                    "--mask-encoding",
                    "binary",
                    "--overwrite",
                ]
            )
            out_mb = out.stat().st_size / 2**20 if out.exists() else float("nan")
            rows.append((size, code, seconds, rss / 2**20, size * size * 3 / 2**20, out_mb))
            for path in (lr, ref, mask, out):
                if not options.keep:
                    path.unlink(missing_ok=True)
    finally:
        if not options.keep and options.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"{'output px':>10} {'exit':>4} {'seconds':>8} {'peak RSS MB':>12}", end="")
    print(f" {'raw MB':>8} {'file MB':>8}")
    for size, code, seconds, rss_mb, raw_mb, out_mb in rows:
        print(f"{size:>10} {code:>4} {seconds:>8.1f} {rss_mb:>12.0f} {raw_mb:>8.0f} {out_mb:>8.1f}")


if __name__ == "__main__":
    main()
