"""Throughput of `refdiff upscale` per engine, output size, tile size, thread count, sampler
steps and compilation, and the network's achieved FLOP/s against this machine's matmul peak.

Usage:
    python benchmarks/throughput.py [--data ../shared/data] [--sizes 1024,2048,4096]
        [--engines bicubic,guided,model] [--tiles 256,512] [--threads 1,2] [--compile]
        [--steps 1,8] [--repeats 3] [--model PATH] [--work DIR]

The scene is real: ``geotiff/cogeo.tif`` of the shared data (1024^2 RGB aerial, 0.6 m; one of
the bundled model's validation images) as the HR truth, mirrored to each of ``--sizes`` output
pixels; its LR is the antialiased bicubic x8 downscale and its reference and change mask are
synthesised from it as ``benchmarks/fidelity.py`` does (colour shift, pasted and removed
objects, misregistration, noise). Without the shared data a synthetic scene stands in and
PSNR is not given.

Each row of the first table runs the real CLI in a child process with ``OMP_NUM_THREADS``
set, and reports the run's own seconds (from its JSON report: preflight, tiles, writing; not
the interpreter start or the model load), output megapixels per second, the time relative to
bicubic at the same output size, tile and thread count in the same invocation, the child's
peak RSS (its ``VmHWM``, read while it runs) and the PSNR (dB) of the output against the
HR. Model rows run once per ``--steps`` (``upscale --steps``: the card's sampler with that
many steps; the bundled model's is Euler from the mean, one network evaluation per step and
tile). ``--compile`` adds
model rows with ``upscale --compile``, after one warm-up run per tile size and thread count
that fills inductor's on-disk cache (its cold compile time is printed).

The second table (with the model engine) is the network alone, in this process, per tile
size and thread count: the FLOPs of one eager fp32 forward of the model on one tile (batch 1,
as the CPU engine runs it; ``torch.utils.flop_counter.FlopCounterMode``, a multiply-add counts
2), the fastest of ``--repeats`` timed forwards in each memory layout (channels-last is the CPU
engine's; contiguous is how the network was trained), and the fastest of ``--repeats`` 2048^2 @
2048^2 fp32 matmuls at the same thread count as the machine's peak; the ratio is the share of
that peak the network achieves. Timings on a shared machine are only comparable within one
invocation: the load average before and after is printed with the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from refdiff_cli.cli import cap_openmp_spinning

cap_openmp_spinning(os.environ)  # before torch loads, as the refdiff command does

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity import SCALE, shared_data, write_lr  # noqa: E402
from upscale_memory import LR_PIXEL_M, REF_PIXEL_M, write_scene  # noqa: E402

from refdiff_cli.metrics.pixel import psnr  # noqa: E402
from refdiff_cli.model.checkpoint import LoadedModel, load_model  # noqa: E402
from refdiff_cli.model.precond import Conditioning  # noqa: E402
from refdiff_cli.train.references import synthesised_reference  # noqa: E402

#: The HR truth of the real scene, relative to the shared data folder.
SCENE = Path("geotiff") / "cogeo.tif"
#: CLI engine name of each benchmark engine.
ENGINES = {"bicubic": "bicubic", "guided": "guided", "model": "diffusion"}
#: Memory layouts the network forward is timed in: the CPU engine's first.
LAYOUTS = {"channels-last": torch.channels_last, "contiguous": torch.contiguous_format}
#: Edge of the square fp32 matmul that measures the machine's peak FLOP/s.
MATMUL_PX = 2048
#: Interval between reads of a running upscale's peak memory, seconds (the peak is kept by
#: the kernel, so only growth in the last interval before exit can be missed).
POLL_SECONDS = 0.05


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
        peak = 0
        while process.poll() is None:
            peak = max(peak, high_water_mark(process.pid))
            time.sleep(POLL_SECONDS)
        stdout.seek(0)
        report = json.loads(stdout.read())
    if process.returncode != 0:
        return None  # an option the engine refuses (a tile too small for its overlap)
    with rasterio.open(out) as src:
        values = src.read()
    return float(report["report"]["seconds"]), peak, values


def high_water_mark(pid: int) -> int:
    """Peak resident bytes of process ``pid`` so far (``VmHWM``); 0 once it has exited.

    Not ``wait4``'s ``ru_maxrss``: Linux starts a child's at its parent's peak (fork and exec
    carry it over), and this process holds the scene and torch (measured: a 2048^2 bicubic run
    peaking at 535 MiB read as 804).
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    kib = [line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(kib[0]) * 1024 if kib else 0


def configurations(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One dict per row: size, engine, tile, threads, steps (None: no sampler), compile."""
    rows = [
        {"size": size, "engine": engine, "tile": tile, "threads": threads, "compile": False}
        for size in map(int, args.sizes.split(","))
        for engine in args.engines.split(",")
        for tile in map(int, args.tiles.split(","))
        for threads in map(int, args.threads.split(","))
    ]
    rows = [
        {**row, "steps": steps}
        for row in rows
        for steps in (map(int, args.steps.split(",")) if row["engine"] == "model" else [None])
    ]
    if args.compile:
        rows += [{**row, "compile": True} for row in rows if row["engine"] == "model"]
    return rows


def options_of(row: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The upscale options of one row."""
    options = ["--engine", ENGINES[row["engine"]], "--tile", str(row["tile"])]
    if row["engine"] == "model":
        options += ["--steps", str(row["steps"])]
        if args.model is not None:
            options += ["--model", str(args.model)]
        if row["compile"]:
            options.append("--compile")
    return options


def fastest(call: Callable[[], object], repeats: int) -> float:
    """The shortest of ``repeats`` timed calls, seconds (after one untimed call)."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def network_rate(
    model: LoadedModel, tile: int, threads: int, repeats: int, layout: torch.memory_format
) -> dict[str, float]:
    """FLOPs of one forward of ``model`` on a tile x tile tile, its fastest time (s) with
    weights and inputs in ``layout`` and the fastest ``MATMUL_PX``^2 fp32 matmul's FLOP/s,
    all with ``threads`` threads."""
    torch.set_num_threads(threads)
    config = model.denoiser.net.config
    generator = torch.Generator().manual_seed(0)

    def image(channels: int) -> torch.Tensor:
        values = torch.rand(1, channels, tile, tile, generator=generator) * 2 - 1
        return values.contiguous(memory_format=layout)

    x = image(config.image_channels)
    cond = Conditioning(
        lr_up=image(config.image_channels),
        ref=image(config.image_channels),
        mask=(image(config.mask_channels) + 1) / 2,
    )
    sigma = torch.tensor([model.card.sampler_config.sigma_max])
    model.denoiser.to(memory_format=layout)
    counter = FlopCounterMode(display=False)
    with torch.no_grad():
        with counter:
            model.denoiser(x, sigma, cond)
        forward = fastest(lambda: model.denoiser(x, sigma, cond), repeats)
    a, b = torch.randn(MATMUL_PX, MATMUL_PX), torch.randn(MATMUL_PX, MATMUL_PX)
    matmul = fastest(lambda: torch.mm(a, b), repeats)
    return {
        "flops": float(counter.get_total_flops()),
        "forward": forward,
        "peak": 2 * MATMUL_PX**3 / matmul,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=os.environ.get("REFDIFF_SHARED_DATA"))
    parser.add_argument("--sizes", default="1024,2048,4096", help="output edges, pixels")
    parser.add_argument("--engines", default="bicubic,guided,model")
    parser.add_argument("--tiles", default="256,512", help="tile edges, output pixels")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--compile", action="store_true", help="add compiled model rows")
    parser.add_argument("--steps", default="1,8", help="model sampler steps, one row each")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards and matmuls")
    parser.add_argument("--model", type=Path, default=None, help="default: the bundled model")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    data = shared_data(args)
    load_before = os.getloadavg()[0]
    rows = configurations(args)
    with tempfile.TemporaryDirectory() as temp:
        work = args.work or Path(temp)
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
        for size in map(int, args.sizes.split(",")):
            scene = make_scene(data, size, work / f"scene{size}")
            hr = None
            if "hr" in scene:
                with rasterio.open(scene["hr"]) as src:
                    hr = src.read()
            for row in (row for row in rows if row["size"] == size):
                result = run(scene, work / "sr.tif", row["threads"], options_of(row, args))
                if result is not None:
                    seconds, rss, values = result
                    row.update(seconds=seconds, rss=rss)
                    row["psnr"] = psnr(values, hr, data_range=255) if hr is not None else None
    rates = []
    if "model" in args.engines.split(","):
        model = load_model(args.model)
        rates = [
            {
                "tile": tile,
                "threads": threads,
                "layout": name,
                **network_rate(model, tile, threads, args.repeats, layout),
            }
            for tile in map(int, args.tiles.split(","))
            for threads in map(int, args.threads.split(","))
            for name, layout in LAYOUTS.items()
        ]
    print_table(rows, load_before)
    print_rates(rates)


def print_table(rows: list[dict[str, Any]], load: float) -> None:
    """The upscale table, with the machine's load average before and after."""
    bicubic = {
        (r["size"], r["threads"], r["tile"]): r["seconds"]
        for r in rows
        if r["engine"] == "bicubic" and "seconds" in r
    }
    print(
        f"\nx{SCALE}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
        f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} after\n"
    )
    header = ("output", "engine", "steps", "tile", "threads", "compile", "seconds", "Mpx/s")
    print("| " + " | ".join((*header, "x bicubic", "peak RSS MiB", "PSNR dB")) + " |")
    print("|---" * (len(header) + 3) + "|")
    for row in rows:
        steps = "-" if row["steps"] is None else str(row["steps"])
        cells = [f"{row['size']}^2", row["engine"], steps, str(row["tile"]), str(row["threads"])]
        if "seconds" not in row:
            print("| " + " | ".join([*cells, "refused"]) + " |")
            continue
        same = bicubic.get((row["size"], row["threads"], row["tile"]))
        cells += [
            "yes" if row["compile"] else "no",
            f"{row['seconds']:.1f}",
            f"{row['size'] ** 2 / 1e6 / row['seconds']:.3f}",
            "-" if same is None else f"{row['seconds'] / same:.1f}",
            f"{row['rss'] / 2**20:.0f}",
            "-" if row["psnr"] is None else f"{row['psnr']:.2f}",
        ]
        print("| " + " | ".join(cells) + " |")


def print_rates(rates: list[dict[str, Any]]) -> None:
    """The network's achieved FLOP/s against the matmul peak, one row per tile and threads."""
    if not rates:
        return
    print(f"\nnetwork forward (eager fp32, batch 1) vs {MATMUL_PX}^2 fp32 matmul peak\n")
    print("| tile | threads | layout | GFLOP | forward s | GFLOP/s | matmul GFLOP/s | of peak |")
    print("|---" * 8 + "|")
    for rate in rates:
        achieved = rate["flops"] / rate["forward"]
        cells = [
            str(rate["tile"]),
            str(rate["threads"]),
            rate["layout"],
            f"{rate['flops'] / 1e9:.1f}",
            f"{rate['forward']:.2f}",
            f"{achieved / 1e9:.1f}",
            f"{rate['peak'] / 1e9:.1f}",
            f"{achieved / rate['peak']:.0%}",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
