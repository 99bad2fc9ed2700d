"""GDAL's errors said plainly: failed writes become OutputError (disk full, file size limit),
what GDAL or libtiff only logs or prints is caught, and rasterio's read errors get their cause."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import rasterio.errors

from refdiff_cli.errors import OutputError
from refdiff_cli.geo.env import rasterio_env

logger = logging.getLogger(__name__)

# GDAL/libtiff wording of a failed write; none of it says "disk full".
_SPACE_WORDS = (
    "write failed",
    "write error",
    "no space left",
    "file too large",
    "seek error",
    "quota exceeded",
)
GDAL_ERROR_LOGGER = "rasterio._env"
GDAL_ERROR_TEXT = "GDAL signalled an error"


class _GdalErrorFilter(logging.Filter):
    """Collects rasterio's "GDAL signalled an error" records of the thread that created it;
    drops what the logger would have.

    rasterio logs a GDAL error in the thread that caused it, and the logger is shared: the
    read-ahead thread's read errors (raised there) are not this thread's write failure.
    """

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if GDAL_ERROR_TEXT in message and record.thread == self.thread:
            self.messages.append(message.replace(GDAL_ERROR_TEXT + ": ", ""))
        return record.levelno >= self.threshold


@contextlib.contextmanager
def gdal_io(out: Path, action: str) -> Iterator[None]:
    """Run rasterio I/O under refdiff's env; raised or merely logged GDAL errors -> OutputError.

    rasterio reports some failures (e.g. a block flush failing at close) only as INFO records
    on ``rasterio._env``; they are collected here (this thread's only) and treated as fatal.
    What libtiff prints straight to the stderr file descriptor (``_tiffWriteProc: No space
    left on device.``) is captured too: it explains the failure, and is not shown raw. The
    descriptor is the process's: what another thread prints meanwhile is captured with it and
    passed on as log records, which is why writes stay in the thread that shows progress.
    """
    gdal_logger = logging.getLogger(GDAL_ERROR_LOGGER)
    old_level = gdal_logger.level
    collector = _GdalErrorFilter(gdal_logger.getEffectiveLevel())
    gdal_logger.addFilter(collector)
    gdal_logger.setLevel(min(logging.INFO, gdal_logger.getEffectiveLevel()))
    printed: list[str] = []
    try:
        with stderr_lines(printed), rasterio_env():
            yield
    except OutputError:
        raise
    except (rasterio.errors.RasterioError, OSError) as exc:
        raise write_failure(out, action, _explained(exc), exc, printed) from exc
    finally:
        gdal_logger.removeFilter(collector)
        gdal_logger.setLevel(old_level)
    if collector.messages:
        first, more = collector.messages[0], len(collector.messages) - 1
        raise write_failure(
            out, action, first + (f" (+{more} more)" if more else ""), None, printed
        )
    failed = [line for line in printed if any(w in line.lower() for w in _SPACE_WORDS)]
    if failed:  # libtiff said a write failed, though GDAL returned success: do not go on
        raise write_failure(out, action, failed[0], None, printed)
    for line in printed:  # no failure: pass the lines on as log records
        logger.warning("GDAL: %s", line)


def _explained(exc: BaseException) -> str:
    """rasterio's "Read failed. See previous exception for details." with that exception."""
    cause = exc.__cause__ or exc.__context__
    if "previous exception" in str(exc) and cause is not None:
        return str(cause)
    return str(exc)


@contextlib.contextmanager
def stderr_lines(lines: list[str]) -> Iterator[None]:
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


def write_failure(
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


def gdal_text(exc: BaseException) -> str:
    """An exception's text on one line, with its cause where that adds to it."""
    text = " ".join(str(exc).split())
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" ({' '.join(str(cause).split())})"
    return text
