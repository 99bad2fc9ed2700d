"""Plain-image I/O (geo/images.py) and dataset folders, items, splits and set lists, tiny files."""

from __future__ import annotations

import logging
import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from refdiff_cli.datasets import layouts, set_lists
from refdiff_cli.datasets.item_pixels import load_item
from refdiff_cli.datasets.layouts import detect_layout, list_items
from refdiff_cli.datasets.splits import split_of
from refdiff_cli.errors import ConfigError, InputError, OutputError
from refdiff_cli.geo import images
from refdiff_cli.geo.images import read_image, write_png

DRIVERS = {".png": "PNG", ".bmp": "BMP", ".jpg": "JPEG", ".tif": "GTiff"}
RNG = np.random.default_rng(20240601)


def write(path: Path, array: np.ndarray, *, colormap: dict[int, Any] | None = None) -> Path:
    """Write (C, H, W) or (H, W) pixels as a plain image (driver from the suffix)."""
    data = array[None] if array.ndim == 2 else array  # (C, H, W)
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        rasterio.Env(GDAL_PAM_ENABLED="NO"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(
            path,
            "w",
            driver=DRIVERS[path.suffix],
            width=data.shape[2],
            height=data.shape[1],
            count=data.shape[0],
            dtype=data.dtype,
        ) as dst:
            dst.write(data)
            if colormap is not None:
                dst.write_colormap(1, colormap)
    return path


def rgb(height: int, width: int) -> np.ndarray:
    return RNG.integers(0, 256, (3, height, width), dtype=np.uint8)  # (3, H, W)


def label(height: int, width: int) -> np.ndarray:
    return (RNG.random((height, width)) < 0.3).astype(np.uint8) * 255  # (H, W)


def make_cd(root: Path, names: list[str], *, size: tuple[int, int] = (16, 24)) -> Path:
    for name in names:
        write(root / "A" / f"{name}.png", rgb(*size))
        write(root / "B" / f"{name}.png", rgb(*size))
        write(root / "label" / f"{name}.png", label(*size))
    return root


def make_paper(root: Path, names: list[str], lr_folders: dict[str, int], hr_px: int = 32) -> Path:
    for name in names:
        write(root / "HR_512" / f"{name}.png", rgb(hr_px, hr_px))
        write(root / "Ref" / f"{name}.png", rgb(hr_px, hr_px))
        write(
            root / "CD_mask" / f"{name}.png", RNG.choice([0, 40, 80], (hr_px, hr_px)).astype("u1")
        )
        for folder, lr_px in lr_folders.items():
            write(root / folder / f"{name}.png", rgb(lr_px, lr_px))
    return root


# ---------------------------------------------------------------- geo/images.py


@pytest.mark.parametrize("shape", [(3, 9, 13), (1, 5, 7)])
def test_write_png_round_trip_leaves_no_litter(tmp_path: Path, shape: tuple[int, ...]) -> None:
    array = RNG.integers(0, 256, shape, dtype=np.uint8)
    out = tmp_path / "figure.png"
    write_png(out, array)
    assert os.listdir(tmp_path) == ["figure.png"]
    back = read_image(out)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, array)
    write_png(out, array[:, ::-1].copy())  # replaces
    np.testing.assert_array_equal(read_image(out), array[:, ::-1])
    assert os.listdir(tmp_path) == ["figure.png"]


def test_write_png_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="uint8"):
        write_png(tmp_path / "x.png", np.zeros((3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        write_png(tmp_path / "x.png", np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(OutputError, match="does not exist"):
        write_png(tmp_path / "missing" / "x.png", np.zeros((1, 4, 4), np.uint8))

    def fail(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(images.os, "replace", fail)
    with pytest.raises(OutputError, match=r"x\.png"):
        write_png(tmp_path / "x.png", np.zeros((1, 4, 4), np.uint8))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_read_image_keeps_pixels_and_dtype(tmp_path: Path, suffix: str) -> None:
    array = rgb(11, 17)
    np.testing.assert_array_equal(read_image(write(tmp_path / f"i{suffix}", array)), array)
    deep = RNG.integers(0, 60000, (2, 6, 5), dtype=np.uint16)
    back = read_image(write(tmp_path / "deep.tif", deep))
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, deep)


def test_georeferencing_warning_is_suppressed_locally(tmp_path: Path) -> None:
    path = write(tmp_path / "i.png", rgb(4, 4))
    before = list(warnings.filters)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_image(path)
        write_png(tmp_path / "figure.png", rgb(4, 4))
    assert warnings.filters == before


def test_read_image_palette_as_rgb_or_indices(tmp_path: Path) -> None:
    codes = np.array([[0, 1, 4], [4, 4, 1]], dtype=np.uint8)
    colours = {0: (255, 255, 255, 255), 1: (0, 0, 0, 255), 4: (150, 150, 150, 255)}
    for suffix in (".png", ".bmp"):
        path = write(tmp_path / f"p{suffix}", codes, colormap=colours)
        np.testing.assert_array_equal(read_image(path, palette="index"), codes[None])
        expanded = read_image(path)
        assert expanded.shape == (3, 2, 3)
        np.testing.assert_array_equal(expanded[:, 0, 2], [150, 150, 150])
        np.testing.assert_array_equal(expanded[:, 0, 0], [255, 255, 255])


def test_read_image_drops_opaque_alpha_and_rejects_transparency(tmp_path: Path) -> None:
    colour = rgb(6, 6)
    alpha = np.full((1, 6, 6), 255, np.uint8)
    path = write(tmp_path / "opaque.png", np.concatenate([colour, alpha]))
    np.testing.assert_array_equal(read_image(path), colour)
    alpha[0, 2, 3] = 0
    path = write(tmp_path / "holes.png", np.concatenate([colour, alpha]))
    with pytest.raises(InputError, match=r"holes\.png has transparent pixels"):
        read_image(path)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".jpg", ".tif"])
def test_read_image_rejects_truncated_files(tmp_path: Path, suffix: str) -> None:
    # Random pixels do not compress, so the cut removes pixel data. GDAL 3.10 reads a
    # truncated PNG in one full window without any error: only strip reads catch it.
    whole = write(tmp_path / f"whole{suffix}", rgb(96, 80))
    data = whole.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(InputError, match=rf"cut\{suffix}"):
        read_image(cut)


def test_read_image_rejects_missing_empty_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nothing\.png does not exist"):
        read_image(tmp_path / "nothing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.png is empty"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "notes.png").write_text("not an image\n")
    with pytest.raises(InputError, match=r"cannot read .*notes\.png"):
        read_image(tmp_path / "notes.png")
    with pytest.raises(InputError, match="is not a file"):
        read_image(tmp_path)


# ---------------------------------------------------------------- layouts


def test_detect_layout(tmp_path: Path) -> None:
    assert detect_layout(make_cd(tmp_path / "cd", ["a"])) == "cd"
    assert detect_layout(make_paper(tmp_path / "paper", ["a"], {})) == "paper"
    (tmp_path / "odd" / "A").mkdir(parents=True)
    (tmp_path / "odd" / "images").mkdir()
    with pytest.raises(InputError, match=r"found A/, images/") as info:
        detect_layout(tmp_path / "odd")
    assert "label/" in str(info.value) and "CD_mask/" in str(info.value)
    with pytest.raises(InputError, match="does not exist"):
        detect_layout(tmp_path / "absent")


def test_cd_items_matched_by_stem_and_unmatched_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_cd(tmp_path, ["b2", "a1", "c3"])
    write(root / "B" / "lonely.png", rgb(16, 24))
    write(root / "label" / "orphan.bmp", label(16, 24))
    (root / "A" / "readme.txt").write_text("ignored")
    (root / "A" / ".hidden.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="refdiff_cli.datasets.layouts"):
        items = list_items(root)
    assert [i.name for i in items] == ["a1", "b2", "c3"]
    first = items[0]
    assert (first.hr, first.ref, first.mask, first.lr) == (
        root / "B" / "a1.png",
        root / "A" / "a1.png",
        root / "label" / "a1.png",
        None,
    )
    (record,) = caplog.records
    assert "skipped 2 name(s)" in record.getMessage()
    assert "lonely (not in A/, label/)" in record.getMessage()


def test_cd_errors(tmp_path: Path) -> None:
    root = tmp_path / "cd"
    write(root / "A" / "x.png", rgb(8, 8))
    write(root / "B" / "y.png", rgb(8, 8))
    write(root / "label" / "z.png", label(8, 8))
    with pytest.raises(InputError, match=r"no item .* has all its files"):
        list_items(root)
    write(root / "A" / "x.bmp", rgb(8, 8))
    with pytest.raises(InputError, match="two images named 'x'"):
        list_items(root)
    with pytest.raises(ConfigError, match="LR kind"):
        list_items(make_cd(tmp_path / "ok", ["a"]), lr_kind="real")


def test_load_item_cd(tmp_path: Path) -> None:
    root = make_cd(tmp_path, ["a"], size=(16, 24))
    (item,) = list_items(root)
    loaded = load_item(item, scale=8)
    assert loaded.hr.shape == loaded.ref.shape == (3, 16, 24)
    assert loaded.mask.shape == (16, 24)
    assert set(np.unique(loaded.mask)) <= {0, 255}
    assert loaded.lr is None and loaded.dtype == np.uint8
    assert not loaded.cropped and loaded.source_shape == (16, 24)


def test_load_item_crops_to_the_scale(tmp_path: Path) -> None:
    root = make_cd(tmp_path, ["a"], size=(20, 28))
    (item,) = list_items(root)
    hr = read_image(item.hr)
    loaded = load_item(item, scale=8)
    assert loaded.cropped and loaded.source_shape == (20, 28)
    assert loaded.hr.shape == (3, 16, 24) and loaded.mask.shape == (16, 24)
    np.testing.assert_array_equal(loaded.hr, hr[:, :16, :24])  # top-left anchored
    assert not load_item(item, scale=4).cropped
    with pytest.raises(InputError, match="smaller than the scale 32"):
        load_item(item, scale=32)


def test_load_item_label_bands(tmp_path: Path) -> None:
    root = make_cd(tmp_path, ["a"], size=(8, 8))
    grey = label(8, 8)
    write(root / "label" / "a.png", np.stack([grey, grey, grey]))
    (item,) = list_items(root)
    np.testing.assert_array_equal(load_item(item, scale=2).mask, grey)
    colour = np.stack([grey, grey, 255 - grey])
    write(root / "label" / "a.png", colour)
    with pytest.raises(InputError, match=r"label/a\.png has 3 differing bands"):
        load_item(item, scale=2)


def test_load_item_palette_label_gives_class_codes(tmp_path: Path) -> None:
    root = make_cd(tmp_path, ["a"], size=(8, 8))
    codes = RNG.choice([0, 1, 4], (8, 8)).astype(np.uint8)
    colours = {0: (255, 255, 255, 255), 1: (0, 0, 0, 255), 4: (150, 150, 150, 255)}
    write(root / "label" / "a.png", codes, colormap=colours)
    (item,) = list_items(root)
    np.testing.assert_array_equal(load_item(item, scale=2).mask, codes)


def test_load_item_size_and_band_mismatches(tmp_path: Path) -> None:
    root = make_cd(tmp_path, ["a"], size=(8, 8))
    (item,) = list_items(root)
    write(root / "A" / "a.png", rgb(8, 16))
    with pytest.raises(InputError, match=r"HR .*B/a\.png \(8x8 px.*reference .*A/a\.png \(16x8"):
        load_item(item, scale=2)
    write(root / "A" / "a.png", rgb(8, 8)[:1])
    with pytest.raises(InputError, match=r"1 band\(s\)"):
        load_item(item, scale=2)
    write(root / "A" / "a.png", rgb(8, 8))
    write(root / "label" / "a.png", label(8, 6))
    with pytest.raises(InputError, match=r"label/a\.png is 6x8 px but HR .* is 8x8 px"):
        load_item(item, scale=2)
    with pytest.raises(ConfigError):
        load_item(item, scale=0)


def test_paper_layout_scale_and_kind_selection(tmp_path: Path) -> None:
    root = make_paper(
        tmp_path, ["t1", "t0"], {"Bic_LR_D8_4": 4, "Bic_LR_D16_2": 2, "real_LR_D8_4": 4}
    )
    assert detect_layout(root) == "paper"
    found = {(f.kind, f.scale, f.lr_px) for f in layouts.find_lr_folders(root)}
    assert found == {("bicubic", 8, 4), ("bicubic", 16, 2), ("real", 8, 4)}
    items = list_items(root, "paper", scale=16)
    assert [i.name for i in items] == ["t0", "t1"]
    assert items[0].lr == root / "Bic_LR_D16_2" / "t0.png"
    assert items[0].hr == root / "HR_512" / "t0.png" and items[0].mask.parent.name == "CD_mask"
    real = list_items(root, scale=8, lr_kind="real")
    assert real[0].lr == root / "real_LR_D8_4" / "t0.png"
    with pytest.raises(ConfigError, match=r"several LR folders for scale 8") as info:
        list_items(root, scale=8)
    assert "Bic_LR_D8_4" in str(info.value) and "real_LR_D8_4" in str(info.value)
    with pytest.raises(ConfigError, match="several LR folders: Bic_LR_D16_2"):
        list_items(root)
    with pytest.raises(ConfigError, match=r"no LR folder for scale 4; LR folders found: Bic_LR"):
        list_items(root, scale=4)
    with pytest.raises(ConfigError, match="no LR folder for scale 16 and kind real"):
        list_items(root, scale=16, lr_kind="real")
    assert all(i.lr is None for i in list_items(root, with_lr=False))


def test_paper_layout_load_and_lr_size_check(tmp_path: Path) -> None:
    root = make_paper(tmp_path, ["a"], {"Bic_LR_D8_4": 4})
    (item,) = list_items(root)
    loaded = load_item(item, scale=8)
    assert loaded.lr is not None and loaded.lr.shape == (3, 4, 4)
    assert set(np.unique(loaded.mask)) <= {0, 40, 80}
    with pytest.raises(InputError, match=r"LR .* is 4x4 px; times the scale 4 that is 16x16 px"):
        load_item(item, scale=4)
    write(item.lr, rgb(4, 4)[:1])
    with pytest.raises(InputError, match=r"1 band\(s\), uint8\) does not match HR"):
        load_item(item, scale=8)


def test_paper_layout_without_lr_folders(tmp_path: Path) -> None:
    root = make_paper(tmp_path, ["a"], {})
    with pytest.raises(InputError, match="has no LR folder"):
        list_items(root, scale=8)
    assert list_items(root, scale=8, with_lr=False)[0].lr is None


def test_unmatched_lr_files_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_paper(tmp_path, ["a", "b"], {"Bic_LR_D8_4": 4})
    (root / "Bic_LR_D8_4" / "b.png").unlink()
    with caplog.at_level(logging.WARNING):
        assert [i.name for i in list_items(root)] == ["a"]
    assert "b (not in Bic_LR_D8_4/)" in caplog.text


# ---------------------------------------------------------------- split


def test_split_is_deterministic_and_prefixes_win() -> None:
    names = [f"scene_{i}" for i in range(2000)]
    splits = {n: split_of(n, val_fraction=0.2, seed=7) for n in names}
    shuffled = names[:]
    random.Random(3).shuffle(shuffled)
    assert {n: split_of(n, val_fraction=0.2, seed=7) for n in shuffled} == splits
    share = sum(s == "val" for s in splits.values()) / len(names)
    assert 0.17 < share < 0.23
    other = {n: split_of(n, val_fraction=0.2, seed=8) for n in names}
    assert other != splits
    assert split_of("train_386_0512_0768", val_fraction=1.0, seed=0) == "train"
    assert split_of("val_27_0000_0256", val_fraction=0.0, seed=0) == "val"
    assert split_of("test_test_1", val_fraction=0.0, seed=0) == "val"
    assert split_of("Train_x", val_fraction=1.0, seed=0) == "train"
    assert all(split_of(n, val_fraction=0.0, seed=1) == "train" for n in names[:50])
    assert all(split_of(n, val_fraction=1.0, seed=1) == "val" for n in names[:50])
    with pytest.raises(ConfigError, match="val-fraction"):
        split_of("x", val_fraction=1.5, seed=0)


def test_split_golden() -> None:
    # sha256 is stable across runs, machines and Python versions; pinned here.
    got = [split_of(f"img{i}", val_fraction=0.5, seed=0) for i in range(8)]
    assert got == GOLDEN_SPLIT


GOLDEN_SPLIT = ["train", "val", "val", "train", "train", "train", "val", "train"]


# ---------------------------------------------------------------- CSV set lists


def make_files(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")


def test_read_set_csv(tmp_path: Path) -> None:
    make_files(tmp_path / "d", "lr.tif", "ref.tif", "mask.tif", "hr.tif")
    absolute = tmp_path / "d" / "hr.tif"
    csv_path = tmp_path / "sets.csv"
    csv_path.write_text(
        "\ufeffRef, LR ,mask,hr,note\n"
        "# a comment\n"
        "\n"
        f"d/ref.tif,d/lr.tif,d/mask.tif,{absolute},first\n"
        '"d/ref.tif",d/lr.tif,d/mask.tif,d/hr.tif\n',
        encoding="utf-8",
    )
    rows = set_lists.read_set_csv(csv_path, ("lr", "ref", "mask", "hr"))
    assert len(rows) == 2
    assert rows[0] == {
        "lr": tmp_path / "d" / "lr.tif",
        "ref": tmp_path / "d" / "ref.tif",
        "mask": tmp_path / "d" / "mask.tif",
        "hr": absolute,
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("hr,ref\nd/hr.tif,d/ref.tif\n", r"line 1: missing column\(s\) mask"),
        ("hr,ref,mask,hr\n", r"line 1: repeated column\(s\) hr"),
        (
            "hr,ref,mask\nd/hr.tif,d/ref.tif,d/mask.tif\nd/hr.tif,,d/mask.tif\n",
            "line 3: empty 'ref'",
        ),
        ("hr,ref,mask\n\nd/hr.tif,d/ref.tif\n", "line 3: empty 'mask'"),
        ("hr,ref,mask\nd/hr.tif,d/nope.tif,d/mask.tif\n", r"line 2: ref file .*nope\.tif does not"),
        ("hr,ref,mask\nd/hr.tif,d/ref.tif,d/mask.tif,extra\n", "line 2: 4 cells but the header"),
        ("hr,ref,mask\n# only a comment\n", "lists no sets"),
        ("", "lists no sets"),
    ],
)
def test_read_set_csv_errors(tmp_path: Path, body: str, message: str) -> None:
    make_files(tmp_path / "d", "ref.tif", "mask.tif", "hr.tif")
    csv_path = tmp_path / "sets.csv"
    csv_path.write_text(body, encoding="utf-8")
    with pytest.raises(InputError, match=message) as info:
        set_lists.read_set_csv(csv_path, ("hr", "ref", "mask"))
    assert "sets.csv" in str(info.value)


def test_read_set_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"cannot read set list .*absent\.csv"):
        set_lists.read_set_csv(tmp_path / "absent.csv", ("hr",))
