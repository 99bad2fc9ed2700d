"""Writing training chips: shard folders of ``.npy`` files, then ``manifest.json`` last.

The format (see ``data/dataset.py``, which reads it): arrays in model space (image bands in
[-1, 1], mask in [0, 1]); a folder without a manifest is not a chips folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from refdiff_cli import __version__
from refdiff_cli.errors import OutputError
from refdiff_cli.files import atomic_path, fsync_path

logger = logging.getLogger(__name__)

FORMAT = "refdiff-chips"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
#: Shard folder names: split, dash, five-digit index.
SHARD_RE = re.compile(r"^(train|val)-(\d{5})$")
PREPARE_HINT = "re-create the chips folder with `refdiff prepare`"


class _HashingWriter:
    """File-like wrapper that hashes every byte written through it."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.stream.write(data)


@dataclasses.dataclass(slots=True)
class _Buffer:
    """Preallocated arrays of one shard being filled (first ``count`` rows are used)."""

    arrays: dict[str, npt.NDArray[Any]]
    count: int = 0


class ShardWriter:
    """Write training chips into shard folders, then the manifest (see the module docstring).

    Args:
        root: the chips folder (created if missing).
        chip_px: chip edge S in HR pixels; a multiple of ``lr_scale`` when that is given.
        bands: names of the image bands, in order (C = len(bands)).
        lr_scale: scale of the stored real LR images, or None when the chips carry no LR.
        shard_size: chips per shard file (the last shard of a split may hold fewer).
        overwrite: replace an existing chips folder (its manifest goes first, so an
            interrupted rewrite never leaves a folder that looks complete).

    Raises:
        OutputError: ``root`` already holds chips (a manifest or shard folders) and
            ``overwrite`` is False.
        ValueError: invalid ``chip_px``, ``bands``, ``lr_scale`` or ``shard_size``.
    """

    def __init__(
        self,
        root: Path,
        *,
        chip_px: int,
        bands: Sequence[str],
        lr_scale: int | None = None,
        shard_size: int = 512,
        overwrite: bool = False,
    ) -> None:
        if chip_px < 1 or shard_size < 1 or not bands:
            raise ValueError(f"need chip_px >= 1, shard_size >= 1 and bands, got {chip_px=}")
        if lr_scale is not None and (lr_scale < 1 or chip_px % lr_scale):
            raise ValueError(f"chip_px {chip_px} is not a multiple of lr_scale {lr_scale}")
        self.root = Path(root)
        self.chip_px = chip_px
        self.bands = tuple(bands)
        self.lr_scale = lr_scale
        self.shard_size = shard_size
        self._buffers: dict[str, _Buffer] = {}
        self._next_index = dict.fromkeys(SPLITS, 0)
        self._shards: list[dict[str, Any]] = []
        self._max_source = -1
        self._finished = False
        self._prepare_root(overwrite)

    def _prepare_root(self, overwrite: bool) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        manifest = self.root / MANIFEST
        old = [p for p in self.root.iterdir() if SHARD_RE.match(p.name) and p.is_dir()]
        if (manifest.exists() or old) and not overwrite:
            what = "a manifest.json" if manifest.exists() else "shard folders but no manifest"
            raise OutputError(
                f"chips folder {self.root} already has {what}",
                hint="choose a new folder or pass --overwrite to replace it",
            )
        manifest.unlink(missing_ok=True)
        for path in old:
            shutil.rmtree(path)
        for path in self.root.glob(".tmp-*"):
            shutil.rmtree(path, ignore_errors=True)

    def _new_buffer(self) -> _Buffer:
        n, c, s = self.shard_size, len(self.bands), self.chip_px
        arrays: dict[str, npt.NDArray[Any]] = {
            "hr": np.empty((n, c, s, s), np.float16),  # (N, C, S, S)
            "ref": np.empty((n, c, s, s), np.float16),  # (N, C, S, S)
            "mask": np.empty((n, 1, s, s), np.float16),  # (N, 1, S, S)
            "hr_valid": np.empty((n, 1, s, s), np.bool_),  # (N, 1, S, S)
            "ref_valid": np.empty((n, 1, s, s), np.bool_),  # (N, 1, S, S)
            "source": np.empty((n,), np.int32),  # (N,)
            "origin": np.empty((n, 2), np.int32),  # (N, 2) row, col
        }
        if self.lr_scale is not None:
            t = s // self.lr_scale
            arrays["lr"] = np.empty((n, c, t, t), np.float16)  # (N, C, S/scale, S/scale)
        return _Buffer(arrays=arrays)

    def add(
        self,
        split: str,
        *,
        source: int,
        origin: tuple[int, int],
        hr: npt.ArrayLike,
        ref: npt.ArrayLike,
        mask: npt.ArrayLike,
        hr_valid: npt.ArrayLike,
        ref_valid: npt.ArrayLike,
        lr: npt.ArrayLike | None = None,
    ) -> None:
        """Add one chip; a full shard is written to disk at once.

        Args:
            split: "train" or "val".
            source: index of the chip's source image in the ``sources`` given to ``finish``.
            origin: (row, col) of the chip's top-left pixel in its source image, >= 0.
            hr, ref: (C, S, S) floating, finite, in [-1, 1] (stored as float16).
            mask: (1, S, S) floating, finite, in [0, 1].
            hr_valid, ref_valid: (1, S, S) bool; False where HR (or Ref/mask) has no data.
            lr: (C, S/lr_scale, S/lr_scale) in [-1, 1]; required exactly when ``lr_scale`` is set.

        Raises:
            ValueError: wrong split, shape, dtype or value range, or ``finish`` was called.
        """
        if self._finished:
            raise ValueError("ShardWriter.add after finish")
        if split not in SPLITS:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if (lr is None) != (self.lr_scale is None):
            raise ValueError("lr is required exactly when the writer has an lr_scale")
        c, s = len(self.bands), self.chip_px
        row, col = (int(v) for v in origin)
        if int(source) < 0 or row < 0 or col < 0:
            raise ValueError(f"source {source} and origin {origin} must be >= 0")
        values = {
            "hr": _checked_float("hr", hr, (c, s, s), -1.0, 1.0),
            "ref": _checked_float("ref", ref, (c, s, s), -1.0, 1.0),
            "mask": _checked_float("mask", mask, (1, s, s), 0.0, 1.0),
            "hr_valid": _checked_bool("hr_valid", hr_valid, (1, s, s)),
            "ref_valid": _checked_bool("ref_valid", ref_valid, (1, s, s)),
            "source": np.int32(source),
            "origin": np.array([row, col], np.int32),
        }
        if lr is not None and self.lr_scale is not None:
            t = s // self.lr_scale
            values["lr"] = _checked_float("lr", lr, (c, t, t), -1.0, 1.0)
        buffer = self._buffers.get(split) or self._buffers.setdefault(split, self._new_buffer())
        for name, value in values.items():
            buffer.arrays[name][buffer.count] = value
        buffer.count += 1
        self._max_source = max(self._max_source, int(source))
        if buffer.count == self.shard_size:
            self._flush(split)

    def _flush(self, split: str) -> None:
        buffer = self._buffers.pop(split, None)
        if buffer is None or buffer.count == 0:
            return
        index = self._next_index[split]
        self._next_index[split] += 1
        name = f"{split}-{index:05d}"
        tmp = self.root / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        files: dict[str, str] = {}
        try:
            for key, array in buffer.arrays.items():
                with (tmp / f"{key}.npy").open("wb") as stream:
                    writer = _HashingWriter(stream)
                    np.lib.format.write_array(
                        writer, np.ascontiguousarray(array[: buffer.count]), allow_pickle=False
                    )
                    stream.flush()
                    os.fsync(stream.fileno())
                files[f"{key}.npy"] = writer.digest.hexdigest()
            fsync_path(tmp, directory=True)
            tmp.rename(self.root / name)
            fsync_path(self.root, directory=True)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise OutputError(f"cannot write shard {self.root / name}: {exc}") from exc
        self._shards.append({"split": split, "dir": name, "count": buffer.count, "files": files})
        logger.debug("wrote shard %s (%d chips)", name, buffer.count)

    def finish(
        self,
        *,
        sources: Sequence[dict[str, Any]],
        normalization: dict[str, Any],
        mask_encoding: dict[str, Any],
        options: dict[str, Any],
    ) -> Path:
        """Write the last partial shards, then ``manifest.json`` atomically; return its path.

        Args:
            sources: one free-form JSON-ready dict per source image (name, split, paths,
                sha256, crs, pixel size, band stats, licence...); chips refer to them by index.
            normalization: how raw values were mapped to model space (goes into the model card).
            mask_encoding: the ``MaskEncoding`` dict of the mask channel.
            options: the options ``prepare`` ran with (provenance).

        Raises:
            ValueError: a chip refers to a source index beyond ``sources``, or a dict holds
                values JSON cannot represent (NaN included).
            OutputError: the manifest cannot be written.
        """
        if self._finished:
            raise ValueError("ShardWriter.finish called twice")
        if self._max_source >= len(sources):
            raise ValueError(f"chips refer to source {self._max_source}, only {len(sources)} given")
        for split in SPLITS:
            self._flush(split)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "chip_px": self.chip_px,
            "bands": list(self.bands),
            "lr_scale": self.lr_scale,
            "normalization": normalization,
            "mask_encoding": mask_encoding,
            "sources": list(sources),
            "shards": self._shards,
            "refdiff_version": __version__,
            "options": options,
        }
        text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"
        path = self.root / MANIFEST
        try:
            with atomic_path(path) as temp:
                temp.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc}") from exc
        self._finished = True
        return path


def _checked_float(
    name: str, value: npt.ArrayLike, shape: tuple[int, ...], low: float, high: float
) -> npt.NDArray[np.float16]:
    array = np.asarray(value)
    if array.shape != shape or not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name} must be floating {shape}, got {array.dtype} {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or inf; fill invalid pixels (e.g. with 0)")
    if array.size and (array.min() < low or array.max() > high):
        raise ValueError(
            f"{name} values [{array.min()}, {array.max()}] leave [{low}, {high}] (model space)"
        )
    return array.astype(np.float16)


def _checked_bool(name: str, value: npt.ArrayLike, shape: tuple[int, ...]) -> npt.NDArray[Any]:
    array = np.asarray(value)
    if array.shape != shape or array.dtype != np.bool_:
        raise ValueError(f"{name} must be bool {shape}, got {array.dtype} {array.shape}")
    return array
