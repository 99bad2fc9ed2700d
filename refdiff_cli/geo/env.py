"""The GDAL environment every refdiff read and write runs under."""

from __future__ import annotations

from typing import Any

import rasterio

#: GDAL block cache in bytes. rasterio passes integers through as bytes, so "64" would mean
#: 64 bytes (measured: 3.4x slower reads); the cache bounds memory on large rasters. 64 MiB
#: read a 20000^2 LR in 2.6 s at 133 MB peak RSS (reliability.md, finding 11); 16 MiB still
#: holds a 256-row block row of a 20000 px wide RGB uint8 raster (scans decode each block
#: once), and an 8192^2 bicubic upscale peaked 50-60 MiB lower at the same CPU time and
#: bytes (uint8 and float32 outputs; issue 11).
GDAL_CACHE_BYTES = 16 * 1024 * 1024


def rasterio_env(**extra: Any) -> rasterio.Env:
    """Return a ``rasterio.Env`` with refdiff's safety settings.

    - ``GTIFF_IGNORE_READ_ERRORS=NO`` overrides a user environment that would turn a corrupt
      block into silent zeros.
    - ``GDAL_CACHEMAX`` is set explicitly in bytes (the default is 5 % of RAM).
    - ``GDAL_DISABLE_READDIR_ON_OPEN`` avoids listing big folders on every open.
    - ``CPL_VSIL_CURL_ALLOWED_EXTENSIONS`` set to an impossible value keeps GDAL off the network.
    """
    options: dict[str, Any] = {
        "GTIFF_IGNORE_READ_ERRORS": "NO",
        "GDAL_CACHEMAX": GDAL_CACHE_BYTES,
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".refdiff-no-network",
        "GDAL_HTTP_TIMEOUT": 1,
    }
    options.update(extra)
    return rasterio.Env(**options)
