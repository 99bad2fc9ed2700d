"""Progress events that tools emit and only the CLI renders (stdlib only)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Progress:
    """``done`` of ``total`` units of ``task`` are finished (e.g. tiles of one output raster)."""

    task: str
    done: int
    total: int
    unit: str = "tile"


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Started:
    """A new unit of work (an item of a batch, an image of an evaluation) begins."""

    task: str
    total: int
    unit: str = "tile"


Event = Progress | Started
EventHandler = Callable[[Event], None]


def ignore_event(event: Event) -> None:
    """The default handler: tools run silently unless the caller renders progress."""
