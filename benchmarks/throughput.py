"""Throughput of `refdiff upscale` per engine, tile size, thread count and compilation (one table).

Usage:
    python benchmarks/throughput.py [--data ../shared/data] [--size 1024]
        [--engines bicubic,guided,model] [--tiles 256,512] [--threads 1,2] [--compile]
        [--steps 1] [--model PATH] [--work DIR]

The scene is real: ``geotiff/cogeo.tif`` of the shared data (1024^2 RGB aerial, 0.6 m; one of
the bundled model's validation images) as the HR truth, mirrored to ``--size`` output pixels;
its LR is the antialiased bicubic x8 downscale and its reference and change mask are
synthesised from it as ``benchmarks/fidelity.py`` does (colour shift, pasted and removed
objects, misregistration, noise). Without the shared data a synthetic scene stands in and
PSNR is not given.

Each row runs the real CLI in a child process with ``OMP_NUM_THREADS`` set, and reports the
run's own seconds (from its JSON report: preflight, tiles, writing; not the interpreter
start or the model load), output megapixels per second, the time relative to bicubic at
the same tile and thread count in the same invocation, the child's peak RSS (``wait4``) and
the PSNR (dB) of the output against the HR. ``--compile`` adds model rows with
``upscale --compile``, after one warm-up run per tile size and thread count that fills
inductor's on-disk cache (its cold compile time is printed). Timings on a shared machine are only
comparable within one invocation: the load average before and after is printed with the
table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity import SCALE, shared_data, write_lr
from upscale_memory import LR_PIXEL_M, REF_PIXEL_M, write_scene

from refdiff_cli.metrics import psnr
from refdiff_cli.train_references import synthesised_reference

#: The HR truth of the real scene, relative to the shared data folder.
SCENE = Path("geotiff") / "cogeo.tif"
#: CLI engine name of each benchmark engine.
ENGINES = {"bicubic": "bicubic", "guided": "guided", "model": "diffusion"}


def make_scene(data: Path, size: int, folder: Path) -> dict[str, Path]:
    """The scene's GeoTIFFs in ``folder``: the real one when the shared data has it."""
    folder.mkdir(parents=True, exist_ok=True)
    return (
        real_scene(data, size, folder)
        if (data / SCENE).is_file()
        else synthetic_scene(size, folder)
    )


def real_scene(data: Path, size: int, folder: Path) -> dict[str, Path]:
    """HR (mirrored to size x size), LR, reference and mask GeoTIFFs from the shared scene."""
    with rasterio.open(data / SCENE) as src:
        hr, crs, transform = src.read()[:3], src.crs, src.transform
    reps = -(-size // hr.shape[1])  # mirror tiling keeps the scene continuous across copies
    tiled = np.concatenate([hr, hr[:, ::-1]] * reps, axis=1)[:, :size]
    tiled = np.concatenate([tiled, tiled[:, :, ::-1]] * reps, axis=2)[:, :, :size]
    rng = np.random.default_rng(sum(SCENE.name.encode()))
    model_space = torch.from_numpy(tiled.astype(np.float32) / 127.5 - 1.0)
    valid = torch.ones((1, size, size), dtype=torch.bool)
    ref, mask, _ = synthesised_reference(model_space, valid, rng)
    ref_dn = np.clip(np.rint((ref.numpy() + 1.0) * 127.5), 0, 255).astype(np.uint8)
    paths = {name: folder / f"{name}.tif" for name in ("hr", "lr", "ref", "mask")}
    profile = {"driver": "GTiff", "width": size, "height": size, "dtype": "uint8", "crs": crs}
    profile.update(transform=transform, tiled=True, blockxsize=256, blockysize=256)
    for name, values in (("hr", tiled), ("ref", ref_dn), ("mask", mask.numpy())):
        with rasterio.open(paths[name], "w", **{**profile, "count": len(values)}) as dst:
            dst.write(values.astype(np.uint8))
    write_lr(paths["hr"], paths["lr"])
    return paths


def synthetic_scene(size: int, folder: Path) -> dict[str, Path]:
    """``benchmarks/upscale_memory.py``'s smooth-plus-noise scene: no HR truth."""
    paths = {name: folder / f"{name}.tif" for name in ("lr", "ref", "mask")}
    write_scene(paths["lr"], size // SCALE, LR_PIXEL_M, 3, seed=1)
    write_scene(
        paths["ref"], round(size / SCALE * LR_PIXEL_M / REF_PIXEL_M), REF_PIXEL_M, 3, seed=2
    )
    write_scene(paths["mask"], size // SCALE, LR_PIXEL_M, 1, seed=3)
    return paths


def run(
    scene: dict[str, Path], out: Path, threads: int, options: list[str]
) -> tuple[float, int, np.ndarray] | None:
    """Run one upscale: (its report's seconds, the child's peak RSS bytes, output); None when
    the CLI refused the options (it printed why)."""
    args = [str(scene["lr"]), "--ref", str(scene["ref"]), "--mask", str(scene["mask"])]
    command = [sys.executable, "-m", "refdiff_cli", "-q", "upscale", *args, "-o", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryFile() as stdout:
        process = subprocess.Popen(
            [*command, "--overwrite", "--json", "--mask-encoding", "binary", *options],
            stdout=stdout,
            env=env,
        )
        _, status, usage = os.wait4(process.pid, 0)
        stdout.seek(0)
        report = json.loads(stdout.read())
    if os.waitstatus_to_exitcode(status) != 0:
        return None  # an option the engine refuses (a tile too small for its overlap)
    with rasterio.open(out) as src:
        values = src.read()
    return float(report["report"]["seconds"]), usage.ru_maxrss * 1024, values


def configurations(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One dict per row: engine, tile, threads, compile."""
    rows = [
        {"engine": engine, "tile": tile, "threads": threads, "compile": False}
        for engine in args.engines.split(",")
        for tile in map(int, args.tiles.split(","))
        for threads in map(int, args.threads.split(","))
    ]
    if args.compile and "model" in args.engines.split(","):
        rows += [{**row, "compile": True} for row in rows if row["engine"] == "model"]
    return rows


def options_of(row: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The upscale options of one row."""
    options = ["--engine", ENGINES[row["engine"]], "--tile", str(row["tile"])]
    if row["engine"] == "model":
        options += ["--steps", str(args.steps)]
        if args.model is not None:
            options += ["--model", str(args.model)]
        if row["compile"]:
            options.append("--compile")
    return options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=os.environ.get("REFDIFF_SHARED_DATA"))
    parser.add_argument("--size", type=int, default=1024, help="output edge, pixels")
    parser.add_argument("--engines", default="bicubic,guided,model")
    parser.add_argument("--tiles", default="256,512", help="tile edges, output pixels")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--compile", action="store_true", help="add compiled model rows")
    parser.add_argument("--steps", type=int, default=1, help="model sampler steps")
    parser.add_argument("--model", type=Path, default=None, help="default: the bundled model")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    data = shared_data(args)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as temp:
        work = args.work or Path(temp)
        scene = make_scene(data, args.size, work / "scene")
        hr = None
        if "hr" in scene:
            with rasterio.open(scene["hr"]) as src:
                hr = src.read()
        rows = configurations(args)
        for row in {(row["tile"], row["threads"]): row for row in rows if row["compile"]}.values():
            # A scene two tiles wide has the tiles' shape: its run fills the compile cache
            # (inductor compiles once per tile shape and thread count).
            small = make_scene(data, 2 * row["tile"], work / f"warm{row['tile']}")
            warmed = run(small, work / "warm.tif", row["threads"], options_of(row, args))
            cold = "refused" if warmed is None else f"{warmed[0]:.0f} s"
            setting = (
                f"{2 * row['tile']} px scene, {row['tile']} px tiles, {row['threads']} threads"
            )
            print(f"cold compile run ({setting}): {cold}")
        for row in rows:
            result = run(scene, work / "sr.tif", row["threads"], options_of(row, args))
            if result is not None:
                seconds, rss, values = result
                row.update(seconds=seconds, rss=rss)
                row["psnr"] = psnr(values, hr, data_range=255) if hr is not None else None
    print_table(rows, args, load_before)


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace, load: float) -> None:
    """The Markdown table, with the machine's load average before and after."""
    bicubic = {
        (r["threads"], r["tile"]): r["seconds"]
        for r in rows
        if r["engine"] == "bicubic" and "seconds" in r
    }
    megapixels = args.size**2 / 1e6
    print(
        f"\n{args.size}^2 output, x{SCALE}, model steps {args.steps}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, load average {load:.1f} before, {os.getloadavg()[0]:.1f} after\n"
    )
    header = ("engine", "tile", "threads", "compile", "seconds", "Mpx/s", "x bicubic")
    print("| " + " | ".join((*header, "peak RSS MiB", "PSNR dB")) + " |")
    print("|---" * (len(header) + 2) + "|")
    for row in rows:
        if "seconds" not in row:
            print(f"| {row['engine']} | {row['tile']} | {row['threads']} | refused |")
            continue
        same = bicubic.get((row["threads"], row["tile"]))
        cells = [
            row["engine"],
            str(row["tile"]),
            str(row["threads"]),
            "yes" if row["compile"] else "no",
            f"{row['seconds']:.1f}",
            f"{megapixels / row['seconds']:.3f}",
            "-" if same is None else f"{row['seconds'] / same:.1f}",
            f"{row['rss'] / 2**20:.0f}",
            "-" if row["psnr"] is None else f"{row['psnr']:.2f}",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
