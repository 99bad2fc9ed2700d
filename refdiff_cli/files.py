"""File helpers every writer shares: a file's sha256, fsync, and replace-on-success temp paths."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_path(path: Path, *, directory: bool = False) -> None:
    """Flush a file's (or a folder's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def umask_mode() -> int:
    """Mode of a new regular file under the process umask (0o644 under the usual 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A hidden temporary path next to ``path`` that becomes ``path`` only if the block succeeds.

    On success the temporary file gets the umask's permissions (some writers, safetensors
    among them, create owner-only files), is fsynced, renamed over ``path`` (atomic on one file
    system: it is in the same folder) and the folder is fsynced; on any exception, Ctrl-C
    included, it is removed and ``path`` is untouched.
    """
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        yield temp
        os.chmod(temp, umask_mode())
        fsync_path(temp)
        os.replace(temp, path)
        fsync_path(path.parent, directory=True)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
