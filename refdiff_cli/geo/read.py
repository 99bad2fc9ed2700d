"""Open and validate LR, ref and mask GeoTIFFs; read LR windows, and ref/mask warped to output."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import rasterio
import rasterio.errors
from affine import Affine
from rasterio.enums import ColorInterp, Resampling
from rasterio.vrt import WarpedVRT

from refdiff_cli.data import masks
from refdiff_cli.data.normalize import PercentileAccumulator
from refdiff_cli.data.tiling import PixelWindow
from refdiff_cli.errors import ConfigError, InputError
from refdiff_cli.geo.band_names import band_name, names_are_usable
from refdiff_cli.geo.env import rasterio_env
from refdiff_cli.geo.grid import Grid, coverage, ground_pixel_size, to_window, upscaled
from refdiff_cli.geo.tiffcheck import truncation

logger = logging.getLogger(__name__)

Role = Literal["lr", "ref", "mask", "hr"]
MaskGrid = Literal["own", "ref", "lr"]

#: More selected bands than this are refused before anything is allocated (crafted headers).
MAX_BANDS = 256
#: LR/ref ground pixel size ratios within this factor of the scale are accepted.
GSD_TOLERANCE = 1.5
#: Pixels decoded per read while validating an input.
SCAN_CHUNK_PIXELS = 4 * 1024 * 1024
#: Distinct mask values kept for encoding inference; more means "not a class map".
MAX_MASK_VALUES = 256
#: Extra source pixels decoded around the part of ref/mask that the warp reads (kernel reach).
WARP_PAD_PX = 4
#: Working memory of each warped reader (ref, mask), MB; GDAL warps a tile in chunks within it.
WARP_MEMORY_MB = 16

_HEADER_BYTES = 65536


@dataclasses.dataclass(frozen=True, slots=True)
class FileStamp:
    """What identifies a file's content cheaply: size, modification time, inode."""

    size: int
    mtime_ns: int
    inode: int


def stamp(path: Path) -> FileStamp:
    """The file's current stamp."""
    info = os.stat(path)
    return FileStamp(info.st_size, info.st_mtime_ns, info.st_ino)


def fingerprint(path: Path) -> dict[str, Any]:
    """Provenance of an input: path, size, mtime and the sha256 of its first 64 KiB."""
    info = stamp(path)
    with open(path, "rb") as stream:
        head = hashlib.sha256(stream.read(_HEADER_BYTES)).hexdigest()
    return {"path": str(path), "size": info.size, "mtime_ns": info.mtime_ns, "head_sha256": head}


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RasterInfo:
    """What refdiff knows about one input raster after opening it.

    Attributes:
        path: the file.
        role: "lr", "ref", "mask" or "hr" (for messages).
        grid: its georeferencing, or None when it has none.
        count: number of bands.
        dtype: data type name (all bands share it).
        nodata: declared nodata value, or None (invalid declared values are dropped with a
            warning).
        band_descriptions: one per band (None where unnamed).
        band_colours: colour interpretation of each band (``gray``, ``red``, ``undefined``...).
        alpha_band: 1-based index of an alpha band, or None.
        shape: (height, width) in pixels.
        stamp: the file's stamp when it was opened.
    """

    path: Path
    role: str
    grid: Grid | None
    count: int
    dtype: str
    nodata: float | None
    band_descriptions: tuple[str | None, ...]
    band_colours: tuple[str, ...]
    alpha_band: int | None
    shape: tuple[int, int]
    stamp: FileStamp

    def band_names(self, bands: Sequence[int]) -> tuple[str | None, ...]:
        """Canonical names (``band_names.band_name``) of 1-based ``bands``."""
        return tuple(
            band_name(self.band_colours[b - 1], self.band_descriptions[b - 1]) for b in bands
        )

    @property
    def data_bands(self) -> tuple[int, ...]:
        """1-based indexes of the bands that are not alpha."""
        return tuple(b for b in range(1, self.count + 1) if b != self.alpha_band)


def check_path(path: Path, role: str) -> None:
    """Refuse remote paths (exit 2) and missing, directory and empty files (exit 3)."""
    text = str(path)
    if text.startswith("/vsi") or "://" in text:
        raise ConfigError(
            f"{role} {text}: remote inputs are not supported (refdiff never uses the network)",
            hint="download the file and pass a local path",
        )
    if not path.exists():
        raise InputError(f"{role} not found: {path}", hint="check the path")
    if path.is_dir():
        raise InputError(f"{role} {path} is a directory, not a GeoTIFF", hint="name a .tif file")
    if path.stat().st_size == 0:
        raise InputError(f"{role} {path} is an empty file", hint="re-create or re-download it")


@contextlib.contextmanager
def open_geotiff(path: Path, role: str) -> Iterator[Any]:
    """Open ``path`` as a GeoTIFF (never another driver) under refdiff's GDAL environment."""
    check_path(path, role)
    with rasterio_env():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                dataset = rasterio.open(path, driver="GTiff")
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(
                f"{role} {path} is not a GeoTIFF or is corrupt: {_gdal_text(exc)}",
                hint="refdiff reads GeoTIFF files only; convert with gdal_translate",
            ) from exc
        with dataset:
            problem = truncation(path)
            if problem is not None:  # GDAL only warns, and drops the tag
                raise InputError(
                    f"{role} {path} is truncated or corrupt: {problem}",
                    hint="re-create or re-download the file",
                )
            yield dataset


def inspect_raster(path: Path, role: str) -> RasterInfo:
    """Open ``path``, check it is a usable GeoTIFF and describe it (no pixels are read).

    Raises:
        ConfigError: a remote path.
        InputError: missing, not a GeoTIFF, zero-sized, GCP/RPC-only, or an unsupported dtype.
    """
    with open_geotiff(path, role) as src:
        if src.width < 1 or src.height < 1 or src.count < 1:
            raise InputError(f"{role} {path} has no pixels ({src.width}x{src.height}x{src.count})")
        dtypes = set(src.dtypes)
        if len(dtypes) != 1 or np.dtype(src.dtypes[0]).kind not in "uif":
            raise InputError(f"{role} {path} has unsupported band types {sorted(dtypes)}")
        dtype = src.dtypes[0]
        grid = _grid_of(src)
        if grid is None and (src.gcps[0] or src.rpcs is not None):
            raise InputError(
                f"{role} {path} is georeferenced by GCPs or RPCs only",
                hint=f"rectify it first: gdalwarp {path} rectified.tif",
            )
        alpha = [i + 1 for i, c in enumerate(src.colorinterp) if c == ColorInterp.alpha]
        return RasterInfo(
            path=path,
            role=role,
            grid=grid,
            count=src.count,
            dtype=dtype,
            nodata=_checked_nodata(src.nodata, dtype, path, role),
            band_descriptions=tuple(src.descriptions),
            band_colours=tuple(c.name for c in src.colorinterp),
            alpha_band=alpha[0] if alpha else None,
            shape=(src.height, src.width),
            stamp=stamp(path),
        )


def _grid_of(src: Any) -> Grid | None:
    if src.crs is None or src.transform == Affine.identity():
        return None
    return Grid(crs=src.crs, transform=src.transform, width=src.width, height=src.height)


def _checked_nodata(nodata: float | None, dtype: str, path: Path, role: str) -> float | None:
    if nodata is None:
        return None
    kind = np.dtype(dtype)
    if kind.kind == "f" or math.isnan(nodata):
        return float(nodata)
    info = np.iinfo(kind)
    if float(nodata).is_integer() and info.min <= nodata <= info.max:
        return float(nodata)
    logger.warning(
        "%s %s declares nodata %s, which a %s band cannot hold; ignoring it",
        role,
        path,
        nodata,
        dtype,
    )
    return None


def require_grid(info: RasterInfo) -> Grid:
    """The raster's grid, or an InputError saying how to georeference it."""
    if info.grid is None:
        raise InputError(
            f"{info.role} {info.path} has no CRS or geotransform",
            hint=f"set them with `rio edit-info --crs EPSG:... --transform ... {info.path}`",
        )
    return info.grid


def select_bands(info: RasterInfo, bands: Sequence[int] | None) -> tuple[int, ...]:
    """The 1-based bands to read: ``bands`` validated, or every non-alpha band."""
    if bands is None:
        selected = info.data_bands
    else:
        bad = [b for b in bands if not 1 <= b <= info.count]
        if bad:
            raise ConfigError(
                f"band(s) {', '.join(map(str, bad))} do not exist in {info.role} {info.path}, "
                f"which has {info.count} band(s)",
                hint="bands are 1-based (-b 1,2,3)",
            )
        selected = tuple(bands)
    if len(selected) > MAX_BANDS:
        raise InputError(
            f"{info.role} {info.path} has {len(selected)} bands; refdiff reads at most {MAX_BANDS}",
            hint="select bands with -b, e.g. -b 1,2,3",
        )
    return selected


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Scan:
    """What a full decode of (part of) a raster found."""

    valid_pixels: int
    total_pixels: int
    percentiles: tuple[tuple[float, float], ...]
    values: dict[float, int] | None  # band 1 value -> valid pixel count (masks); None if many


def scan(
    info: RasterInfo,
    bands: Sequence[int],
    *,
    window: PixelWindow | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
    distinct: bool = False,
) -> Scan:
    """Decode every block of ``bands`` inside ``window`` and gather statistics.

    A truncated or corrupt file opens fine and fails only when a missing block is read
    (reliability.md, finding 4), so this runs before any model work.

    Args:
        info: the raster.
        bands: 1-based bands to decode.
        window: the part to decode (None: all of it).
        percentiles: (p_low, p_high) per band, in 0..100.
        distinct: collect the distinct values of the first band (for masks).

    Raises:
        InputError: a block does not decode (naming the rows), or no pixel is valid.
    """
    height, width = info.shape
    win = window or PixelWindow(0, 0, height, width)
    step = max(1, SCAN_CHUNK_PIXELS // max(1, win.width * len(bands)))
    stats = PercentileAccumulator(info.dtype, len(bands), pixels=win.height * win.width)
    values: dict[float, int] | None = {} if distinct else None
    valid_total = 0
    with open_geotiff(info.path, info.role) as src:
        for row in range(win.row_off, win.row_end, step):
            rows = min(step, win.row_end - row)
            chunk = PixelWindow(row, win.col_off, rows, win.width)
            data, valid = _read_window(src, info, bands, chunk)
            valid_total += int(np.count_nonzero(valid))
            stats.add(data, valid)
            if values is not None:
                found, counts = np.unique(data[0][valid], return_counts=True)
                for value, count in zip(found.tolist(), counts.tolist(), strict=True):
                    values[value] = values.get(value, 0) + count
                if len(values) > MAX_MASK_VALUES:
                    values = None
    if valid_total == 0:
        where = "" if window is None else " where it overlaps the LR"
        raise InputError(
            f"{info.role} {info.path} has no valid pixels{where} (all nodata or masked)",
            hint="check its nodata value and extent",
        )
    return Scan(
        valid_pixels=valid_total,
        total_pixels=win.height * win.width,
        percentiles=stats.percentiles(percentiles),
        values=values,
    )


def _read_window(
    src: Any, info: RasterInfo, bands: Sequence[int], window: PixelWindow
) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_]]:
    """Values (C, h, w) and validity (h, w) of ``bands`` in ``window`` (InputError if corrupt)."""
    try:
        data = src.read(list(bands), window=to_window(window))  # (C, h, w)
        masks = src.read_masks(list(bands), window=to_window(window))  # (C, h, w)
    except rasterio.errors.RasterioError as exc:
        raise InputError(
            f"{info.role} {info.path} is truncated or corrupt "
            f"(rows {window.row_off}-{window.row_end - 1}): {_gdal_text(exc)}",
            hint="re-create or re-download the file",
        ) from exc
    if data.shape[1:] != (window.height, window.width):
        raise InputError(f"{info.role} {info.path}: read {data.shape[1:]} pixels for {window}")
    valid = (masks > 0).all(axis=0)
    if data.dtype.kind == "f":
        valid &= np.isfinite(data).all(axis=0)
    return data, valid


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckedSources:
    """The inputs of an upscale after every check that reads headers only (no pixel blocks).

    Attributes:
        lr, ref, mask: the rasters; mask None when the change mask is to be estimated.
        lr_bands, ref_bands: 1-based bands read from LR and ref.
        ref_of_lr: per LR band, the position in ``ref_bands`` of its reference band, or None
            where the reference has none (only with ``partial_ref``; else ``ref_bands`` pairs
            ``lr_bands`` one to one).
        mask_grid: the grid the mask is read on (None without a mask).
        ref_coverage, mask_coverage: fraction (0..1) of the LR footprint they cover (an
            estimated mask covers all of it).
        warnings: messages for the user (partial coverage, ...).
    """

    lr: RasterInfo
    ref: RasterInfo
    mask: RasterInfo | None
    lr_bands: tuple[int, ...]
    ref_bands: tuple[int, ...]
    ref_of_lr: tuple[int | None, ...]
    mask_grid: Grid | None
    ref_coverage: float
    mask_coverage: float
    warnings: tuple[str, ...]

    @property
    def lr_grid(self) -> Grid:
        """The LR grid (always georeferenced)."""
        return require_grid(self.lr)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sources(CheckedSources):
    """The validated inputs of one upscale: the header checks, then what the full decode found.

    Attributes:
        lr_scan, ref_scan, mask_scan: what the full decode found (ref and mask: where they
            overlap the LR; mask_scan None without a mask).
    """

    lr_scan: Scan
    ref_scan: Scan
    mask_scan: Scan | None

    @property
    def band_descriptions(self) -> tuple[str | None, ...]:
        """Descriptions of the selected LR bands, copied to the output."""
        return tuple(self.lr.band_descriptions[b - 1] for b in self.lr_bands)

    @property
    def lr_has_invalid(self) -> bool:
        """Whether some LR pixel is nodata, masked or non-finite."""
        return self.lr_scan.valid_pixels < self.lr_scan.total_pixels

    def changed_inputs(self) -> list[Path]:
        """Inputs whose size, mtime or inode differ from when they were opened."""
        changed = []
        for info in (self.lr, self.ref, self.mask):
            if info is None:
                continue
            try:
                now = stamp(info.path)
            except OSError:
                changed.append(info.path)
                continue
            if now != info.stamp:
                changed.append(info.path)
        return changed


def mask_encoding(sources: Sources, option: str) -> masks.MaskEncoding:
    """The mask's encoding per ``--mask-encoding``; "auto" uses the preflight's value counts.

    Raises:
        InputError: "auto" for a mask with more distinct values than a class map has.
        ValueError: sources without a mask file.
    """
    if sources.mask is None or sources.mask_scan is None:
        raise ValueError("these sources have no mask file")
    source = str(sources.mask.path)
    values = sources.mask_scan.values
    if option == "auto" and values is None:
        raise InputError(
            f"mask {source} has more than {MAX_MASK_VALUES} distinct values",
            hint="pass --mask-encoding binary (>= 0.5 is changed) or a class table",
        )
    return masks.resolve_encoding(option, values, source=source)


def open_sources(
    lr: Path,
    ref: Path,
    mask: Path | None,
    *,
    scale: int,
    bands: Sequence[int] | None = None,
    ref_bands: Sequence[int] | None = None,
    mask_grid: MaskGrid = "own",
    expect_bands: int | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
    primary_role: Role = "lr",
) -> Sources:
    """Open, validate and fully decode the three inputs of an upscale (the preflight).

    ``check_sources`` then ``decode_sources``: see them for the arguments and errors.
    """
    checked = check_sources(
        lr,
        ref,
        mask,
        scale=scale,
        bands=bands,
        ref_bands=ref_bands,
        mask_grid=mask_grid,
        expect_bands=expect_bands,
        primary_role=primary_role,
    )
    return decode_sources(checked, percentiles=percentiles)


def check_sources(
    lr: Path,
    ref: Path,
    mask: Path | None,
    *,
    scale: int,
    bands: Sequence[int] | None = None,
    ref_bands: Sequence[int] | None = None,
    mask_grid: MaskGrid = "own",
    expect_bands: int | None = None,
    partial_ref: bool = False,
    primary_role: Role = "lr",
) -> CheckedSources:
    """Check the three inputs of an upscale from their headers alone (fast at any size).

    Checks, cheapest first: paths, GeoTIFF headers, georeferencing, band selections, the
    LR/ref ground-pixel ratio against ``scale``, footprint overlap (in the LR's CRS).

    Args:
        lr, ref, mask: the input files; mask None when the change mask is to be estimated.
        scale: the engine's factor.
        bands: LR bands (1-based) or None for all non-alpha bands.
        ref_bands: ref bands or None: the same indexes as ``bands`` when the ref has them,
            else all its non-alpha bands (paired by name with ``partial_ref``, see
            ``pair_reference_bands``).
        mask_grid: "own" (the mask is georeferenced), or borrow the "ref" or "lr" grid for a
            mask without georeferencing that has the same shape.
        expect_bands: bands the engine takes (None: any).
        partial_ref: allow LR bands without a reference band (``--ref-bidx`` 0, or a
            reference with fewer bands); else the two selections must pair one to one.
        primary_role: the role name of ``lr`` in messages ("hr" when prepare uses the HR
            raster as the grid-defining input with ``scale=1``).

    Raises:
        ConfigError: bad band indexes, remote paths.
        InputError: anything wrong with the data, naming the file and the fix.
    """
    paths = {primary_role: Path(lr), "ref": Path(ref)}
    if mask is not None:
        paths["mask"] = Path(mask)
    for role, path in paths.items():
        check_path(path, role)
    infos = {role: inspect_raster(path, role) for role, path in paths.items()}
    lr_info, ref_info, mask_info = infos[primary_role], infos["ref"], infos.get("mask")
    lr_grid, ref_grid = require_grid(lr_info), require_grid(ref_info)
    own_mask_grid = (
        None
        if mask_info is None
        else _mask_grid(mask_info, mask_grid, lr_grid, ref_grid, scale, role=primary_role)
    )

    lr_sel = select_bands(lr_info, bands)
    if partial_ref:
        ref_sel, ref_of_lr = pair_reference_bands(ref_info, lr_info, lr_sel, bands, ref_bands)
    else:
        ref_sel = _ref_bands(ref_info, lr_info, lr_sel, bands, ref_bands)
        ref_of_lr = tuple(range(len(ref_sel)))
    if expect_bands is not None and len(lr_sel) != expect_bands:
        raise InputError(
            f"{lr_info.role} {lr_info.path} gives {len(lr_sel)} band(s); the model takes "
            f"{expect_bands}",
            hint=f"select them with -b, e.g. -b {','.join(map(str, range(1, expect_bands + 1)))}",
        )
    _check_scale(lr_info, lr_grid, ref_info, ref_grid, scale)

    messages: list[str] = []
    if bands is None and lr_info.alpha_band is not None:
        message = (
            f"{lr_info.role} {lr_info.path}: band {lr_info.alpha_band} of {lr_info.count} is an "
            f"alpha band; it only marks valid pixels and is not upscaled (bands used: "
            f"{', '.join(map(str, lr_sel))}; choose others with -b)"
        )
        logger.warning("%s", message)
        messages.append(message)
    ref_cover = _coverage_or_fail(lr_info, ref_info, ref_grid, messages)
    mask_cover = (
        1.0
        if mask_info is None or own_mask_grid is None
        else _coverage_or_fail(lr_info, mask_info, own_mask_grid, messages)
    )
    return CheckedSources(
        lr=lr_info,
        ref=ref_info,
        mask=mask_info,
        lr_bands=lr_sel,
        ref_bands=ref_sel,
        ref_of_lr=ref_of_lr,
        mask_grid=own_mask_grid,
        ref_coverage=ref_cover,
        mask_coverage=mask_cover,
        warnings=tuple(messages),
    )


def decode_sources(
    checked: CheckedSources, *, percentiles: tuple[float, float] = (0.5, 99.5)
) -> Sources:
    """Decode every block of the checked inputs that will be read (time grows with the LR).

    A truncated or corrupt file opens fine and fails only here, before any model work.

    Args:
        checked: what ``check_sources`` returned.
        percentiles: the normalisation's (p_low, p_high).

    Raises:
        InputError: a block does not decode, or an input has no valid pixel.
    """
    lr_grid, ref_grid = checked.lr_grid, require_grid(checked.ref)
    lr_scan = scan(checked.lr, checked.lr_bands, percentiles=percentiles)
    ref_scan = scan(
        checked.ref,
        checked.ref_bands,
        window=_needed_window(ref_grid, lr_grid),
        percentiles=percentiles,
    )
    mask_scan = (
        None
        if checked.mask is None or checked.mask_grid is None
        else scan(
            checked.mask, (1,), window=_needed_window(checked.mask_grid, lr_grid), distinct=True
        )
    )
    checks = {field.name: getattr(checked, field.name) for field in dataclasses.fields(checked)}
    return Sources(**checks, lr_scan=lr_scan, ref_scan=ref_scan, mask_scan=mask_scan)


def _mask_grid(
    info: RasterInfo, how: MaskGrid, lr: Grid, ref: Grid, scale: int, *, role: str = "lr"
) -> Grid:
    """The grid the mask is read on, per ``--mask-grid`` ("lr": the image's, named ``role``)."""
    image = role.upper()
    if how == "own":
        if info.grid is None:
            raise InputError(
                f"mask {info.path} has no georeferencing",
                hint="georeference it, or pass --mask-grid ref (or image) if it is on the same "
                f"pixel grid as the reference (or the {image})",
            )
        return info.grid
    candidates = [ref] if how == "ref" else [lr, upscaled(lr, scale)]
    for grid in candidates:
        if grid.shape == info.shape:
            return grid
    shapes = " or ".join(dict.fromkeys(f"{g.width}x{g.height}" for g in candidates))
    option = "ref" if how == "ref" else f"image (the {image}'s grid)"
    raise InputError(  # sizes width x height, as the tables print them
        f"mask {info.path} is {info.shape[1]}x{info.shape[0]} px; --mask-grid {option} needs "
        f"{shapes} px",
        hint="the mask must be on exactly that pixel grid, or georeference it",
    )


def _ref_bands(
    ref: RasterInfo,
    lr: RasterInfo,
    lr_sel: tuple[int, ...],
    bands: Sequence[int] | None,
    ref_bands: Sequence[int] | None,
) -> tuple[int, ...]:
    if ref_bands is not None:
        selected = select_bands(ref, ref_bands)
    elif bands is not None and all(b <= ref.count for b in bands):
        selected = tuple(bands)
    else:
        selected = select_bands(ref, None)
    if len(selected) != len(lr_sel):
        raise InputError(
            f"{lr.role} {lr.path} gives {len(lr_sel)} band(s) but ref {ref.path} gives "
            f"{len(selected)}",
            hint="select matching bands with -b (LR) and --ref-bidx (ref), e.g. -b 1,2,3 "
            "--ref-bidx 1,2,3",
        )
    return selected


def pair_reference_bands(
    ref: RasterInfo,
    lr: RasterInfo,
    lr_sel: tuple[int, ...],
    bands: Sequence[int] | None,
    ref_bands: Sequence[int] | None,
) -> tuple[tuple[int, ...], tuple[int | None, ...]]:
    """The reference bands to read, and for each LR band the position of its own among them.

    The first rule that applies: ``ref_bands`` (``--ref-bidx``), one per LR band, 0 for none;
    the same indexes as ``bands`` (``-b``) when the reference has them all; by canonical name
    when both rasters name every band uniquely; else in order (a reference with fewer bands
    pairs the first ones; one with more is ambiguous).
    """
    if ref_bands is not None:
        if len(ref_bands) != len(lr_sel):
            raise ConfigError(
                f"--ref-bidx gives {len(ref_bands)} band(s) for {len(lr_sel)} LR band(s) of "
                f"{lr.path}",
                hint="give one reference band per LR band, 0 where the reference has none",
            )
        used = tuple(b for b in ref_bands if b != 0)
        if used:
            select_bands(ref, used)  # raises on indexes the reference does not have
        wanted: list[int | None] = [b or None for b in ref_bands]
    elif bands is not None and all(b <= ref.count for b in bands):
        wanted = list(bands)
    else:
        ref_data = ref.data_bands
        lr_names, ref_names = lr.band_names(lr_sel), ref.band_names(ref_data)
        if names_are_usable(lr_names) and names_are_usable(ref_names):
            by_name = dict(zip(ref_names, ref_data, strict=True))
            wanted = [by_name.get(name) for name in lr_names]
        elif len(ref_data) <= len(lr_sel):
            wanted = [*ref_data, *([None] * (len(lr_sel) - len(ref_data)))]
        else:
            raise InputError(
                f"{lr.role} {lr.path} gives {len(lr_sel)} band(s) but ref {ref.path} has "
                f"{len(ref_data)} and their bands are not named",
                hint="map reference bands with --ref-bidx, one per LR band (0 for none)",
            )
    read_order = tuple(dict.fromkeys(b for b in wanted if b is not None))
    if not read_order:
        raise InputError(
            f"ref {ref.path} has no band named like a band of {lr.role} {lr.path}",
            hint="map reference bands with --ref-bidx, one per LR band (0 for none)",
        )
    return read_order, tuple(None if b is None else read_order.index(b) for b in wanted)


def _check_scale(
    lr: RasterInfo, lr_grid: Grid, ref: RasterInfo, ref_grid: Grid, scale: int
) -> None:
    lr_gsd, ref_gsd = ground_pixel_size(lr_grid), ground_pixel_size(ref_grid)
    ratio = lr_gsd / ref_gsd
    if scale / GSD_TOLERANCE <= ratio <= scale * GSD_TOLERANCE:
        return
    if lr.role == "hr":  # prepare: the reference must share the HR's pixel size
        raise InputError(
            f"ref {ref.path} has {ref_gsd:.3g} m pixels, but the HR {lr.path} has {lr_gsd:.3g} m "
            f"(x{ratio:.3g}); the reference must have the HR's pixel size",
            hint=f"resample the reference onto the HR's pixel size, e.g. gdalwarp -t_srs "
            f"{lr_grid.crs.to_string()} -tr {abs(lr_grid.transform.a):.6g} "
            f"{abs(lr_grid.transform.e):.6g} -r cubic {ref.path} ref_resampled.tif",
        )
    raise InputError(
        f"the upscale is x{scale}, but {lr.role} {lr.path} ({lr_gsd:.3g} m) / ref {ref.path} "
        f"({ref_gsd:.3g} m) = x{ratio:.3g}; the ref needs {lr_gsd / scale:.3g} m pixels",
        hint="use a model (or --scale for bicubic) that fits, or resample the inputs",
    )


def _coverage_or_fail(lr: RasterInfo, other: RasterInfo, grid: Grid, messages: list[str]) -> float:
    lr_grid = require_grid(lr)
    fraction = coverage(lr_grid, grid)
    if fraction <= 0.0:
        projected = grid.footprint_in(lr_grid.crs)
        theirs = (
            "unknown"
            if projected is None
            else "(" + ", ".join(f"{v:.2f}" for v in projected.bounds) + ")"
        )
        raise InputError(
            f"{other.role} {other.path} does not overlap {lr.role} {lr.path}: {lr.role} bounds "
            f"{lr_grid.bounds_text()}, {other.role} bounds {theirs} in {lr_grid.crs.to_string()}",
            hint=f"pass a {other.role} that covers the LR area",
        )
    if fraction < 0.999:
        message = (
            f"{other.role} {other.path} covers {100 * fraction:.1f} % of {lr.role} {lr.path}; the "
            "uncovered part is reconstructed from the LR alone"
        )
        logger.warning("%s", message)
        messages.append(message)
    return fraction


def _needed_window(source: Grid, lr: Grid) -> PixelWindow:
    """The pixels of ``source`` that warping onto the LR footprint reads (padded, clipped)."""
    outline = lr.footprint_in(source.crs)
    if outline is None:
        return PixelWindow(0, 0, source.height, source.width)
    inverse = ~source.transform
    cols, rows = zip(*(inverse * xy for xy in outline.exterior.coords), strict=True)
    col0 = max(0, math.floor(min(cols)) - WARP_PAD_PX)
    row0 = max(0, math.floor(min(rows)) - WARP_PAD_PX)
    col1 = min(source.width, math.ceil(max(cols)) + WARP_PAD_PX)
    row1 = min(source.height, math.ceil(max(rows)) + WARP_PAD_PX)
    if col1 <= col0 or row1 <= row0:
        return PixelWindow(0, 0, source.height, source.width)
    return PixelWindow(row0, col0, row1 - row0, col1 - col0)


def _gdal_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" ({' '.join(str(cause).split())})"
    return text


class SourceReader:
    """Reads tiles of one upscale: LR windows on the LR grid, ref and mask warped onto output
    windows (ref cubic, mask nearest), with validity. A context manager; numpy only.

    Args:
        sources: the validated inputs.
        out_grid: the output grid.
    """

    def __init__(self, sources: Sources, out_grid: Grid) -> None:
        self.sources = sources
        self.out_grid = out_grid
        self._stack = contextlib.ExitStack()
        self._lr: Any = None
        self._ref: Any = None
        self._mask: Any = None

    def __enter__(self) -> SourceReader:
        s, grid = self.sources, self.out_grid
        try:
            self._stack.enter_context(rasterio_env())
            self._lr = self._stack.enter_context(open_geotiff(s.lr.path, s.lr.role))
            ref = self._stack.enter_context(open_geotiff(s.ref.path, "ref"))
            self._ref = self._stack.enter_context(_warped(ref, grid, Resampling.cubic))
            if s.mask is not None:
                mask = self._stack.enter_context(open_geotiff(s.mask.path, "mask"))
                self._mask = self._stack.enter_context(
                    _warped(mask, grid, Resampling.nearest, source_grid=s.mask_grid)
                )
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()

    def read_lr(self, window: PixelWindow) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """LR values (C, h, w) float32 and validity (h, w) of an LR-pixel window."""
        data, valid = _read_window(self._lr, self.sources.lr, self.sources.lr_bands, window)
        return data.astype(np.float32), valid

    def read_ref(
        self, window: PixelWindow
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """Ref warped onto an output-pixel window: values (C, H, W) float32, validity (H, W)."""
        return _read_vrt(self._ref, self.sources.ref, self.sources.ref_bands, window)

    def read_mask(
        self, window: PixelWindow
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """Mask band 1 warped (nearest) onto an output-pixel window: (H, W) values and validity.

        Only for sources with a mask file (an estimated mask is made from LR and ref).
        """
        if self.sources.mask is None:
            raise ValueError("these sources have no mask file to read")
        values, valid = _read_vrt(self._mask, self.sources.mask, (1,), window)
        return values[0], valid


def _read_vrt(
    vrt: Any, info: RasterInfo, bands: Sequence[int], window: PixelWindow
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """Read ``bands`` of a warped VRT in ``window``: values (C, H, W) float32, validity (H, W)."""
    alpha = vrt.count  # add_alpha appends the validity band last
    try:
        data = vrt.read([*bands, alpha], window=to_window(window))  # (C + 1, H, W)
    except rasterio.errors.RasterioError as exc:
        raise InputError(
            f"{info.role} {info.path} could not be read while warping: {_gdal_text(exc)}",
            hint="check that the file is intact and was not changed during the run",
        ) from exc
    values = data[:-1].astype(np.float32)  # (C, H, W)
    valid = data[-1] > 0
    if values.dtype.kind == "f":
        valid &= np.isfinite(values).all(axis=0)
    return values, valid


def _warped(
    src: Any, grid: Grid, resampling: Resampling, *, source_grid: Grid | None = None
) -> Any:
    """A WarpedVRT of ``src`` on ``grid`` with an alpha band marking where it has data."""
    options: dict[str, Any] = {}
    if source_grid is not None and src.crs is None:
        options.update(src_crs=source_grid.crs, src_transform=source_grid.transform)
    return WarpedVRT(
        src,
        crs=grid.crs,
        transform=grid.transform,
        width=grid.width,
        height=grid.height,
        resampling=resampling,
        add_alpha=True,
        warp_mem_limit=WARP_MEMORY_MB,
        **options,
    )


def read_full(
    info: RasterInfo, bands: Sequence[int]
) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_]]:
    """Read a whole (small) raster: values (C, H, W) in its dtype and validity (H, W)."""
    with open_geotiff(info.path, info.role) as src:
        return _read_window(src, info, bands, PixelWindow(0, 0, *info.shape))


def read_warped_full(
    info: RasterInfo, bands: Sequence[int], grid: Grid, resampling: Literal["cubic", "nearest"]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """Read ``info`` warped onto all of ``grid`` (for evaluation of small rasters)."""
    method = Resampling.cubic if resampling == "cubic" else Resampling.nearest
    with open_geotiff(info.path, info.role) as src, _warped(src, grid, method) as vrt:
        return _read_vrt(vrt, info, bands, PixelWindow(0, 0, grid.height, grid.width))
