"""Tile plans, blend weights and the strip accumulator: coverage, snapping, seam-free blends."""

from __future__ import annotations

import itertools
import time
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from refdiff_cli.data.resample import upsample
from refdiff_cli.data.tiling import (
    PixelWindow,
    StripAccumulator,
    Tile,
    TilePlan,
    axis_starts,
    batches,
    blend_weights,
    first_tile,
    plan_tiles,
)


@given(
    length=st.integers(1, 5000),
    tile=st.integers(8, 1024),
    overlap_fraction=st.floats(0, 0.5),
    multiple=st.sampled_from([1, 2, 8]),
)
def test_axis_starts_cover_the_axis_without_gaps(
    length: int, tile: int, overlap_fraction: float, multiple: int
) -> None:
    tile = max(multiple, tile // multiple * multiple)
    length = max(multiple, length // multiple * multiple)
    overlap = int(overlap_fraction * tile)
    starts = axis_starts(length, tile_px=tile, overlap_px=overlap, multiple=multiple)
    assert starts[0] == 0
    assert starts == sorted(set(starts))
    assert starts[-1] == max(length - tile, 0)  # last tile flush with the far edge
    assert all(s % multiple == 0 for s in starts)
    stride = max(multiple, (tile - overlap) // multiple * multiple)
    assert all(b - a <= stride for a, b in itertools.pairwise(starts))
    assert min(length, starts[-1] + tile) == length  # covered to the end


def plan_strategy() -> st.SearchStrategy[TilePlan]:
    @st.composite
    def build(draw: st.DrawFn) -> TilePlan:
        scale = draw(st.sampled_from([1, 2, 4, 8]))
        tile = draw(st.integers(2, 24)) * scale
        margin = draw(st.integers(0, tile // 6))
        overlap = draw(st.integers(2 * margin, max(2 * margin, tile // 2)))
        if overlap >= tile:
            overlap = 2 * margin
        rows = draw(st.integers(1, 40)) * scale
        cols = draw(st.integers(1, 40)) * scale
        return plan_tiles(
            (rows, cols), tile_px=tile, overlap_px=overlap, margin_px=margin, scale=scale
        )

    return build()


@given(plan=plan_strategy())
def test_every_pixel_is_weighted_and_tiles_lie_inside(plan: TilePlan) -> None:
    height, width = plan.shape
    wsum = np.zeros(plan.shape)
    for tile in plan.tiles:
        win = tile.out
        assert win.row_off >= 0 and win.row_end <= height
        assert win.col_off >= 0 and win.col_end <= width
        assert tile.lr == PixelWindow(
            win.row_off // plan.scale,
            win.col_off // plan.scale,
            win.height // plan.scale,
            win.width // plan.scale,
        )
        weight = blend_weights(tile, plan)
        assert weight.shape == (win.height, win.width)
        assert (weight >= 0).all() and (weight <= 1).all()
        wsum[win.row_off : win.row_end, win.col_off : win.col_end] += weight
    assert (wsum > 0).all()


def test_weights_are_zero_near_interior_edges_and_untapered_at_raster_borders() -> None:
    plan = plan_tiles((96, 96), tile_px=64, overlap_px=32, margin_px=6, scale=1)
    first, last = plan.tiles[0], plan.tiles[-1]
    w0 = blend_weights(first, plan)
    assert (w0[:, -6:] == 0).all() and (w0[-6:, :] == 0).all()  # interior edges: trimmed
    assert w0[0, 0] == 1 and (w0[:10, 0] == 1).all()  # raster border: not tapered
    w1 = blend_weights(last, plan)
    assert (w1[:6, :] == 0).all() and w1[-1, -1] == 1


def test_neighbours_at_the_nominal_overlap_sum_to_one() -> None:
    plan = plan_tiles((8, 200), tile_px=64, overlap_px=24, margin_px=4, scale=8)
    total = np.zeros(200)
    for tile in plan.tiles[:-1]:  # the snapped last tile overlaps more than nominal
        total[tile.out.col_off : tile.out.col_end] += blend_weights(tile, plan)[0]
    interior = slice(0, plan.col_starts[-2] + 40)
    np.testing.assert_allclose(total[interior], 1.0, atol=1e-6)


def test_raster_smaller_than_a_tile_is_one_tile_of_its_own_size() -> None:
    plan = plan_tiles((8, 104), tile_px=512, overlap_px=64, margin_px=16, scale=8)
    assert len(plan.tiles) == 1
    assert plan.tiles[0].out == PixelWindow(0, 0, 8, 104)
    assert (blend_weights(plan.tiles[0], plan) == 1).all()


@pytest.mark.parametrize(
    ("shape", "tile", "overlap", "margin", "scale"),
    [((100, 60), 64, 32, 6, 1), ((17, 5), 8, 0, 0, 1), ((40, 40), 16, 8, 4, 8)],
)
def test_bad_plans_are_refused(
    shape: tuple[int, int], tile: int, overlap: int, margin: int, scale: int
) -> None:
    if scale == 8:  # shape not a multiple of the scale
        shape = (41, 40)
    elif overlap == 0:  # margin larger than half the overlap
        margin = 1
    else:  # overlap not below the tile
        overlap = tile
    with pytest.raises(ValueError):  # noqa: PT011 - several messages
        plan_tiles(shape, tile_px=tile, overlap_px=overlap, margin_px=margin, scale=scale)


def run_tiled(
    image: np.ndarray,
    engine: object,
    plan: TilePlan,
    *,
    batch_size: int,
    block_rows: int,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Tile ``image`` (C, h, w) LR through ``engine``, return the assembled output and strips."""
    bands = image.shape[0]
    accumulator = StripAccumulator(plan, bands, block_rows=block_rows)
    out = np.full((bands, *plan.shape), np.nan, dtype=np.float32)
    valid = np.zeros(plan.shape, dtype=bool)
    offsets = []
    for group in batches(plan.tiles, batch_size):
        lr = np.stack(
            [image[:, t.lr.row_off : t.lr.row_end, t.lr.col_off : t.lr.col_end] for t in group]
        )
        result = engine(torch.from_numpy(lr), [(t.out.row_off, t.out.col_off) for t in group])
        finished = []
        for tile, values in zip(group, result.numpy(), strict=True):
            finished += accumulator.add(tile, values, np.ones(values.shape[1:], dtype=bool))
        for strip in finished:
            rows = strip.values.shape[1]
            assert np.isnan(out[:, strip.row_off : strip.row_off + rows]).all(), "written twice"
            out[:, strip.row_off : strip.row_off + rows] = strip.values
            valid[strip.row_off : strip.row_off + rows] = strip.valid
            offsets.append(strip.row_off)
    return out, valid, offsets


def smooth_field_engine(scale: int):  # type: ignore[no-untyped-def]
    """An engine whose output is a known smooth function of the absolute output pixel."""

    def engine(lr: torch.Tensor, origins: list[tuple[int, int]]) -> torch.Tensor:
        b, c, h, w = lr.shape
        out = torch.empty(b, c, h * scale, w * scale)
        for i, (row, col) in enumerate(origins):
            y = torch.arange(row, row + h * scale, dtype=torch.float64)[:, None]
            x = torch.arange(col, col + w * scale, dtype=torch.float64)[None, :]
            for band in range(c):
                out[i, band] = (torch.sin(0.013 * x + band) * torch.cos(0.021 * y)).float()
        return out

    return engine


def bicubic_engine(scale: int):  # type: ignore[no-untyped-def]
    """Bicubic upsampling: exact away from 2 * scale output pixels of a tile edge."""

    def engine(lr: torch.Tensor, origins: list[tuple[int, int]]) -> torch.Tensor:
        return upsample(lr.double(), scale, clamp=False).float()

    return engine


@given(
    scale=st.sampled_from([2, 4, 8]),
    tile_units=st.integers(4, 12),
    overlap_units=st.integers(0, 4),
    rows=st.integers(1, 30),
    cols=st.integers(1, 30),
    batch_size=st.sampled_from([1, 3, 8]),
    block_rows=st.sampled_from([16, 32, 256]),
    which=st.sampled_from(["field", "bicubic"]),
)
def test_tiled_equals_single_pass(
    scale: int,
    tile_units: int,
    overlap_units: int,
    rows: int,
    cols: int,
    batch_size: int,
    block_rows: int,
    which: str,
) -> None:
    """Seam-free: the tiled result equals the untiled one (acceptance of the foundation)."""
    margin = 2 * scale  # the bicubic kernel's reach in output pixels
    tile = tile_units * scale
    overlap = 2 * margin + overlap_units * scale
    assume(overlap < tile)
    rng = np.random.default_rng(rows * 31 + cols)
    image = rng.uniform(-1, 1, size=(2, rows, cols)).astype(np.float32)
    engine = smooth_field_engine(scale) if which == "field" else bicubic_engine(scale)
    plan = plan_tiles(
        (rows * scale, cols * scale),
        tile_px=tile,
        overlap_px=overlap,
        margin_px=margin,
        scale=scale,
    )
    tiled, valid, offsets = run_tiled(
        image, engine, plan, batch_size=batch_size, block_rows=block_rows
    )
    whole = engine(torch.from_numpy(image[None]), [(0, 0)])[0].numpy()
    np.testing.assert_allclose(tiled, whole, atol=1e-5, rtol=0)
    assert valid.all()
    assert offsets == sorted(offsets)
    assert all(o % block_rows == 0 for o in offsets)
    assert offsets == list(range(0, rows * scale, block_rows))  # one strip per block row


def test_accumulator_memory_does_not_grow_with_the_raster() -> None:
    small = plan_tiles((512, 256), tile_px=128, overlap_px=32, margin_px=8, scale=8)
    tall = plan_tiles((8192, 256), tile_px=128, overlap_px=32, margin_px=8, scale=8)
    a = StripAccumulator(small, 3, block_rows=64)
    b = StripAccumulator(tall, 3, block_rows=64)
    assert a._acc.nbytes == b._acc.nbytes == 3 * (128 + 64) * 256 * 4


def test_tiles_must_come_in_plan_order() -> None:
    plan = plan_tiles((64, 64), tile_px=32, overlap_px=16, margin_px=4, scale=1)
    accumulator = StripAccumulator(plan, 1, block_rows=16)
    second = plan.tiles[1]
    with pytest.raises(ValueError, match="out of order"):
        accumulator.add(second, np.zeros((1, 32, 32), np.float32), np.ones((32, 32), bool))


def test_the_next_tile_waits_until_the_finished_strips_are_taken() -> None:
    """Strips are computed as they are taken; adding on before that would lose them."""
    plan = plan_tiles((64, 32), tile_px=32, overlap_px=16, margin_px=4, scale=1)
    accumulator = StripAccumulator(plan, 1, block_rows=16)
    ones = np.ones((1, 32, 32), np.float32), np.ones((32, 32), bool)
    strips = accumulator.add(plan.tiles[0], *ones)
    with pytest.raises(RuntimeError, match="not all taken"):
        accumulator.add(plan.tiles[1], *ones)
    assert [strip.row_off for strip in strips] == [0]
    assert [strip.row_off for strip in accumulator.add(plan.tiles[1], *ones)] == [16]


@given(plan=plan_strategy())
def test_lazy_tiles_are_the_row_major_grid_of_the_starts(plan: TilePlan) -> None:
    height, width = plan.shape
    expected = []
    for i, row in enumerate(plan.row_starts):
        for j, col in enumerate(plan.col_starts):
            out = PixelWindow(row, col, min(plan.tile_px, height), min(plan.tile_px, width))
            expected.append(Tile(len(expected), i, j, out, out.divided(plan.scale)))
    assert list(plan.tiles) == expected
    assert len(plan.tiles) == len(expected)
    assert [plan.tiles[i] for i in range(len(expected))] == expected
    assert plan.tiles[-1] == expected[-1]
    assert plan.tiles[1:4] == expected[1:4]
    assert [t for group in batches(plan.tiles, 3) for t in group] == expected
    with pytest.raises(IndexError):
        plan.tiles[len(expected)]


def test_a_plan_of_a_huge_raster_is_made_at_once() -> None:
    """Issue 9, item 3: a 10^6 x 10^6 LR at x8 is 3.2 * 10^8 tiles; the plan holds only starts."""
    tracemalloc.start()
    try:
        started = time.perf_counter()
        plan = plan_tiles((8 * 10**6, 8 * 10**6), tile_px=512, overlap_px=64, margin_px=16, scale=8)
        last = plan.tiles[-1]
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(plan.tiles) == len(plan.row_starts) ** 2 == 17_857**2
    assert last.out == PixelWindow(8 * 10**6 - 512, 8 * 10**6 - 512, 512, 512)
    assert seconds < 5
    assert peak < 20 * 2**20, f"planning took {peak / 2**20:.0f} MiB"


@given(plan=plan_strategy(), block_rows=st.sampled_from([1, 8, 16]), data=st.data())
def test_a_resumed_accumulator_yields_the_same_strips_bit_for_bit(
    plan: TilePlan, block_rows: int, data: st.DataObject
) -> None:
    """Issue 11: from any block boundary on, the tiles from ``first_tile`` give the full run's
    strips exactly (random tile values: any engine), and nothing above the boundary."""
    height = plan.shape[0]
    first_row = data.draw(st.sampled_from([*range(0, height, block_rows), height]))
    rng = np.random.default_rng(0)
    values = [
        rng.normal(size=(2, t.out.height, t.out.width)).astype(np.float32) for t in plan.tiles
    ]
    valid = [np.ones(v.shape[1:], dtype=bool) for v in values]

    def strips(start_row: int) -> dict[int, np.ndarray]:
        accumulator = StripAccumulator(plan, 2, block_rows=block_rows, first_row=start_row)
        found = {}
        for tile in plan.tiles[first_tile(plan, start_row) :]:
            for strip in accumulator.add(tile, values[tile.index], valid[tile.index]):
                found[strip.row_off] = strip.values
        return found

    full, resumed = strips(0), strips(first_row)
    assert sorted(resumed) == [row for row in sorted(full) if row >= first_row]
    for row, strip in resumed.items():
        assert np.array_equal(strip, full[row])
    first = first_tile(plan, first_row)
    earlier = plan.tiles[:first]
    assert all(t.out.row_end <= first_row for t in earlier)  # no skipped tile reaches the rows
