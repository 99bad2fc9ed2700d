"""Plain progress lines (cron logs): the time-left estimate of a resumed run."""

from __future__ import annotations

import pytest

from refdiff_cli.cli import render
from refdiff_cli.events import Progress, Started


def test_resumed_run_estimates_time_left_from_its_own_rate(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Resumed at step 2000 of 4000, 10 steps in 20 s: about 3980 s left, not 35 s."""
    now = [0.0]
    monkeypatch.setattr(render.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(render, "stderr_is_terminal", lambda: False)
    renderer = render.ProgressRenderer(enabled=True)
    renderer(Started(task="train", total=4000, unit="step"))
    now[0] = 15.0  # loading the checkpoint took 15 s
    renderer(Progress(task="train", done=2000, total=4000, unit="step"))
    now[0] = 35.0
    renderer(Progress(task="train", done=2010, total=4000, unit="step"))
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[1:] == [
        "refdiff: train: 2000/4000 steps, 15 s elapsed",  # no rate measured yet: no estimate
        "refdiff: train: 2010/4000 steps, 35 s elapsed, about 3980 s left",
    ]


def test_the_summary_says_how_many_tiles_a_resumed_output_took_over() -> None:
    from types import SimpleNamespace

    assert render._tiles(SimpleNamespace(resumed_tiles=4, tiles=16)) == "16 (4 resumed)"
    assert render._tiles(SimpleNamespace(resumed_tiles=0, tiles=16)) == "16"
    assert render._tiles(None) == ""
