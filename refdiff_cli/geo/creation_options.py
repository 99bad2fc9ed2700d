"""``--co`` creation options checked before any work: a trial write refuses unknown, ignored
and lossy options (refdiff verifies every written pixel, which a lossy codec never passes)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import rasterio
import rasterio.shutil
import rasterio.transform

from refdiff_cli.errors import ConfigError
from refdiff_cli.geo import profiles
from refdiff_cli.geo.env import rasterio_env
from refdiff_cli.geo.gdal_errors import GDAL_ERROR_LOGGER, GDAL_ERROR_TEXT

#: Codecs that change pixel values; a written strip could never be verified bit for bit.
_LOSSY_CODECS = frozenset({"JPEG"})
_TRUE = frozenset({"YES", "TRUE", "ON", "1"})


def check_creation_options(items: Sequence[str], *, cog: bool = False) -> dict[str, str]:
    """Validate ``--co NAME=VALUE`` items before any work; return them parsed.

    A 16 x 16 GeoTIFF (a COG with ``cog``) is written in memory with them: an option GDAL
    does not know, a value it ignores (``COMPRESS=FOO`` would silently write an uncompressed
    file) or rejects is refused. Lossy compression is refused too: refdiff checks every strip
    it wrote bit for bit before publishing, which a lossy codec can never pass.

    Raises:
        ConfigError: malformed, unknown, unsupported or lossy options (exit 2).
    """
    options = profiles.parse_creation_options(items)
    if not options:
        return options
    codec = options.get("COMPRESS", "").upper()
    lossy = (
        codec in _LOSSY_CODECS
        or (codec == "WEBP" and not _webp_lossless(options, cog=cog))
        or (codec == "JXL" and options.get("JXL_LOSSLESS", "YES").upper() not in _TRUE)
        or _positive(options.get("MAX_Z_ERROR"))
    )
    if lossy:
        what = f"COMPRESS={options['COMPRESS']}" if codec else "MAX_Z_ERROR > 0"
        raise ConfigError(
            f"--co {what} is lossy compression: refdiff verifies every pixel it writes before "
            "publishing, which a lossy output never passes",
            hint="use a lossless --co COMPRESS (ZSTD, DEFLATE, LZW, LERC) and convert "
            "afterwards, e.g. gdal_translate -co COMPRESS=JPEG sr.tif sr_jpeg.tif",
        )
    dtype = "float32" if options.get("PREDICTOR") == "3" else "uint8"
    count = 3 if codec == "WEBP" else 1  # WEBP takes RGB(A) only
    problems = _probe_options(options, dtype=dtype, count=count, cog=cog)
    if problems:
        given = " ".join(f"--co {name}={value}" for name, value in options.items())
        raise ConfigError(
            f"{given}: {problems[0].rstrip('.')}",  # GDAL's first complaint says the most
            hint=f"see the creation options of GDAL's {'COG' if cog else 'GTiff'} driver; names "
            "and values must be exact, e.g. --co COMPRESS=DEFLATE",
        )
    return options


def _webp_lossless(options: Mapping[str, str], *, cog: bool) -> bool:
    if cog:  # the COG driver writes lossless WEBP at QUALITY=100
        return options.get("QUALITY") == "100"
    return options.get("WEBP_LOSSLESS", "").upper() in _TRUE


def _positive(value: str | None) -> bool:
    try:
        return value is not None and float(value) > 0
    except ValueError:
        return False


def _probe_options(options: Mapping[str, str], *, dtype: str, count: int, cog: bool) -> list[str]:
    """Write a 16 x 16 raster with ``options``; GDAL's complaints, or [] when it took them."""
    from rasterio.io import MemoryFile

    size = profiles.TILE_MULTIPLE
    base = profiles.creation_profile(
        "cog" if cog else "gtiff", dtype=dtype, width=size, height=size, count=count
    )
    merged = profiles.merge_options(base, options)
    gdal_logger = logging.getLogger(GDAL_ERROR_LOGGER)
    collector = _GdalMessages()
    gdal_logger.addFilter(collector)
    problems: list[str] = []
    try:
        with rasterio_env(), MemoryFile() as plain, MemoryFile() as copied:
            profile = {} if cog else merged
            with plain.open(
                driver="GTiff",
                width=size,
                height=size,
                count=count,
                dtype=dtype,
                crs="EPSG:4326",
                transform=rasterio.transform.from_origin(0.0, 16.0, 1.0, 1.0),
                **profile,
            ) as dst:
                dst.write(np.zeros((count, size, size), dtype=dtype))  # (C, H, W)
            written = plain
            if cog:
                rasterio.shutil.copy(plain.name, copied.name, driver="COG", **merged)
                written = copied
            codec = options.get("COMPRESS", "").upper()
            with written.open() as src:
                got = (src.compression.name if src.compression else "NONE").upper()
            if codec not in ("", "NONE") and got == "NONE":  # GDAL dropped the codec
                problems.append(f"this GDAL build writes no COMPRESS={options['COMPRESS']}")
    except Exception as exc:  # rasterio's and GDAL's own (CPLE_*) errors alike
        problems.append(" ".join(str(exc).split()))
    finally:
        gdal_logger.removeFilter(collector)
    return collector.messages + problems


class _GdalMessages(logging.Filter):
    """Collects GDAL's warnings and errors and keeps them off the log (they become one error)."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        message = " ".join(record.getMessage().split())
        for prefix in ("CPLE_NotSupported in ", "CPLE_IllegalArg in ", GDAL_ERROR_TEXT + ": "):
            message = message.removeprefix(prefix)
        if message not in self.messages:
            self.messages.append(message)
        return False
