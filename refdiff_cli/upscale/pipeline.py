"""The tiled pipeline shared by upscale and evaluate: the tile plan, the value mappings of a
run (``ModelSpace``), reading and normalising tile batches, running the engine on them and
blending the results into finished strips."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import torch

from refdiff_cli.config import UpscaleOptions
from refdiff_cli.data import masks, normalize
from refdiff_cli.data.tiling import (
    PixelWindow,
    Strip,
    StripAccumulator,
    Tile,
    TilePlan,
    batches,
    first_tile,
    plan_tiles,
)
from refdiff_cli.errors import ConfigError, InputError
from refdiff_cli.geo import read
from refdiff_cli.reference.change import estimate_change
from refdiff_cli.reference.guided import GuidedConfig, reference_shift
from refdiff_cli.reference.trust import uncertainty
from refdiff_cli.upscale.bands import BandRoutes
from refdiff_cli.upscale.distributed import TileRows
from refdiff_cli.upscale.engines import Engine, EngineBatch

#: Per-pixel layers ``sr_strips`` can append to the image (``--mask-out``, ``--trust-out``).
Layer = Literal["mask", "weight", "uncertainty"]
#: Where a run's change mask comes from (``ModelSpace.mask_mode``).
MaskMode = Literal["file", "estimated", "none"]

Array = npt.NDArray[np.float32]
Valid = npt.NDArray[np.bool_]
T = TypeVar("T")
R = TypeVar("R")


class TileReader(Protocol):
    """Where tiles come from: ``geo.read.SourceReader`` for files, arrays for evaluation."""

    def read_lr(self, window: PixelWindow) -> tuple[Array, Valid]: ...
    def read_ref(self, window: PixelWindow) -> tuple[Array, Valid]: ...
    def read_mask(self, window: PixelWindow) -> tuple[Array, Valid]: ...


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSpace:
    """How one run maps raster values into the engine's space and back.

    Attributes:
        lr: scaling of the LR (and of the output, which has the LR's values).
        ref: scaling of the reference.
        mask: encoding of the change mask file into the mask channel (None without a file).
        mask_source: the mask's name, for error messages.
        mask_mode: where each tile's mask comes from: "file" (read and encoded), "estimated"
            (``change.estimate_change`` of the tile's LR and reference) or "none" (all
            changed: the reference is not used).
        compared: (LR, reference) band positions the change estimate compares; None: all,
            one to one.
    """

    lr: normalize.BandScaling
    ref: normalize.BandScaling
    mask: masks.MaskEncoding | None
    mask_source: str
    mask_mode: MaskMode = "file"
    compared: tuple[tuple[int, int], ...] | None = None


def tile_plan(shape: tuple[int, int], engine: Engine, options: UpscaleOptions) -> TilePlan:
    """The tile plan of one output: ``--tile/--overlap/--margin`` or the engine's defaults."""
    tiling = options.tiling
    tile_px = tiling.tile_px or engine.tile_px
    overlap_px = engine.overlap_px if tiling.overlap_px is None else tiling.overlap_px
    margin_px = engine.margin_px if tiling.margin_px is None else tiling.margin_px
    multiple = math.lcm(engine.scale, engine.size_multiple)
    if tile_px % multiple:
        raise ConfigError(
            f"--tile {tile_px} is not a multiple of {multiple} (scale x{engine.scale}, "
            f"network size multiple {engine.size_multiple})",
            hint=f"use --tile {max(multiple, tile_px // multiple * multiple)}",
        )
    if not 2 * margin_px <= overlap_px < tile_px:
        raise ConfigError(
            f"--overlap {overlap_px} must be at least twice the blend margin ({margin_px}) and "
            f"less than the tile ({tile_px})",
            hint=f"use --overlap {2 * margin_px} or more, or a smaller --margin",
        )
    return plan_tiles(
        shape, tile_px=tile_px, overlap_px=overlap_px, margin_px=margin_px, scale=engine.scale
    )


def model_space(
    sources: read.Sources, mask_encoding: str, routes: BandRoutes | None = None
) -> ModelSpace:
    """The scalings and mask encoding of one run, from what the preflight decoded."""
    return ModelSpace(
        lr=normalize.scaling_for(sources.lr.dtype, sources.lr_scan.percentiles),
        ref=normalize.scaling_for(sources.ref.dtype, sources.ref_scan.percentiles),
        mask=None if sources.mask is None else read.mask_encoding(sources, mask_encoding),
        mask_source="estimated" if sources.mask is None else str(sources.mask.path),
        mask_mode="estimated" if sources.mask is None else "file",
        compared=None if routes is None else routes.compared,
    )


#: One computed tile: the tile, its values (C, H, W) in LR values with the layers appended,
#: and its output validity (H, W).
TileResult = tuple[Tile, npt.NDArray[np.floating], Valid]


def sr_strips(
    reader: TileReader,
    engine: Engine,
    plan: TilePlan,
    space: ModelSpace,
    *,
    seed: int,
    batch_size: int,
    block_rows: int,
    on_tiles: Callable[[int], None] | None = None,
    layers: tuple[Layer, ...] = (),
    first_row: int = 0,
    rows: TileRows | None = None,
) -> Iterator[Strip]:
    """The tiled pipeline shared by upscale and evaluate: finished strips of the SR in LR values.

    Args:
        reader: source of LR windows and ref/mask windows on the output grid.
        engine: turns model-space tile batches into SR tiles.
        plan: the tile plan of the output.
        space: value mappings of this run.
        seed: run seed; with each tile's absolute origin it fixes every random draw.
        batch_size: tiles per engine call (the result does not depend on it).
        block_rows: strips are multiples of this many rows (the output's block height).
        on_tiles: called with the number of tiles done after every batch.
        layers: channels appended after the image's, blended like it, in this order: "mask"
            (the change mask the engine was given, 0..1), "weight" (the reference weight,
            ``reference/trust.py``), "uncertainty" (``trust.uncertainty``, output units).
        first_row: resume here (a multiple of ``block_rows``): only the tiles reaching this row
            or below run, and only strips from it on are yielded, the same as a full run's.
        rows: under torchrun, rank 0's share of the tile rows; the other ranks' rows arrive
            from them (``TileRows.send``) in plan order.

    Yields:
        Strips (values (C, rows, W) float32 in LR values, validity (rows, W)), top to bottom.
    """
    accumulator = StripAccumulator(
        plan, space.lr.bands + len(layers), block_rows=block_rows, first_row=first_row
    )
    done = first_tile(plan, first_row)
    tiles = range(done, len(plan.tiles)) if rows is None else rows.mine(plan, done)
    results = sr_tiles(
        reader,
        engine,
        (plan.tiles[i] for i in tiles),
        space,
        seed=seed,
        batch_size=batch_size,
        layers=layers,
    )
    if rows is not None:
        results = rows.gather(plan, done, results, channels=accumulator.bands)
    for group in results:
        for tile, values, valid in group:
            yield from accumulator.add(tile, values, valid)
        done += len(group)
        if on_tiles is not None:
            on_tiles(done)


def sr_tiles(
    reader: TileReader,
    engine: Engine,
    tiles: Iterable[Tile],
    space: ModelSpace,
    *,
    seed: int,
    batch_size: int,
    layers: tuple[Layer, ...] = (),
) -> Iterator[list[TileResult]]:
    """The SR of ``tiles`` in LR values, one list per engine batch (arguments as
    ``sr_strips``'s)."""
    check_mask_channel(engine, space)
    low, high = np.asarray(space.lr.low), np.asarray(space.lr.high)
    units_per_model_unit = float(np.mean((high - low) / 2))

    def read(tile_batch: list[Tile]) -> tuple[list[Tile], EngineBatch, list[Valid]]:
        return tile_batch, *engine_batch(tile_batch, reader, engine, seed, space)

    for tile_batch, batch, lr_valid in read_ahead(read, batches(tiles, batch_size)):
        out = call_padded(engine, batch).numpy()  # (B, C, H, W) model space
        extra: dict[str, torch.Tensor] = {"mask": batch.mask[:, :1]}
        if {"weight", "uncertainty"} & set(layers):
            extra["weight"] = engine.reference_weight(batch)  # (B, 1, H, W)
            extra["uncertainty"] = units_per_model_unit * uncertainty(
                batch.lr, extra["weight"], engine.scale
            )
        group: list[TileResult] = []
        for i, (tile, valid) in enumerate(zip(tile_batch, lr_valid, strict=True)):
            values = normalize.from_model(out[i], space.lr)  # (C, H, W)
            if layers:
                values = np.concatenate([values, *(extra[name][i].numpy() for name in layers)])
            group.append((tile, values, valid))
        yield group


def read_ahead(function: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """``function(item)`` for each item, in order, the next one computed in a background
    thread while the caller works on the current one (reading and preparing the next batch
    of tiles while the engine runs: on a GPU, reading and warping take longer than the
    network).

    One worker, one item ahead: the reader's datasets are only ever used by that thread, and
    memory holds at most two batches. ``items`` is advanced in the caller's thread. The worker
    uses the caller's number of torch threads (OpenMP's count is per thread). An exception of
    ``function`` is raised where its result would have been taken; leaving early (an error,
    Ctrl-C) waits only for the item in progress.
    """
    iterator = iter(items)
    threads = torch.get_num_threads()
    with ThreadPoolExecutor(1, "refdiff-read", torch.set_num_threads, (threads,)) as pool:
        try:
            pending = [pool.submit(function, item) for item in itertools.islice(iterator, 1)]
            while pending:
                current = pending.pop()
                pending = [pool.submit(function, item) for item in itertools.islice(iterator, 1)]
                yield current.result()
        finally:
            for future in pending:
                future.cancel()


def check_mask_channel(engine: Engine, space: ModelSpace) -> None:
    """Refuse a mask whose channel the model was not trained on (0/1 vs graded levels)."""
    if space.mask is None or space.mask_mode != "file":
        return  # estimated and "none" masks are 0/1, which every mask channel reads
    wanted = engine.mask_channel
    given = masks.channel_kind(space.mask)
    if wanted is not None and given != wanted:
        raise InputError(
            f"the model was trained on {wanted} change masks, but mask {space.mask_source} "
            f"reads as {given} values ({space.mask.kind} encoding)",
            hint="pass --mask-encoding binary, or a class table without levels"
            if wanted == "binary"
            else "pass --mask-encoding grey, or a class table with levels",
        )


def engine_batch(
    tiles: Sequence[Tile], reader: TileReader, engine: Engine, seed: int, space: ModelSpace
) -> tuple[EngineBatch, list[Valid]]:
    """Read and normalise one batch; return it with each tile's output validity (H, W).

    An estimated mask registers the reference with the engine's guided constants and hands
    that registration on (``EngineBatch.ref_shift``): the engine does not register again.
    """
    scale = engine.scale
    lr_list, ref_list, ref_valid_list, mask_list, valid_list = [], [], [], [], []
    for tile in tiles:
        lr, lr_valid = reader.read_lr(tile.lr)  # (C, h, w), (h, w)
        # Invalid LR pixels never reach the engine: mid-grey in, nodata out.
        lr_list.append(np.where(lr_valid[None], normalize.to_model(lr, space.lr), 0.0))
        ref, ref_valid = reader.read_ref(tile.out)  # (C, H, W), (H, W)
        ref_list.append(np.where(ref_valid[None], normalize.to_model(ref, space.ref), 0.0))
        if space.mask_mode == "file" and space.mask is not None:
            raw_mask, mask_valid = reader.read_mask(tile.out)  # (H, W), (H, W)
            mask, mask_valid = masks.encode(
                raw_mask, mask_valid, space.mask, source=space.mask_source
            )
            mask_list.append(mask)  # (1, H, W)
            # Without a reference or a mask value, the pixel is conditioned on LR alone.
            ref_valid &= mask_valid
        ref_valid_list.append(ref_valid[None])
        valid_list.append(np.repeat(np.repeat(lr_valid, scale, 0), scale, 1))
    lr_t = torch.from_numpy(np.stack(lr_list).astype(np.float32))
    ref_t = torch.from_numpy(np.stack(ref_list).astype(np.float32))
    ref_valid_t = torch.from_numpy(np.stack(ref_valid_list))
    shift = None
    if space.mask_mode == "estimated":
        lr_compared, ref_compared = lr_t, ref_t
        if space.compared is not None:
            lr_compared = lr_t[:, [lr_pos for lr_pos, _ in space.compared]]
            ref_compared = ref_t[:, [ref_pos for _, ref_pos in space.compared]]
        guided = engine.guided_config or GuidedConfig()
        shift = reference_shift(
            lr_compared, ref_compared, ref_valid=ref_valid_t, scale=scale, config=guided
        )
        mask_t = estimate_change(
            lr_compared,
            ref_compared,
            ref_valid=ref_valid_t,
            scale=scale,
            guided=guided,
            shift=shift,
        )
    elif space.mask_mode == "none":
        mask_t = torch.ones_like(ref_t[:, :1])
    else:
        mask_t = torch.from_numpy(np.stack(mask_list).astype(np.float32))
    batch = EngineBatch(
        lr=lr_t,
        ref=ref_t,
        ref_valid=ref_valid_t,
        mask=mask_t,
        origins=tuple((t.out.row_off, t.out.col_off) for t in tiles),
        seed=seed,
        ref_shift=shift,
    )
    return batch, valid_list


def call_padded(engine: Engine, batch: EngineBatch) -> torch.Tensor:
    """Run the engine on tiles padded to its size multiple (rasters smaller than a tile)."""
    height, width = batch.ref.shape[2], batch.ref.shape[3]
    multiple = math.lcm(engine.scale, engine.size_multiple)
    pad_h, pad_w = -height % multiple, -width % multiple
    if not (pad_h or pad_w):
        return engine(batch)
    s = engine.scale

    def pad(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
        return torch.nn.functional.pad(x.float(), (0, pw, 0, ph), mode="replicate").to(x.dtype)

    padded = dataclasses.replace(
        batch,
        lr=pad(batch.lr, pad_h // s, pad_w // s),
        ref=pad(batch.ref, pad_h, pad_w),
        ref_valid=pad(batch.ref_valid, pad_h, pad_w).bool(),
        mask=pad(batch.mask, pad_h, pad_w),
        ref_shift=None,  # registered afresh on the padded tiles
    )
    return engine(padded)[:, :, :height, :width]
