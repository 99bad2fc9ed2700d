"""Upscale under torchrun: which rank does what, and the messages between ranks.

``torchrun --nproc_per_node N [--nnodes M ...] -m refdiff_cli upscale ...`` starts one process
per rank with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set (training uses the same
variables, ``train_plan.resolve``). A batch of several jobs is dealt out round-robin, each rank
running its jobs as a single process would; one job is shared by tile rows: rank ``r`` computes
tile rows ``r, r + N, ...`` and sends them to rank 0, which blends them in plan order with its
own and alone writes the output. Every tile is computed exactly as a single process computes
it (noise is keyed by output pixel), and blended in the same order, so the bytes are the same.

Messages go through gloo, on CPUs and GPUs alike: tiles are blended on the host anyway. A
GPU rank works on ``cuda:LOCAL_RANK``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist

from refdiff_cli.data.tiling import Tile, TilePlan

T = TypeVar("T")
#: Longest one rank waits for another in one message: a rank whose share of a batch is done
#: waits for the others' (hours, on CPUs), rank 0 for another rank's tile row. torchrun stops
#: every rank when one fails, so the limit only ends hangs outside torchrun.
WAIT_LIMIT = datetime.timedelta(days=2)
#: A computed tile as ``pipeline.sr_tiles`` yields it: (tile, values (C, h, w), valid (h, w)).
Result = tuple[Tile, npt.NDArray[np.floating], npt.NDArray[np.bool_]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class World:
    """This process's place among the ranks of a torchrun (1 rank without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> World:
        """The world torchrun describes in ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``."""
        return cls(
            rank=int(os.environ.get("RANK", "0")),
            size=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )


#: The world of a process not started by torchrun.
SINGLE = World()


@contextlib.contextmanager
def process_group(world: World) -> Iterator[None]:
    """Join the ranks (gloo) for the block and pin a GPU rank to ``cuda:LOCAL_RANK``; nothing
    for a single process."""
    if world.size == 1:
        yield
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank % torch.cuda.device_count())
    dist.init_process_group(backend="gloo", timeout=WAIT_LIMIT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def my_share(items: Sequence[T], world: World) -> list[T]:
    """The items this rank runs: every ``size``-th from its rank on."""
    return list(items[world.rank :: world.size])


def gathered(mine: list[T], count: int, world: World) -> list[T] | None:
    """Rank 0: the results of every rank's ``my_share`` back in item order (``count`` items);
    the other ranks get None."""
    shares: list[Any] | None = [None] * world.size if world.rank == 0 else None
    dist.gather_object(mine, shares, dst=0)
    if shares is None:
        return None
    return [shares[i % world.size][i // world.size] for i in range(count)]


class TileRows:
    """One output shared by tile rows: rank ``r`` computes rows ``r, r + N, ...``; rank 0
    receives the others' in plan order and writes.

    Args:
        world: the ranks (more than one).
    """

    def __init__(self, world: World) -> None:
        self.world = world

    @property
    def writer(self) -> bool:
        """Whether this rank blends and writes the output (rank 0)."""
        return self.world.rank == 0

    def start_row(self, first_row: int) -> int:
        """Rank 0's first output row to compute (after a resume), sent to every rank."""
        value = torch.tensor([first_row], dtype=torch.int64)
        dist.broadcast(value, src=0)
        return int(value.item())

    def mine(self, plan: TilePlan, start: int) -> Iterator[int]:
        """Indices of this rank's tiles from tile ``start`` (the first of a tile row) on."""
        columns = len(plan.col_starts)
        for row in range(start // columns, len(plan.row_starts)):
            if row % self.world.size == self.world.rank:
                yield from range(row * columns, (row + 1) * columns)

    def send(self, plan: TilePlan, results: Iterable[list[Result]]) -> None:
        """Send this rank's computed tiles to rank 0, one tile row at a time."""
        columns = len(plan.col_starts)
        pending: list[Result] = []
        for group in results:
            pending += group
            while len(pending) >= columns:
                row, pending = pending[:columns], pending[columns:]
                values = np.stack([v for _, v, _ in row]).astype(np.float32)  # (n, C, h, w)
                valid = np.stack([m for _, _, m in row]).astype(np.uint8)  # (n, h, w)
                dist.send(torch.from_numpy(values), dst=0)
                dist.send(torch.from_numpy(valid), dst=0)

    def gather(
        self, plan: TilePlan, start: int, results: Iterable[list[Result]], *, channels: int
    ) -> Iterator[list[Result]]:
        """Rank 0: every tile from tile ``start`` on, in plan order, one tile row per list:
        its own from ``results``, the others' as they send them."""
        columns = len(plan.col_starts)
        own, pending = iter(results), deque[Result]()
        for row in range(start // columns, len(plan.row_starts)):
            tiles = [plan.tiles[i] for i in range(row * columns, (row + 1) * columns)]
            owner = row % self.world.size
            if owner == 0:
                while len(pending) < columns:
                    pending.extend(next(own))
                yield [pending.popleft() for _ in tiles]
                continue
            height, width = tiles[0].out.height, tiles[0].out.width
            values = torch.empty((columns, channels, height, width), dtype=torch.float32)
            valid = torch.empty((columns, height, width), dtype=torch.uint8)
            dist.recv(values, src=owner)
            dist.recv(valid, src=owner)
            yield [
                (tile, v, m.astype(bool))
                for tile, v, m in zip(tiles, values.numpy(), valid.numpy(), strict=True)
            ]
