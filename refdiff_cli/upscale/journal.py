"""The resume journal of one output: its finished strips, kept until the output is published.

An upscale stores every output strip it finishes in the folder ``.<name>.refdiff-resume/``
beside the output (and beside the hidden ``.partial`` GeoTIFF): one file per strip, holding
the arrays written for those rows (numpy ``.npy`` records, no pickles, zlib-compressed), and
``journal.jsonl``: a header line binding the journal to one run's parameters and inputs, then
one line per committed strip (first row, rows, file name, sha256 of the file). A strip is
committed when its file is fsynced and then its line is appended and fsynced, so a kill at any
instant leaves either a committed strip or none.

A rerun of the same command trusts only the leading strips that follow on from row 0 and whose
files still hash to the recorded sha256; everything after the first one that does not verify
is deleted and computed again. A partial GeoTIFF is not durable before it is closed
(``docs/reliability.md`` section 3.3), so the strips are replayed into a fresh one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import logging
import os
import shutil
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from refdiff_cli.errors import Interrupted, OutputError
from refdiff_cli.files import fsync_path

logger = logging.getLogger(__name__)

#: Version of the journal layout; a journal of another version is discarded.
FORMAT = 1
#: zlib level of the strip files: level 1 costs a fraction of level 6's time for most of its
#: saving on image data.
COMPRESSION_LEVEL = 1

Arrays = Mapping[str, npt.NDArray[np.generic]]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class _Entry:
    """One committed strip: rows ``row_off .. row_off + rows - 1`` in ``file``."""

    row_off: int
    rows: int
    file: str
    sha256: str
    arrays: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "arrays": list(self.arrays)}, sort_keys=True)


def journal_folder(out: Path) -> Path:
    """The resume folder of output ``out``: ``.<name>.refdiff-resume`` in its folder."""
    out = Path(out)
    return out.absolute().parent / f".{out.name}.refdiff-resume"


@contextlib.contextmanager
def open_journal(out: Path, binding: str, *, restart: bool) -> Iterator[ResumeJournal]:
    """The resume journal of ``out`` for one run (arguments as ``ResumeJournal``'s).

    Leaving the block normally (the output was published) or by an error (disk full, an input
    changed: its space is freed for the next try) deletes the journal; an interruption (Ctrl-C,
    SIGTERM) keeps it for a rerun and says so (unless it holds no strip), and so does a kill.
    """
    journal = ResumeJournal(out, binding, restart=restart)
    try:
        yield journal
    except (KeyboardInterrupt, Interrupted):
        if not journal.strips:
            journal.discard()
            raise
        logger.info(
            "kept %d finished strip(s) of %s in %s; rerun the same command to resume",
            journal.strips,
            journal.out.name,
            journal.folder,
        )
        raise
    except BaseException:
        journal.discard()
        raise
    journal.discard()


class ResumeJournal:
    """Finished strips of one output, on disk, bound to one run's parameters and inputs.

    Open it only while holding the output's lock (inside ``geo.write.RasterWriter``), through
    ``open_journal``.

    Args:
        out: the output path.
        binding: hex digest of everything the output bytes depend on; a journal with another
            binding is discarded.
        restart: discard any saved progress (``--overwrite``).
    """

    def __init__(self, out: Path, binding: str, *, restart: bool) -> None:
        self.out = Path(out)
        self.folder = journal_folder(self.out)
        self.binding = binding
        self._entries: list[_Entry] = []  # verified strips, top to bottom
        self._next_row = 0
        try:
            if self.folder.exists():
                self._load(restart=restart)
            if not self._entries:
                self._start()
        except OSError as exc:
            raise self._failure(exc) from exc

    @property
    def resumed_rows(self) -> int:
        """Output rows 0 .. resumed_rows - 1 come from verified strips of an earlier run."""
        return self._resumed_rows

    @property
    def strips(self) -> int:
        """Number of strips stored, resumed ones included."""
        return len(self._entries)

    @property
    def resumed_strips(self) -> int:
        """Number of verified strips taken over from an earlier run."""
        return self._resumed_strips

    def replay(self) -> Iterator[tuple[int, dict[str, npt.NDArray[np.generic]]]]:
        """The verified strips as (first row, arrays), top to bottom, each hashed again as read.

        Raises:
            OutputError: a strip file changed since the journal was opened.
        """
        for entry in self._entries[: self._resumed_strips]:
            path = self.folder / entry.file
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != entry.sha256:
                raise OutputError(
                    f"resume file {path} changed while {self.out} was being resumed",
                    hint="rerun the same command; the strip will be recomputed",
                )
            yield entry.row_off, _decode(data, entry.arrays)

    def commit(self, row_off: int, arrays: Arrays) -> None:
        """Store the strip starting at ``row_off`` (the row after the last one stored).

        Args:
            row_off: its first output row.
            arrays: what was written for these rows, by name; in every array of two or more
                dimensions the second-to-last axis is rows: (C, rows, W) or (rows, W).
        """
        if row_off != self._next_row:
            raise ValueError(f"strip at row {row_off} committed after row {self._next_row}")
        rows = next(a.shape[-2] for a in arrays.values() if a.ndim >= 2)
        name = f"strip-{row_off:010d}.npy.z"
        data = _encode(arrays)
        try:
            with (self.folder / name).open("wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
        except OSError as exc:
            raise self._failure(exc) from exc
        entry = _Entry(
            row_off=row_off,
            rows=rows,
            file=name,
            sha256=hashlib.sha256(data).hexdigest(),
            arrays=tuple(arrays),
        )
        try:
            self._append(entry)
        except OSError as exc:
            raise self._failure(exc) from exc
        self._entries.append(entry)
        self._next_row = row_off + rows

    def discard(self) -> None:
        """Delete the journal (the output was published, or the progress is not wanted)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- internals --------------------------------------------------------------------------

    def _failure(self, exc: OSError) -> OutputError:
        """The error of a failed journal write: disk full said as such (exit 4)."""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return OutputError(
                f"disk full: no space left in {self.folder.parent} ({self.out.name}: writing "
                "its resume journal failed; nothing was published)",
                hint=f"free space in {self.folder.parent} or write elsewhere with -o, then rerun",
            )
        return OutputError(
            f"{self.out}: writing its resume journal {self.folder} failed: {exc.strerror or exc}",
            hint="check the output folder, then rerun",
        )

    def _start(self) -> None:
        self.discard()
        self.folder.mkdir()
        header = {"format": FORMAT, "output": self.out.name, "binding": self.binding}
        (self.folder / "journal.jsonl").write_text(json.dumps(header, sort_keys=True) + "\n")
        fsync_path(self.folder / "journal.jsonl")
        fsync_path(self.folder.parent, directory=True)
        self._entries, self._next_row = [], 0
        self._resumed_rows = self._resumed_strips = 0

    def _load(self, *, restart: bool) -> None:
        """Take over the verified strips of an earlier run, or say why none are taken."""
        self._resumed_rows = self._resumed_strips = 0
        header, lines = _read(self.folder / "journal.jsonl")
        if restart:
            logger.info("--overwrite: discarding the saved progress of %s", self.out)
            return
        if header.get("format") != FORMAT or header.get("binding") != self.binding:
            logger.info(
                "starting %s afresh: the parameters or inputs differ from the interrupted run's",
                self.out,
            )
            return
        verified: list[_Entry] = []
        row = 0
        for entry in lines:
            if (
                entry is None
                or entry.row_off != row
                or not _intact(self.folder / entry.file, entry)
            ):
                break
            verified.append(entry)
            row += entry.rows
        if not verified:
            if lines:
                logger.info("starting %s afresh: no saved strip verifies", self.out)
            return
        self._entries, self._next_row = verified, row
        self._resumed_rows, self._resumed_strips = row, len(verified)
        dropped = len(lines) - len(verified)
        logger.info(
            "resuming %s: %d verified strip(s), rows 0-%d%s",
            self.out,
            len(verified),
            row - 1,
            f"; {dropped} that did not verify will be recomputed" if dropped else "",
        )
        self._rewrite(header, verified)

    def _rewrite(self, header: Mapping[str, object], verified: list[_Entry]) -> None:
        """Keep only the header and the verified strips (their files), atomically."""
        keep = {entry.file for entry in verified} | {"journal.jsonl"}
        for path in self.folder.iterdir():
            if path.name not in keep:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        temp = self.folder / "journal.jsonl.partial"
        text = json.dumps(header, sort_keys=True) + "\n"
        text += "".join(entry.to_json() + "\n" for entry in verified)
        temp.write_text(text)
        fsync_path(temp)
        os.replace(temp, self.folder / "journal.jsonl")
        fsync_path(self.folder, directory=True)

    def _append(self, entry: _Entry) -> None:
        with (self.folder / "journal.jsonl").open("a") as stream:
            stream.write(entry.to_json() + "\n")
            stream.flush()
            os.fsync(stream.fileno())


def _read(path: Path) -> tuple[dict[str, object], list[_Entry | None]]:
    """The journal's header and strip lines, up to the first line that does not parse (a torn
    last write); a line that parses but is not a well-formed strip is None."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {}, []
    values: list[dict[str, object]] = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            break
        if not isinstance(value, dict):
            break
        values.append(value)
    if not values:
        return {}, []
    return values[0], [_entry(value) for value in values[1:]]


def _entry(value: Mapping[str, object]) -> _Entry | None:
    """A strip line as an entry, or None when a field is missing or of the wrong type."""
    row_off, rows, name = value.get("row_off"), value.get("rows"), value.get("file")
    sha256, arrays = value.get("sha256"), value.get("arrays")
    if not (isinstance(row_off, int) and isinstance(rows, int) and rows >= 1):
        return None
    if not (isinstance(name, str) and name.startswith("strip-") and "/" not in name):
        return None
    if not (isinstance(sha256, str) and isinstance(arrays, list)):
        return None
    return _Entry(
        row_off=row_off, rows=rows, file=name, sha256=sha256, arrays=tuple(map(str, arrays))
    )


def _intact(path: Path, entry: _Entry) -> bool:
    """Whether the strip file exists and hashes to the entry's sha256."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    return hashlib.sha256(data).hexdigest() == entry.sha256


def _encode(arrays: Arrays) -> bytes:
    """The arrays as consecutive ``.npy`` records, zlib-compressed."""
    buffer = io.BytesIO()
    for array in arrays.values():
        np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return zlib.compress(buffer.getbuffer(), COMPRESSION_LEVEL)  # no copy of the records


def _decode(data: bytes, names: tuple[str, ...]) -> dict[str, npt.NDArray[np.generic]]:
    """Inverse of ``_encode``: the arrays by name."""
    buffer = io.BytesIO(zlib.decompress(data))
    return {name: np.lib.format.read_array(buffer, allow_pickle=False) for name in names}
