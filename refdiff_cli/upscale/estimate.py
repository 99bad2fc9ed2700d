"""The ``--dry-run`` estimates of an upscale: peak memory (calibrated against measured peaks)
and run time (one tile batch measured, then extrapolated)."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from refdiff_cli.config import UpscaleOptions
from refdiff_cli.data import normalize
from refdiff_cli.data.tiling import TilePlan
from refdiff_cli.geo import grid as geogrid
from refdiff_cli.geo import read
from refdiff_cli.geo.env import GDAL_CACHE_BYTES
from refdiff_cli.upscale.engines import Engine
from refdiff_cli.upscale.pipeline import ModelSpace, call_padded, check_mask_channel, engine_batch

#: Fixed overhead of a run (Python, torch, GDAL's code) in the dry-run memory estimate where
#: the process cannot measure its own resident memory (no /proc): importing refdiff's modules
#: measured 265 MB (torch 2, CPU build).
BASE_MEMORY_BYTES = 300 * 2**20
#: Working copies per buffered output pixel in the estimate: the strip buffer itself, the
#: finished strips divided out of it, their cast and their verification (measured: the peak
#: grew by 2.7 buffer sizes per added output column).
STRIP_BUFFER_COPIES = 3
#: Bytes per tile pixel and band-plane (LR_up, reference, state, masks) of the engines'
#: inputs, stacks, padded copies and outputs: the bicubic and guided engines, and the diffusion
#: sampler (its state, noise and denoised copies) before the network's own activations.
PLANE_BYTES = {"diffusion": 4 * 4, "other": 4 * 3}
#: Feature maps alive per encoder level during a forward pass, besides its skip connections.
WORKING_MAPS = 4
#: Margin on the network's feature maps (allocator slack, convolution workspaces): measured
#: peaks of the tiny and small presets on the CPU were 1.0-1.2 times the estimate without it.
ACTIVATION_MARGIN = 1.5


def time_estimate(
    sources: read.Sources,
    out_grid: geogrid.Grid,
    engine: Engine,
    plan: TilePlan,
    space: ModelSpace,
    options: UpscaleOptions,
    *,
    spent: float,
) -> dict[str, Any]:
    """Run the first tile batch as the real run would and extrapolate the run time (dry runs).

    Args:
        spent: seconds the preflight took (header checks, full decode), which a run repeats.

    Returns:
        ``{"seconds", "batch_seconds", "batch_tiles", "batches", "device"}``: expected seconds
        of the run (``spent + batches * batch_seconds``; writing, overviews and verification
        add a few seconds per GiB), the measured batch in seconds and tiles, the number of
        batches and the device it ran on.
    """
    check_mask_channel(engine, space)
    tiles = plan.tiles[: options.batch_size]
    with read.SourceReader(sources, out_grid) as reader:
        begun = time.perf_counter()
        batch, _ = engine_batch(tiles, reader, engine, options.seed, space)
        out = call_padded(engine, batch).numpy()  # (B, C, H, W) model space
        for tile_out in out:
            normalize.from_model(tile_out, space.lr)
        batch_seconds = time.perf_counter() - begun
    batches = math.ceil(len(plan.tiles) / options.batch_size)
    return {
        "seconds": round(spent + batches * batch_seconds, 3),
        "batch_seconds": round(batch_seconds, 3),
        "batch_tiles": len(tiles),
        "batches": batches,
        "device": str(getattr(engine, "device", "cpu")),
    }


def memory_estimate(plan: TilePlan, width: int, bands: int, batch_size: int, engine: Engine) -> int:
    """Peak bytes of an upscale, for ``--dry-run``: calibrated against measured peak RSS.

    ``bands`` counts every channel the strips carry: the image's and the layers'
    (``layer_bands``; without them a 12,288 px wide output with both layers peaked at 1.12
    times the estimate).

    The sum of: what the process holds already (its resident memory: Python, torch, GDAL and
    the model as this build and platform load them; else a fixed overhead plus the model's
    weights), GDAL's block cache (it fills on any raster worth estimating), the strip buffer
    (values and validity over tile + block rows of the full output width, counted with 4
    bytes more per pixel for the weight sum of the strip being finished) with its working
    copies, a batch of tiles in the engine (with the network's feature maps) and the inputs of
    the next batch, read meanwhile (``pipeline.read_ahead``; without them the bicubic peak
    rose to 1.01 times the estimate on the test's case).
    ``tests/integration/test_upscale_memory.py`` holds the estimate to within [1, 1.5] times
    a measured peak for the bicubic engine; by hand, 1.04-1.16 for the tiny and small
    diffusion presets.
    """
    buffer_rows = min(plan.shape[0], min(plan.tile_px, plan.shape[0]) + 256)
    accumulator = buffer_rows * width * (4 * bands + 4 + 1)
    tile_pixels = min(plan.tile_px, plan.shape[0]) * min(plan.tile_px, plan.shape[1])
    per_plane = PLANE_BYTES["diffusion" if engine.name == "diffusion" else "other"]
    maps, scores = _network_bytes(engine, tile_pixels)
    inputs = tile_pixels * (bands + 2) * per_plane  # one tile's, in the batch read ahead
    tiles = batch_size * (tile_pixels * (3 * bands + 2) * per_plane + maps + inputs) + scores
    resident = _resident_bytes()
    base = BASE_MEMORY_BYTES + _model_bytes(engine) if resident is None else resident
    return base + GDAL_CACHE_BYTES + STRIP_BUFFER_COPIES * accumulator + tiles


def _network_bytes(engine: Engine, pixels: int) -> tuple[int, int]:
    """Peak bytes of the network for one tile of ``pixels`` output pixels: (feature maps per
    tile, attention scores per batch); (0, 0) for engines without a network.

    From the card's network: each encoder level keeps its skip connections (``num_blocks +
    1``) and a few working maps of ``model_channels * mult`` channels on its pixel grid
    (``pixels / (stem_unshuffle^2 * 4^level)``). The middle attention's square score matrix
    over the coarsest grid is held for one tile at a time (PyTorch's CPU attention kernel
    works through the batch), so it is counted once.
    """
    card = getattr(getattr(engine, "model", None), "card", None)
    network = getattr(card, "network", None)
    if not isinstance(network, dict):
        return 0, 0
    channels = int(network.get("model_channels", 128))
    mult = tuple(network.get("channel_mult", (2, 2, 2)))
    maps = int(network.get("num_blocks", 4)) + 1 + WORKING_MAPS
    unshuffled = pixels / int(network.get("stem_unshuffle", 1)) ** 2
    floats = sum(maps * channels * m * unshuffled / 4**level for level, m in enumerate(mult))
    coarse = unshuffled / 4 ** (len(mult) - 1)
    scores = 2 * 4 * coarse**2 if network.get("middle_attention", True) else 0.0
    return int(ACTIVATION_MARGIN * 4 * floats), int(scores)


def _resident_bytes() -> int | None:
    """This process's resident memory now (Linux ``/proc/self/statm``), or None."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _model_bytes(engine: Engine) -> int:
    """Bytes of the engine's network weights (0 for engines without a model)."""
    network = getattr(getattr(engine, "model", None), "denoiser", None)
    if not isinstance(network, torch.nn.Module):
        return 0
    return sum(p.numel() * p.element_size() for p in network.parameters())
