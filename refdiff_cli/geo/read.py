"""The inputs of one upscale: LR, ref and mask checked from their headers, then fully decoded
(``Sources``), then read tile by tile, ref and mask warped onto the output (``SourceReader``)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypedDict, Unpack

import numpy as np
import numpy.typing as npt
from rasterio.enums import Resampling

from refdiff_cli.data import masks
from refdiff_cli.data.tiling import PixelWindow
from refdiff_cli.errors import InputError
from refdiff_cli.geo.alignment import (
    MaskGrid,
    check_scale,
    coverage_or_fail,
    grid_for_mask,
    needed_window,
)
from refdiff_cli.geo.band_pairing import pair_reference_bands, select_ref_bands
from refdiff_cli.geo.decode import MAX_MASK_VALUES, Scan, read_window, scan
from refdiff_cli.geo.env import rasterio_env
from refdiff_cli.geo.grid import Grid
from refdiff_cli.geo.raster_info import (
    RasterInfo,
    check_path,
    inspect_raster,
    open_geotiff,
    require_grid,
    select_bands,
    stamp,
)
from refdiff_cli.geo.warp import read_vrt, warped

logger = logging.getLogger(__name__)

Role = Literal["lr", "ref", "mask", "hr"]


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


class SourceOptions(TypedDict, total=False):
    """The keyword arguments ``open_sources`` passes on to ``check_sources`` (``scale`` aside)."""

    bands: Sequence[int] | None
    ref_bands: Sequence[int] | None
    mask_grid: MaskGrid
    expect_bands: int | None
    primary_role: Role


def open_sources(
    lr: Path,
    ref: Path,
    mask: Path | None,
    *,
    scale: int,
    percentiles: tuple[float, float] = (0.5, 99.5),
    **options: Unpack[SourceOptions],
) -> Sources:
    """Open, validate and fully decode the three inputs of an upscale (the preflight).

    ``check_sources`` then ``decode_sources``: see them for the arguments and errors.
    """
    checked = check_sources(lr, ref, mask, scale=scale, **options)
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
        else grid_for_mask(mask_info, mask_grid, lr_grid, ref_grid, scale, role=primary_role)
    )

    lr_sel = select_bands(lr_info, bands)
    if partial_ref:
        ref_sel, ref_of_lr = pair_reference_bands(ref_info, lr_info, lr_sel, bands, ref_bands)
    else:
        ref_sel = select_ref_bands(ref_info, lr_info, lr_sel, bands, ref_bands)
        ref_of_lr = tuple(range(len(ref_sel)))
    if expect_bands is not None and len(lr_sel) != expect_bands:
        raise InputError(
            f"{lr_info.role} {lr_info.path} gives {len(lr_sel)} band(s); the model takes "
            f"{expect_bands}",
            hint=f"select them with -b, e.g. -b {','.join(map(str, range(1, expect_bands + 1)))}",
        )
    check_scale(lr_info, lr_grid, ref_info, ref_grid, scale)

    messages: list[str] = []
    if bands is None and lr_info.alpha_band is not None:
        message = (
            f"{lr_info.role} {lr_info.path}: band {lr_info.alpha_band} of {lr_info.count} is an "
            f"alpha band; it only marks valid pixels and is not upscaled (bands used: "
            f"{', '.join(map(str, lr_sel))}; choose others with -b)"
        )
        logger.warning("%s", message)
        messages.append(message)
    return CheckedSources(
        lr=lr_info,
        ref=ref_info,
        mask=mask_info,
        lr_bands=lr_sel,
        ref_bands=ref_sel,
        ref_of_lr=ref_of_lr,
        mask_grid=own_mask_grid,
        ref_coverage=coverage_or_fail(lr_info, ref_info, ref_grid, messages),
        mask_coverage=(
            1.0
            if mask_info is None or own_mask_grid is None
            else coverage_or_fail(lr_info, mask_info, own_mask_grid, messages)
        ),
        warnings=tuple(messages),  # evaluated last: the coverage checks add to it
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
        window=needed_window(ref_grid, lr_grid),
        percentiles=percentiles,
    )
    mask_scan = (
        None
        if checked.mask is None or checked.mask_grid is None
        else scan(
            checked.mask, (1,), window=needed_window(checked.mask_grid, lr_grid), distinct=True
        )
    )
    checks = {field.name: getattr(checked, field.name) for field in dataclasses.fields(checked)}
    return Sources(**checks, lr_scan=lr_scan, ref_scan=ref_scan, mask_scan=mask_scan)


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
        # One read at a time, and closing waits for a read in progress: the pipeline reads
        # from a background thread, which may still be busy when an error closes the sources.
        self._lock = threading.Lock()
        self._closed = False
        self._lr: Any = None
        self._ref: Any = None
        self._mask: Any = None

    def __enter__(self) -> SourceReader:
        s, grid = self.sources, self.out_grid
        try:
            self._stack.enter_context(rasterio_env())
            self._lr = self._stack.enter_context(open_geotiff(s.lr.path, s.lr.role))
            ref = self._stack.enter_context(open_geotiff(s.ref.path, "ref"))
            self._ref = self._stack.enter_context(warped(ref, grid, Resampling.cubic))
            if s.mask is not None:
                mask = self._stack.enter_context(open_geotiff(s.mask.path, "mask"))
                self._mask = self._stack.enter_context(
                    warped(mask, grid, Resampling.nearest, source_grid=s.mask_grid)
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
        with self._lock:
            self._closed = True
            self._stack.close()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Hold the lock and refdiff's GDAL settings (rasterio's are per thread) for one read."""
        with self._lock:
            if self._closed:
                raise RuntimeError("read from sources that are already closed")
            with rasterio_env():
                yield

    def read_lr(self, window: PixelWindow) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """LR values (C, h, w) float32 and validity (h, w) of an LR-pixel window.

        Reads may come from any thread (``pipeline.read_ahead`` reads in a background one),
        one at a time.
        """
        with self._reading():
            data, valid = read_window(self._lr, self.sources.lr, self.sources.lr_bands, window)
        return data.astype(np.float32), valid

    def read_ref(
        self, window: PixelWindow
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """Ref warped onto an output-pixel window: values (C, H, W) float32, validity (H, W)."""
        with self._reading():
            return read_vrt(self._ref, self.sources.ref, self.sources.ref_bands, window)

    def read_mask(
        self, window: PixelWindow
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """Mask band 1 warped (nearest) onto an output-pixel window: (H, W) values and validity.

        Only for sources with a mask file (an estimated mask is made from LR and ref).
        """
        if self.sources.mask is None:
            raise ValueError("these sources have no mask file to read")
        with self._reading():
            values, valid = read_vrt(self._mask, self.sources.mask, (1,), window)
        return values[0], valid


def read_full(
    info: RasterInfo, bands: Sequence[int]
) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_]]:
    """Read a whole (small) raster: values (C, H, W) in its dtype and validity (H, W)."""
    with open_geotiff(info.path, info.role) as src:
        return read_window(src, info, bands, PixelWindow(0, 0, *info.shape))


def read_warped_full(
    info: RasterInfo, bands: Sequence[int], grid: Grid, resampling: Literal["cubic", "nearest"]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """Read ``info`` warped onto all of ``grid`` (for evaluation of small rasters)."""
    method = Resampling.cubic if resampling == "cubic" else Resampling.nearest
    with open_geotiff(info.path, info.role) as src, warped(src, grid, method) as vrt:
        return read_vrt(vrt, info, bands, PixelWindow(0, 0, grid.height, grid.width))
