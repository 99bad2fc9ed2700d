"""Tile plans, blend weights and the streaming strip accumulator, in output pixels (pure numpy).

Tiles overlap by ``overlap_px``; the last row and column of tiles are snapped flush with the
raster edge, so the full extent is covered and never shrunk. Blend weights are zero within
``margin_px`` of an interior tile edge (the engine's receptive reach, where a tile's result
differs from the untiled one), cosine over the rest of the overlap and 1 inside; raster borders
are never tapered. With ``overlap_px >= 2 * margin_px`` an engine whose output at a pixel
depends only on inputs within ``margin_px`` gives exactly the untiled result (reliability.md,
finding 9).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar, overload

import numpy as np
import numpy.typing as npt

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class PixelWindow:
    """A rectangle of pixels: rows ``row_off .. row_off + height - 1``, same for columns."""

    row_off: int
    col_off: int
    height: int
    width: int

    @property
    def row_end(self) -> int:
        """One past the last row."""
        return self.row_off + self.height

    @property
    def col_end(self) -> int:
        """One past the last column."""
        return self.col_off + self.width

    def divided(self, factor: int) -> PixelWindow:
        """The same rectangle on a grid ``factor`` times coarser (offsets and sizes divisible)."""
        parts = (self.row_off, self.col_off, self.height, self.width)
        if any(p % factor for p in parts):
            raise ValueError(f"{self} is not aligned to multiples of {factor}")
        return PixelWindow(*(p // factor for p in parts))


@dataclasses.dataclass(frozen=True, slots=True)
class Tile:
    """One tile of a plan.

    Attributes:
        index: position in the plan (row-major).
        grid_row, grid_col: tile row and column in the plan.
        out: the tile in output pixels.
        lr: the same tile in LR pixels (``out`` divided by the scale).
    """

    index: int
    grid_row: int
    grid_col: int
    out: PixelWindow
    lr: PixelWindow


@dataclasses.dataclass(frozen=True, slots=True)
class TileGrid(Sequence[Tile]):
    """The tiles of a plan, row-major, made on demand from the tile starts.

    A sequence (``len``, indexing, slicing, iteration) that stores only the starts: a plan of
    a 10^6 x 10^6 px raster holds a few hundred thousand numbers, not 10^10 tiles.
    """

    shape: tuple[int, int]
    tile_px: int
    scale: int
    row_starts: tuple[int, ...]
    col_starts: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.row_starts) * len(self.col_starts)

    @overload
    def __getitem__(self, index: int) -> Tile: ...
    @overload
    def __getitem__(self, index: slice) -> list[Tile]: ...
    def __getitem__(self, index: int | slice) -> Tile | list[Tile]:
        if isinstance(index, slice):
            return [self._tile(i) for i in range(*index.indices(len(self)))]
        count = len(self)
        if not -count <= index < count:
            raise IndexError(f"tile {index} of a plan of {count}")
        return self._tile(index % count)

    def __iter__(self) -> Iterator[Tile]:
        return (self._tile(i) for i in range(len(self)))

    def _tile(self, index: int) -> Tile:
        i, j = divmod(index, len(self.col_starts))
        height, width = self.shape
        out = PixelWindow(
            self.row_starts[i],
            self.col_starts[j],
            min(self.tile_px, height),
            min(self.tile_px, width),
        )
        return Tile(index, i, j, out, out.divided(self.scale))


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TilePlan:
    """All tiles of one output raster, row-major, with the parameters that made them."""

    shape: tuple[int, int]
    tile_px: int
    overlap_px: int
    margin_px: int
    scale: int
    row_starts: tuple[int, ...]
    col_starts: tuple[int, ...]
    tiles: TileGrid


def axis_starts(length: int, *, tile_px: int, overlap_px: int, multiple: int) -> list[int]:
    """Tile starts along one axis: stride ``tile - overlap`` (rounded down to ``multiple``),
    plus a last tile flush with the far edge.

    Args:
        length: axis length in pixels (>= 1).
        tile_px: tile length in pixels, a multiple of ``multiple``.
        overlap_px: requested overlap in pixels (0 <= overlap < tile); the real overlap is at
            least this, more for the snapped last tile.
        multiple: every start is a multiple of this (the scale, so LR windows stay whole).

    Returns:
        Sorted, unique starts; the first is 0 and the last is ``max(length - tile_px, 0)``.
    """
    if length <= tile_px:
        return [0]
    stride = max(multiple, (tile_px - overlap_px) // multiple * multiple)
    last = length - tile_px
    starts = list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)
    return starts


def plan_tiles(
    shape: tuple[int, int], *, tile_px: int, overlap_px: int, margin_px: int, scale: int
) -> TilePlan:
    """Cut an output raster of ``shape`` (height, width) into overlapping tiles.

    Only the tile starts are computed; ``plan.tiles`` makes each tile when it is asked for,
    so planning costs the same for any raster size.

    Args:
        shape: output (height, width) in pixels, multiples of ``scale``.
        tile_px: tile edge in output pixels, a multiple of ``scale``; a raster smaller than a
            tile gets one tile of the raster's size along that axis.
        overlap_px: overlap in output pixels, >= 2 * margin_px and < tile_px.
        margin_px: blend margin in output pixels (>= 0).
        scale: LR -> output factor (>= 1); tile starts are multiples of it.

    Raises:
        ValueError: inconsistent arguments (the CLI validates user options before this).
    """
    height, width = shape
    if height < 1 or width < 1 or height % scale or width % scale:
        raise ValueError(f"shape {shape} must be positive multiples of the scale {scale}")
    if tile_px < scale or tile_px % scale:
        raise ValueError(f"tile {tile_px} px is not a positive multiple of the scale {scale}")
    if not 2 * margin_px <= overlap_px < tile_px:
        raise ValueError(f"need 2 * margin ({margin_px}) <= overlap ({overlap_px}) < tile")
    rows = axis_starts(height, tile_px=tile_px, overlap_px=overlap_px, multiple=scale)
    cols = axis_starts(width, tile_px=tile_px, overlap_px=overlap_px, multiple=scale)
    return TilePlan(
        shape=(height, width),
        tile_px=tile_px,
        overlap_px=overlap_px,
        margin_px=margin_px,
        scale=scale,
        row_starts=tuple(rows),
        col_starts=tuple(cols),
        tiles=TileGrid((height, width), tile_px, scale, tuple(rows), tuple(cols)),
    )


def _axis_weights(
    start: int, size: int, length: int, *, overlap_px: int, margin_px: int
) -> npt.NDArray[np.float64]:
    """Weights along one axis of a tile: a function of the distance to its interior edges.

    ``w(d) = 0`` for ``d < margin``, ``0.5 - 0.5 cos(pi (d + 0.5 - margin) / r)`` for
    ``margin <= d < margin + r`` and 1 beyond, with ``r = overlap - 2 margin`` (a step when
    r = 0). Two neighbours at the nominal overlap sum to exactly 1 (w(d) + w(overlap-1-d) = 1).
    """
    position = np.arange(size, dtype=np.float64)
    inf = np.full(size, np.inf)
    to_first = position if start > 0 else inf
    to_last = (size - 1 - position) if start + size < length else inf
    distance = np.minimum(to_first, to_last)  # (size,) pixels to the nearest interior edge
    ramp = overlap_px - 2 * margin_px
    if ramp == 0:
        return (distance >= margin_px).astype(np.float64)
    phase = np.clip((distance + 0.5 - margin_px) / ramp, 0.0, 1.0)
    return np.asarray(0.5 - 0.5 * np.cos(math.pi * phase))


def blend_weights(tile: Tile, plan: TilePlan, rows: slice = slice(None)) -> npt.NDArray[np.float32]:
    """The (height, width) float32 blend weight of ``tile`` (separable: rows x columns), or
    only its ``rows`` (tile rows), each element the same as in the whole tile's weight."""
    height, width = plan.shape
    row_weights = _axis_weights(
        tile.out.row_off,
        tile.out.height,
        height,
        overlap_px=plan.overlap_px,
        margin_px=plan.margin_px,
    )
    cols = _axis_weights(
        tile.out.col_off,
        tile.out.width,
        width,
        overlap_px=plan.overlap_px,
        margin_px=plan.margin_px,
    )
    return np.outer(row_weights[rows], cols).astype(np.float32)  # (h, w)


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive groups of at most ``size`` items (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    iterator = iter(items)
    while group := list(itertools.islice(iterator, size)):
        yield group


def first_tile(plan: TilePlan, row: int) -> int:
    """Index of the first tile (row-major) that reaches output row ``row`` or below it.

    Every tile touching rows ``row`` and below has this index or a higher one, and no earlier
    tile touches them: the strips from ``row`` on are computed exactly from these tiles alone.
    ``len(plan.tiles)`` when ``row`` is the raster's height.
    """
    height = plan.shape[0]
    tile_rows = min(plan.tile_px, height)
    for i, start in enumerate(plan.row_starts):
        if start + tile_rows > row:
            return i * len(plan.col_starts)
    return len(plan.tiles)


@dataclasses.dataclass(frozen=True, slots=True)
class Strip:
    """Finished full-width output rows: ``values`` (C, rows, W) float32, ``valid`` (rows, W)."""

    row_off: int
    values: npt.NDArray[np.float32]
    valid: npt.NDArray[np.bool_]


class StripAccumulator:
    """Overlap-add of tiles into a buffer of output rows that streams out finished strips.

    Tiles must be added in plan order (row-major); ``add`` returns an iterator over the strips
    each tile finishes, computed one at a time as it is consumed, so a consumer that drops
    each strip before taking the next holds one strip's values at a time (24 MiB for 256
    rows of an 8192 px wide RGB output); take them all before the next ``add``. Rows above
    the next tile row can no longer change; they leave in strips of ``block_rows`` rows at
    offsets that are multiples of it (the last strip ends at the raster's bottom), so each
    output block is written exactly once and memory stays at about ``tile_px + block_rows``
    rows, whatever the raster height: 4 bytes per band and 1 byte of validity per pixel of
    them. The blend weights' sum is not stored: it depends on the plan alone, and is summed
    again per strip in plan order (the order ``add`` would have summed it in, so the division
    is bit for bit the same as with a stored sum).

    A resumed run starts at ``first_row``: tiles are added from ``first_tile(plan,
    first_row)`` on, and rows above ``first_row`` (which those tiles reach only in part) are
    dropped, never returned.

    Args:
        plan: the tile plan.
        bands: channels of every tile's values.
        block_rows: block height of the output file.
        first_row: first output row to return, a multiple of ``block_rows`` (or the height).
    """

    def __init__(self, plan: TilePlan, bands: int, *, block_rows: int, first_row: int = 0) -> None:
        if block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {block_rows}")
        if not 0 <= first_row <= plan.shape[0] or (
            first_row % block_rows and first_row != plan.shape[0]
        ):
            raise ValueError(f"first row {first_row} is not a block boundary of {plan.shape[0]}")
        self.plan = plan
        self.bands = bands
        self.block_rows = block_rows
        height, width = plan.shape
        rows = min(height, min(plan.tile_px, height) + block_rows)
        self._acc = np.zeros((bands, rows, width), dtype=np.float32)  # (C, rows, W)
        self._valid = np.zeros((rows, width), dtype=bool)  # (rows, W)
        self._first_row = first_row
        self._added = first_tile(plan, first_row)  # index of the next tile
        self._pending = False  # the strips the last tile finished are not all taken yet
        starts = plan.row_starts[self._added // len(plan.col_starts) :]
        # output row held in buffer row 0: a block boundary at or above the next tile
        self._base = starts[0] // block_rows * block_rows if starts else first_row

    def add(
        self, tile: Tile, values: npt.NDArray[np.floating], valid: npt.NDArray[np.bool_]
    ) -> Iterator[Strip]:
        """Accumulate one tile and return the strips it finished (usually none or one), lazily.

        Args:
            tile: the next tile of the plan.
            values: (C, h, w) the tile's output values.
            valid: (h, w) bool, False where the output is nodata.

        Returns:
            Finished strips, top to bottom; each row is returned exactly once over all calls.

        Raises:
            RuntimeError: the strips of the previous tile were not all taken.
        """
        if self._pending:
            raise RuntimeError("the strips of the previous tile were not all taken")
        if tile.index != self._added:
            raise ValueError(f"tile {tile.index} added out of order (expected {self._added})")
        win = tile.out
        if values.shape != (self.bands, win.height, win.width) or valid.shape != values.shape[1:]:
            raise ValueError(f"tile values {values.shape} / valid {valid.shape} do not fit {win}")
        top = win.row_off - self._base
        if top < 0 or top + win.height > self._valid.shape[0]:
            raise AssertionError(f"tile {win} outside the buffer (base row {self._base})")
        weight = blend_weights(tile, self.plan)  # (h, w)
        rows, cols = slice(top, top + win.height), slice(win.col_off, win.col_end)
        self._acc[:, rows, cols] += values.astype(np.float32) * weight
        self._valid[rows, cols] |= valid & (weight > 0)
        self._added += 1
        self._pending = True
        return self._pop_finished()

    def _pop_finished(self) -> Iterator[Strip]:
        """The rows that no remaining tile can change, as strips of ``block_rows`` rows."""
        height = self.plan.shape[0]
        tiles = self.plan.tiles
        final = height if self._added == len(tiles) else tiles[self._added].out.row_off
        end = final if final == height else final // self.block_rows * self.block_rows
        partial = min(end, self._first_row) - self._base
        if partial > 0:  # rows of a resumed run's earlier strips: not all their tiles were added
            self._shift(partial)
        count = end - self._base
        if count <= 0:
            self._pending = False
            return
        for top in range(0, count, self.block_rows):
            rows = slice(top, min(count, top + self.block_rows))
            # No local name holds the values (C, block_rows, W) or the weight sum (block_rows,
            # W) while the consumer has the strip: it frees them.
            yield Strip(
                self._base + top,
                self._acc[:, rows] / self._weight_sum(self._base + top, self._base + rows.stop),
                self._valid[rows].copy(),
            )
        self._shift(count)
        self._pending = False

    def _weight_sum(self, top: int, bottom: int) -> npt.NDArray[np.float32]:
        """(rows, W) sum of the tiles' blend weights over output rows ``top``..``bottom - 1``,
        added in plan order from zero, as ``add`` met the tiles."""
        wsum = np.zeros((bottom - top, self.plan.shape[1]), dtype=np.float32)
        for tile in self.plan.tiles[first_tile(self.plan, top) :]:
            win = tile.out
            if win.row_off >= bottom:
                break
            first, last = max(top, win.row_off), min(bottom, win.row_end)
            if first < last:
                rows = slice(first - win.row_off, last - win.row_off)
                wsum[first - top : last - top, win.col_off : win.col_end] += blend_weights(
                    tile, self.plan, rows
                )
        if not bool((wsum > 0).all()):
            row = int(np.argwhere(~(wsum > 0).all(axis=1))[0, 0]) + top
            raise AssertionError(f"output row {row} has pixels that no tile weights")
        return wsum

    def _shift(self, count: int) -> None:
        """Drop the first ``count`` buffer rows and zero the freed rows at the bottom.

        Rows move up in slabs of at most ``count`` rows, which never overlap their source:
        no temporary copy of the buffer (a whole copy doubled the peak memory of wide rasters).
        """
        rows = self._valid.shape[0]
        for buffer in (self._acc[:, :, :], self._valid[None]):
            for top in range(0, rows - count, count):
                end = min(top + count, rows - count)
                buffer[:, top:end] = buffer[:, top + count : end + count]
            buffer[:, max(0, rows - count) :] = 0
        self._base += count
