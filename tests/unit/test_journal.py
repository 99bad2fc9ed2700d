"""The resume journal: what a rerun takes over, and everything it refuses to trust."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from refdiff_cli.errors import Interrupted, OutputError
from refdiff_cli.upscale.journal import ResumeJournal, journal_folder, open_journal


def strip(row_off: int, rows: int = 4) -> dict[str, np.ndarray]:
    """The arrays of one strip of a 3-band, 5 px wide uint8 output."""
    image = np.full((3, rows, 5), row_off % 251, dtype=np.uint8)
    return {"image": image, "valid": np.ones((rows, 5), bool), "clamped": np.array([row_off])}


def run(out: Path, strips: int, error: BaseException | None, binding: str = "b1") -> None:
    """A run that commits ``strips`` strips of 4 rows, then raises ``error`` (if any)."""
    with open_journal(out, binding, restart=False) as journal:
        for i in range(strips):
            journal.commit(4 * i, strip(4 * i))
        if error is not None:
            raise error


def interrupted_run(out: Path, strips: int, binding: str = "b1") -> None:
    """A run that committed ``strips`` strips, then was stopped by Ctrl-C."""
    with pytest.raises(KeyboardInterrupt):
        run(out, strips, KeyboardInterrupt(), binding)


def test_a_rerun_replays_the_committed_strips(tmp_path: Path) -> None:
    out = tmp_path / "sr.tif"
    interrupted_run(out, 3)
    journal = ResumeJournal(out, "b1", restart=False)
    assert (journal.resumed_rows, journal.resumed_strips) == (12, 3)
    replayed = list(journal.replay())
    assert [row for row, _ in replayed] == [0, 4, 8]
    for row, arrays in replayed:
        for name, array in strip(row).items():
            assert np.array_equal(arrays[name], array) and arrays[name].dtype == array.dtype
    journal.commit(12, strip(12))  # and goes on from there
    assert ResumeJournal(out, "b1", restart=False).resumed_rows == 16


def test_a_torn_last_line_and_a_gap_are_not_trusted(tmp_path: Path) -> None:
    out = tmp_path / "sr.tif"
    interrupted_run(out, 3)
    index = journal_folder(out) / "journal.jsonl"
    lines = index.read_text().splitlines(keepends=True)
    index.write_text("".join(lines[:3]) + lines[3][:20])  # power cut inside the last line
    assert ResumeJournal(out, "b1", restart=False).resumed_rows == 8
    out = tmp_path / "other.tif"
    index = journal_folder(out) / "journal.jsonl"
    interrupted_run(out, 3)
    lines = index.read_text().splitlines(keepends=True)
    index.write_text("".join([lines[0], lines[1], lines[3]]))  # rows 4-7 missing
    assert ResumeJournal(out, "b1", restart=False).resumed_rows == 4


def test_a_strip_that_does_not_hash_is_recomputed_with_all_after_it(tmp_path: Path) -> None:
    out = tmp_path / "sr.tif"
    interrupted_run(out, 3)
    second = sorted(journal_folder(out).glob("strip-*"))[1]
    second.write_bytes(second.read_bytes()[:-1])
    journal = ResumeJournal(out, "b1", restart=False)
    assert journal.resumed_strips == 1
    assert len(list(journal_folder(out).glob("strip-*"))) == 1  # the rest is deleted


def test_other_parameters_or_restart_start_afresh_and_say_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "sr.tif"
    interrupted_run(out, 2)
    with caplog.at_level(logging.INFO, logger="refdiff_cli"):
        assert ResumeJournal(out, "b2", restart=False).resumed_rows == 0
    assert "parameters or inputs differ" in caplog.text
    interrupted_run(out, 2, binding="b2")
    with caplog.at_level(logging.INFO, logger="refdiff_cli"):
        assert ResumeJournal(out, "b2", restart=True).resumed_rows == 0
    assert "--overwrite: discarding" in caplog.text
    assert list(journal_folder(out).glob("strip-*")) == []


@pytest.mark.parametrize("error", [None, OutputError("disk full"), ValueError("bug")])
def test_the_journal_is_deleted_on_success_and_on_errors(
    tmp_path: Path, error: Exception | None
) -> None:
    out = tmp_path / "sr.tif"
    if error is None:
        run(out, 1, None)
    else:
        with pytest.raises(type(error)):
            run(out, 1, error)
    assert not journal_folder(out).exists()


def test_an_interruption_keeps_the_journal_unless_it_is_empty(tmp_path: Path) -> None:
    out = tmp_path / "sr.tif"
    with pytest.raises(Interrupted):
        run(out, 0, Interrupted("SIGTERM", 143))
    assert not journal_folder(out).exists()
    interrupted_run(out, 1)
    assert journal_folder(out).exists()
