"""Opening and describing one input raster: path checks, the GeoTIFF header (``RasterInfo``),
band selection, and the file stamps that tell whether an input changed."""

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
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
from affine import Affine
from rasterio.enums import ColorInterp

from refdiff_cli.errors import ConfigError, InputError
from refdiff_cli.geo.band_names import band_name
from refdiff_cli.geo.env import rasterio_env
from refdiff_cli.geo.gdal_errors import gdal_text
from refdiff_cli.geo.grid import Grid
from refdiff_cli.geo.tiffcheck import truncation

logger = logging.getLogger(__name__)

#: More selected bands than this are refused before anything is allocated (crafted headers).
MAX_BANDS = 256

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
                f"{role} {path} is not a GeoTIFF or is corrupt: {gdal_text(exc)}",
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
