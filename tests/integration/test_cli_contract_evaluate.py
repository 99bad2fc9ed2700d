"""Issue 9, item 4: `evaluate --figure` into a place it cannot write: exit 4, nothing lost."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from refdiff_cli.evaluate import figure as evaluate_figure
from tests.conftest import run_cli
from tests.integration.test_evaluate_cli import make_cd

EVALUATE = ("--scale", "8", "--methods", "bicubic")


def unwritable_places(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    fifo = tmp_path / "a-pipe"
    os.mkfifo(fifo)
    return {
        "a folder": folder,
        "a named pipe": fifo,
        "a folder that takes no file": Path("/proc/refdiff-figure.png"),
    }


@pytest.mark.parametrize("place", ["a folder", "a named pipe", "a folder that takes no file"])
def test_unwritable_figure_fails_up_front_with_exit_4(tmp_path: Path, place: str) -> None:
    root = make_cd(tmp_path / "cd")
    figure = unwritable_places(tmp_path)[place]
    result = run_cli(["evaluate", str(root), *EVALUATE, "--figure", str(figure), "--json"])
    assert result.returncode == 4, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("refdiff: error: --figure"), last
    assert "this is a bug" not in result.stderr
    assert "evaluate cd" not in result.stderr, "failed only after the metrics were computed"
    assert json.loads(result.stdout)["exit_code"] == 4
    if place == "a named pipe":
        assert Path(figure).exists() and not Path(figure).is_file(), "the pipe was replaced"


def test_figure_failing_at_the_end_keeps_the_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """GDAL refuses the PNG after all metrics: exit 4 with a clear message, the CSV is there."""
    from rasterio._err import CPLE_OpenFailedError

    from refdiff_cli.cli import run

    def refuse(path: Path, array: Any) -> None:
        raise CPLE_OpenFailedError(4, 0, f"Unable to create png file {path}")

    monkeypatch.setattr(evaluate_figure, "write_png", refuse)
    root = make_cd(tmp_path / "cd")
    csv_path = tmp_path / "metrics.csv"
    args = ["-q", "evaluate", str(root), *EVALUATE, "--csv", str(csv_path)]
    code = run([*args, "--figure", str(tmp_path / "fig.png")])
    _, err = capsys.readouterr()
    assert code == 4, err
    assert "cannot write the PNG" in err and "this is a bug" not in err
    assert csv_path.read_text().startswith("image,method,region")


def test_figure_failing_at_the_end_still_prints_the_metrics(tmp_path: Path) -> None:
    """A real PNG write failure after all metrics (a file size limit the CSV fits under but
    the figure does not): the --json document carries the metrics and the failure, the CSV
    is written, exit 4 with one error line.
    """
    root = make_cd(tmp_path / "cd")
    csv_path, figure = tmp_path / "metrics.csv", tmp_path / "fig.png"
    args = ["evaluate", str(root), *EVALUATE, "--csv", str(csv_path), "--figure", str(figure)]
    result = run_cli([*args, "--json"], file_size_limit=16 * 1024)
    assert result.returncode == 4, result.stderr
    document = json.loads(result.stdout)
    assert set(document["methods"]) == {"bicubic"}, "the metrics were lost with the figure"
    assert document["methods"]["bicubic"]["all"]["n_images"] == 2
    assert document["status"] == "failed" and document["exit_code"] == 4
    assert document["error"] == "OutputError"
    assert document["message"].startswith(f"--figure {figure}: cannot write the PNG")
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"refdiff: error: {document['message']}"
    assert result.stderr.count("refdiff: error:") == 1
    assert csv_path.read_text().startswith("image,method,region")
    assert not figure.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".fig")], "temp left"

    tables = run_cli(args, file_size_limit=16 * 1024)  # without --json: the tables, then the error
    assert tables.returncode == 4, tables.stderr
    assert "bicubic" in tables.stdout
    assert tables.stderr.strip().splitlines()[-1].startswith("refdiff: error: --figure")
