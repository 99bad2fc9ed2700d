"""Issue 9, item 11: help pages list the choices, show defaults, and say what is required."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli


def help_of(command: str) -> str:
    result = run_cli([command, "--help"], env={"COLUMNS": "200"}, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("upscale", "--precision <fp32|bf16|fp16>"),
        ("upscale", "--sampler <heun|euler>"),
        ("upscale", "--mask-grid <own|ref|lr>"),
        ("upscale", "--engine <auto|diffusion|"),
        ("evaluate", "--layout <auto|cd|paper|csv>"),
        ("evaluate", "--lr-kind <bicubic|real>"),
        ("evaluate", "--precision <fp32|bf16|fp16>"),
        ("prepare", "--layout <auto|cd|paper|csv|images>"),
        ("prepare", "--mask-grid <own|ref|hr>"),
        ("train", "--preset <tiny|small|paper>"),
        ("train", "--lr-method <realistic|bicubic|stored>"),
        ("train", "--target <hr|residual>"),
        ("train", "--precision <fp32|bf16>"),
    ],
)
def test_choices_are_listed(command: str, shown: str) -> None:
    assert shown in help_of(command)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["upscale", "lr.tif", "--precision", "fp8"], "--precision"),
        (["upscale", "lr.tif", "--mask-grid", "hr"], "--mask-grid"),
        (["evaluate", "data", "--layout", "folder"], "--layout"),
        (["prepare", "src", "-o", "out", "--mask-grid", "lr"], "--mask-grid"),
        (["train", "chips", "-o", "run", "--target", "noise"], "--target"),
    ],
)
def test_choices_are_checked(args: list[str], option: str) -> None:
    result = run_cli(args, timeout=60)
    assert result.returncode == 2, result.stderr
    assert option in result.stderr.strip().splitlines()[-1]


def test_train_shows_its_defaults() -> None:
    text = " ".join(help_of("train").split())
    for default in (
        "[default: small unless --config sets it]",
        "[default: 20000 unless --config sets it]",
        "[default: 0.0001 unless --config sets it]",
        "[default: fp32 unless --config sets it]",
    ):
        assert default in text


def test_train_learning_rate_is_not_the_lr_image() -> None:
    text = " ".join(help_of("train").split())
    assert "--lr, --learning-rate <float>" in text and "not the LR image" in text


def test_ref_mask_and_output_say_when_they_are_required() -> None:
    text = " ".join(help_of("upscale").split())
    for option in ("--ref <path>", "--mask <path>", "-o, --output <path>"):
        start = text.index(option)
        assert "[required without --from-" in text[start : start + 160], option  # may wrap


@pytest.mark.parametrize(
    ("command", "usage"),
    [
        ("upscale", "[OPTIONS] [LR]..."),
        ("train", "[OPTIONS] {CHIPS}"),
        ("evaluate", "[OPTIONS] {DATASET}"),
        ("prepare", "[OPTIONS] {SRC}..."),
    ],
)
def test_arguments_are_named_alike(command: str, usage: str) -> None:
    assert help_of(command).splitlines()[0] == f"Usage: refdiff {command} {usage}"
