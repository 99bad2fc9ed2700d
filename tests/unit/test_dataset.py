"""Chip format: ShardWriter / ChipDataset round trip, manifest errors, aligned dihedral crops."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from refdiff_cli.datasets.chips import ChipDataset, ShardWriter, dihedral, make_batch
from refdiff_cli.errors import InputError, OutputError

S, SCALE, BANDS = 32, 4, ("red", "green", "blue")


def coordinate_chip(index: int) -> dict[str, Any]:
    """Arrays whose values say where they came from: band 0 = row, band 1 = col, band 2 = chip.

    ref = -hr, mask = (hr[0] + 1) / 2, hr_valid = row > 16, ref_valid = col < 16 and lr is the
    4x4 block mean of hr, so every relation survives a crop and a dihedral transform only if
    all arrays got the same crop and the same transform. All values are exact in float16.
    """
    rows, cols = np.meshgrid(np.arange(S), np.arange(S), indexing="ij")
    hr = np.stack([(rows - 16) / 16, (cols - 16) / 16, np.full((S, S), index / 16 - 0.5)]).astype(
        np.float32
    )  # (3, S, S)
    lr = hr.reshape(3, S // SCALE, SCALE, S // SCALE, SCALE).mean(axis=(2, 4))  # (3, 8, 8)
    return {
        "hr": hr,
        "ref": -hr,
        "mask": (hr[:1] + 1) / 2,
        "hr_valid": hr[:1] > 0,
        "ref_valid": hr[1:2] < 0,
        "lr": lr,
    }


def write_chips(root: Path, *, n_train: int = 7, n_val: int = 2, **kwargs: Any) -> Path:
    writer = ShardWriter(root, chip_px=S, bands=BANDS, lr_scale=SCALE, shard_size=3, **kwargs)
    for i in range(n_train + n_val):
        split = "train" if i < n_train else "val"
        writer.add(split, source=i % 2, origin=(i, 2 * i), **coordinate_chip(i))
    return writer.finish(
        sources=[{"name": "a", "license": "CC-BY-4.0"}, {"name": "b"}],
        normalization={"mode": "fixed", "low": 0, "high": 255},
        mask_encoding={"kind": "binary"},
        options={"seed": 1},
    )


@pytest.fixture
def chips(tmp_path: Path) -> Path:
    write_chips(tmp_path / "chips")
    return tmp_path / "chips"


def test_round_trip(chips: Path) -> None:
    manifest_bytes = (chips / "manifest.json").read_bytes()
    manifest = json.loads(manifest_bytes)
    assert manifest["format"] == "refdiff-chips"
    assert manifest["format_version"] == 1
    assert [(s["split"], s["count"]) for s in manifest["shards"]] == [
        ("train", 3),
        ("train", 3),
        ("train", 1),
        ("val", 2),
    ]
    assert not list(chips.glob(".tmp-*")), "temp shard folders must be renamed or removed"
    train = ChipDataset(chips, "train", verify=True)
    val = ChipDataset(chips, "val")
    assert (len(train), len(val)) == (7, 2)
    assert train.fingerprint == hashlib.sha256(manifest_bytes).hexdigest()
    assert train.bands == BANDS and train.lr_scale == SCALE and train.chip_px == S
    for i in range(7):
        chip, want = train.chip(i), coordinate_chip(i)
        for name in ("hr", "ref", "mask", "lr"):
            stored = getattr(chip, name)
            assert stored.dtype == np.float16
            np.testing.assert_array_equal(stored.astype(np.float32), want[name])
        np.testing.assert_array_equal(chip.hr_valid, want["hr_valid"])
        np.testing.assert_array_equal(chip.ref_valid, want["ref_valid"])
        assert (chip.source, chip.origin) == (i % 2, (i, 2 * i))
    assert val.chip(1).origin == (8, 16)
    with pytest.raises(IndexError):
        train.chip(7)


def test_shard_files_are_plain_npy_without_pickle(chips: Path) -> None:
    for path in (chips / "train-00000").glob("*.npy"):
        np.load(path, allow_pickle=False)  # raises if anything needed pickle


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("hr", np.zeros((3, S, S - 1), np.float32), "must be floating"),
        ("hr", np.full((3, S, S), 1.5, np.float32), "leave"),
        ("ref", np.full((3, S, S), np.nan, np.float32), "NaN"),
        ("mask", np.full((1, S, S), -0.1, np.float32), "leave"),
        ("hr_valid", np.ones((1, S, S), np.uint8), "must be bool"),
        ("lr", np.zeros((3, S, S), np.float32), "must be floating"),
        ("hr", np.zeros((3, S, S), np.int16), "must be floating"),
    ],
)
def test_writer_rejects_bad_chips(tmp_path: Path, name: str, value: Any, message: str) -> None:
    writer = ShardWriter(tmp_path / "c", chip_px=S, bands=BANDS, lr_scale=SCALE)
    arrays = {**coordinate_chip(0), name: value}
    with pytest.raises(ValueError, match=message):
        writer.add("train", source=0, origin=(0, 0), **arrays)


def test_writer_rejects_bad_split_missing_lr_and_unknown_source(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path / "c", chip_px=S, bands=BANDS, lr_scale=SCALE)
    with pytest.raises(ValueError, match="split"):
        writer.add("test", source=0, origin=(0, 0), **coordinate_chip(0))
    arrays = coordinate_chip(0)
    del arrays["lr"]
    with pytest.raises(ValueError, match="lr is required"):
        writer.add("train", source=0, origin=(0, 0), **arrays)
    writer.add("train", source=3, origin=(0, 0), **coordinate_chip(0))
    with pytest.raises(ValueError, match="source 3"):
        writer.finish(sources=[{}], normalization={}, mask_encoding={}, options={})
    assert not (tmp_path / "c" / "manifest.json").exists()


def test_writer_refuses_existing_chips_unless_overwrite(chips: Path) -> None:
    with pytest.raises(OutputError, match="already has a manifest"):
        ShardWriter(chips, chip_px=S, bands=BANDS)
    (chips / "manifest.json").unlink()  # an interrupted prepare: shards but no manifest
    with pytest.raises(OutputError, match="no manifest"):
        ShardWriter(chips, chip_px=S, bands=BANDS)
    write_chips(chips, n_train=2, n_val=0, overwrite=True)
    assert len(ChipDataset(chips, "train")) == 2
    assert sorted(p.name for p in chips.iterdir()) == ["manifest.json", "train-00000"]


def test_missing_manifest_is_not_a_chips_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"manifest\.json not found") as info:
        ChipDataset(tmp_path, "train")
    assert "refdiff prepare" in str(info.value)


def _edit_manifest(chips: Path, **changes: Any) -> None:
    path = chips / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_manifest_errors(chips: Path) -> None:
    path = chips / "manifest.json"
    original = path.read_text()
    path.write_text(original[:-20])
    with pytest.raises(InputError, match="not valid JSON"):
        ChipDataset(chips, "train")
    path.write_text(original)
    _edit_manifest(chips, format_version=2)
    with pytest.raises(InputError, match="format version 2"):
        ChipDataset(chips, "train")
    path.write_text(original)
    _edit_manifest(chips, format="something-else")
    with pytest.raises(InputError, match="not a refdiff chips manifest"):
        ChipDataset(chips, "train")
    path.write_text(original)
    _edit_manifest(chips, chip_px=30)  # not a multiple of lr_scale 4
    with pytest.raises(InputError, match="invalid chip_px"):
        ChipDataset(chips, "train")


def test_missing_truncated_and_modified_shard_files(chips: Path) -> None:
    (chips / "train-00001" / "ref.npy").unlink()
    with pytest.raises(InputError, match=r"train-00001/ref\.npy is missing"):
        ChipDataset(chips, "train")
    ChipDataset(chips, "val")  # other splits stay readable
    hr = chips / "val-00000" / "hr.npy"
    data = hr.read_bytes()
    hr.write_bytes(data[:-100])
    with pytest.raises(InputError, match=r"val-00000/hr\.npy is truncated"):
        ChipDataset(chips, "val")
    flipped = bytearray(data)
    flipped[-1] ^= 0x01
    hr.write_bytes(bytes(flipped))
    assert len(ChipDataset(chips, "val")) == 2  # without verify, contents are not hashed
    with pytest.raises(InputError, match="sha256"):
        ChipDataset(chips, "val", verify=True)


def test_wrong_count_in_manifest(chips: Path) -> None:
    manifest = json.loads((chips / "manifest.json").read_text())
    manifest["shards"][0]["count"] = 2
    (chips / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="the manifest implies"):
        ChipDataset(chips, "train")


def test_dihedral_gives_eight_distinct_transforms() -> None:
    array = np.arange(12.0).reshape(1, 3, 4)
    images = {dihedral(array, t).tobytes() + bytes(dihedral(array, t).shape) for t in range(8)}
    assert len(images) == 8
    np.testing.assert_array_equal(dihedral(array, 0), array)
    with pytest.raises(ValueError, match=r"0\.\.7"):
        dihedral(array, 8)


def _find_transform(crop: np.ndarray, row: int, col: int, size: int) -> list[int]:
    rows, cols = np.meshgrid(np.arange(size) + row, np.arange(size) + col, indexing="ij")
    plain = np.stack([(rows - 16) / 16, (cols - 16) / 16])
    return [t for t in range(8) if np.array_equal(dihedral(plain, t), crop[:2])]


def test_crops_are_aligned_and_share_one_transform(chips: Path) -> None:
    dataset = ChipDataset(chips, "train")
    crop = 16
    seen_transforms: set[int] = set()
    seen_offsets: set[tuple[int, int]] = set()
    for seed in range(40):
        indices = [seed % 7, (seed + 3) % 7]
        batch = make_batch(
            dataset,
            indices,
            crop_px=crop,
            scale=SCALE,
            generator=torch.Generator().manual_seed(seed),
        )
        assert batch.hr.shape == (2, 3, crop, crop) and batch.hr.dtype == torch.float32
        assert batch.lr is not None and batch.lr.shape == (2, 3, crop // SCALE, crop // SCALE)
        assert batch.hr_valid.dtype == torch.bool and batch.mask.shape == (2, 1, crop, crop)
        for k, index in enumerate(indices):
            hr = batch.hr[k].numpy()
            assert np.all(hr[2] == np.float32(np.float16(index / 16 - 0.5)))  # the right chip
            row, col = round(float(hr[0].min()) * 16 + 16), round(float(hr[1].min()) * 16 + 16)
            assert row % SCALE == 0 and col % SCALE == 0, "crop offsets must be multiples of 4"
            transforms = _find_transform(hr, row, col, crop)
            assert len(transforms) == 1
            seen_transforms.add(transforms[0])
            seen_offsets.add((row, col))
            # Every other array went through the same crop and the same transform.
            np.testing.assert_array_equal(batch.ref[k].numpy(), -hr)
            np.testing.assert_array_equal(batch.mask[k, 0].numpy(), (hr[0] + 1) / 2)
            np.testing.assert_array_equal(batch.hr_valid[k, 0].numpy(), hr[0] > 0)
            np.testing.assert_array_equal(batch.ref_valid[k, 0].numpy(), hr[1] < 0)
            pooled = torch.nn.functional.avg_pool2d(batch.hr[k : k + 1], SCALE)[0]
            torch.testing.assert_close(batch.lr[k], pooled, rtol=0, atol=0)
    assert seen_transforms == set(range(8))
    assert len(seen_offsets) > 10  # crops are random (not cached), 25 positions possible


def test_batches_are_reproducible_and_per_item(chips: Path) -> None:
    dataset = ChipDataset(chips, "train")

    def gens(*seeds: int) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(s) for s in seeds]

    a = make_batch(dataset, [1, 4], crop_px=16, scale=SCALE, generator=gens(5, 6))
    b = make_batch(dataset, [1, 4], crop_px=16, scale=SCALE, generator=gens(5, 6))
    alone = make_batch(dataset, [4], crop_px=16, scale=SCALE, generator=gens(6))
    other = make_batch(dataset, [1, 4], crop_px=16, scale=SCALE, generator=gens(7, 6))
    assert torch.equal(a.hr, b.hr) and a.lr is not None and b.lr is not None
    assert torch.equal(a.lr, b.lr)
    assert torch.equal(a.hr[1], alone.hr[0]), "an item's crop depends on its generator only"
    assert not torch.equal(a.hr[0], other.hr[0])


def test_make_batch_rejects_unaligned_crops(chips: Path) -> None:
    dataset = ChipDataset(chips, "train")
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="multiple of 4"):
        make_batch(dataset, [0], crop_px=18, scale=SCALE, generator=gen)
    with pytest.raises(ValueError, match="chip size"):
        make_batch(dataset, [0], crop_px=36, scale=SCALE, generator=gen)
    with pytest.raises(ValueError, match="not x8"):
        make_batch(dataset, [0], crop_px=16, scale=8, generator=gen)
