"""The change-detection folders of the shared real data list and load as expected."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import pytest

from refdiff_cli.data import masks
from refdiff_cli.datasets.item_pixels import LoadedItem, load_item
from refdiff_cli.datasets.layouts import detect_layout, list_items
from refdiff_cli.datasets.splits import split_of
from refdiff_cli.errors import InputError
from refdiff_cli.geo.images import read_image

pytestmark = pytest.mark.real_data

EXPECTED = {"levir": 6, "dsifn": 5, "egy": 5, "sztaki": 10, "paddlers": 1}
SIZES = {"sztaki": (640, 952)}  # (height, width); the others are 256x256


def load_all(root: Path, scale: int) -> list[LoadedItem]:
    return [load_item(item, scale=scale) for item in list_items(root)]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cd_folder_lists_and_loads(shared_data: Path, name: str) -> None:
    root = shared_data / "cd_pairs" / name
    assert detect_layout(root) == "cd"
    loaded = load_all(root, scale=8)
    assert len(loaded) == EXPECTED[name]
    height, width = SIZES.get(name, (256, 256))
    for item in loaded:
        assert item.hr.shape == item.ref.shape == (3, height, width), item.name
        assert item.mask.shape == (height, width), item.name
        assert item.dtype == np.uint8 and item.mask.dtype == np.uint8
        assert item.lr is None and not item.cropped  # 952 and 640 are multiples of 8
        values = set(np.unique(item.mask).tolist())
        assert 0 in values or values == {255}, item.name
        if name != "sztaki":  # see test_sztaki_labels_are_binary_but_anti_aliased
            assert masks.infer_encoding(values, source=item.name) == masks.BINARY, item.name


def test_sztaki_crops_at_scale_16(shared_data: Path) -> None:
    loaded = load_all(shared_data / "cd_pairs" / "sztaki", scale=16)
    assert all(item.cropped and item.hr.shape == (3, 640, 944) for item in loaded)
    assert all(item.source_shape == (640, 952) and item.mask.shape == (640, 944) for item in loaded)


def test_sztaki_labels_are_binary_but_anti_aliased(shared_data: Path) -> None:
    # SZTAKI labels are hand-drawn 0/255 palette BMPs with a few stray grey pixels
    # (Szada_6: one 213; Tiszadob_4: eight values 21..252, one pixel each), so they
    # must be read as binary (masks.infer_encoding does so from the pixel counts).
    stray = {}
    for item in load_all(shared_data / "cd_pairs" / "sztaki", scale=8):
        values, counts = np.unique(item.mask, return_counts=True)
        assert {0, 255} <= set(values.tolist()), item.name
        stray[item.name] = int(counts[~np.isin(values, [0, 255])].sum())
    assert stray["Szada_6"] == 1 and stray["Tiszadob_4"] == 8
    assert sum(stray.values()) == 9


def test_infer_encoding_reads_anti_aliased_sztaki_labels_as_binary(shared_data: Path) -> None:
    for item in load_all(shared_data / "cd_pairs" / "sztaki", scale=8):
        values, counts = np.unique(item.mask, return_counts=True)
        counted = dict(zip(values.tolist(), counts.tolist(), strict=True))
        assert masks.infer_encoding(counted) == masks.BINARY, item.name
        if len(values) > 2:  # without counts the strays cannot be told from class codes
            with contextlib.suppress(InputError):
                assert masks.infer_encoding(values) != masks.BINARY


def test_paddlers_class_map_is_skipped_and_reads_as_codes(
    shared_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = shared_data / "cd_pairs" / "paddlers"
    with caplog.at_level(logging.WARNING, logger="refdiff_cli.datasets.layouts"):
        assert [item.name for item in list_items(root)] == ["optical"]
    assert "skipped 1 name(s)" in caplog.text and "optical_multiclass" in caplog.text
    # Palette indices are the class codes (code 0 is drawn white, code 1 black).
    codes = read_image(root / "label" / "optical_multiclass.png", palette="index")
    assert codes.shape == (1, 256, 256)
    assert set(np.unique(codes).tolist()) == {0, 1, 4}
    with pytest.raises(InputError, match="class table"):
        masks.infer_encoding(np.unique(codes))


def test_prefixed_names_keep_their_official_split(shared_data: Path) -> None:
    for name in ("levir", "egy"):
        for item in list_items(shared_data / "cd_pairs" / name):
            expected = "train" if item.name.startswith("train_") else "val"
            assert split_of(item.name, val_fraction=0.5, seed=0) == expected
