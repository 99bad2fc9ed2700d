"""Image datasets on disk: change-detection and Ref-Diff paper folder layouts, and CSV set lists.

Two folder layouts of plain image files (PNG, BMP, JPEG, TIFF), files matched by name stem:

- ``cd`` (LEVIR-CD, DSIFN, SECOND, ...): ``A/`` earlier date = reference, ``B/`` later date
  = HR ground truth, ``label/`` = change mask. There is no LR folder: evaluate and prepare
  make the LR from B by degradation.
- ``paper`` (Ref-Diff, CVPR 2024): ``HR_512/``, ``Ref/``, ``CD_mask/`` (single-channel grey
  class codes) and LR folders named ``{Bic|real}_LR_D{scale}_{lr_px}``: ``Bic_LR_D8_32/``,
  ``Bic_LR_D16_16/`` (bicubic test inputs), ``real_LR_D8_64/``, ``real_LR_D16_32/`` (real
  low-resolution training inputs). The scale is the number after ``D``.

Labels are returned raw (``data/masks.py`` encodes them); palette label images give their
indices, which are the class codes. CSV lists of GeoTIFF sets are parsed into paths only.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import io
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from refdiff_cli.errors import ConfigError, InputError
from refdiff_cli.geo.images import read_image

logger = logging.getLogger(__name__)

Layout = Literal["cd", "paper"]
LrKind = Literal["bicubic", "real"]
Split = Literal["train", "val"]

#: Sub-folders of each layout, as (hr, ref, mask).
CD_FOLDERS = ("B", "A", "label")
PAPER_FOLDERS = ("HR_512", "Ref", "CD_mask")
#: File suffixes listed as images (case-insensitive); other files and hidden files are ignored.
IMAGE_SUFFIXES = frozenset({".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff"})
SPLIT_PREFIXES: tuple[tuple[str, Split], ...] = (
    ("train_", "train"),
    ("val_", "val"),
    ("test_", "val"),
)

_LR_FOLDER = re.compile(r"^(Bic|real)_LR_D(\d+)_(\d+)$")
_LR_KINDS: dict[str, LrKind] = {"Bic": "bicubic", "real": "real"}
_SHOWN = 5


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class LrFolder:
    """One LR folder of the paper layout.

    Attributes:
        path: the folder.
        kind: "bicubic" (``Bic_LR_*``) or "real" (``real_LR_*``).
        scale: HR / LR size ratio from the name (``D8`` -> 8), >= 1.
        lr_px: LR image size the name announces (``_32`` -> 32 pixels); informative only.
    """

    path: Path
    kind: LrKind
    scale: int
    lr_px: int


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ImageItem:
    """The files of one dataset item, matched by name stem.

    Attributes:
        name: the shared file stem (e.g. ``test_2_0000_0000``).
        hr: HR ground truth (cd: ``B/``, paper: ``HR_512/``).
        ref: reference, earlier date (cd: ``A/``, paper: ``Ref/``).
        mask: change mask (cd: ``label/``, paper: ``CD_mask/``).
        lr: LR input (paper layout with an LR folder), or None (LR to be synthesised).
    """

    name: str
    hr: Path
    ref: Path
    mask: Path
    lr: Path | None = None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class LoadedItem:
    """The pixels of one item, checked for consistent sizes and cropped to the scale.

    Attributes:
        name: the item's name.
        hr: (C, H, W) HR ground truth, H and W multiples of the scale.
        ref: (C, H, W) reference, same shape and dtype as ``hr``.
        mask: (H, W) raw mask values (label dtype, e.g. uint8 0/255 or class codes).
        lr: (C, H / scale, W / scale) LR input in ``hr``'s dtype, or None.
        dtype: the image dtype of hr, ref (and lr).
        cropped: True when the files were cut (top-left anchored) to multiples of the scale.
        source_shape: (height, width) of the HR file before cropping, in pixels.
    """

    name: str
    hr: npt.NDArray[Any]
    ref: npt.NDArray[Any]
    mask: npt.NDArray[Any]
    lr: npt.NDArray[Any] | None
    dtype: np.dtype[Any]
    cropped: bool
    source_shape: tuple[int, int]


def _subfolders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _check_root(root: Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset folder {root} does not exist", hint="check the path")
    return root


def detect_layout(root: Path) -> Layout:
    """Tell the layout of a dataset folder from its sub-folders.

    Args:
        root: the dataset folder.

    Returns:
        "cd" when ``A/``, ``B/`` and ``label/`` exist; "paper" when ``HR_512/``, ``Ref/`` and
        ``CD_mask/`` exist.

    Raises:
        InputError: the folder is missing, has neither set, or has both (naming what exists).
    """
    root = _check_root(root)
    present = set(_subfolders(root))
    found = [
        name
        for name, folders in (("cd", CD_FOLDERS), ("paper", PAPER_FOLDERS))
        if set(folders) <= present
    ]
    if len(found) == 1:
        return "cd" if found[0] == "cd" else "paper"
    expected = "A/, B/ and label/ (change-detection layout) or HR_512/, Ref/ and CD_mask/ (paper)"
    if found:
        raise InputError(
            f"dataset folder {root} holds both layouts' sub-folders",
            hint="keep one layout per folder: " + expected,
        )
    shown = ", ".join(f"{n}/" for n in sorted(present)) or "no sub-folders"
    raise InputError(
        f"dataset folder {root} is not a known layout: found {shown}", hint=f"expected {expected}"
    )


def find_lr_folders(root: Path) -> tuple[LrFolder, ...]:
    """LR folders (``{Bic|real}_LR_D{scale}_{lr_px}``) of a paper-layout dataset, by name."""
    root = _check_root(root)
    folders = []
    for name in _subfolders(root):
        match = _LR_FOLDER.match(name)
        if match and int(match.group(2)) >= 1:
            kind, scale, lr_px = match.groups()
            folders.append(
                LrFolder(path=root / name, kind=_LR_KINDS[kind], scale=int(scale), lr_px=int(lr_px))
            )
    return tuple(folders)


def _pick_lr_folder(
    root: Path, scale: int | None, lr_kind: LrKind | None, folders: tuple[LrFolder, ...]
) -> LrFolder:
    names = ", ".join(f.path.name for f in folders) or "none"
    if not folders:
        raise InputError(
            f"dataset folder {root} has no LR folder",
            hint="add Bic_LR_D8_32/-style LR folders, or let the LR be synthesised from HR_512/",
        )
    candidates = [
        f
        for f in folders
        if (scale is None or f.scale == scale) and (lr_kind is None or f.kind == lr_kind)
    ]
    wanted = " and ".join(
        [f"scale {scale}"] * (scale is not None) + [f"kind {lr_kind}"] * (lr_kind is not None)
    )
    if not candidates:
        raise ConfigError(
            f"{root} has no LR folder for {wanted}; LR folders found: {names}",
            hint="choose a scale and LR kind (bicubic or real) that exists",
        )
    if len(candidates) > 1:
        shown = ", ".join(f"{f.path.name} ({f.kind}, x{f.scale})" for f in candidates)
        raise ConfigError(
            f"{root} has several LR folders" + (f" for {wanted}" if wanted else "") + f": {shown}",
            hint="choose one by scale and by LR kind (bicubic or real)",
        )
    return candidates[0]


def _images_by_stem(folder: Path) -> dict[str, Path]:
    images: dict[str, Path] = {}
    ignored = 0
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            ignored += 1
            continue
        if path.stem in images:
            raise InputError(
                f"{folder} holds two images named {path.stem!r}: {images[path.stem].name} and "
                f"{path.name}",
                hint="keep one file per name",
            )
        images[path.stem] = path
    if ignored:
        logger.debug("%s: ignored %d non-image file(s)", folder, ignored)
    return images


def list_items(
    root: Path,
    layout: Layout | None = None,
    *,
    scale: int | None = None,
    lr_kind: LrKind | None = None,
    with_lr: bool = True,
) -> list[ImageItem]:
    """List the items of a dataset folder, matched by file stem and sorted by name.

    Files without a partner in every other folder are skipped with one warning that gives
    their count and first names.

    Args:
        root: the dataset folder.
        layout: "cd" or "paper"; None detects it (``detect_layout``).
        scale: paper layout: pick the LR folder of this scale (>= 1); needed when LR folders
            of several scales exist.
        lr_kind: paper layout: "bicubic" (``Bic_LR_*``) or "real" (``real_LR_*``); needed
            when both exist for the scale. Must be None for the cd layout.
        with_lr: paper layout: whether to match an LR folder (False: HR, Ref and mask only,
            ``lr`` None, e.g. for prepare, which synthesises LR). The cd layout never has LR.

    Returns:
        The items, at least one.

    Raises:
        InputError: missing folders, two images with one stem in a folder, or no item with
            all its files.
        ConfigError: ``lr_kind`` with the cd layout, or an LR choice that matches no LR folder
            or several (the message lists the LR folders found).
    """
    root = _check_root(root)
    layout = detect_layout(root) if layout is None else layout
    if scale is not None and scale < 1:
        raise ConfigError(f"--scale {scale}: use an integer >= 1")
    if layout == "cd":
        if lr_kind is not None:
            raise ConfigError(
                f"an LR kind ({lr_kind}) was given but {root} is a change-detection dataset "
                "without LR folders",
                hint="drop the LR kind; the LR is synthesised from B/",
            )
        hr_name, ref_name, mask_name = CD_FOLDERS
        lr_folder = None
    else:
        hr_name, ref_name, mask_name = PAPER_FOLDERS
        lr_folder = (
            _pick_lr_folder(root, scale, lr_kind, find_lr_folders(root)) if with_lr else None
        )
    folders = {"hr": root / hr_name, "ref": root / ref_name, "mask": root / mask_name}
    if lr_folder is not None:
        folders["lr"] = lr_folder.path
    for folder in folders.values():
        if not folder.is_dir():
            raise InputError(f"dataset folder {folder} does not exist", hint="check the layout")
    files = {role: _images_by_stem(folder) for role, folder in folders.items()}
    stems = set().union(*(set(f) for f in files.values()))
    complete = sorted(s for s in stems if all(s in f for f in files.values()))
    _warn_unmatched(root, {folders[role].name: found for role, found in files.items()}, stems)
    if not complete:
        counts = ", ".join(f"{folders[r].name}/: {len(f)}" for r, f in files.items())
        raise InputError(
            f"no item of {root} has all its files ({counts} images)",
            hint="files are matched by name stem across the folders; check the names",
        )
    return [
        ImageItem(
            name=stem,
            hr=files["hr"][stem],
            ref=files["ref"][stem],
            mask=files["mask"][stem],
            lr=files["lr"][stem] if "lr" in files else None,
        )
        for stem in complete
    ]


def _warn_unmatched(root: Path, files: dict[str, dict[str, Path]], stems: set[str]) -> None:
    """One warning for the names missing from some folder (``files``: folder name -> stems)."""
    unmatched = sorted(s for s in stems if not all(s in found for found in files.values()))
    if not unmatched:
        return
    shown = []
    for stem in unmatched[:_SHOWN]:
        missing = ", ".join(f"{name}/" for name, found in files.items() if stem not in found)
        shown.append(f"{stem} (not in {missing})")
    more = f" and {len(unmatched) - _SHOWN} more" if len(unmatched) > _SHOWN else ""
    logger.warning(
        "%s: skipped %d name(s) without a file in every folder: %s%s",
        root,
        len(unmatched),
        ", ".join(shown),
        more,
    )


def _single_band_mask(mask: npt.NDArray[Any], path: Path) -> npt.NDArray[Any]:
    """(C, H, W) label image -> (H, W); several bands must be identical (grey saved as RGB)."""
    if mask.shape[0] > 1 and not all(np.array_equal(mask[0], band) for band in mask[1:]):
        raise InputError(
            f"change mask {path} has {mask.shape[0]} differing bands: colour-coded labels are "
            "not supported",
            hint="save the class codes as a single-band grey or palette image",
        )
    return np.asarray(mask[0])


def _shape_text(array: npt.NDArray[Any]) -> str:
    return f"{array.shape[-1]}x{array.shape[-2]} px, {array.shape[0]} band(s)"


def load_item(item: ImageItem, *, scale: int) -> LoadedItem:
    """Read an item's files and check that they fit together.

    Args:
        item: from ``list_items``.
        scale: HR / LR size ratio (>= 1); HR, Ref and mask are cropped, top-left anchored,
            to multiples of it (SZTAKI's 952x640 images lose 8 columns at scale 16).

    Returns:
        The loaded item; ``cropped`` says whether pixels were cut.

    Raises:
        ConfigError: ``scale`` < 1.
        InputError: unreadable files; HR and Ref differing in size, band count or dtype; a
            mask of another size or with differing bands; an image smaller than ``scale``; an
            LR whose size times ``scale`` is not the cropped HR size or whose bands or dtype
            differ from HR. Messages name the files.
    """
    if scale < 1:
        raise ConfigError(f"--scale {scale}: use an integer >= 1")
    hr = read_image(item.hr)  # (C, H, W)
    ref = read_image(item.ref)  # (C, H, W)
    if hr.shape != ref.shape or hr.dtype != ref.dtype:
        raise InputError(
            f"{item.name}: HR {item.hr} ({_shape_text(hr)}, {hr.dtype}) and reference {item.ref} "
            f"({_shape_text(ref)}, {ref.dtype}) differ",
            hint="HR and reference images must have the same size, bands and data type",
        )
    mask = _single_band_mask(read_image(item.mask, palette="index"), item.mask)  # (H, W)
    height, width = hr.shape[1:]
    if mask.shape != (height, width):
        raise InputError(
            f"{item.name}: change mask {item.mask} is {mask.shape[1]}x{mask.shape[0]} px but HR "
            f"{item.hr} is {width}x{height} px",
            hint="the mask must be on the HR pixel grid",
        )
    crop_h, crop_w = height - height % scale, width - width % scale
    if crop_h == 0 or crop_w == 0:
        raise InputError(
            f"{item.name}: HR {item.hr} ({width}x{height} px) is smaller than the scale {scale}",
            hint="use larger images or a smaller scale",
        )
    cropped = (crop_h, crop_w) != (height, width)
    if cropped:
        logger.debug("%s: cropped %dx%d to %dx%d px", item.name, width, height, crop_w, crop_h)
    lr = None if item.lr is None else read_image(item.lr)  # (C, h, w)
    if lr is not None:
        lr_h, lr_w = lr.shape[1:]
        if (lr_h * scale, lr_w * scale) != (crop_h, crop_w):
            raise InputError(
                f"{item.name}: LR {item.lr} is {lr_w}x{lr_h} px; times the scale {scale} that is "
                f"{lr_w * scale}x{lr_h * scale} px, but HR {item.hr} is {crop_w}x{crop_h} px"
                + (f" (cropped from {width}x{height})" if cropped else ""),
                hint="check the scale and that the LR folder belongs to this HR folder",
            )
        if lr.shape[0] != hr.shape[0] or lr.dtype != hr.dtype:
            raise InputError(
                f"{item.name}: LR {item.lr} ({lr.shape[0]} band(s), {lr.dtype}) does not match "
                f"HR {item.hr} ({hr.shape[0]} band(s), {hr.dtype})",
                hint="LR and HR must have the same bands and data type",
            )
    return LoadedItem(
        name=item.name,
        hr=np.ascontiguousarray(hr[:, :crop_h, :crop_w]),
        ref=np.ascontiguousarray(ref[:, :crop_h, :crop_w]),
        mask=np.ascontiguousarray(mask[:crop_h, :crop_w]),
        lr=lr,
        dtype=hr.dtype,
        cropped=cropped,
        source_shape=(height, width),
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


def read_set_csv(path: Path, columns: Sequence[str]) -> list[dict[str, Path]]:
    """Parse a CSV list of GeoTIFF sets into paths (reading them is ``geo/read``'s job).

    The first non-blank line is the header (e.g. ``lr,ref,mask,hr`` for evaluate or
    ``hr,ref,mask`` for prepare); column names are case-insensitive and may come in any
    order; extra columns are ignored. Blank lines and lines starting with ``#`` are
    skipped. Relative paths are relative to the CSV's folder.

    Args:
        path: the CSV file (UTF-8, a byte-order mark is allowed).
        columns: the required column names.

    Returns:
        One ``{column: absolute-or-CSV-relative Path}`` per data row, in file order.

    Raises:
        InputError: unreadable CSV, a missing or repeated column, a row with more cells than
            the header, an empty cell, a file that does not exist, or no data rows; messages
            name the CSV and the line.
    """
    path = Path(path)
    hint = f"write a header line {','.join(columns)} and one set of file paths per line"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read set list {path}: {exc}", hint=hint) from exc
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[dict[str, Path]] = []
    for cells in reader:
        line = reader.line_num
        if not "".join(cells).strip() or cells[0].lstrip().startswith("#"):
            continue
        if header is None:
            header = _parse_header(cells, columns, path, line, hint)
            continue
        where = f"{path}, line {line}"
        if len(cells) > len(header):
            raise InputError(
                f"{where}: {len(cells)} cells but the header has {len(header)}",
                hint="quote paths that contain commas",
            )
        row: dict[str, Path] = {}
        for column in columns:
            index = header.index(column.lower())
            cell = cells[index].strip() if index < len(cells) else ""
            if not cell:
                raise InputError(f"{where}: empty {column!r} cell", hint=hint)
            file = Path(cell)
            file = file if file.is_absolute() else path.parent / file
            if not file.is_file():
                raise InputError(
                    f"{where}: {column} file {file} does not exist",
                    hint="paths are relative to the CSV's folder",
                )
            row[column] = file
        rows.append(row)
    if not rows:
        raise InputError(f"set list {path} lists no sets", hint=hint)
    return rows


def _parse_header(
    cells: list[str], columns: Sequence[str], path: Path, line: int, hint: str
) -> list[str]:
    header = [c.strip().lower() for c in cells]
    repeated = sorted(name for name, n in collections.Counter(header).items() if n > 1 and name)
    if repeated:
        raise InputError(
            f"{path}, line {line}: repeated column(s) {', '.join(repeated)}", hint=hint
        )
    missing = [c for c in columns if c.lower() not in header]
    if missing:
        raise InputError(
            f"{path}, line {line}: missing column(s) {', '.join(missing)} in header "
            f"{','.join(header)}",
            hint=hint,
        )
    return header
