"""Checks, before any model work, that an output path can be written: the name's length, the
kind of file it would replace, the inputs, the folder, the free space. Nothing is left behind."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path

from refdiff_cli.errors import OutputError

logger = logging.getLogger(__name__)

#: Fail preflight when the free space is below this fraction of the raw output size.
MIN_FREE_FRACTION = 0.10

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


def _same_file(a: Path, b: Path) -> bool:
    """True when both paths exist and are one file (same path, symlink or hard link)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
