"""Issue 9, item 7: an interrupted training run says so in one line, and in JSON with --json."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from refdiff_cli.cli import run
from refdiff_cli.errors import Interrupted
from refdiff_cli.train import run as train_tool


@pytest.fixture(autouse=True)
def _restore_sigterm() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize(
    ("error", "name", "code"),
    [(KeyboardInterrupt(), "SIGINT", 130), (Interrupted("SIGTERM", 143), "SIGTERM", 143)],
)
def test_interrupted_training_reports_once_and_in_json(
    error: BaseException,
    name: str,
    code: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(train_tool, "train", interrupted)
    assert run(["-q", "train", str(tmp_path), "-o", str(tmp_path / "run"), "--json"]) == code
    out, err = capsys.readouterr()
    message = f"interrupted by {name}; checkpoint saved, rerun to resume"
    assert err.strip().splitlines() == [f"refdiff: error: {message}"]
    assert json.loads(out) == {
        "status": "failed",
        "exit_code": code,
        "error": "Interrupted",
        "message": message,
    }
