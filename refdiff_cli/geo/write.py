"""The GeoTIFF writer: lock, hidden temp file, verified block-aligned strip writes, tags and
statistics, optional overviews and COG, no-clobber publish (reliability.md section 3.2)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
import rasterio
import rasterio.errors
import rasterio.shutil
from rasterio.enums import Resampling
from rasterio.windows import Window

from refdiff_cli.errors import ConfigError, OutputError
from refdiff_cli.geo import output_files, profiles, verify
from refdiff_cli.geo.band_names import RGB, band_name
from refdiff_cli.geo.band_statistics import BandStatistics
from refdiff_cli.geo.env import rasterio_env
from refdiff_cli.geo.gdal_errors import gdal_io, stderr_lines
from refdiff_cli.geo.grid import GridLike
from refdiff_cli.geo.preflight import check_replaceable

logger = logging.getLogger(__name__)


class RasterWriter:
    """Write one GeoTIFF through the protocol of reliability.md section 3.2.

    Use as a context manager: ``__enter__`` takes the lock ``<out>.lock`` and creates the hidden
    temp file ``.<name>.refdiff-<pid>-<rand>.partial`` next to the output; ``write_strip`` writes
    each block row exactly once; ``finalize`` tags, closes, verifies and publishes. Leaving the
    ``with`` block by any exception (KeyboardInterrupt and Interrupted included) removes the temp
    files and releases the lock; nothing appears under the output name.

    Args:
        out: final output path; its folder must exist.
        grid: output grid (``crs``, ``transform``, ``width``, ``height``).
        count: number of bands (>= 1).
        dtype: output data type; ``write_strip`` takes values already in it.
        nodata: output nodata value, valid for ``dtype``; invalid pixels are written as it.
            None declares no nodata; then every pixel written must be valid.
        band_descriptions: one description per band (None or "" leaves a band unnamed).
        creation_options: user ``--co`` items (``"NAME=VALUE"``) or a parsed mapping; they
            override the GeoTIFF profile, or the COG profile when ``cog`` is set.
        overwrite: replace an existing output (``os.replace``); otherwise publishing fails if
            the output exists (``os.link`` is atomic no-clobber).
        cog: publish a Cloud Optimized GeoTIFF (a verified COG copy of the verified temp file).
        block_px: tile edge in pixels, a multiple of 16; None for the profile default (256).
        overviews: build internal overviews (factors 2, 4, 8, ..., AVERAGE resampling, nodata
            excluded) in ``finalize``, before the file is verified and published; a COG reuses
            them.
        rgb: True declares bands 1-3 red, green, blue (``PHOTOMETRIC=RGB``; needs >= 3 bands),
            False grey / undefined (``PHOTOMETRIC=MINISBLACK``), None leaves GDAL's default.
            A ``--co PHOTOMETRIC`` item overrides either.

    Every band also gets GDAL's statistics tags (``STATISTICS_MINIMUM``, ``_MAXIMUM``,
    ``_MEAN``, ``_STDDEV`` (population), ``_VALID_PERCENT``), computed exactly from the
    strips as they are written, over the pixels that are neither nodata nor NaN.
    """

    def __init__(
        self,
        out: Path,
        grid: GridLike,
        *,
        count: int,
        dtype: npt.DTypeLike,
        nodata: float | None,
        band_descriptions: Sequence[str | None] | None = None,
        creation_options: Mapping[str, str] | Sequence[str] = (),
        overwrite: bool = False,
        cog: bool = False,
        block_px: int | None = None,
        overviews: bool = False,
        rgb: bool | None = None,
    ) -> None:
        self.out = Path(out)
        self.grid = grid
        self.count = count
        self.dtype = np.dtype(dtype)
        self.nodata = nodata
        self.overwrite = overwrite
        self.cog = cog
        self.overviews = overviews
        self.rgb = rgb
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        if rgb and count < 3:
            raise ValueError(f"an RGB output needs at least 3 bands, got {count}")
        if band_descriptions is not None and len(band_descriptions) != count:
            raise ValueError(f"{len(band_descriptions)} band descriptions for {count} bands")
        self.band_descriptions = tuple(band_descriptions or ())
        if nodata is not None:
            _check_nodata(nodata, self.dtype)
        if isinstance(creation_options, Mapping):
            self._user_options = profiles.merge_options({}, creation_options)
        else:
            self._user_options = profiles.parse_creation_options(creation_options)
        self._block_px = block_px
        self._folder = self.out.absolute().parent
        self.lock_path = self._folder / f"{self.out.name}.lock"
        self.temp_path = output_files.temp_path(self._folder, self.out.name, "partial")
        self._temps: list[Path] = []
        self._lock_fd: int | None = None
        self._dataset: Any = None
        self._block_rows = 0
        self._strips: dict[int, tuple[int, int]] = {}  # row_off -> (rows, crc32)
        self._tags: dict[str, str] = {}
        self._stats = [BandStatistics() for _ in range(count)]
        self._finalize_called = False

    @property
    def block_rows(self) -> int:
        """Block height of the output in rows; ``write_strip`` row offsets are multiples of it."""
        if self._dataset is None:
            raise RuntimeError("block_rows is known only inside the with block")
        return self._block_rows

    def __enter__(self) -> RasterWriter:
        try:
            self._lock_fd = output_files.acquire_lock(self.lock_path, self.out)
            check_replaceable(self.out)
            if os.path.lexists(self.out) and not self.overwrite:
                raise OutputError(
                    f"{self.out} already exists", hint="use --overwrite to replace it"
                )
            output_files.remove_stale_temps(self._folder, self.out.name)
            self._create_temp()
        except BaseException:
            self._cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._cleanup()
        if exc_type is None and not self._finalize_called:
            raise RuntimeError(
                f"RasterWriter for {self.out} left without finalize(); not published"
            )

    def write_strip(
        self, row_off: int, values: np.ndarray, valid: np.ndarray | None = None
    ) -> None:
        """Write full-width rows ``row_off ...`` once; invalid pixels become nodata.

        Args:
            row_off: first row, a multiple of ``block_rows``.
            values: (C, rows, W) array already in the output dtype; ``rows`` is a multiple of
                ``block_rows`` or reaches the last row.
            valid: (rows, W) bool, False where the output is nodata; None means all valid.

        Raises:
            TypeError: ``values`` is not in the output dtype.
            ValueError: wrong shape, unaligned rows, or rows already written.
            OutputError: the write failed (disk full or file size limit, I/O error).
        """
        if self._dataset is None:
            raise RuntimeError("write_strip() is only valid inside the with block, before finalize")
        if values.dtype != self.dtype:
            raise TypeError(f"values are {values.dtype}, the output is {self.dtype}; cast first")
        rows = values.shape[1] if values.ndim == 3 else 0
        if values.shape != (self.count, rows, self.grid.width) or rows == 0:
            raise ValueError(
                f"values {values.shape} are not (C={self.count}, rows, W={self.grid.width})"
            )
        if valid is not None and valid.shape != (rows, self.grid.width):
            raise ValueError(f"valid {valid.shape} does not match values {values.shape}")
        end = row_off + rows
        aligned = row_off % self._block_rows == 0 and (
            rows % self._block_rows == 0 or end == self.grid.height
        )
        if not aligned or end > self.grid.height:
            raise ValueError(
                f"rows {row_off}-{end - 1} are not whole blocks of {self._block_rows} rows"
            )
        if any(r < end and row_off < r + n for r, (n, _) in self._strips.items()):
            raise ValueError(f"rows {row_off}-{end - 1} overlap rows already written")
        if valid is not None and self.nodata is None and not bool(valid.all()):
            raise ValueError("invalid pixels need a nodata value; this output declares none")
        if valid is not None and self.nodata is not None:
            fill = np.asarray(self.nodata, dtype=self.dtype)
            values = np.where(valid[None], values, fill)  # (C, rows, W)
        values = np.ascontiguousarray(values)
        with gdal_io(self.out, f"writing rows {row_off}-{end - 1}"):
            self._dataset.write(values, window=Window(0, row_off, self.grid.width, rows))
        self._strips[row_off] = (rows, zlib.crc32(values.data))
        for band, stats in zip(values, self._stats, strict=True):
            stats.add(band, valid, self.nodata)

    def finalize(
        self,
        tags: Mapping[str, str],
        *,
        band_tags: Sequence[Mapping[str, str]] = (),
        before_publish: Callable[[], None] | None = None,
    ) -> Path:
        """Tag, close, verify, optionally convert to COG, and publish the output atomically.

        Args:
            tags: provenance tags (GDAL metadata, default namespace); ``REFDIFF_COMPLETE=1`` is
                added after them.
            band_tags: per band (first to last, possibly fewer than the bands), tags of
                that band, beside its statistics.
            before_publish: called after verification, just before publishing; raise in it to
                abort (e.g. an input changed during the run).

        Returns:
            The published output path.

        Raises:
            OutputError: a write, close or verification failed, or the output appeared meanwhile.
        """
        if self._dataset is None:
            raise RuntimeError("finalize() is only valid once, inside the with block")
        self._finalize_called = True
        if sum(rows for rows, _ in self._strips.values()) != self.grid.height:
            raise RuntimeError(
                f"finalize() before all {self.grid.height} rows of {self.out} were written"
            )
        everything = [*tags.items(), *(item for band in band_tags for item in band.items())]
        bad = [k for k, v in everything if not _valid_tag(k) or not isinstance(v, str)]
        if bad or verify.COMPLETE_TAG in tags:
            raise ValueError(
                f"invalid tags {bad or [verify.COMPLETE_TAG]}: names [A-Za-z0-9_.], str values"
            )
        self._tags = dict(tags)
        dataset, self._dataset = self._dataset, None
        with gdal_io(self.out, "building overviews, tagging and closing"):
            try:
                if self.overviews:
                    self._build_overviews(dataset)
                pixels = self.grid.width * self.grid.height
                for band, stats in enumerate(self._stats, start=1):
                    dataset.update_tags(band, **stats.tags(pixels))
                for band, extra in enumerate(band_tags, start=1):
                    dataset.update_tags(band, **extra)
                dataset.update_tags(**tags)
                dataset.update_tags(**{verify.COMPLETE_TAG: "1"})
            finally:
                dataset.close()
        final = self._verified(self.temp_path)
        if self.cog:
            final = self._cog_copy()
        if before_publish is not None:
            before_publish()
        output_files.publish(final, self.out, self._folder, overwrite=self.overwrite)
        logger.info("wrote %s", self.out)
        return self.out

    # -- internals --------------------------------------------------------------------------

    def _build_overviews(self, dataset: Any) -> None:
        """Internal AVERAGE overviews down to one block (``profiles.overview_factors``)."""
        block_h, block_w = dataset.block_shapes[0]
        if not dataset.profile.get("tiled"):  # strips: levels down to the default tile
            block_h = block_w = profiles.DEFAULT_BLOCK_PX
        factors = profiles.overview_factors(self.grid.width, self.grid.height, block_w, block_h)
        if factors:
            dataset.build_overviews(factors, Resampling.average)

    def _create_temp(self) -> None:
        grid = self.grid
        options = profiles.creation_profile(
            "gtiff",
            dtype=self.dtype,
            width=grid.width,
            height=grid.height,
            count=self.count,
            block_px=self._block_px,
        )
        if self.rgb is not None:
            options["PHOTOMETRIC"] = "RGB" if self.rgb else "MINISBLACK"
        if not self.cog:
            options = profiles.merge_options(options, self._user_options)
        self._temps.append(self.temp_path)
        with gdal_io(self.out, "creating the temp file"):
            self._dataset = rasterio.open(
                self.temp_path,
                "w",
                driver="GTiff",
                width=grid.width,
                height=grid.height,
                count=self.count,
                dtype=self.dtype.name,
                crs=grid.crs,
                transform=grid.transform,
                nodata=self.nodata,
                **options,
            )
            for band, description in enumerate(self.band_descriptions, start=1):
                if description:
                    self._dataset.set_band_description(band, description)
        self._block_rows = self._dataset.block_shapes[0][0]

    def _verified(self, path: Path) -> Path:
        try:
            verify.verify_raster(path, grid=self.grid, strips=self._strips, tags=self._tags)
        except OutputError as exc:
            raise OutputError(
                f"{self.out} was not published: {exc.message}", hint=exc.hint
            ) from exc
        return path

    def _cog_copy(self) -> Path:
        cog_path = output_files.temp_path(self._folder, self.out.name, "cog.partial")
        self._temps.append(cog_path)
        options = profiles.creation_profile(
            "cog",
            dtype=self.dtype,
            width=self.grid.width,
            height=self.grid.height,
            count=self.count,
            block_px=self._block_px,
        )
        options = profiles.merge_options(options, self._user_options)
        with gdal_io(self.out, "converting to COG"):
            rasterio.shutil.copy(self.temp_path, cog_path, driver="COG", **options)
        self._verified(cog_path)
        output_files.remove_with_side_files(self.temp_path)
        return cog_path

    def _cleanup(self) -> None:
        dataset, self._dataset = self._dataset, None
        if dataset is not None:
            discarded: list[str] = []  # a failed run's last flush repeats the failure
            with contextlib.suppress(Exception), stderr_lines(discarded), rasterio_env():
                dataset.close()
        for temp in self._temps:
            output_files.remove_with_side_files(temp)
        self._temps.clear()
        if self._lock_fd is not None:
            output_files.release_lock(self._lock_fd, self.lock_path)
            self._lock_fd = None


def nodata_fits(nodata: float, dtype: npt.DTypeLike) -> bool:
    """Whether ``nodata`` is a value of ``dtype``: NaN or within range for floats, a whole
    number within range for integers."""
    target = np.dtype(dtype)
    if target.kind == "f":
        return math.isnan(nodata) or abs(nodata) <= float(np.finfo(target).max)
    if target.kind in "iu":
        info = np.iinfo(target)
        return (
            math.isfinite(nodata)
            and float(nodata).is_integer()
            and (info.min <= nodata <= info.max)
        )
    return False


def output_is_rgb(
    lr: Path,
    bands: Sequence[int],
    *,
    descriptions: Sequence[str | None],
    model_bands: Sequence[str] | None,
) -> bool:
    """Whether an upscale output of LR ``bands`` is red, green, blue (bands 1-3, in order).

    The first rule that applies decides: a model's card names the bands it generates (one
    output band each); else the selected LR bands' names (``band_names.band_name``: a
    description such as ``red`` or ``B04``, else the colour interpretation). Fewer than 3
    bands: never.

    Args:
        lr: the LR GeoTIFF (only its header is read).
        bands: 1-based LR bands written, in output order.
        descriptions: their descriptions (None where unnamed).
        model_bands: the model card's band names, or None for engines without a model.
    """
    if len(bands) < 3:
        return False
    if model_bands is not None and len(model_bands) == len(bands):
        return tuple(name.lower() for name in model_bands[:3]) == RGB
    colours: tuple[str | None, ...] = (None, None, None)
    with (
        contextlib.suppress(rasterio.errors.RasterioError, OSError),
        rasterio_env(),
        rasterio.open(lr) as src,
    ):
        colours = tuple(src.colorinterp[b - 1].name for b in bands[:3])
    names = tuple(band_name(c, d) for c, d in zip(colours, descriptions[:3], strict=True))
    return names == RGB


def _check_nodata(nodata: float, dtype: np.dtype[Any]) -> None:
    if not nodata_fits(nodata, dtype):
        raise ConfigError(
            f"--nodata {nodata} is not a valid {dtype.name} value",
            hint=f"choose a nodata value inside the {dtype.name} range",
        )


def _valid_tag(name: str) -> bool:
    return bool(name) and all(c.isascii() and (c.isalnum() or c in "_.") for c in name)
