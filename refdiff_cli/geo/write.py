"""Safe GeoTIFF output: preflight, lock, hidden temp file, verified writes, no-clobber publish."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import logging
import math
import os
import secrets
import shutil
import stat
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import rasterio
import rasterio.crs
import rasterio.errors
import rasterio.shutil
import rasterio.transform
from rasterio.enums import Resampling
from rasterio.windows import Window

from refdiff_cli.errors import ConfigError, OutputError
from refdiff_cli.files import fsync_path
from refdiff_cli.geo import profiles
from refdiff_cli.geo.band_names import RGB, band_name
from refdiff_cli.geo.env import rasterio_env

logger = logging.getLogger(__name__)

#: Tag written last, after every other tag; an output without it is not a complete result.
COMPLETE_TAG = "REFDIFF_COMPLETE"
#: Fail preflight when the free space is below this fraction of the raw output size.
MIN_FREE_FRACTION = 0.10

# GDAL/libtiff wording of a failed write; none of it says "disk full".
_SPACE_WORDS = (
    "write failed",
    "write error",
    "no space left",
    "file too large",
    "seek error",
    "quota exceeded",
)
_NO_HARDLINK_ERRNOS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK})
_GDAL_ERROR_LOGGER = "rasterio._env"
_GDAL_ERROR_TEXT = "GDAL signalled an error"


class GridLike(Protocol):
    """What the writer needs of a grid (``geo.grid.Grid`` fits): CRS, affine transform, size."""

    @property
    def crs(self) -> Any: ...
    @property
    def transform(self) -> Any: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...


#: Bytes refdiff adds to an output name for its temp files: ``.<name>.refdiff-<pid>-<8 hex>
#: .cog.partial`` with a 7-digit PID (the probe and lock names are shorter).
TEMP_NAME_EXTRA_BYTES = len("..refdiff-4194304-0123abcd.cog.partial")


def check_output_name(out: Path) -> None:
    """Refuse an output name the file system cannot hold with refdiff's temp suffix (exit 4).

    Raises:
        OutputError: the name plus ``TEMP_NAME_EXTRA_BYTES`` exceeds the folder's NAME_MAX.
    """
    out = Path(out)
    size = len(os.fsencode(out.name))
    limit = 255
    with contextlib.suppress(OSError, ValueError):
        limit = os.pathconf(_nearest_folder(out.absolute().parent), "PC_NAME_MAX")
    room = limit - TEMP_NAME_EXTRA_BYTES
    if size > room:
        raise OutputError(
            f"output file name {out.name[:24]}...{out.suffix} is {size} bytes; this file "
            f"system takes {limit}, of which refdiff's temporary suffix needs "
            f"{TEMP_NAME_EXTRA_BYTES}",
            hint=f"choose an output name of at most {room} bytes",
        )


def check_replaceable(out: Path) -> None:
    """Refuse to replace anything but a regular file or a link (a device, a pipe, a socket).

    ``--overwrite`` replaces the output by rename: run as root on ``-o /dev/null`` it would
    put a GeoTIFF in place of the device.

    Raises:
        OutputError: ``out`` exists and is neither a regular file nor a symbolic link (exit 4).
    """
    try:
        mode = os.lstat(out).st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode) or stat.S_ISDIR(mode)):
        raise OutputError(
            f"output {out} exists and is not a regular file (a device, pipe or socket); "
            "refdiff never replaces one",
            hint="give -o the path of a file to create or replace",
        )


def _nearest_folder(folder: Path) -> Path:
    """``folder`` or its nearest existing ancestor (pathconf needs an existing path)."""
    for candidate in (folder, *folder.parents):
        with contextlib.suppress(OSError):
            if candidate.is_dir():
                return candidate
    return Path("/")


def byte_size(count: int) -> str:
    """Bytes in a readable binary unit: ``512.0 KiB``, ``3.4 GiB``, ``166.5 PiB``."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"


def preflight_output(out: Path, *, inputs: Sequence[Path], overwrite: bool, raw_bytes: int) -> int:
    """Check, before any model work, that ``out`` can be written; leave nothing behind.

    Args:
        out: the output path.
        inputs: every input file of the run; none may be the output (symlinks and hard links
            included).
        overwrite: whether an existing output may be replaced.
        raw_bytes: uncompressed output size in bytes (>= 0; 0 skips the free-space check).

    Returns:
        The free bytes in the output folder.

    Raises:
        OutputError: the output is an input, its folder is missing or not writable, it exists
            without ``overwrite``, or the free space is below 10 % of ``raw_bytes`` (exit 4).
    """
    out = Path(out)
    check_output_name(out)
    for source in inputs:
        if _same_file(out, source):
            raise OutputError(
                f"{out} would overwrite input {source}", hint="choose another output path"
            )
    folder = out.absolute().parent
    if not folder.is_dir():
        raise OutputError(
            f"output folder {folder} does not exist; create it first",
            hint=f"mkdir -p {folder}",
        )
    if out.is_dir():
        raise OutputError(f"output {out} is a directory", hint="give a file name with -o")
    check_replaceable(out)
    try:
        fd, probe = tempfile.mkstemp(
            prefix=f".{out.name}.refdiff-probe-", suffix=".partial", dir=folder
        )
    except OSError as exc:
        raise OutputError(
            f"output folder {folder} is not writable ({exc.strerror})",
            hint="choose a writable folder or fix its permissions",
        ) from exc
    os.close(fd)
    os.unlink(probe)
    if os.path.lexists(out) and not overwrite:
        raise OutputError(f"{out} already exists", hint="use --overwrite to replace it")
    free = shutil.disk_usage(folder).free
    if raw_bytes > 0:
        if free < MIN_FREE_FRACTION * raw_bytes:
            raise OutputError(
                f"not enough free space in {folder}: {byte_size(free)} free, the output "
                f"is {byte_size(raw_bytes)} uncompressed",
                hint="free some space or write elsewhere",
            )
        if free < raw_bytes:
            logger.warning(
                "%s has %s free, less than the %s uncompressed output; it fits only if it "
                "compresses well",
                folder,
                byte_size(free),
                byte_size(raw_bytes),
            )
    return free


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
    gdal_logger = logging.getLogger(_GDAL_ERROR_LOGGER)
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
        for prefix in ("CPLE_NotSupported in ", "CPLE_IllegalArg in ", _GDAL_ERROR_TEXT + ": "):
            message = message.removeprefix(prefix)
        if message not in self.messages:
            self.messages.append(message)
        return False


def read_completion_tags(path: Path) -> dict[str, str] | None:
    """Return the tags of a complete refdiff output, or None (missing, unreadable, incomplete).

    Only the header is read; files published by :class:`RasterWriter` were verified block by
    block before publishing, so ``REFDIFF_COMPLETE=1`` stands for a complete file.
    """
    try:
        with rasterio_env(), rasterio.open(path) as src:
            tags: dict[str, str] = src.tags()
    except (rasterio.errors.RasterioError, OSError):
        return None
    return tags if tags.get(COMPLETE_TAG) == "1" else None


def verify_raster(
    path: Path,
    *,
    grid: GridLike | None = None,
    strips: Mapping[int, tuple[int, int]] | None = None,
    tags: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Re-open a written raster, decode every block (overviews too) and return its tags.

    Args:
        path: the raster to check.
        grid: when given, the size, CRS and transform the raster must have.
        strips: ``{row_off: (rows, crc32)}`` of the full-width strips as written; each must read
            back with the same CRC32. Without it every block is decoded and not compared.
        tags: when given, tags the raster must carry with these values.

    Raises:
        OutputError: it does not open, a block does not decode or differs, the georeferencing
            differs, a tag is missing or ``REFDIFF_COMPLETE=1`` is absent.
    """
    with _gdal_io(path, "verifying"), rasterio.open(path) as src:
        problems = _header_problems(src, grid)
        if strips is not None:
            for row_off, (rows, crc) in sorted(strips.items()):
                values = src.read(window=Window(0, row_off, src.width, rows))  # (C, rows, W)
                if zlib.crc32(np.ascontiguousarray(values).data) != crc:
                    problems.append(f"rows {row_off}-{row_off + rows - 1} read back differently")
        else:
            _decode_all(src)
        for level in range(len(src.overviews(1))):
            with rasterio.open(path, overview_level=level) as overview:
                _decode_all(overview)
        found: dict[str, str] = src.tags()
    missing = [k for k, v in {**(tags or {}), COMPLETE_TAG: "1"}.items() if found.get(k) != v]
    if missing:
        problems.append(f"tags {', '.join(missing)} missing or different")
    if problems:
        raise OutputError(
            f"verification of {path} failed: {'; '.join(problems)}",
            hint="the file was not published; rerun",
        )
    return found


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
        self.temp_path = self._temp_name("partial")
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
            self._acquire_lock()
            check_replaceable(self.out)
            if os.path.lexists(self.out) and not self.overwrite:
                raise OutputError(
                    f"{self.out} already exists", hint="use --overwrite to replace it"
                )
            self._remove_stale_temps()
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
        with _gdal_io(self.out, f"writing rows {row_off}-{end - 1}"):
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
        if bad or COMPLETE_TAG in tags:
            raise ValueError(
                f"invalid tags {bad or [COMPLETE_TAG]}: names [A-Za-z0-9_.], str values"
            )
        self._tags = dict(tags)
        dataset, self._dataset = self._dataset, None
        with _gdal_io(self.out, "building overviews, tagging and closing"):
            try:
                if self.overviews:
                    self._build_overviews(dataset)
                pixels = self.grid.width * self.grid.height
                for band, stats in enumerate(self._stats, start=1):
                    dataset.update_tags(band, **stats.tags(pixels))
                for band, extra in enumerate(band_tags, start=1):
                    dataset.update_tags(band, **extra)
                dataset.update_tags(**tags)
                dataset.update_tags(**{COMPLETE_TAG: "1"})
            finally:
                dataset.close()
        final = self._verified(self.temp_path)
        if self.cog:
            final = self._cog_copy()
        if before_publish is not None:
            before_publish()
        self._publish(final)
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

    def _temp_name(self, suffix: str) -> Path:
        # The random part only avoids name clashes; it is not a reproducible draw.
        token = secrets.token_hex(4)
        return self._folder / f".{self.out.name}.refdiff-{os.getpid()}-{token}.{suffix}"

    def _acquire_lock(self) -> None:
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise OutputError(
                    f"cannot create the lock file {self.lock_path} ({exc.strerror})",
                    hint="check that the output folder exists and is writable",
                ) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise OutputError(
                    f"{self.out} is being written by PID {holder} (lock {self.lock_path})",
                    hint="wait for that run to finish or choose another output",
                ) from None
            # The previous holder removes the lock file on release: lock the file on disk.
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(fd), os.stat(self.lock_path)):
                    break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _remove_stale_temps(self) -> None:
        assert self._lock_fd is not None, "stale temp files may only be removed under the lock"
        pattern = f".{glob.escape(self.out.name)}.refdiff-*.partial*"
        for stale in self._folder.glob(pattern):
            logger.info("removing stale temp file %s", stale)
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

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
        with _gdal_io(self.out, "creating the temp file"):
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
            verify_raster(path, grid=self.grid, strips=self._strips, tags=self._tags)
        except OutputError as exc:
            raise OutputError(
                f"{self.out} was not published: {exc.message}", hint=exc.hint
            ) from exc
        return path

    def _cog_copy(self) -> Path:
        cog_path = self._temp_name("cog.partial")
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
        with _gdal_io(self.out, "converting to COG"):
            rasterio.shutil.copy(self.temp_path, cog_path, driver="COG", **options)
        self._verified(cog_path)
        _remove_with_side_files(self.temp_path)
        return cog_path

    def _publish(self, final: Path) -> None:
        """fsync ``final``, move it under the output name (no clobber), fsync the folder."""
        try:
            fsync_path(final)
            if self.overwrite:
                os.replace(final, self.out)
            else:
                try:
                    os.link(final, self.out)
                except OSError as exc:
                    if exc.errno not in _NO_HARDLINK_ERRNOS:
                        raise
                    # No hard links here: reserve the name exclusively, then replace the empty
                    # placeholder. Readers may see it for that instant, and a writer with
                    # --overwrite could replace it in between.
                    os.close(os.open(self.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                    os.replace(final, self.out)
                else:
                    os.unlink(final)
            fsync_path(self._folder, directory=True)
        except FileExistsError as exc:
            raise OutputError(
                f"{self.out} appeared while it was being written; the new result was discarded",
                hint="use --overwrite to replace it",
            ) from exc
        except OSError as exc:
            raise _failure(self.out, "publishing", exc.strerror or str(exc), exc) from exc

    def _cleanup(self) -> None:
        dataset, self._dataset = self._dataset, None
        if dataset is not None:
            discarded: list[str] = []  # a failed run's last flush repeats the failure
            with contextlib.suppress(Exception), _stderr_lines(discarded), rasterio_env():
                dataset.close()
        for temp in self._temps:
            _remove_with_side_files(temp)
        self._temps.clear()
        if self._lock_fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.lock_path)  # while still holding it: see _acquire_lock
            os.close(self._lock_fd)
            self._lock_fd = None


class BandStatistics:
    """Exact running statistics of one band over the strips written (Chan et al.'s merge).

    Pixels count when they are valid, differ from the nodata value and are not NaN: GDAL's
    own rule, so the tags match what ``gdalinfo -stats`` computes.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the mean
        self.minimum = math.inf
        self.maximum = -math.inf

    def add(self, values: np.ndarray, valid: np.ndarray | None, nodata: float | None) -> None:
        """Take one strip of one band: ``values`` (rows, W), ``valid`` (rows, W) or None."""
        keep = np.ones(values.shape, dtype=bool) if valid is None else valid.copy()
        if values.dtype.kind == "f":
            keep &= ~np.isnan(values)
        if nodata is not None and not math.isnan(nodata):
            keep &= values != np.asarray(nodata).astype(values.dtype)
        picked = values[keep].astype(np.float64)  # (N,)
        n = picked.size
        if n == 0:
            return
        mean = float(picked.mean())
        self.minimum = min(self.minimum, float(picked.min()))
        self.maximum = max(self.maximum, float(picked.max()))
        # Squared deviations in place: one float64 copy of the strip band, not three
        # (a 8192 px wide strip of 256 rows: 16 MiB instead of 48).
        np.subtract(picked, mean, out=picked)
        m2 = float(np.square(picked, out=picked).sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    def tags(self, pixels: int) -> dict[str, str]:
        """GDAL's ``STATISTICS_*`` band tags for a band of ``pixels`` pixels; {} without data."""
        if self.count == 0:
            return {}
        return {
            "STATISTICS_MINIMUM": f"{self.minimum:.17g}",
            "STATISTICS_MAXIMUM": f"{self.maximum:.17g}",
            "STATISTICS_MEAN": f"{self.mean:.17g}",
            "STATISTICS_STDDEV": f"{math.sqrt(self.m2 / self.count):.17g}",
            "STATISTICS_VALID_PERCENT": f"{100.0 * self.count / pixels:.6g}",
        }


class _GdalErrorFilter(logging.Filter):
    """Collects rasterio's "GDAL signalled an error" records; drops what the logger would have."""

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _GDAL_ERROR_TEXT in message:
            self.messages.append(message.replace(_GDAL_ERROR_TEXT + ": ", ""))
        return record.levelno >= self.threshold


@contextlib.contextmanager
def _gdal_io(out: Path, action: str) -> Iterator[None]:
    """Run rasterio I/O under refdiff's env; raised or merely logged GDAL errors -> OutputError.

    rasterio reports some failures (e.g. a block flush failing at close) only as INFO records
    on ``rasterio._env``; they are collected here and treated as fatal. What libtiff prints
    straight to the stderr file descriptor (``_tiffWriteProc: No space left on device.``) is
    captured too: it explains the failure, and is not shown raw.
    """
    gdal_logger = logging.getLogger(_GDAL_ERROR_LOGGER)
    old_level = gdal_logger.level
    collector = _GdalErrorFilter(gdal_logger.getEffectiveLevel())
    gdal_logger.addFilter(collector)
    gdal_logger.setLevel(min(logging.INFO, gdal_logger.getEffectiveLevel()))
    printed: list[str] = []
    try:
        with _stderr_lines(printed), rasterio_env():
            yield
    except OutputError:
        raise
    except (rasterio.errors.RasterioError, OSError) as exc:
        raise _failure(out, action, _explained(exc), exc, printed) from exc
    finally:
        gdal_logger.removeFilter(collector)
        gdal_logger.setLevel(old_level)
    if collector.messages:
        first, more = collector.messages[0], len(collector.messages) - 1
        raise _failure(out, action, first + (f" (+{more} more)" if more else ""), None, printed)
    failed = [line for line in printed if any(w in line.lower() for w in _SPACE_WORDS)]
    if failed:  # libtiff said a write failed, though GDAL returned success: do not go on
        raise _failure(out, action, failed[0], None, printed)
    for line in printed:  # no failure: pass the lines on as log records
        logger.warning("GDAL: %s", line)


def _explained(exc: BaseException) -> str:
    """rasterio's "Read failed. See previous exception for details." with that exception."""
    cause = exc.__cause__ or exc.__context__
    if "previous exception" in str(exc) and cause is not None:
        return str(cause)
    return str(exc)


@contextlib.contextmanager
def _stderr_lines(lines: list[str]) -> Iterator[None]:
    """Collect into ``lines`` what C code writes to file descriptor 2 inside the block."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2 (embedded, closed): as is
        saved = -1
    if saved < 0:
        yield
        return
    sink = _memory_file()
    try:
        os.dup2(sink, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.lseek(sink, 0, os.SEEK_SET)
        with os.fdopen(sink, "rb") as captured:
            text = captured.read(65536).decode(errors="replace")
        for line in text.splitlines():
            if line.strip() and line.strip() not in lines:
                lines.append(line.strip())


def _memory_file() -> int:
    """A file descriptor of an anonymous file (in memory where the OS offers it)."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("refdiff-gdal-stderr")
    fd, name = tempfile.mkstemp(prefix="refdiff-gdal-stderr-")
    os.unlink(name)
    return fd


def _failure(
    out: Path,
    action: str,
    detail: str,
    exc: BaseException | None,
    printed: Sequence[str] = (),
) -> OutputError:
    """The OutputError for a failed write: disk full and file size limits said as such."""
    detail = " ".join(detail.split())
    said = " ".join([detail, *printed]).lower()
    errno_ = exc.errno if isinstance(exc, OSError) else None
    folder = out.absolute().parent
    if errno_ in (errno.ENOSPC, errno.EDQUOT) or "no space left" in said or "quota" in said:
        return OutputError(
            f"disk full: no space left in {folder} ({out.name}: {action} failed; nothing was "
            "published)",
            hint=f"free space in {folder} or write elsewhere with -o, then rerun",
        )
    if errno_ == errno.EFBIG or "file too large" in said:
        return OutputError(
            f"file size limit reached writing {out} ({action} failed; nothing was published)",
            hint="raise the file size limit (ulimit -f) or write elsewhere, then rerun",
        )
    if any(word in said for word in _SPACE_WORDS):
        return OutputError(
            f"disk full or file size limit ({out}): {action} failed: {detail}",
            hint="free disk space or raise the file size limit (ulimit -f), then rerun",
        )
    return OutputError(
        f"{out}: {action} failed: {detail}",
        hint="check the output folder and the --co creation options",
    )


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


def _header_problems(src: Any, grid: GridLike | None) -> list[str]:
    if grid is None:
        return []
    problems = []
    if (src.width, src.height) != (grid.width, grid.height):
        problems.append(f"size {src.width}x{src.height}, expected {grid.width}x{grid.height}")
    if grid.crs is not None and src.crs != rasterio.crs.CRS.from_user_input(grid.crs):
        problems.append(f"CRS {src.crs}, expected {grid.crs}")
    if not src.transform.almost_equals(grid.transform):
        problems.append(
            f"transform {tuple(src.transform)[:6]}, expected {tuple(grid.transform)[:6]}"
        )
    return problems


def _decode_all(src: Any) -> None:
    for _, window in src.block_windows(1):
        src.read(window=window)  # (C, h, w), decoded and dropped


def _remove_with_side_files(path: Path) -> None:
    """Remove ``path`` and anything GDAL put next to it (``<path>.aux.xml``, ``<path>.ovr``)."""
    for candidate in (path, *path.parent.glob(glob.escape(path.name) + ".*")):
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()


def _valid_tag(name: str) -> bool:
    return bool(name) and all(c.isascii() and (c.isalnum() or c in "_.") for c in name)


def _same_file(a: Path, b: Path) -> bool:
    """True when both paths exist and are one file (same path, symlink or hard link)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
