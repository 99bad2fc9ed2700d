"""The files the write protocol keeps beside an output: its lock, the hidden temp files named
after it, and the no-clobber publish that moves the finished file under the output name."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import logging
import os
import secrets
from pathlib import Path

from refdiff_cli.errors import OutputError
from refdiff_cli.files import fsync_path
from refdiff_cli.geo.gdal_errors import write_failure

logger = logging.getLogger(__name__)

_NO_HARDLINK_ERRNOS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK})


def temp_path(folder: Path, name: str, suffix: str) -> Path:
    """A fresh hidden temp file name for output ``name`` in ``folder``: ``.<name>.refdiff-<pid>
    -<8 hex>.<suffix>``."""
    # The random part only avoids name clashes; it is not a reproducible draw.
    token = secrets.token_hex(4)
    return folder / f".{name}.refdiff-{os.getpid()}-{token}.{suffix}"


def acquire_lock(lock_path: Path, out: Path) -> int:
    """Lock ``lock_path`` (the lock of ``out``) exclusively and write our PID in it.

    Returns:
        The lock file's descriptor; ``release_lock`` gives it back.

    Raises:
        OutputError: the lock file cannot be created, or another run holds it (exit 4).
    """
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise OutputError(
                f"cannot create the lock file {lock_path} ({exc.strerror})",
                hint="check that the output folder exists and is writable",
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputError(
                f"{out} is being written by PID {holder} (lock {lock_path})",
                hint="wait for that run to finish or choose another output",
            ) from None
        # The previous holder removes the lock file on release: lock the file on disk.
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(lock_path)):
                break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def release_lock(fd: int, lock_path: Path) -> None:
    """Remove the lock file, then close its descriptor ``fd``."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lock_path)  # while still holding it: see acquire_lock
    os.close(fd)


def remove_stale_temps(folder: Path, name: str) -> None:
    """Remove temp files of output ``name`` left in ``folder`` by killed runs (under the lock)."""
    pattern = f".{glob.escape(name)}.refdiff-*.partial*"
    for stale in folder.glob(pattern):
        logger.info("removing stale temp file %s", stale)
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def publish(final: Path, out: Path, folder: Path, *, overwrite: bool) -> None:
    """fsync ``final``, move it under the output name (no clobber), fsync the folder."""
    try:
        fsync_path(final)
        if overwrite:
            os.replace(final, out)
        else:
            try:
                os.link(final, out)
            except OSError as exc:
                if exc.errno not in _NO_HARDLINK_ERRNOS:
                    raise
                # No hard links here: reserve the name exclusively, then replace the empty
                # placeholder. Readers may see it for that instant, and a writer with
                # --overwrite could replace it in between.
                os.close(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                os.replace(final, out)
            else:
                os.unlink(final)
        fsync_path(folder, directory=True)
    except FileExistsError as exc:
        raise OutputError(
            f"{out} appeared while it was being written; the new result was discarded",
            hint="use --overwrite to replace it",
        ) from exc
    except OSError as exc:
        raise write_failure(out, "publishing", exc.strerror or str(exc), exc) from exc


def remove_with_side_files(path: Path) -> None:
    """Remove ``path`` and anything GDAL put next to it (``<path>.aux.xml``, ``<path>.ovr``)."""
    for candidate in (path, *path.parent.glob(glob.escape(path.name) + ".*")):
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()
