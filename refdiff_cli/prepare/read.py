"""Reading prepare's sources as model-space chips: plain images, GeoTIFF triplets, synthesised refs.

Every source is mapped to model space with its own percentiles over the whole image
(``data/normalize``: uint8 uses 0..255), clipped to [-1, 1] and 0.0 where invalid; the ref
of a GeoTIFF triplet is warped onto the HR grid (cubic) and its mask (nearest) by
``geo/read``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from refdiff_cli.data import masks, normalize
from refdiff_cli.data.synthesize import SynthesisConfig, rng_for, synthesize_ref
from refdiff_cli.data.tiling import PixelWindow, axis_starts
from refdiff_cli.datasets import item_pixels
from refdiff_cli.errors import ConfigError, InputError
from refdiff_cli.geo import grid as geogrid
from refdiff_cli.geo import images, raster_info, read
from refdiff_cli.prepare.sources import SourcePlan

logger = logging.getLogger(__name__)

_TIFF = frozenset({".tif", ".tiff"})
_RGB = ("red", "green", "blue")

Array = npt.NDArray[np.float32]
Valid = npt.NDArray[np.bool_]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class ChipArrays:
    """One chip in model space: hr, ref (C, S, S) in [-1, 1], mask (1, S, S) in [0, 1],
    hr_valid and ref_valid (1, S, S) bool, lr (C, S/scale, S/scale) or None."""

    hr: Array
    ref: Array
    mask: Array
    hr_valid: Valid
    ref_valid: Valid
    lr: Array | None


class ChipReader(Protocol):
    """Reads chips of one source by HR-pixel window."""

    def read(self, window: PixelWindow) -> ChipArrays: ...


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class OpenSource:
    """An opened source: usable size, band names, manifest details and its chip reader.

    Attributes:
        shape: (height, width) usable in HR pixels, cropped (top-left anchored) to multiples
            of the scale.
        band_names: one name per selected band.
        info: JSON-ready details for the manifest (file shape, dtype, crs, pixel size,
            percentiles, scalings, cropping, warnings, synthesis).
        reader: reads chips; None when ``shape`` is smaller than a chip (nothing was
            normalised or synthesised: the source is skipped).
    """

    shape: tuple[int, int]
    band_names: tuple[str, ...]
    info: dict[str, Any]
    reader: ChipReader | None


# ---------------------------------------------------------------------------------------------
# Reading


def chip_windows(
    shape: tuple[int, int], *, chip_px: int, stride_px: int, scale: int
) -> list[PixelWindow]:
    """Chip windows of an image of ``shape`` (height, width), row-major; none if it is smaller.

    Offsets are multiples of ``scale`` when ``shape``, ``chip_px`` and ``stride_px`` are; the
    last row and column of chips are flush with the bottom and right edges.
    """
    height, width = shape
    if height < chip_px or width < chip_px:
        return []
    overlap = chip_px - stride_px
    rows = axis_starts(height, tile_px=chip_px, overlap_px=overlap, multiple=scale)
    cols = axis_starts(width, tile_px=chip_px, overlap_px=overlap, multiple=scale)
    return [PixelWindow(r, c, chip_px, chip_px) for r in rows for c in cols]


def model_values(values: npt.NDArray[Any], valid: Valid, scaling: normalize.BandScaling) -> Array:
    """(C, H, W) DN -> model space, clipped to [-1, 1] and 0.0 where ``valid`` (H, W) is False."""
    mapped = np.clip(normalize.to_model(values, scaling), -1.0, 1.0)  # (C, H, W)
    return np.where(valid[None], mapped, np.float32(0.0)).astype(np.float32)


def _select(array: npt.NDArray[Any], bands: Sequence[int] | None, path: Path) -> npt.NDArray[Any]:
    """Pick 1-based ``bands`` of a (C, H, W) plain image."""
    if bands is None:
        return array
    bad = [b for b in bands if not 1 <= b <= array.shape[0]]
    if bad:
        raise ConfigError(
            f"-b/--bidx {','.join(map(str, bad))}: {path} has {array.shape[0]} band(s)",
            hint="bands are 1-based (-b 1,2,3)",
        )
    return np.ascontiguousarray(array[[b - 1 for b in bands]])


def _plain_names(count: int, bands: Sequence[int] | None) -> tuple[str, ...]:
    """Band names of a plain image: red, green, blue for 3-band files (PNG/BMP/JPEG are RGB)."""
    indexes = tuple(bands) if bands is not None else tuple(range(1, count + 1))
    if count == 3:
        return tuple(_RGB[b - 1] for b in indexes)
    return tuple(f"band_{b}" for b in indexes)


def _geo_names(descriptions: Sequence[str | None], bands: Sequence[int]) -> tuple[str, ...]:
    return tuple(d or f"band_{b}" for d, b in zip(descriptions, bands, strict=True))


def _stats(
    values: npt.NDArray[Any], valid: Valid, levels: tuple[float, float]
) -> tuple[tuple[tuple[float, float], ...], normalize.BandScaling]:
    percentiles = normalize.band_percentiles(values, valid, levels)
    return percentiles, normalize.scaling_for(values.dtype, percentiles)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class _ArrayReader:
    """Chips sliced from whole-image model-space arrays (plain images, synthesised refs)."""

    hr: Array  # (C, H, W)
    ref: Array  # (C, H, W)
    mask: Array  # (1, H, W)
    hr_valid: Valid  # (H, W)
    ref_valid: Valid  # (H, W)
    lr: Array | None  # (C, H / scale, W / scale)
    scale: int

    def read(self, window: PixelWindow) -> ChipArrays:
        rows = slice(window.row_off, window.row_end)
        cols = slice(window.col_off, window.col_end)
        lr = None
        if self.lr is not None:
            small = window.divided(self.scale)
            lr = self.lr[:, small.row_off : small.row_end, small.col_off : small.col_end]
        return ChipArrays(
            hr=self.hr[:, rows, cols],
            ref=self.ref[:, rows, cols],
            mask=self.mask[:, rows, cols],
            hr_valid=self.hr_valid[None, rows, cols],
            ref_valid=self.ref_valid[None, rows, cols],
            lr=lr,
        )


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class _GeoReader:
    """Chips of a GeoTIFF triplet: HR windows, ref (cubic) and mask (nearest) warped onto them."""

    reader: read.SourceReader
    hr_scaling: normalize.BandScaling
    ref_scaling: normalize.BandScaling
    encoding: masks.MaskEncoding
    mask_source: str

    def read(self, window: PixelWindow) -> ChipArrays:
        hr, hr_valid = self.reader.read_lr(window)  # (C, S, S), (S, S)
        ref, ref_valid = self.reader.read_ref(window)  # (C, S, S), (S, S)
        raw, mask_valid = self.reader.read_mask(window)  # (S, S), (S, S)
        mask, mask_valid = masks.encode(raw, mask_valid, self.encoding, source=self.mask_source)
        return ChipArrays(
            hr=model_values(hr, hr_valid, self.hr_scaling),
            ref=model_values(ref, ref_valid, self.ref_scaling),
            mask=mask,  # (1, S, S)
            hr_valid=hr_valid[None],
            ref_valid=(ref_valid & mask_valid)[None],
            lr=None,
        )


def _cropped(shape: tuple[int, int], scale: int) -> tuple[int, int]:
    return (shape[0] - shape[0] % scale, shape[1] - shape[1] % scale)


def _grid_info(grid: geogrid.Grid | None) -> dict[str, Any]:
    if grid is None:
        return {"crs": None, "transform": None, "pixel_size": None, "ground_pixel_m": None}
    a, b, _, d, e, _ = tuple(grid.transform)[:6]
    return {
        "crs": grid.crs.to_string(),
        "transform": list(tuple(grid.transform)[:6]),
        "pixel_size": [math.hypot(a, d), math.hypot(b, e)],
        "ground_pixel_m": geogrid.ground_pixel_size(grid),
    }


def _stats_info(**scalings: tuple[Any, normalize.BandScaling] | None) -> dict[str, Any]:
    return {
        "percentiles": {k: [list(p) for p in v[0]] for k, v in scalings.items() if v},
        "scaling": {k: v[1].to_dict() for k, v in scalings.items() if v},
    }


@contextlib.contextmanager
def open_source(
    plan: SourcePlan,
    *,
    scale: int,
    chip_px: int,
    bands: Sequence[int] | None,
    percentiles: tuple[float, float],
    seed: int,
    synthesis: SynthesisConfig,
) -> Iterator[OpenSource]:
    """Open one source for chip reading (plain images and synthesised refs are loaded whole).

    Args:
        plan: the source.
        scale: HR / LR factor; the usable size is cropped to its multiples.
        chip_px: chip edge; a smaller source gets no reader.
        bands: 1-based bands, or None for all (GeoTIFF triplets chose theirs in ``discover``).
        percentiles: the normalisation's (p_low, p_high).
        seed: seed of synthesised references (with the source name).
        synthesis: ranges of synthesised alterations.

    Raises:
        InputError: unreadable or inconsistent files, naming them.
        ConfigError: band indexes the files do not have.
    """
    if plan.synthesized:
        yield _open_synthesized(plan, scale, chip_px, bands, percentiles, seed, synthesis)
    elif plan.geo is not None:
        with read.SourceReader(plan.geo, plan.geo.lr_grid) as reader:
            yield _open_geo(plan, plan.geo, reader, scale, chip_px)
    else:
        yield _open_plain(plan, scale, chip_px, bands, percentiles)


def _fits(shape: tuple[int, int], chip_px: int) -> bool:
    return min(shape) >= chip_px


def _open_geo(
    plan: SourcePlan, geo: read.Sources, reader: read.SourceReader, scale: int, chip_px: int
) -> OpenSource:
    hr_scaling = normalize.scaling_for(geo.lr.dtype, geo.lr_scan.percentiles)
    ref_scaling = normalize.scaling_for(geo.ref.dtype, geo.ref_scan.percentiles)
    shape = _cropped(geo.lr.shape, scale)
    info = {
        "shape": list(geo.lr.shape),
        "used_shape": list(shape),
        "cropped": shape != geo.lr.shape,
        "dtype": {"hr": geo.lr.dtype, "ref": geo.ref.dtype},
        "bands": {"hr": list(geo.lr_bands), "ref": list(geo.ref_bands)},
        **_grid_info(geo.lr_grid),
        **_stats_info(
            hr=(geo.lr_scan.percentiles, hr_scaling), ref=(geo.ref_scan.percentiles, ref_scaling)
        ),
        "coverage": {"ref": geo.ref_coverage, "mask": geo.mask_coverage},
        "warnings": list(geo.warnings),
    }
    chips = _GeoReader(
        reader=reader,
        hr_scaling=hr_scaling,
        ref_scaling=ref_scaling,
        encoding=plan.encoding,
        mask_source=str(plan.paths["mask"]),
    )
    names = _geo_names(geo.band_descriptions, geo.lr_bands)
    return OpenSource(
        shape=shape, band_names=names, info=info, reader=chips if _fits(shape, chip_px) else None
    )


def _open_plain(
    plan: SourcePlan,
    scale: int,
    chip_px: int,
    bands: Sequence[int] | None,
    levels: tuple[float, float],
) -> OpenSource:
    assert plan.item is not None
    loaded = item_pixels.load_item(plan.item, scale=scale)
    hr = _select(loaded.hr, bands, plan.paths["hr"])  # (C, H, W)
    ref = _select(loaded.ref, bands, plan.paths["ref"])  # (C, H, W)
    shape = (int(hr.shape[1]), int(hr.shape[2]))
    names = _plain_names(loaded.hr.shape[0], bands)
    info: dict[str, Any] = {
        "shape": list(loaded.source_shape),
        "used_shape": list(shape),
        "cropped": loaded.cropped,
        "dtype": {"hr": str(loaded.dtype), "ref": str(loaded.dtype)},
        "bands": {"hr": list(bands or range(1, loaded.hr.shape[0] + 1))},
        **_grid_info(None),
    }
    if not _fits(shape, chip_px):
        return OpenSource(shape=shape, band_names=names, info=info, reader=None)
    valid = np.ones(hr.shape[1:], dtype=bool)  # (H, W): plain images have no nodata
    hr_stats, ref_stats = _stats(hr, valid, levels), _stats(ref, valid, levels)
    mask, mask_valid = masks.encode(
        loaded.mask, valid, plan.encoding, source=str(plan.paths["mask"])
    )
    lr_model, lr_stats = None, None
    if loaded.lr is not None:
        lr = _select(loaded.lr, bands, plan.paths["lr"])  # (C, H / scale, W / scale)
        lr_valid = np.ones(lr.shape[1:], dtype=bool)
        lr_stats = _stats(lr, lr_valid, levels)
        lr_model = model_values(lr, lr_valid, lr_stats[1])
    info.update(_stats_info(hr=hr_stats, ref=ref_stats, lr=lr_stats))
    chips = _ArrayReader(
        hr=model_values(hr, valid, hr_stats[1]),
        ref=model_values(ref, valid, ref_stats[1]),
        mask=mask,
        hr_valid=valid,
        ref_valid=mask_valid,
        lr=lr_model,
        scale=scale,
    )
    return OpenSource(shape=shape, band_names=names, info=info, reader=chips)


def _read_single(
    path: Path, bands: Sequence[int] | None
) -> tuple[npt.NDArray[Any], Valid, tuple[str, ...], dict[str, Any]]:
    """A single-date image: (C, H, W) values, (H, W) validity, band names, grid details."""
    if path.suffix.lower() not in _TIFF:
        data = images.read_image(path)  # (C, H, W)
        return (
            _select(data, bands, path),
            np.ones(data.shape[1:], dtype=bool),
            _plain_names(data.shape[0], bands),
            _grid_info(None),
        )
    info = raster_info.inspect_raster(path, "hr")
    selected = raster_info.select_bands(info, bands)
    nbytes = len(selected) * info.shape[0] * info.shape[1] * np.dtype(info.dtype).itemsize
    if nbytes > images.MAX_IMAGE_BYTES:
        raise InputError(
            f"hr {path} is {nbytes / 2**30:.1f} GiB decoded; --synthesize-changes loads an "
            f"image whole and takes at most {images.MAX_IMAGE_BYTES / 2**30:.0f} GiB",
            hint="cut it into smaller GeoTIFFs first (gdal_retile.py)",
        )
    values, valid = read.read_full(info, selected)  # (C, H, W), (H, W)
    if not valid.any():
        raise InputError(f"hr {path} has no valid pixels", hint="check its nodata value")
    names = _geo_names(tuple(info.band_descriptions[b - 1] for b in selected), selected)
    return values, valid, names, _grid_info(info.grid)


def _open_synthesized(
    plan: SourcePlan,
    scale: int,
    chip_px: int,
    bands: Sequence[int] | None,
    levels: tuple[float, float],
    seed: int,
    config: SynthesisConfig,
) -> OpenSource:
    values, valid, names, grid_info = _read_single(plan.paths["hr"], bands)
    source_shape = (int(values.shape[1]), int(values.shape[2]))
    shape = _cropped(source_shape, scale)
    values = np.ascontiguousarray(values[:, : shape[0], : shape[1]])  # (C, H, W)
    valid = np.ascontiguousarray(valid[: shape[0], : shape[1]])  # (H, W)
    info: dict[str, Any] = {
        "shape": list(source_shape),
        "used_shape": list(shape),
        "cropped": shape != source_shape,
        "dtype": {"hr": str(values.dtype)},
        "bands": {"hr": list(bands or range(1, values.shape[0] + 1))},
        **grid_info,
    }
    if not _fits(shape, max(chip_px, config.min_edge_px)) or not valid.any():
        return OpenSource(shape=shape, band_names=names, info=info, reader=None)
    hr_stats = _stats(values, valid, levels)
    info.update(_stats_info(hr=hr_stats))
    hr = model_values(values, valid, hr_stats[1])  # (C, H, W)
    made = synthesize_ref(hr, valid, rng=rng_for(seed, plan.name), config=config)
    info["synthesis"] = made.summary()
    reader = _ArrayReader(
        hr=hr,
        ref=made.ref,
        mask=made.mask,
        hr_valid=valid,
        ref_valid=made.ref_valid,
        lr=None,
        scale=scale,
    )
    return OpenSource(shape=shape, band_names=names, info=info, reader=reader)
