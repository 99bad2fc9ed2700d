"""Issue 9, item 11: help pages list the choices, show defaults, and say what is required."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import RasterFactory, run_cli
from tests.integration.test_cli_upscale import HR_TRANSFORM, LR_TRANSFORM, scene, upscale_args


def help_of(command: str) -> str:
    result = run_cli([command, "--help"], env={"COLUMNS": "200"}, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("upscale", "--precision <fp32|bf16|fp16>"),
        ("upscale", "--sampler <heun|euler>"),
        ("upscale", "--mask-grid <own|ref|image>"),
        ("upscale", "--engine <auto|diffusion|"),
        ("evaluate", "--layout <auto|cd|paper|csv>"),
        ("evaluate", "--lr-kind <bicubic|real>"),
        ("evaluate", "--precision <fp32|bf16|fp16>"),
        ("prepare", "--layout <auto|cd|paper|csv|images>"),
        ("prepare", "--mask-grid <own|ref|image>"),
        ("train", "--preset <tiny|small|paper>"),
        ("train", "--lr-method <realistic|bicubic|mixed|stored>"),
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


def test_ref_and_output_say_when_they_are_required_and_mask_that_it_is_optional() -> None:
    text = " ".join(help_of("upscale").split())
    for option in ("--ref <path>", "-o, --output <path>"):
        start = text.index(option)
        assert "[required without --from-" in text[start : start + 160], option  # may wrap
    start = text.index("--mask <path>")
    assert "Without it the mask is estimated" in text[start : start + 200]


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


@pytest.mark.parametrize(
    ("command", "old"), [("upscale", "lr"), ("evaluate", "lr"), ("prepare", "hr")]
)
def test_mask_grid_takes_image_everywhere_and_the_old_names_with_a_warning(
    command: str, old: str
) -> None:
    """prepare took 'hr', upscale and evaluate 'lr' for the same idea; now 'image' in all."""
    shown = run_cli([command, "--help"], env={"COLUMNS": "200"}, timeout=60)
    assert "--mask-grid <own|ref|image>" in shown.stdout
    other = "hr" if old == "lr" else "lr"
    args = {
        "upscale": ["upscale", "missing.tif", "--ref", "r.tif", "--mask", "m.tif", "-o", "o.tif"],
        "evaluate": ["evaluate", "missing-dataset"],
        "prepare": ["prepare", "missing-src", "-o", "chips"],
    }[command]
    new = run_cli([*args, "--mask-grid", "image"], timeout=60)
    assert new.returncode == 3, new.stderr  # past the options: the input is missing
    assert "deprecated" not in new.stderr
    former = run_cli([*args, "--mask-grid", old], timeout=60)
    assert former.returncode == 3, former.stderr
    assert f"--mask-grid {old} is deprecated; it is now called --mask-grid image" in former.stderr
    wrong = run_cli([*args, "--mask-grid", other], timeout=60)
    assert wrong.returncode == 2, wrong.stderr
    last = wrong.stderr.strip().splitlines()[-1]
    assert "--mask-grid" in last and "'image'" in last, last


def test_mask_grid_image_in_messages(make_raster: RasterFactory, tmp_path: Path) -> None:
    """Errors speak of --mask-grid image, naming whose grid it is, sizes width x height."""
    bare = make_raster("bare.tif", np.zeros((100, 200), np.uint8), crs=None, transform=None)
    lr = make_raster("lr.tif", scene(24, 32), transform=LR_TRANSFORM)
    ref = make_raster("ref.tif", scene(192, 256, seed=1), transform=HR_TRANSFORM)
    args = upscale_args({"lr": lr, "ref": ref, "mask": bare}, tmp_path / "sr.tif")
    result = run_cli([*args, "--mask-grid", "image"])
    assert result.returncode == 3, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "is 200x100 px; --mask-grid image (the LR's grid) needs 32x24 or 256x192 px" in last
    own = run_cli(args)
    assert own.returncode == 3, own.stderr
    assert "pass --mask-grid ref (or image)" in own.stderr.strip().splitlines()[-1]
