"""Evaluation samples: cd and paper image folders or GeoTIFF set lists, loaded as aligned arrays."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from refdiff_cli.data import masks
from refdiff_cli.data.normalize import DEFAULT_PERCENTILES, cast_to_dtype
from refdiff_cli.data.resample import downscale_bicubic
from refdiff_cli.data.tiling import PixelWindow
from refdiff_cli.datasets import item_pixels, layouts, set_lists
from refdiff_cli.errors import ConfigError, InputError
from refdiff_cli.geo import alignment, raster_info, read
from refdiff_cli.geo import grid as geogrid

logger = logging.getLogger(__name__)

LayoutName = Literal["auto", "cd", "paper", "csv"]
#: Columns of an evaluation set list.
CSV_COLUMNS = ("lr", "ref", "mask", "hr")

Valid = npt.NDArray[np.bool_]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class GeoSet:
    """The GeoTIFF files of one CSV row and how they were opened.

    Attributes:
        lr, ref, mask, hr: the files.
        sources: the validated LR/ref/mask, opened with ``levels`` percentiles.
        levels: (p_low, p_high) percentiles ``sources`` were scanned with.
        out_grid: the output grid (the LR grid upscaled by the scale).
    """

    lr: Path
    ref: Path
    mask: Path
    hr: Path
    sources: read.Sources
    levels: tuple[float, float]
    out_grid: geogrid.Grid


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class Sample:
    """One evaluation image: LR input, reference, raw mask and HR truth on the output grid.

    Attributes:
        name: item name (file stem), unique within the dataset.
        lr: (C, h, w) LR in its dtype (``dtype``), the input every method gets.
        lr_valid: (h, w) bool.
        hr: (C, H, W) ground truth (H = h * scale); float32 when it was warped.
        hr_valid: (H, W) bool.
        hr_dtype: the HR file's dtype (uint8 data is compared on the 0..255 range).
        ref: (C, H, W) reference on the output grid.
        ref_valid: (H, W) bool.
        mask: (H, W) raw change-mask values on the output grid.
        mask_valid: (H, W) bool.
        encoding: how the mask values read (changed/unchanged split and model channel).
        mask_source: the mask file, for messages.
        dtype: the SR dtype (the LR's, as upscale writes it).
        cropped: whether the files were cut to multiples of the scale.
        source_shape: (height, width) of the HR file before any crop.
        geo: the GeoTIFF set (CSV route), or None for image folders.
    """

    name: str
    lr: npt.NDArray[Any]
    lr_valid: Valid
    hr: npt.NDArray[Any]
    hr_valid: Valid
    hr_dtype: np.dtype[Any]
    ref: npt.NDArray[Any]
    ref_valid: Valid
    mask: npt.NDArray[Any]
    mask_valid: Valid
    encoding: masks.MaskEncoding
    mask_source: str
    dtype: np.dtype[Any]
    cropped: bool
    source_shape: tuple[int, int]
    geo: GeoSet | None = None

    @property
    def changed(self) -> Valid:
        """(H, W) bool: changed and valid mask pixels."""
        return masks.changed(self.mask, self.encoding, source=self.mask_source) & self.mask_valid

    @property
    def valid(self) -> Valid:
        """(H, W) bool: pixels with an HR value and a mask value (the metrics' domain)."""
        return self.hr_valid & self.mask_valid


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Dataset:
    """What an evaluation runs over.

    Attributes:
        root: the folder or CSV file.
        layout: "cd", "paper" or "csv".
        scale: the SR factor.
        items: image-folder items (cd, paper), or CSV rows ``{column: path}``.
    """

    root: Path
    layout: Literal["cd", "paper", "csv"]
    scale: int
    items: tuple[layouts.ImageItem, ...] | tuple[dict[str, Path], ...]

    @property
    def names(self) -> tuple[str, ...]:
        """Unique item names: file stems (CSV rows: the LR stem, then ``-<row>`` if repeated)."""
        if self.layout != "csv":
            return tuple(item.name for item in self.items)  # type: ignore[union-attr]
        names: list[str] = []
        for index, row in enumerate(self.items, start=1):
            stem = row["lr"].stem  # type: ignore[index]
            names.append(stem if stem not in names else f"{stem}-{index}")
        return tuple(names)


def paper_scale(root: Path, lr_kind: layouts.LrKind | None) -> int | None:
    """The scale of a paper-layout folder's LR folders when they agree on one, else None."""
    folders = [f for f in layouts.find_lr_folders(root) if lr_kind is None or f.kind == lr_kind]
    scales = {f.scale for f in folders}
    return scales.pop() if len(scales) == 1 else None


def resolve_layout(root: Path, layout: LayoutName) -> Literal["cd", "paper", "csv"]:
    """``auto``: a file is a CSV set list, a folder is detected by its sub-folders."""
    if layout != "auto":
        return layout
    if Path(root).is_file():
        return "csv"
    return layouts.detect_layout(root)


def open_dataset(
    root: Path,
    layout: LayoutName,
    *,
    scale: int,
    lr_kind: layouts.LrKind | None = None,
    limit: int | None = None,
) -> Dataset:
    """List the items of a dataset folder or set list (sorted by name; CSV: file order).

    Args:
        root: a cd/paper folder, or a CSV with columns lr,ref,mask,hr.
        layout: "auto" (a file is a CSV, a folder is detected), "cd", "paper" or "csv".
        scale: the SR factor (>= 2).
        lr_kind: paper layout: "bicubic" or "real" LR folder, when both exist.
        limit: keep the first ``limit`` items only.

    Raises:
        InputError: a missing or unknown dataset (naming what was found).
        ConfigError: a CSV layout for a folder, or the reverse.
    """
    root = Path(root)
    layout = resolve_layout(root, layout)
    if layout == "csv":
        if root.is_dir():
            raise ConfigError(
                f"--layout csv needs a set list file; {root} is a folder",
                hint="pass a CSV with columns lr,ref,mask,hr, or a cd/paper dataset folder",
            )
        rows = tuple(set_lists.read_set_csv(root, CSV_COLUMNS))
        return Dataset(root=root, layout="csv", scale=scale, items=rows[:limit])
    if root.is_file():
        raise ConfigError(
            f"--layout {layout} needs a dataset folder; {root} is a file",
            hint="pass the folder holding A/, B/, label/ (cd) or HR_512/, Ref/, CD_mask/ (paper)",
        )
    items = layouts.list_items(
        root, layout, scale=scale if layout == "paper" else None, lr_kind=lr_kind
    )
    return Dataset(root=root, layout=layout, scale=scale, items=tuple(items[:limit]))


def load_sample(
    dataset: Dataset,
    index: int,
    *,
    mask_encoding: str = "auto",
    bands: Sequence[int] | None = None,
    ref_bands: Sequence[int] | None = None,
    mask_grid: alignment.MaskGrid = "own",
) -> Sample:
    """Read item ``index`` of ``dataset`` into a :class:`Sample`.

    Image folders: HR, Ref and mask cropped to multiples of the scale (``item_pixels.load_item``);
    the cd layout's LR is the HR downscaled by antialiased bicubic (``resample.downscale_bicubic``
    on the DN values as float64, rounded and clamped back to the HR dtype), the paper layout's
    LR is the file given. The cd mask reads binary (non-zero = changed), the paper mask as grey
    class codes (0 = unchanged), unless ``mask_encoding`` names another encoding.
    CSV rows: see :func:`load_geo_sample`.
    """
    name = dataset.names[index]
    if dataset.layout == "csv":
        row: dict[str, Path] = dataset.items[index]  # type: ignore[assignment]
        return load_geo_sample(
            name,
            row,
            scale=dataset.scale,
            mask_encoding=mask_encoding,
            bands=bands,
            ref_bands=ref_bands,
            mask_grid=mask_grid,
        )
    item: layouts.ImageItem = dataset.items[index]  # type: ignore[assignment]
    loaded = item_pixels.load_item(item, scale=dataset.scale)
    if loaded.lr is None:
        hr64 = torch.from_numpy(loaded.hr.astype(np.float64))[None]  # (1, C, H, W)
        lr_float = downscale_bicubic(hr64, dataset.scale)[0].numpy()  # (C, h, w)
        lr, _ = cast_to_dtype(lr_float, loaded.dtype)
    else:
        lr = loaded.lr
    if mask_encoding == "auto":
        encoding = masks.BINARY if dataset.layout == "cd" else masks.GREY
    else:
        encoding = masks.resolve_encoding(
            mask_encoding, np.unique(loaded.mask).tolist(), source=str(item.mask)
        )
    height, width = loaded.hr.shape[1:]
    every = np.ones((height, width), dtype=bool)  # (H, W)
    return Sample(
        name=name,
        lr=lr,
        lr_valid=np.ones(lr.shape[1:], dtype=bool),
        hr=loaded.hr,
        hr_valid=every,
        hr_dtype=np.dtype(loaded.dtype),
        ref=loaded.ref,
        ref_valid=every,
        mask=loaded.mask,
        mask_valid=every,
        encoding=encoding,
        mask_source=str(item.mask),
        dtype=np.dtype(lr.dtype),
        cropped=loaded.cropped,
        source_shape=loaded.source_shape,
    )


def load_geo_sample(
    name: str,
    row: dict[str, Path],
    *,
    scale: int,
    mask_encoding: str = "auto",
    bands: Sequence[int] | None = None,
    ref_bands: Sequence[int] | None = None,
    mask_grid: alignment.MaskGrid = "own",
) -> Sample:
    """Open one GeoTIFF set as upscale does and read it whole onto the output grid.

    The LR, ref and mask are validated by ``geo.read.open_sources``; the output grid is the LR
    grid upscaled by ``scale``; the ref (cubic) and mask (nearest) are warped onto it by
    ``geo.read.SourceReader``; the HR is read directly when it lies on the output grid (or has
    no georeferencing but the output grid's size), otherwise warped onto it (cubic). The mask
    encoding is ``--mask-encoding`` (``auto`` infers it from the values, like upscale).

    Raises:
        InputError: anything ``open_sources`` refuses, or an HR whose bands differ from the LR's.
    """
    sources = read.open_sources(
        row["lr"],
        row["ref"],
        row["mask"],
        scale=scale,
        bands=bands,
        ref_bands=ref_bands,
        mask_grid=mask_grid,
        percentiles=DEFAULT_PERCENTILES,
    )
    out_grid = geogrid.upscaled(sources.lr_grid, scale)
    encoding = read.mask_encoding(sources, mask_encoding)
    lr, lr_valid = read.read_full(sources.lr, sources.lr_bands)  # (C, h, w), (h, w)
    whole = PixelWindow(0, 0, out_grid.height, out_grid.width)
    with read.SourceReader(sources, out_grid) as reader:
        ref, ref_valid = reader.read_ref(whole)  # (C, H, W), (H, W)
        mask, mask_valid = reader.read_mask(whole)  # (H, W), (H, W)
    hr, hr_valid, hr_dtype = _read_hr(row["hr"], out_grid, bands, len(sources.lr_bands))
    geo = GeoSet(
        lr=row["lr"],
        ref=row["ref"],
        mask=row["mask"],
        hr=row["hr"],
        sources=sources,
        levels=DEFAULT_PERCENTILES,
        out_grid=out_grid,
    )
    return Sample(
        name=name,
        lr=lr,
        lr_valid=lr_valid,
        hr=hr,
        hr_valid=hr_valid,
        hr_dtype=hr_dtype,
        ref=ref,
        ref_valid=ref_valid,
        mask=mask,
        mask_valid=mask_valid,
        encoding=encoding,
        mask_source=str(row["mask"]),
        dtype=np.dtype(sources.lr.dtype),
        cropped=False,
        source_shape=out_grid.shape,
        geo=geo,
    )


def _same_grid(a: geogrid.Grid, b: geogrid.Grid) -> bool:
    return bool(
        a.shape == b.shape and a.crs == b.crs and a.transform.almost_equals(b.transform, 1e-6)
    )


def _read_hr(
    path: Path, out_grid: geogrid.Grid, bands: Sequence[int] | None, count: int
) -> tuple[npt.NDArray[Any], Valid, np.dtype[Any]]:
    """The HR (C, H, W), its validity (H, W) on the output grid and the file's dtype."""
    info = raster_info.inspect_raster(path, "hr")
    dtype = np.dtype(info.dtype)
    wanted = bands if bands is not None and all(b <= info.count for b in bands) else None
    selected = raster_info.select_bands(info, wanted)
    if len(selected) != count:
        raise InputError(
            f"hr {path} gives {len(selected)} band(s) but the LR gives {count}",
            hint="select matching bands with -b, or write the HR with the LR's bands",
        )
    if info.grid is None:
        if info.shape != out_grid.shape:
            raise InputError(
                f"hr {path} has no georeferencing and is {info.shape[1]}x{info.shape[0]} px, "
                f"not the output grid's {out_grid.width}x{out_grid.height} px",
                hint="georeference the HR or write it on the LR grid upscaled by the scale",
            )
        logger.info("hr %s has no georeferencing; taking it as on the output grid", path)
        return (*read.read_full(info, selected), dtype)
    if _same_grid(info.grid, out_grid):
        return (*read.read_full(info, selected), dtype)
    logger.info("hr %s is not on the output grid; warping it (cubic)", path)
    return (*read.read_warped_full(info, selected, out_grid, "cubic"), dtype)
