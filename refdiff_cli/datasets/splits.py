"""Train/validation split of source images by name: stable across runs, processes and machines."""

from __future__ import annotations

import hashlib
from typing import Literal

from refdiff_cli.errors import ConfigError

Split = Literal["train", "val"]

SPLIT_PREFIXES: tuple[tuple[str, Split], ...] = (
    ("train_", "train"),
    ("val_", "val"),
    ("test_", "val"),
)


def split_of(name: str, *, val_fraction: float, seed: int) -> Split:
    """The train/validation split of a source image, stable across runs and machines.

    A name starting with ``train_`` is train, one starting with ``val_`` or ``test_`` is
    validation (LEVIR-CD and EGY-BCD names carry their official split; test images are held
    out of training too). Any other name is validation when the first 8 bytes of
    ``sha256(f"{seed}:{name}")``, read as a fraction of 2**64, fall below ``val_fraction``.
    Python's ``hash()`` is never used (it is salted per process). Split by the *source* image
    name so that all chips of one image land in the same split.

    Args:
        name: the source image name (file stem); ``train_``/``val_``/``test_`` prefixes
            (any case) decide on their own.
        val_fraction: share of un-prefixed names sent to validation, in [0, 1].
        seed: split seed; another seed gives another, equally stable split.

    Returns:
        "train" or "val".

    Raises:
        ConfigError: ``val_fraction`` outside [0, 1].
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise ConfigError(f"--val-fraction {val_fraction}: use a value in [0, 1]")
    lowered = name.lower()
    for prefix, split in SPLIT_PREFIXES:
        if lowered.startswith(prefix):
            return split
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2.0**64  # uniform in [0, 1)
    return "val" if fraction < val_fraction else "train"
