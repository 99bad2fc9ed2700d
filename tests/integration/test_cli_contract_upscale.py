"""Issue 9: `refdiff upscale` under hostile options and outputs (exit codes, messages, files)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from tests.conftest import RasterFactory, run_cli

LR_TRANSFORM = Affine(4.0, 0.0, 500_000.0, 0.0, -4.0, 5_000_000.0)
HR_TRANSFORM = Affine(0.5, 0.0, 500_000.0, 0.0, -0.5, 5_000_000.0)


@pytest.fixture
def triplet(make_raster: RasterFactory) -> dict[str, Path]:
    """LR 24 x 32 at 4 m, ref and mask 192 x 256 at 0.5 m over the same footprint."""
    rng = np.random.default_rng(3)
    lr = make_raster("lr.tif", rng.integers(0, 255, (3, 24, 32), np.uint8), transform=LR_TRANSFORM)
    ref = rng.integers(0, 255, (3, 192, 256), np.uint8)
    mask = np.zeros((192, 256), np.uint8)
    return {
        "lr": lr,
        "ref": make_raster("ref.tif", ref, transform=HR_TRANSFORM),
        "mask": make_raster("cd.tif", mask, transform=HR_TRANSFORM),
    }


def upscale(t: dict[str, Path], out: Path | str, *extra: str) -> list[str]:
    return [
        "upscale",
        str(t["lr"]),
        "--ref",
        str(t["ref"]),
        "--mask",
        str(t["mask"]),
        "-o",
        str(out),
        "--engine",
        "bicubic",
        *extra,
    ]


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


# -- item 8: creation options are checked before any work ------------------------------------


@pytest.mark.parametrize(
    ("co", "needle"),
    [
        (["COMPRESS=FOO"], "COMPRESS=FOO"),
        (["FOOBAR=1"], "FOOBAR"),
        (["COMPRESS=JPEG"], "lossy"),
        (["COMPRESS=WEBP"], "lossy"),
        (["BLOCKXSIZE=100"], "multiples of 16"),
        (["COMPRESS"], "NAME=VALUE"),
    ],
)
def test_bad_creation_options_are_refused_up_front(
    triplet: dict[str, Path], tmp_path: Path, co: list[str], needle: str
) -> None:
    out = tmp_path / "sr.tif"
    options = [arg for item in co for arg in ("--co", item)]
    result = run_cli(upscale(triplet, out, *options, "--json"))
    assert result.returncode == 2, result.stderr
    last = last_line(result.stderr)
    assert last.startswith("refdiff: error: --co") and needle in last, last
    assert "tiles" not in result.stderr, "the options were checked only after the work"
    assert json.loads(result.stdout)["exit_code"] == 2
    assert not out.exists()


def test_bad_creation_option_for_a_cog_is_refused(triplet: dict[str, Path], tmp_path: Path) -> None:
    result = run_cli(upscale(triplet, tmp_path / "sr.tif", "--cog", "--co", "ZLEVEL=9"))
    assert result.returncode == 2, result.stderr
    assert "COG" in last_line(result.stderr)


@pytest.mark.parametrize("codec", ["LZW", "ZSTD", "NONE"])
def test_lossless_codecs_are_written_as_asked(
    triplet: dict[str, Path], tmp_path: Path, codec: str
) -> None:
    out = tmp_path / "sr.tif"
    result = run_cli(upscale(triplet, out, "--co", f"COMPRESS={codec}"))
    assert result.returncode == 0, result.stderr
    with rasterio.open(out) as src:
        assert (src.compression.name.upper() if src.compression else "NONE") == codec


# -- item 6: disk full says so and names the folder --------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only): room for the preflight, not for the output."""
    folder = tmp_path / "full"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("mount is not permitted here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_disk_full_says_disk_full_and_names_the_folder(
    make_raster: RasterFactory, small_tmpfs: Path
) -> None:
    rng = np.random.default_rng(5)  # incompressible: a 3 MiB output in 1 MiB
    lr = make_raster("big/lr.tif", rng.integers(0, 255, (3, 128, 128), np.uint8))
    hr = rng.integers(0, 255, (3, 1024, 1024), np.uint8)
    ref = make_raster("big/ref.tif", hr, transform=HR_TRANSFORM)
    mask = make_raster("big/cd.tif", np.zeros((1024, 1024), np.uint8), transform=HR_TRANSFORM)
    out = small_tmpfs / "sr.tif"
    result = run_cli(upscale({"lr": lr, "ref": ref, "mask": mask}, out, "--json"))
    assert result.returncode == 4, result.stderr
    last = last_line(result.stderr)
    assert last.startswith(f"refdiff: error: disk full: no space left in {small_tmpfs}"), last
    assert "_tiff" not in result.stderr and "TIFF" not in result.stderr, result.stderr
    assert "creation options" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors == [last], "the error was printed more than once"
    assert json.loads(result.stdout)["exit_code"] == 4
    assert list(small_tmpfs.iterdir()) == []


# -- item 9: clear errors, not exit 1 ------------------------------------------------------------


def test_model_card_with_scale_0_is_a_model_error(triplet: dict[str, Path], tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from refdiff_cli.model.card import CARD_METADATA_KEY
    from tests.conftest import tiny_card

    card = json.loads(tiny_card().to_json())
    card["scale"] = 0
    model = tmp_path / "scale0.safetensors"
    save_file({"w": torch.zeros(1)}, str(model), metadata={CARD_METADATA_KEY: json.dumps(card)})
    out = tmp_path / "sr.tif"
    args = upscale(triplet, out, "--json")
    args[args.index("bicubic")] = "diffusion"
    result = run_cli([*args, "--model", str(model)])
    assert result.returncode == 3, result.stderr
    last = last_line(result.stderr)
    assert "'scale' is invalid: 0" in last and "this is a bug" not in last, last
    assert not out.exists()


@pytest.mark.parametrize("length", [250, 300])
def test_output_name_too_long_is_an_output_error(
    triplet: dict[str, Path], tmp_path: Path, length: int
) -> None:
    out = tmp_path / ("a" * length + ".tif")
    result = run_cli(upscale(triplet, out, "--json"))
    assert result.returncode == 4, result.stderr
    last = last_line(result.stderr)
    assert f"is {length + 4} bytes" in last and "at most" in last, last
    assert json.loads(result.stdout)["exit_code"] == 4


def test_non_utf8_path_is_a_usage_error(triplet: dict[str, Path], tmp_path: Path) -> None:
    odd = tmp_path / os.fsdecode(b"lr-\xff.tif")
    odd.write_bytes(triplet["lr"].read_bytes())
    result = run_cli([*upscale({**triplet, "lr": odd}, tmp_path / "sr.tif"), "--json"])
    assert result.returncode == 2, result.stderr
    last = last_line(result.stderr)
    assert "lr-\\xff.tif'" in last and "not valid UTF-8" in last, last
    assert json.loads(result.stdout)["exit_code"] == 2


# -- item 10: smaller contract breaches ------------------------------------------------------


def test_error_is_printed_once(triplet: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "sr.tif"
    out.write_bytes(b"precious")
    result = run_cli(upscale(triplet, out))
    assert result.returncode == 4, result.stderr
    mentions = [line for line in result.stderr.splitlines() if "already exists" in line]
    assert mentions == [last_line(result.stderr)], result.stderr
    assert out.read_bytes() == b"precious"


@pytest.mark.parametrize("exists_as_file", [False, True])
def test_output_with_trailing_slash_must_be_a_folder(
    triplet: dict[str, Path], tmp_path: Path, exists_as_file: bool
) -> None:
    target = tmp_path / "newdir"
    if exists_as_file:
        target.write_bytes(b"precious")
    result = run_cli(upscale(triplet, f"{target}/", "--json"))
    assert result.returncode == 4, result.stderr
    last = last_line(result.stderr)
    assert f"-o {target}/: the folder does not exist" in last and "mkdir -p" in last, last
    assert json.loads(result.stdout)["exit_code"] == 4
    if exists_as_file:
        assert target.read_bytes() == b"precious"
    else:
        assert not target.exists()


def test_output_with_trailing_slash_into_an_existing_folder(
    triplet: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    result = run_cli(upscale(triplet, f"{folder}/"))
    assert result.returncode == 0, result.stderr
    assert (folder / "lr_sr.tif").is_file()


@pytest.mark.parametrize(
    "options",
    [
        ["--bidx", "3", "--bidx", "2"],
        ["-b", "3", "-b2"],
        ["--seed", "1", "--seed=2"],
        ["--engine", "bicubic", "--tile", "64", "--tile", "128"],
    ],
)
def test_repeated_single_value_option_is_refused(
    triplet: dict[str, Path], tmp_path: Path, options: list[str]
) -> None:
    out = tmp_path / "sr.tif"
    result = run_cli(upscale(triplet, out, *options))
    assert result.returncode == 2, result.stderr
    last = last_line(result.stderr)
    assert "given 2 times" in last and "it takes one value" in last, last
    assert not out.exists()


def test_repeatable_options_stay_repeatable(triplet: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "sr.tif"
    co = ["--co", "COMPRESS=DEFLATE", "--co", "ZLEVEL=1"]
    result = run_cli(upscale(triplet, out, *co))
    assert result.returncode == 0, result.stderr


# -- item 5: --from-list as spreadsheets and cron jobs write it --------------------------------


def from_list(listing: Path, *extra: str) -> list[str]:
    return ["upscale", "--from-list", str(listing), "--engine", "bicubic", "--json", *extra]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"lr,ref,mask\nlr.tif,ref.tif\n", "line 2: 2 cell(s), the header has 3"),
        (b"lr,ref,mask\nlr-\xe9.tif,ref.tif,cd.tif\n", "is not UTF-8 text"),
        (b"lr,mask\nlr.tif,cd.tif\n", "lacks column(s) ref"),
        (b"lr,ref,mask\n,ref.tif,cd.tif\n", "line 2: empty lr"),
        (b"lr,ref,mask\n", "has a header but no rows"),
    ],
)
def test_bad_list_files_are_input_errors(
    triplet: dict[str, Path], tmp_path: Path, content: bytes, needle: str
) -> None:
    listing = tmp_path / "jobs.csv"
    listing.write_bytes(content)
    result = run_cli(from_list(listing, "-o", str(tmp_path)))
    assert result.returncode == 3, result.stderr
    last = last_line(result.stderr)
    assert needle in last and str(listing) in last, last
    assert json.loads(result.stdout)["exit_code"] == 3


def test_excel_csv_with_bom_and_crlf(triplet: dict[str, Path], tmp_path: Path) -> None:
    listing = tmp_path / "jobs.csv"
    listing.write_bytes(b"\xef\xbb\xbfLR,Ref,Mask\r\nlr.tif,ref.tif,cd.tif\r\n")
    outs = tmp_path / "outs"
    outs.mkdir()
    result = run_cli(from_list(listing, "-o", str(outs)))
    assert result.returncode == 0, result.stderr
    assert (outs / "lr_sr.tif").is_file()


def test_output_column_is_relative_to_the_o_folder(
    triplet: dict[str, Path], tmp_path: Path
) -> None:
    listing = tmp_path / "jobs.csv"
    listing.write_text("lr,ref,mask,output\nlr.tif,ref.tif,cd.tif,named.tif\n")
    outs = tmp_path / "outs"
    outs.mkdir()
    result = run_cli(from_list(listing, "-o", str(outs)))
    assert result.returncode == 0, result.stderr
    assert (outs / "named.tif").is_file()
    assert not (tmp_path / "named.tif").exists(), "-o was ignored"


def test_output_column_without_o_is_relative_to_the_list(
    triplet: dict[str, Path], tmp_path: Path
) -> None:
    listing = tmp_path / "jobs.csv"
    listing.write_text("lr,ref,mask,output\nlr.tif,ref.tif,cd.tif,named.tif\n")
    result = run_cli(from_list(listing))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "named.tif").is_file()


def test_same_lr_names_in_different_folders_do_not_collide(
    triplet: dict[str, Path], tmp_path: Path
) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "scene.tif").write_bytes(triplet["lr"].read_bytes())
    listing = tmp_path / "jobs.csv"
    listing.write_text("lr,ref,mask\na/scene.tif,ref.tif,cd.tif\nb/scene.tif,ref.tif,cd.tif\n")
    outs = tmp_path / "outs"
    outs.mkdir()
    result = run_cli(from_list(listing, "-o", str(outs)))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in outs.iterdir()) == ["a_scene_sr.tif", "b_scene_sr.tif"]
    positional = tmp_path / "positional"
    positional.mkdir()
    args = upscale(triplet, positional)
    args[1:2] = [str(tmp_path / "a" / "scene.tif"), str(tmp_path / "b" / "scene.tif")]
    result = run_cli(args)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in positional.iterdir()) == ["a_scene_sr.tif", "b_scene_sr.tif"]


def test_the_same_lr_listed_twice_is_refused_up_front(
    triplet: dict[str, Path], tmp_path: Path
) -> None:
    listing = tmp_path / "jobs.csv"
    listing.write_text("lr,ref,mask\nlr.tif,ref.tif,cd.tif\nlr.tif,ref.tif,cd.tif\n")
    result = run_cli(from_list(listing, "-o", str(tmp_path)))
    assert result.returncode == 3, result.stderr
    assert "would all be written to" in last_line(result.stderr)


# -- item 2: --skip-existing keeps only outputs that read back ---------------------------------


def test_skip_existing_refuses_a_complete_output_with_garbage_blocks(
    triplet: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "sr.tif"
    assert run_cli(upscale(triplet, out)).returncode == 0
    again = run_cli(upscale(triplet, out, "--skip-existing", "--json"))
    assert again.returncode == 0 and json.loads(again.stdout)["status"] == "skipped"
    with rasterio.open(out) as src:
        assert src.tags()["REFDIFF_COMPLETE"] == "1"
        offset = int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
        size = int(src.get_tag_item("BLOCK_SIZE_0_0", "TIFF", bidx=1))
    with out.open("r+b") as handle:  # the header and tags stay; the first block is garbage
        handle.seek(offset)
        handle.write(np.random.default_rng(0).integers(0, 255, size, np.uint8).tobytes())
    corrupt = out.read_bytes()
    result = run_cli(upscale(triplet, out, "--skip-existing", "--json"))
    assert result.returncode == 4, result.stderr
    last = last_line(result.stderr)
    assert "is marked complete but does not read back" in last and "--overwrite" in last, last
    assert "IReadBlock failed" in last and "previous exception" not in last, last
    assert json.loads(result.stdout)["status"] == "failed"
    assert out.read_bytes() == corrupt, "the output was replaced without --overwrite"


# -- item 3 (part): the output is checked before the inputs are decoded -----------------------


def test_existing_output_is_reported_before_decoding_the_inputs(
    triplet: dict[str, Path], tmp_path: Path
) -> None:
    """An LR whose blocks are garbage: the output clash is what is reported (exit 4, not 3)."""
    lr = triplet["lr"]
    with rasterio.open(lr) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
        size = int(src.get_tag_item("BLOCK_SIZE_0_0", "TIFF", bidx=1))
    with lr.open("r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xff" * size)
    out = tmp_path / "sr.tif"
    out.write_bytes(b"precious")
    result = run_cli(upscale(triplet, out))
    assert result.returncode == 4, result.stderr
    assert last_line(result.stderr).endswith("already exists (use --overwrite to replace it)")
    assert out.read_bytes() == b"precious"
    out.unlink()
    assert run_cli(upscale(triplet, out)).returncode == 3, "the LR was meant to be corrupt"


@pytest.mark.parametrize("kind", ["fifo", "char device"])
def test_overwrite_never_replaces_a_device_or_pipe(
    triplet: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    """As root, `-o /dev/null --overwrite` put a GeoTIFF in place of the device."""
    out = tmp_path / "special"
    if kind == "fifo":
        os.mkfifo(out)
    else:
        if os.geteuid() != 0:
            pytest.skip("needs root to make a device node")
        os.mknod(out, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a second /dev/null
    result = run_cli(upscale(triplet, out, "--overwrite"))
    assert result.returncode == 4, result.stderr
    assert "is not a regular file" in last_line(result.stderr)
    assert not out.is_file() and out.exists(), "the special file was replaced"


def test_a_batch_with_failures_ends_with_one_error_line(
    triplet: dict[str, Path], tmp_path: Path
) -> None:
    listing = tmp_path / "jobs.csv"
    listing.write_text("lr,ref,mask\nlr.tif,ref.tif,cd.tif\nmissing.tif,ref.tif,cd.tif\n")
    outs = tmp_path / "outs"
    outs.mkdir()
    result = run_cli(from_list(listing, "-o", str(outs)))
    assert result.returncode == 5, result.stderr
    last = last_line(result.stderr)
    assert last == "refdiff: error: 1 of 2 items failed: missing_sr.tif (InputError)", last
    assert json.loads(result.stdout)["counts"] == {"written": 1, "failed": 1}
