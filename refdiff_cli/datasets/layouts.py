"""Image datasets on disk: change-detection and Ref-Diff paper folder layouts, listed by item.

Two folder layouts of plain image files (PNG, BMP, JPEG, TIFF), files matched by name stem:

- ``cd`` (LEVIR-CD, DSIFN, SECOND, ...): ``A/`` earlier date = reference, ``B/`` later date
  = HR ground truth, ``label/`` = change mask. There is no LR folder: evaluate and prepare
  make the LR from B by degradation.
- ``paper`` (Ref-Diff, CVPR 2024): ``HR_512/``, ``Ref/``, ``CD_mask/`` (single-channel grey
  class codes) and LR folders named ``{Bic|real}_LR_D{scale}_{lr_px}``: ``Bic_LR_D8_32/``,
  ``Bic_LR_D16_16/`` (bicubic test inputs), ``real_LR_D8_64/``, ``real_LR_D16_32/`` (real
  low-resolution training inputs). The scale is the number after ``D``.

This module finds the items (files matched by stem); ``datasets/item_pixels.py`` reads them.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Literal

from refdiff_cli.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

Layout = Literal["cd", "paper"]
LrKind = Literal["bicubic", "real"]

#: Sub-folders of each layout, as (hr, ref, mask).
CD_FOLDERS = ("B", "A", "label")
PAPER_FOLDERS = ("HR_512", "Ref", "CD_mask")
#: File suffixes listed as images (case-insensitive); other files and hidden files are ignored.
IMAGE_SUFFIXES = frozenset({".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff"})

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
