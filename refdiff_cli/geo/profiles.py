"""GDAL creation-option profiles of refdiff outputs (tiled GeoTIFF, COG) and ``--co`` parsing."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping
from typing import Literal

import numpy as np
import numpy.typing as npt
import rasterio
import rasterio.errors
from affine import Affine
from rasterio.io import MemoryFile

from refdiff_cli.errors import ConfigError
from refdiff_cli.geo.env import rasterio_env

logger = logging.getLogger(__name__)

ProfileName = Literal["gtiff", "cog"]

#: Default tile edge of the GeoTIFF profile in pixels.
DEFAULT_BLOCK_PX = 256
#: Default tile edge of the COG profile in pixels (the COG driver's own default).
COG_BLOCK_PX = 512
#: GeoTIFF tile edges must be multiples of this (TIFF specification).
TILE_MULTIPLE = 16
#: Classic TIFF offsets are 32-bit: files must stay below 2**32 bytes.
CLASSIC_TIFF_LIMIT_BYTES = 2**32
#: Room left below the classic TIFF limit for headers, tile indexes, metadata and compressed
#: blocks that grow beyond their raw size (incompressible data).
BIGTIFF_MARGIN_BYTES = 256 * 2**20
#: Overviews (factor 2, 4, 8, ...) add at most a third of the full-resolution size.
OVERVIEW_SIZE_FACTOR = 4 / 3


def bigtiff_option(raw_bytes: int) -> str:
    """Return the ``BIGTIFF`` creation option for an output of ``raw_bytes`` uncompressed bytes.

    GDAL's ``IF_SAFER`` heuristic guesses from the uncompressed size and the compression; it is
    kept for small outputs. Near the 4 GiB classic-TIFF limit the guess is not trusted and
    BigTIFF is forced, so a write never fails with "Maximum TIFF file size exceeded".

    Args:
        raw_bytes: uncompressed size of all bands and pixels, in bytes (>= 0).

    Returns:
        ``"YES"`` when ``raw_bytes >= 4 GiB - 256 MiB``, else ``"IF_SAFER"``.
    """
    if raw_bytes < 0:
        raise ValueError(f"raw_bytes must be >= 0, got {raw_bytes}")
    if raw_bytes >= CLASSIC_TIFF_LIMIT_BYTES - BIGTIFF_MARGIN_BYTES:
        return "YES"
    return "IF_SAFER"


@functools.cache
def best_compression() -> str:
    """Return ``"ZSTD"`` if this GDAL build writes ZSTD-compressed GeoTIFFs, else ``"DEFLATE"``.

    The answer is probed once per process by writing a 16x16 GeoTIFF in memory: an unsupported
    codec is silently ignored by GDAL (the file comes back uncompressed).
    """
    with rasterio_env(), MemoryFile() as memfile:
        try:
            with memfile.open(
                driver="GTiff",
                width=16,
                height=16,
                count=1,
                dtype="uint8",
                crs="EPSG:4326",
                transform=Affine(1.0, 0.0, 0.0, 0.0, -1.0, 16.0),
                compress="ZSTD",
            ) as dst:
                dst.write(np.zeros((1, 16, 16), dtype=np.uint8))  # (C, H, W)
            with memfile.open() as src:
                compression = src.compression
        except rasterio.errors.RasterioError:
            compression = None
    supported = compression is not None and compression.name.upper() == "ZSTD"
    if not supported:
        logger.info("this GDAL build cannot write ZSTD; using DEFLATE")
    return "ZSTD" if supported else "DEFLATE"


def predictor_for(dtype: npt.DTypeLike) -> str | None:
    """Return the TIFF ``PREDICTOR``: ``"2"`` for integers, ``"3"`` for floats, else None."""
    kind = np.dtype(dtype).kind
    if kind in "iu":
        return "2"
    if kind == "f":
        return "3"
    return None


def block_edge(size_px: int, block_px: int = DEFAULT_BLOCK_PX) -> int:
    """Return the tile edge for one raster dimension: ``block_px``, or less for tiny rasters.

    Args:
        size_px: raster width or height in pixels (>= 1).
        block_px: preferred tile edge in pixels, a positive multiple of 16.

    Returns:
        ``min(block_px, size_px rounded up to a multiple of 16)``: always a multiple of 16.
    """
    if size_px < 1:
        raise ValueError(f"raster size must be >= 1 pixel, got {size_px}")
    if block_px < TILE_MULTIPLE or block_px % TILE_MULTIPLE:
        raise ConfigError(
            f"block size {block_px} px is not a positive multiple of {TILE_MULTIPLE}",
            hint=f"use a multiple of {TILE_MULTIPLE}, e.g. {DEFAULT_BLOCK_PX}",
        )
    rounded = -(-size_px // TILE_MULTIPLE) * TILE_MULTIPLE
    return min(block_px, rounded)


def creation_profile(
    name: ProfileName,
    *,
    dtype: npt.DTypeLike,
    width: int,
    height: int,
    count: int,
    block_px: int | None = None,
) -> dict[str, str]:
    """Return refdiff's GDAL creation options (upper-case names, string values) for one output.

    ``"gtiff"``: tiled (256 px, smaller for tiny rasters), ZSTD or DEFLATE, predictor, BigTIFF
    as needed, all CPUs. ``"cog"``: the same for GDAL's COG driver, with AVERAGE overviews.

    Args:
        name: ``"gtiff"`` or ``"cog"``.
        dtype: output data type.
        width: output width in pixels (>= 1).
        height: output height in pixels (>= 1).
        count: number of bands (>= 1).
        block_px: preferred tile edge in pixels (multiple of 16); None for the profile default.
    """
    item_bytes = np.dtype(dtype).itemsize
    raw_bytes = width * height * count * item_bytes
    options: dict[str, str] = {"COMPRESS": best_compression(), "NUM_THREADS": "ALL_CPUS"}
    predictor = predictor_for(dtype)
    if name == "gtiff":
        edge = block_px or DEFAULT_BLOCK_PX
        options |= {
            "TILED": "YES",
            "BLOCKXSIZE": str(block_edge(width, edge)),
            "BLOCKYSIZE": str(block_edge(height, edge)),
            "BIGTIFF": bigtiff_option(raw_bytes),
        }
        if predictor is not None:
            options["PREDICTOR"] = predictor
    elif name == "cog":
        options |= {
            "BLOCKSIZE": str(block_px or COG_BLOCK_PX),
            "BIGTIFF": bigtiff_option(int(raw_bytes * OVERVIEW_SIZE_FACTOR)),
            "OVERVIEWS": "AUTO",
            "RESAMPLING": "AVERAGE",
        }
        if predictor is not None:
            options["PREDICTOR"] = "YES"  # the COG driver picks 2 or 3 from the data type
    else:
        raise ValueError(f"unknown creation profile {name!r}; known: gtiff, cog")
    return options


def overview_factors(width: int, height: int, block_w: int, block_h: int) -> list[int]:
    """Decimation factors of the internal overviews: 2, 4, 8, ... until one block holds a level.

    Args:
        width: raster width in pixels (>= 1).
        height: raster height in pixels (>= 1).
        block_w: tile width in pixels (>= 1); a striped file passes its width.
        block_h: tile height in pixels (>= 1).

    Returns:
        Powers of two, ascending; empty when the raster already fits in one block.
    """
    factors: list[int] = []
    factor = 1
    while -(-width // factor) > block_w or -(-height // factor) > block_h:
        factor *= 2
        factors.append(factor)
    return factors


def parse_creation_options(items: Iterable[str]) -> dict[str, str]:
    """Parse repeated ``--co NAME=VALUE`` items into a dict with upper-case names.

    GDAL option names are case-insensitive, so ``compress=lzw`` and ``COMPRESS=LZW`` name the
    same option; a later item overrides an earlier one. Values keep their case.

    Raises:
        ConfigError: an item has no ``=``, an empty name, or a name with spaces (exit 2).
    """
    options: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name or any(c.isspace() for c in name):
            raise ConfigError(
                f"--co expects NAME=VALUE, got {item!r}",
                hint="e.g. --co COMPRESS=DEFLATE (repeat --co for more options)",
            )
        options[name.upper()] = value.strip()
    return options


def merge_options(profile: Mapping[str, str], user: Mapping[str, str]) -> dict[str, str]:
    """Return ``profile`` overridden by the user's options (names compared case-insensitively)."""
    merged = {key.upper(): value for key, value in profile.items()}
    merged.update({key.upper(): value for key, value in user.items()})
    return merged
