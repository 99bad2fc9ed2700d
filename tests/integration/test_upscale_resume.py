"""Issue 11, item 1: an upscale killed with SIGKILL resumes on rerun to the very same bytes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from refdiff_cli.upscale.journal import journal_folder
from tests.conftest import SAMPLE_INPUTS, run_cli

#: The sample scene in 16 tiles (4 tile rows) and 6 strips of 64 rows.
OPTIONS = [
    "--tile",
    "128",
    "--overlap",
    "32",
    "--margin",
    "16",
    "--co",
    "BLOCKXSIZE=64",
    "--co",
    "BLOCKYSIZE=64",
    "--json",
]

#: Runs the CLI and SIGKILLs the process right after its resume journal committed the
#: REFDIFF_TEST_KILL_AFTER-th strip: a kill -9 at a known point, with no hook in the product.
KILLER = """
import os, signal, sys
from refdiff_cli.upscale import journal
commit, after = journal.ResumeJournal.commit, int(os.environ["REFDIFF_TEST_KILL_AFTER"])
def killing_commit(self, row_off, arrays):
    commit(self, row_off, arrays)
    if self.strips - self.resumed_strips >= after:
        os.kill(os.getpid(), signal.SIGKILL)
journal.ResumeJournal.commit = killing_commit
from refdiff_cli.cli import main
main()
"""


def upscale(out: Path, *extra: str, engine: str = "guided") -> list[str]:
    return ["upscale", *SAMPLE_INPUTS, "-o", str(out), "--engine", engine, *OPTIONS, *extra]


def killed(args: list[str], after: int, script: str = KILLER) -> subprocess.CompletedProcess[str]:
    """Run the CLI and kill it with SIGKILL (or ``script``'s way) once ``after`` strips were
    committed."""
    env = {**os.environ, "REFDIFF_TEST_KILL_AFTER": str(after), "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of the same upscale run without interruption (published as another name)."""
    out = tmp_path_factory.mktemp("full") / "sr.tif"
    done = run_cli(upscale(out))
    assert done.returncode == 0, done.stderr
    return out.read_bytes()


def test_killed_upscale_resumes_to_identical_bytes(tmp_path: Path, uninterrupted: bytes) -> None:
    out = tmp_path / "sr.tif"
    first = killed(upscale(out), after=3)
    assert first.returncode == -signal.SIGKILL, first.stderr
    assert not out.exists()
    assert len(list(journal_folder(out).glob("strip-*"))) == 3

    rerun = run_cli(upscale(out))
    assert rerun.returncode == 0, rerun.stderr
    assert out.read_bytes() == uninterrupted
    assert "resuming" in rerun.stderr and "3 verified strip(s), rows 0-191" in rerun.stderr
    report = json.loads(rerun.stdout)["report"]
    # rows 0-191 are done; tile row 1 (rows 96-223) reaches row 192, so it runs again
    assert (report["resumed_strips"], report["resumed_tiles"]) == (3, 4)
    assert not journal_folder(out).exists()
    assert not list(tmp_path.glob(".sr.tif.*"))  # no temp, lock or journal left behind


def test_a_tampered_strip_is_recomputed(tmp_path: Path, uninterrupted: bytes) -> None:
    out = tmp_path / "sr.tif"
    assert killed(upscale(out), after=3).returncode == -signal.SIGKILL
    second = sorted(journal_folder(out).glob("strip-*"))[1]
    data = bytearray(second.read_bytes())
    data[len(data) // 2] ^= 0xFF
    second.write_bytes(bytes(data))

    rerun = run_cli(upscale(out))
    assert rerun.returncode == 0, rerun.stderr
    assert out.read_bytes() == uninterrupted
    assert "1 verified strip(s), rows 0-63; 2 that did not verify" in rerun.stderr
    assert json.loads(rerun.stdout)["report"]["resumed_strips"] == 1


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["--seed", "7"], "starting sr.tif afresh: the parameters or inputs differ"),
        (["--overwrite"], "--overwrite: discarding the saved progress of"),
    ],
)
def test_changed_parameters_or_overwrite_start_afresh(
    tmp_path: Path, extra: list[str], said: str
) -> None:
    out = tmp_path / "sr.tif"
    assert killed(upscale(out), after=2).returncode == -signal.SIGKILL

    rerun = run_cli(upscale(out, *extra))
    assert rerun.returncode == 0, rerun.stderr
    assert said in rerun.stderr.replace(str(tmp_path) + "/", "")
    assert json.loads(rerun.stdout)["report"]["resumed_strips"] == 0
    assert not journal_folder(out).exists()


@pytest.mark.slow
def test_killed_model_upscale_resumes_to_identical_bytes(tmp_path: Path) -> None:
    """The bundled diffusion model (noise keyed by output pixel) resumes to the same bytes."""
    full, out = tmp_path / "full.tif", tmp_path / "sr.tif"
    assert run_cli(upscale(full, engine="diffusion")).returncode == 0
    assert killed(upscale(out, engine="diffusion"), after=2).returncode == -signal.SIGKILL
    rerun = run_cli(upscale(out, engine="diffusion"))
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["report"]["resumed_strips"] == 2
    assert out.read_bytes() == full.read_bytes()


def test_an_interrupted_upscale_keeps_its_strips_and_says_so(tmp_path: Path) -> None:
    """Ctrl-C (here at the third strip) keeps the finished strips for a rerun."""
    out = tmp_path / "sr.tif"
    script = KILLER.replace("os.kill(os.getpid(), signal.SIGKILL)", "raise KeyboardInterrupt")
    done = killed(upscale(out), after=3, script=script)
    assert done.returncode == 130, done.stderr
    assert "kept 3 finished strip(s) of sr.tif" in done.stderr
    assert len(list(journal_folder(out).glob("strip-*"))) == 3
    assert not list(tmp_path.glob("*.partial"))
