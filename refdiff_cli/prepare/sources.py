"""Finding prepare's source images in SRC arguments: CSV triplets, cd, paper and image folders.

Layouts: ``csv`` (GeoTIFF triplets hr,ref,mask on any grids), ``cd`` (change-detection
folders A/ B/ label/), ``paper`` (HR_512/ Ref/ CD_mask/ and LR folders) and, with
``--synthesize-changes``, ``images`` (a folder of single-date images; a CSV then needs only an
hr column). Source names are ``<SRC name>/<image>``, unique across all SRC arguments.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from refdiff_cli.data import masks
from refdiff_cli.datasets import layouts, set_lists
from refdiff_cli.errors import ConfigError, InputError
from refdiff_cli.geo import read

logger = logging.getLogger(__name__)

LayoutName = Literal["cd", "paper", "csv", "images"]
LayoutOption = Literal["auto", "cd", "paper", "csv", "images"]
MaskGridOption = Literal["own", "ref", "hr"]
LAYOUT_OPTIONS: tuple[LayoutOption, ...] = ("auto", "cd", "paper", "csv", "images")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SourcePlan:
    """One source image found in an SRC argument (nothing decoded yet, except CSV triplets).

    Attributes:
        name: unique name, ``<SRC name>/<image>`` (e.g. ``levir/test_2_0000_0000``).
        stem: the image's file stem, which decides the split (``train_``/``val_``/``test_``).
        layout: where it came from: "cd", "paper", "csv" or "images".
        paths: role ("hr", "ref", "mask", "lr") -> file; synthesised sources have "hr" only.
        encoding: how its mask values become the mask channel.
        item: the folder item (cd, paper), or None.
        geo: the validated GeoTIFF triplet (csv without synthesis), or None.
    """

    name: str
    stem: str
    layout: LayoutName
    paths: dict[str, Path]
    encoding: masks.MaskEncoding
    item: layouts.ImageItem | None = None
    geo: read.Sources | None = None

    @property
    def synthesized(self) -> bool:
        """Whether the reference and mask are made from HR (``--synthesize-changes``)."""
        return "ref" not in self.paths


# ---------------------------------------------------------------------------------------------
# Discovery


def _layout_of(src: Path, layout: LayoutOption, synthesize: bool) -> LayoutName:
    if not src.exists():
        raise InputError(f"SRC {src} does not exist", hint="check the path")
    is_csv = src.is_file()
    if layout == "auto":
        if is_csv and src.suffix.lower() != ".csv":
            raise InputError(
                f"SRC {src} is a file but not a .csv list of GeoTIFFs",
                hint="pass a dataset folder or a CSV with columns hr,ref,mask",
            )
        if is_csv:
            return "csv"
        return "images" if synthesize else layouts.detect_layout(src)
    if synthesize and layout in ("cd", "paper"):
        raise ConfigError(
            f"--layout {layout} with --synthesize-changes: the folder already has references",
            hint="drop --synthesize-changes, or point at a folder of images (--layout images)",
        )
    if not synthesize and layout == "images":
        raise ConfigError(
            "--layout images needs --synthesize-changes (plain images have no reference)",
            hint="add --synthesize-changes, or use a cd, paper or csv source",
        )
    if (layout == "csv") != is_csv:
        what = "a CSV file" if layout == "csv" else "a folder"
        raise InputError(f"--layout {layout} needs {what}, but SRC {src} is not one")
    return layout


def _image_files(folder: Path) -> list[Path]:
    files = [
        p
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in layouts.IMAGE_SUFFIXES
    ]
    if not files:
        raise InputError(
            f"folder {folder} holds no images ({', '.join(sorted(layouts.IMAGE_SUFFIXES))})",
            hint="point --synthesize-changes at a folder of images or a CSV with an hr column",
        )
    return files


def _csv_name(csv_path: Path, hr: Path) -> str:
    try:
        relative = hr.resolve().relative_to(csv_path.resolve().parent)
    except ValueError:
        relative = Path(hr.name)
    return f"{csv_path.stem}/{relative.with_suffix('').as_posix()}"


def _paper_lr(src: Path, scale: int) -> layouts.LrKind | None:
    """The LR kind stored for the paper layout: real LR preferred (training), else bicubic."""
    kinds = {f.kind for f in layouts.find_lr_folders(src) if f.scale == scale}
    kind: layouts.LrKind | None = "real" if "real" in kinds else "bicubic" if kinds else None
    if kind is not None:
        logger.info("%s: storing the %s LR images of scale x%d", src, kind, scale)
    return kind


def _inferred_encoding(geo: read.Sources) -> masks.MaskEncoding:
    return read.mask_encoding(geo, "auto")


def discover(
    srcs: Sequence[Path],
    *,
    layout: LayoutOption,
    scale: int,
    bands: Sequence[int] | None,
    mask_encoding: str,
    mask_grid: MaskGridOption,
    percentiles: tuple[float, float],
    synthesize: bool,
) -> list[SourcePlan]:
    """List the source images of all SRC arguments, in argument order then by name.

    CSV triplets are opened and fully decoded here (``geo.read.open_sources`` with
    ``primary_role="hr"``, ``scale=1``): the preflight validates them before anything is
    written. Mask encodings: ``--mask-encoding`` when given, else binary for cd folders
    (0 unchanged, non-zero changed), grey class codes for the paper layout, inferred from the
    values for CSV masks, binary for synthesised masks.

    Raises:
        InputError: missing SRC, unknown layout, CSV errors (naming the line), bad rasters,
            or two sources with one name.
        ConfigError: options that do not fit the sources.
    """
    fixed = None if mask_encoding == "auto" else masks.resolve_encoding(mask_encoding)
    plans: list[SourcePlan] = []
    for src in map(Path, srcs):
        kind = _layout_of(src, layout, synthesize)
        prefix = src.resolve().name
        if kind == "csv" and synthesize:
            for row in set_lists.read_set_csv(src, ("hr",)):
                plans.append(_synth_plan(_csv_name(src, row["hr"]), row["hr"], "csv"))
        elif kind == "csv":
            for row in set_lists.read_set_csv(src, ("hr", "ref", "mask")):
                geo = read.open_sources(
                    row["hr"],
                    row["ref"],
                    row["mask"],
                    scale=1,
                    bands=bands,
                    mask_grid="lr" if mask_grid == "hr" else mask_grid,
                    percentiles=percentiles,
                    primary_role="hr",
                )
                plans.append(
                    SourcePlan(
                        name=_csv_name(src, row["hr"]),
                        stem=row["hr"].stem,
                        layout="csv",
                        paths=dict(row),
                        encoding=fixed or _inferred_encoding(geo),
                        geo=geo,
                    )
                )
        elif kind == "images":
            for path in _image_files(src):
                plans.append(_synth_plan(f"{prefix}/{path.stem}", path, "images"))
        else:
            lr_kind = _paper_lr(src, scale) if kind == "paper" else None
            default = masks.BINARY if kind == "cd" else masks.GREY
            items = layouts.list_items(
                src, kind, scale=scale, lr_kind=lr_kind, with_lr=lr_kind is not None
            )
            for item in items:
                paths = {"hr": item.hr, "ref": item.ref, "mask": item.mask}
                if item.lr is not None:
                    paths["lr"] = item.lr
                plans.append(
                    SourcePlan(
                        name=f"{prefix}/{item.name}",
                        stem=item.name,
                        layout=kind,
                        paths=paths,
                        encoding=fixed or default,
                        item=item,
                    )
                )
    _check_unique(plans)
    return plans


def _synth_plan(name: str, hr: Path, layout: LayoutName) -> SourcePlan:
    return SourcePlan(
        name=name, stem=hr.stem, layout=layout, paths={"hr": hr}, encoding=masks.BINARY
    )


def _check_unique(plans: Sequence[SourcePlan]) -> None:
    seen: dict[str, SourcePlan] = {}
    for plan in plans:
        other = seen.setdefault(plan.name, plan)
        if other is not plan:
            raise InputError(
                f"two sources are both named {plan.name!r}: {other.paths['hr']} and "
                f"{plan.paths['hr']}",
                hint="give the SRC folders (or CSV files) distinct names; list each image once",
            )


def _channel_kind(encoding: masks.MaskEncoding) -> str:
    """What the mask channel holds: "binary" (0/1), "grey" (code/255) or "levels" (a table's)."""
    if encoding.kind == "binary" or (
        encoding.kind == "classes" and all(c.level is None for c in encoding.classes)
    ):
        return "binary"
    return encoding.kind if encoding.kind == "grey" else "levels"


def channel_encoding(plans: Sequence[SourcePlan]) -> dict[str, Any]:
    """The manifest's top-level ``mask_encoding``: the mask channel's meaning for all sources.

    One encoding shared by every source is returned as is; different encodings that all give
    0/1 channels give ``binary``.

    Raises:
        ConfigError: sources whose mask channels mean different things (e.g. binary and grey).
    """
    shared = {json.dumps(p.encoding.to_dict(), sort_keys=True): p.encoding for p in plans}
    if len(shared) == 1:
        return next(iter(shared.values())).to_dict()
    examples: dict[str, str] = {}
    for plan in plans:
        examples.setdefault(_channel_kind(plan.encoding), plan.name)
    if set(examples) == {"binary"}:
        return masks.BINARY.to_dict()
    shown = ", ".join(f"{name} ({kind})" for kind, name in sorted(examples.items()))
    raise ConfigError(
        f"the sources' masks mean different things in the mask channel: {shown}",
        hint="prepare them into separate chips folders, or pass --mask-encoding binary to read "
        "every mask as changed (non-zero) / unchanged (0)",
    )
