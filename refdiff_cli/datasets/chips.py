"""Reading training chips: memory-mapped shards and random aligned, dihedrally transformed crops.

A chips folder (written by ``data/shards.py``) holds ``manifest.json`` and shard folders
``<split>-<k:05d>/`` of ``.npy`` files, all in model space (image bands in [-1, 1], mask in
[0, 1]). Pixels without a usable reference *or* mask value are stored as ``ref_valid = False``;
training conditions them on LR alone, as inference does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from refdiff_cli.datasets.shards import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    PREPARE_HINT,
    SHARD_RE,
    SPLITS,
    ShardWriter,
)
from refdiff_cli.errors import InputError
from refdiff_cli.files import file_sha256

__all__ = ["Chip", "ChipDataset", "ShardWriter", "TrainBatch", "dihedral", "make_batch"]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Chip:
    """One chip as stored (read-only memory-mapped views).

    Attributes:
        hr, ref: (C, S, S) float16 in [-1, 1].
        mask: (1, S, S) float16 in [0, 1].
        hr_valid, ref_valid: (1, S, S) bool.
        lr: (C, S/lr_scale, S/lr_scale) float16, or None.
        source: index into the manifest's sources.
        origin: (row, col) of the chip in its source image, pixels.
    """

    hr: npt.NDArray[np.float16]
    ref: npt.NDArray[np.float16]
    mask: npt.NDArray[np.float16]
    hr_valid: npt.NDArray[np.bool_]
    ref_valid: npt.NDArray[np.bool_]
    lr: npt.NDArray[np.float16] | None
    source: int
    origin: tuple[int, int]


class ChipDataset:
    """Read-only view of one split of a chips folder; arrays are memory-mapped, never cached.

    Args:
        root: the chips folder.
        split: "train" or "val".
        verify: also check the sha256 of every shard file of the split (reads them fully).

    Raises:
        InputError: missing or invalid manifest, unknown format version, missing, truncated,
            mis-shaped or (with ``verify``) modified shard files; the message names the file.
    """

    def __init__(self, root: Path, split: str, *, verify: bool = False) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.root = Path(root)
        self.split = split
        path = self.root / MANIFEST
        try:
            raw = path.read_bytes()
        except FileNotFoundError as exc:
            raise InputError(
                f"{path} not found: {self.root} is not a chips folder (or its prepare did not "
                "finish)",
                hint=PREPARE_HINT,
            ) from exc
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror}") from exc
        self.fingerprint = hashlib.sha256(raw).hexdigest()
        self.manifest = _parse_manifest(raw, path)
        self.chip_px = int(self.manifest["chip_px"])
        self.bands: tuple[str, ...] = tuple(self.manifest["bands"])
        scale = self.manifest["lr_scale"]
        self.lr_scale: int | None = None if scale is None else int(scale)
        self._shards: list[dict[str, npt.NDArray[Any]]] = []
        self._starts: list[int] = []
        total = 0
        for shard in self.manifest["shards"]:
            if shard["split"] != split:
                continue
            self._starts.append(total)
            self._shards.append(self._open_shard(shard, verify))
            total += int(shard["count"])
        self._len = total

    @property
    def sources(self) -> list[dict[str, Any]]:
        """The manifest's per-source dicts (chips refer to them by index)."""
        sources: list[dict[str, Any]] = self.manifest["sources"]
        return sources

    def _open_shard(self, shard: dict[str, Any], verify: bool) -> dict[str, npt.NDArray[Any]]:
        folder = self.root / str(shard["dir"])
        n, c, s = int(shard["count"]), len(self.bands), self.chip_px
        expected: dict[str, tuple[tuple[int, ...], Any]] = {
            "hr": ((n, c, s, s), np.float16),
            "ref": ((n, c, s, s), np.float16),
            "mask": ((n, 1, s, s), np.float16),
            "hr_valid": ((n, 1, s, s), np.bool_),
            "ref_valid": ((n, 1, s, s), np.bool_),
            "source": ((n,), np.int32),
            "origin": ((n, 2), np.int32),
        }
        if self.lr_scale is not None:
            t = s // self.lr_scale
            expected["lr"] = ((n, c, t, t), np.float16)
        arrays: dict[str, npt.NDArray[Any]] = {}
        for key, (shape, dtype) in expected.items():
            file = folder / f"{key}.npy"
            if not file.is_file():
                raise InputError(f"shard file {file} is missing", hint=PREPARE_HINT)
            if verify and file_sha256(file) != shard["files"].get(file.name):
                raise InputError(f"shard file {file} does not match its sha256", hint=PREPARE_HINT)
            try:
                array = np.load(file, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise InputError(f"shard file {file} is truncated or invalid: {exc}") from exc
            if array.shape != shape or array.dtype != dtype:
                raise InputError(
                    f"shard file {file} holds {array.dtype} {array.shape}, the manifest "
                    f"implies {np.dtype(dtype)} {shape}",
                    hint=PREPARE_HINT,
                )
            arrays[key] = array
        return arrays

    def __len__(self) -> int:
        return self._len

    def chip(self, index: int) -> Chip:
        """Return chip ``index`` (0 <= index < len) of the split."""
        if not 0 <= index < self._len:
            raise IndexError(f"chip {index} out of range for {self._len} {self.split} chips")
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        arrays, i = self._shards[shard], index - self._starts[shard]
        lr = arrays.get("lr")
        origin = arrays["origin"][i]
        return Chip(
            hr=arrays["hr"][i],
            ref=arrays["ref"][i],
            mask=arrays["mask"][i],
            hr_valid=arrays["hr_valid"][i],
            ref_valid=arrays["ref_valid"][i],
            lr=None if lr is None else lr[i],
            source=int(arrays["source"][i]),
            origin=(int(origin[0]), int(origin[1])),
        )


def _parse_manifest(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON: {exc}", hint=PREPARE_HINT) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"{path} is not a refdiff chips manifest", hint=PREPARE_HINT)
    if data.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{path} has chips format version {data.get('format_version')!r}; this refdiff "
            f"reads version {FORMAT_VERSION}",
            hint=f"{PREPARE_HINT} using this version of refdiff",
        )
    try:
        chip_px, scale = int(data["chip_px"]), data["lr_scale"]
        ok = chip_px >= 1 and len(data["bands"]) >= 1 and isinstance(data["shards"], list)
        ok = ok and (scale is None or (int(scale) >= 1 and chip_px % int(scale) == 0))
        for shard in data["shards"]:
            ok = ok and shard["split"] in SPLITS and SHARD_RE.match(shard["dir"]) is not None
            ok = ok and int(shard["count"]) >= 1 and isinstance(shard["files"], dict)
        for key in ("normalization", "mask_encoding", "sources", "options"):
            ok = ok and key in data
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path} lacks or mangles a field: {exc}", hint=PREPARE_HINT) from exc
    if not ok:
        raise InputError(
            f"{path} has invalid chip_px, bands, lr_scale or shards", hint=PREPARE_HINT
        )
    return data


# ---------------------------------------------------------------------------------------------
# Training batches: random crops aligned to the LR grid, then one of 8 dihedral transforms.


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TrainBatch:
    """A batch of random crops in model space (float32, bool masks), on the CPU.

    Attributes:
        hr, ref: (B, C, c, c) float32 in [-1, 1].
        mask: (B, 1, c, c) float32 in [0, 1].
        hr_valid, ref_valid: (B, 1, c, c) bool.
        lr: (B, C, c/scale, c/scale) float32 crops of the stored LR, or None.
    """

    hr: torch.Tensor
    ref: torch.Tensor
    mask: torch.Tensor
    hr_valid: torch.Tensor
    ref_valid: torch.Tensor
    lr: torch.Tensor | None

    @classmethod
    def stacked(cls, crops: Mapping[str, Sequence[npt.NDArray[Any]]]) -> TrainBatch:
        """The batch of per-item crops: each field's arrays in item order (``lr`` may be [])."""

        def stack(name: str, dtype: Any) -> torch.Tensor:
            return torch.from_numpy(np.stack(crops[name]).astype(dtype))  # (B, ..., c, c)

        return cls(
            hr=stack("hr", np.float32),
            ref=stack("ref", np.float32),
            mask=stack("mask", np.float32),
            hr_valid=stack("hr_valid", np.bool_),
            ref_valid=stack("ref_valid", np.bool_),
            lr=stack("lr", np.float32) if crops["lr"] else None,
        )


def dihedral(array: npt.NDArray[Any], transform: int) -> npt.NDArray[Any]:
    """Apply dihedral transform 0..7 to the last two axes: flip columns if >= 4, then rotate.

    ``transform % 4`` counter-clockwise quarter turns follow the optional flip; 0 is identity.
    """
    if not 0 <= transform < 8:
        raise ValueError(f"transform must be in 0..7, got {transform}")
    if transform >= 4:
        array = array[..., ::-1]
    return np.rot90(array, transform % 4, axes=(-2, -1))


def make_batch(
    dataset: ChipDataset,
    indices: Sequence[int],
    *,
    crop_px: int,
    scale: int,
    generator: torch.Generator | Sequence[torch.Generator],
) -> TrainBatch:
    """Cut one random crop per chip and apply one random dihedral transform to all its arrays.

    Crop offsets are multiples of ``scale``, so the stored LR crop (at ``offset / scale``)
    covers exactly the HR crop. Nothing is cached: every call draws new crops.

    Args:
        dataset: the chips.
        indices: chip indices of the batch, in order (repeats allowed).
        crop_px: crop edge c in HR pixels, a multiple of ``scale``, at most the chip size.
        scale: the LR grid step in HR pixels (the training scale factor).
        generator: one CPU generator for the whole batch, or one per item (then an item's crop
            depends only on its own generator). Each item draws 3 integers: row, col, transform.

    Returns:
        The batch; ``lr`` is None when the chips carry no LR.
    """
    s = dataset.chip_px
    if crop_px < 1 or crop_px % scale or crop_px > s:
        raise ValueError(f"crop_px {crop_px} must be a multiple of {scale} and <= chip size {s}")
    if dataset.lr_scale is not None and dataset.lr_scale != scale:
        raise ValueError(f"the chips' LR is x{dataset.lr_scale}, not x{scale}")
    if isinstance(generator, torch.Generator):
        generators: Sequence[torch.Generator] = [generator] * len(indices)
    else:
        generators = generator
    if len(generators) != len(indices):
        raise ValueError(f"{len(generators)} generators for {len(indices)} items")
    positions = (s - crop_px) // scale + 1  # possible offsets per axis, multiples of scale
    t = crop_px // scale
    names = ("hr", "ref", "mask", "hr_valid", "ref_valid", "lr")
    items: dict[str, list[npt.NDArray[Any]]] = {name: [] for name in names}
    for index, gen in zip(indices, generators, strict=True):
        row, col = (scale * int(torch.randint(positions, (), generator=gen)) for _ in range(2))
        transform = int(torch.randint(8, (), generator=gen))
        chip = dataset.chip(int(index))
        window = (slice(None), slice(row, row + crop_px), slice(col, col + crop_px))
        for name in names[:5]:
            items[name].append(dihedral(getattr(chip, name)[window], transform))
        if chip.lr is not None:
            lr_window = (slice(None), slice(row // scale, row // scale + t))
            lr_crop = chip.lr[(*lr_window, slice(col // scale, col // scale + t))]
            items["lr"].append(dihedral(lr_crop, transform))
    return TrainBatch.stacked(items)
