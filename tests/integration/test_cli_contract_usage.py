"""Issue 9, item 1: every usage error exits 2 with the usage line, whatever typer raises."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli

LR = "does-not-matter.tif"

USAGE_ERRORS = {
    "upscale without arguments": (["upscale"], {}),
    "unknown option": (["upscale", LR, "--bogus"], {}),
    "--seed not a number": (["upscale", LR, "--seed", "abc"], {}),
    "--tile not a number": (["upscale", LR, "--tile", "abc"], {}),
    "REFDIFF_SEED not a number": (["upscale", LR, "--ref", "r.tif"], {"REFDIFF_SEED": "x"}),
    "unknown command": (["foo"], {}),
    "-v after the command": (["upscale", "-v", LR], {}),
    "evaluate --limit not a number": (["evaluate", "data", "--limit", "x"], {}),
    "train without -o": (["train", "chips"], {}),
    "prepare --scale not a number": (["prepare", "src", "-o", "out", "--scale", "x"], {}),
}


@pytest.mark.parametrize(
    ("args", "env"), list(USAGE_ERRORS.values()), ids=list(USAGE_ERRORS.keys())
)
def test_usage_errors_exit_2_with_the_usage_line(args: list[str], env: dict[str, str]) -> None:
    result = run_cli(args, env=env, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "this is a bug" not in result.stderr
    assert "Usage: refdiff" in result.stderr, result.stderr
    assert result.stdout == ""
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("refdiff: error:"), last


def test_usage_error_names_the_problem() -> None:
    result = run_cli(["upscale", LR, "--seed", "abc"], timeout=60)
    assert result.returncode == 2
    assert "--seed" in result.stderr.splitlines()[-1]


def test_root_without_arguments_shows_help_and_exits_2() -> None:
    result = run_cli([], timeout=60)
    assert result.returncode == 2, result.stderr
    assert "upscale" in result.stderr and "Usage: refdiff" in result.stderr


def test_help_still_exits_0() -> None:
    result = run_cli(["upscale", "--help"], timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Usage: refdiff upscale" in result.stdout


def test_usage_error_with_json_prints_a_json_document() -> None:
    import json

    result = run_cli(["upscale", LR, "--json", "--seed", "abc"], timeout=60)
    assert result.returncode == 2
    doc = json.loads(result.stdout)
    assert doc["status"] == "failed" and doc["exit_code"] == 2
    assert doc["error"] == "UsageError"
