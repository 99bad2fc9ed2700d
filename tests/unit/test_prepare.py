"""`data/prepare`: chips from cd, paper and CSV (GeoTIFF) sources, splits, synthesis, errors."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import rasterio.warp
import torch
from affine import Affine
from hypothesis import given
from hypothesis import strategies as st

from refdiff_cli.data import masks, normalize
from refdiff_cli.data.synthesize import SynthesisConfig, rng_for, synthesize_ref
from refdiff_cli.datasets.chips import ChipDataset, make_batch
from refdiff_cli.errors import ConfigError, InputError, OutputError
from refdiff_cli.prepare.options import PrepareOptions
from refdiff_cli.prepare.read import chip_windows
from refdiff_cli.prepare.run import prepare
from tests.conftest import RasterFactory

SCALE, CHIP = 8, 32
F16 = 2e-3  # float16 storage error in model space
DRIVERS = {".png": "PNG", ".bmp": "BMP", ".tif": "GTiff"}


def write_image(path: Path, array: np.ndarray) -> Path:
    """Write (C, H, W) or (H, W) pixels as a plain image (driver from the suffix)."""
    data = array[None] if array.ndim == 2 else array  # (C, H, W)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with (
            rasterio.Env(GDAL_PAM_ENABLED="NO"),
            rasterio.open(
                path,
                "w",
                driver=DRIVERS[path.suffix],
                width=data.shape[2],
                height=data.shape[1],
                count=data.shape[0],
                dtype=data.dtype,
            ) as dst,
        ):
            dst.write(data)
    return path


def scene(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth uint8 RGB image with some texture, (3, H, W)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / 16.0
    bands = [np.sin(x + k + seed) * np.cos(0.7 * y - k) * 90 + 128 for k in range(3)]
    noisy = np.stack(bands) + rng.normal(0, 6, (3, height, width))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def to_model_u8(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float64) / 127.5 - 1.0


def make_cd(root: Path, names: dict[str, tuple[int, int]]) -> dict[str, dict[str, np.ndarray]]:
    """A cd folder; labels are anti-aliased 0/128/255. Returns the written arrays by name."""
    written = {}
    for i, (name, (h, w)) in enumerate(names.items()):
        hr, ref = scene(h, w, 2 * i), scene(h, w, 2 * i + 1)
        label = np.zeros((h, w), np.uint8)
        edge = min(20, h - 1)
        label[5:edge, 10:40] = 255
        label[edge, 10:40] = 128  # anti-aliased edge: changed under the binary encoding
        write_image(root / "B" / f"{name}.png", hr)
        write_image(root / "A" / f"{name}.png", ref)
        write_image(root / "label" / f"{name}.png", label)
        written[name] = {"hr": hr, "ref": ref, "label": label}
    return written


def make_paper(root: Path, names: list[str], *, size: int = 64) -> dict[str, dict[str, Any]]:
    """A paper folder with grey class codes and a real x8 LR folder."""
    written = {}
    lr_px = size // SCALE
    for i, name in enumerate(names):
        hr, ref = scene(size, size, 10 + i), scene(size, size, 20 + i)
        codes = np.zeros((size, size), np.uint8)
        codes[:30, :20], codes[40:, 30:] = 50, 200
        lr = scene(lr_px, lr_px, 30 + i)
        write_image(root / "HR_512" / f"{name}.png", hr)
        write_image(root / "Ref" / f"{name}.png", ref)
        write_image(root / "CD_mask" / f"{name}.png", codes)
        write_image(root / f"real_LR_D8_{lr_px}" / f"{name}.png", lr)
        written[name] = {"hr": hr, "ref": ref, "codes": codes, "lr": lr}
    return written


def opts(**kwargs: Any) -> PrepareOptions:
    return PrepareOptions(**{"scale": SCALE, "chip_px": CHIP, **kwargs})


def chips_by_source(root: Path) -> dict[int, list[tuple[str, Any]]]:
    found: dict[int, list[tuple[str, Any]]] = {}
    for split in ("train", "val"):
        data = ChipDataset(root, split, verify=True)
        for i in range(len(data)):
            chip = data.chip(i)
            found.setdefault(chip.source, []).append((split, chip))
    return found


# --------------------------------------------------------------------------------------------
# Chip grid


@given(
    st.integers(1, 40),
    st.integers(1, 40),
    st.sampled_from([2, 4, 8]),
    st.integers(1, 4),
    st.integers(1, 4),
)
def test_chip_windows_cover_the_image_on_the_scale_grid(
    rows: int, cols: int, scale: int, chip_units: int, stride_units: int
) -> None:
    chip, stride = chip_units * scale, min(stride_units, chip_units) * scale
    shape = (rows * scale, cols * scale)
    windows = chip_windows(shape, chip_px=chip, stride_px=stride, scale=scale)
    if min(shape) < chip:
        assert windows == []
        return
    covered = np.zeros(shape, bool)
    for w in windows:
        assert w.row_off % scale == 0 and w.col_off % scale == 0
        assert w.row_end <= shape[0] and w.col_end <= shape[1]
        covered[w.row_off : w.row_end, w.col_off : w.col_end] = True
    assert covered.all()
    assert max(w.row_end for w in windows) == shape[0]  # last chip flush with the edge
    expected_rows = len(range(0, shape[0] - chip + 1, stride)) + ((shape[0] - chip) % stride > 0)
    assert len({w.row_off for w in windows}) == expected_rows


# --------------------------------------------------------------------------------------------
# Change-detection folders


def test_cd_layout_chips_equal_the_normalised_crops(tmp_path: Path) -> None:
    src = tmp_path / "levir"
    data = make_cd(src, {"train_a": (64, 96), "val_b": (64, 72)})
    report = prepare([src], tmp_path / "chips", opts())
    # 64x96: 2 x 3 chips; 64x72 (cropped to 72): 2 x 3 chips (the last column flush at 40).
    assert [s.chips for s in report.sources] == [6, 6]
    assert report.chips == {"train": 6, "val": 6}
    manifest = json.loads((tmp_path / "chips" / "manifest.json").read_text())
    assert manifest["mask_encoding"] == masks.BINARY.to_dict()
    assert [s["name"] for s in manifest["sources"]] == ["levir/train_a", "levir/val_b"]
    found = chips_by_source(tmp_path / "chips")
    origins = sorted(chip.origin for _, chip in found[1])
    assert origins == [(r, c) for r in (0, 32) for c in (0, 32, 40)]
    for index, name in enumerate(["train_a", "val_b"]):
        arrays = data[name]
        for split, chip in found[index]:
            assert split == manifest["sources"][index]["split"]
            r, c = chip.origin
            window = (slice(None), slice(r, r + CHIP), slice(c, c + CHIP))
            np.testing.assert_allclose(chip.hr, to_model_u8(arrays["hr"][window]), atol=F16)
            np.testing.assert_allclose(chip.ref, to_model_u8(arrays["ref"][window]), atol=F16)
            changed = arrays["label"][None][window] > 0
            np.testing.assert_array_equal(chip.mask, changed.astype(np.float16))
            assert chip.hr_valid.all() and chip.ref_valid.all()
            assert chip.lr is None


def test_chips_load_and_batch(tmp_path: Path) -> None:
    src = tmp_path / "paper"
    make_paper(src, ["train_x"])
    prepare([src], tmp_path / "chips", opts())
    dataset = ChipDataset(tmp_path / "chips", "train")
    assert len(dataset) == 4 and dataset.lr_scale == SCALE
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    batch = make_batch(dataset, [0, 1, 3], crop_px=16, scale=SCALE, generator=gens)
    assert batch.hr.shape == (3, 3, 16, 16) and batch.mask.shape == (3, 1, 16, 16)
    assert batch.lr is not None and batch.lr.shape == (3, 3, 2, 2)
    assert float(batch.hr.abs().max()) <= 1.0


# --------------------------------------------------------------------------------------------
# Paper layout: grey codes and stored LR


def test_paper_layout_stores_aligned_lr_and_grey_codes(tmp_path: Path) -> None:
    src = tmp_path / "second"
    data = make_paper(src, ["train_1", "val_2"])
    report = prepare([src], tmp_path / "chips", opts())
    assert report.lr_scale == SCALE and report.chips == {"train": 4, "val": 4}
    manifest = json.loads((tmp_path / "chips" / "manifest.json").read_text())
    assert manifest["lr_scale"] == SCALE
    assert manifest["mask_encoding"]["kind"] == "grey"
    assert manifest["sources"][0]["paths"]["lr"].endswith("real_LR_D8_8/train_1.png")
    for index, name in enumerate(["train_1", "val_2"]):
        arrays = data[name]
        for _, chip in chips_by_source(tmp_path / "chips")[index]:
            r, c = chip.origin
            assert r % SCALE == 0 and c % SCALE == 0
            t = CHIP // SCALE
            lr_block = arrays["lr"][:, r // SCALE : r // SCALE + t, c // SCALE : c // SCALE + t]
            assert chip.lr is not None
            np.testing.assert_allclose(chip.lr, to_model_u8(lr_block), atol=F16)
            codes = arrays["codes"][None, r : r + CHIP, c : c + CHIP]
            np.testing.assert_allclose(chip.mask, codes / 255.0, atol=F16)
            hr = arrays["hr"][:, r : r + CHIP, c : c + CHIP]
            np.testing.assert_allclose(chip.hr, to_model_u8(hr), atol=F16)


def test_paper_layout_prefers_real_lr_and_stores_none_for_another_scale(tmp_path: Path) -> None:
    src = tmp_path / "second"
    make_paper(src, ["train_1"])
    write_image(src / "Bic_LR_D8_8" / "train_1.png", np.zeros((3, 8, 8), np.uint8))
    prepare([src], tmp_path / "x8", opts())
    manifest = json.loads((tmp_path / "x8" / "manifest.json").read_text())
    assert "real_LR_D8_8" in manifest["sources"][0]["paths"]["lr"]
    report = prepare([src], tmp_path / "x16", opts(scale=16))
    assert report.lr_scale is None and report.chips["train"] == 4
    assert ChipDataset(tmp_path / "x16", "train").lr_scale is None


def test_mixed_binary_and_grey_channels_are_refused(tmp_path: Path) -> None:
    make_cd(tmp_path / "cd", {"a": (32, 32)})
    make_paper(tmp_path / "paper", ["b"], size=32)
    with pytest.raises(ConfigError, match="mask channel") as info:
        prepare([tmp_path / "cd", tmp_path / "paper"], tmp_path / "chips", opts())
    assert "cd/a (binary)" in str(info.value) and "paper/b (grey)" in str(info.value)
    assert not (tmp_path / "chips").exists()
    # Reading every mask as binary is the documented way out.
    report = prepare(
        [tmp_path / "cd", tmp_path / "paper"],
        tmp_path / "chips",
        opts(mask_encoding="binary"),
    )
    assert report.mask_encoding == masks.BINARY.to_dict()
    assert report.lr_scale is None  # the cd source has no LR, so none is stored
    assert any("LR images are not stored" in w for w in report.warnings)


# --------------------------------------------------------------------------------------------
# GeoTIFF triplets: the HR grid decides, the ref in another CRS is warped onto it

UTM = "EPSG:32633"
HR_TRANSFORM = Affine(1.0, 0.0, 500_000.0, 0.0, -1.0, 5_000_000.0)


def geotiff_triplet(make_raster: RasterFactory, tmp_path: Path) -> dict[str, Any]:
    size = 96
    y, x = np.mgrid[0:size, 0:size]
    hr = np.stack([1000 + 30 * x + 7 * y, 3000 + 20 * y, 2000 + 10 * (x + y)]).astype(np.uint16)
    hr[:, :40, :40] = 0  # nodata corner
    make_raster("sets/hr.tif", hr, crs=UTM, transform=HR_TRANSFORM, nodata=0)
    # The reference: a smooth pattern on a Web Mercator grid around the HR footprint.
    left, bottom, right, top = rasterio.transform.array_bounds(size, size, HR_TRANSFORM)
    merc = rasterio.warp.transform_bounds(UTM, "EPSG:3857", left, bottom, right, top)
    pixel = 1.4  # Mercator units: about 1 m on the ground at 45 N
    ref_transform = Affine(pixel, 0.0, merc[0] - 20, 0.0, -pixel, merc[3] + 20)
    width = int((merc[2] - merc[0] + 40) / pixel)
    height = int((merc[3] - merc[1] + 40) / pixel)
    ry, rx = np.mgrid[0:height, 0:width]
    ref = np.stack(
        [120 + 80 * np.sin(rx / 9.0 + k) * np.cos(ry / 11.0 - k) for k in range(3)]
    ).astype(np.uint8)
    make_raster("sets/ref.tif", ref, crs="EPSG:3857", transform=ref_transform)
    mask = np.zeros((size, size), np.uint8)
    mask[50:70, 60:90] = 1
    make_raster("sets/mask.tif", mask, crs=UTM, transform=HR_TRANSFORM)
    csv = tmp_path / "sets" / "list.csv"
    csv.write_text("hr,ref,mask\nhr.tif,ref.tif,mask.tif\n")
    return {"csv": csv, "hr": hr, "ref": ref, "ref_transform": ref_transform, "mask": mask}


def test_geotiff_triplet_ref_in_another_crs_lands_aligned(
    make_raster: RasterFactory, tmp_path: Path
) -> None:
    t = geotiff_triplet(make_raster, tmp_path)
    report = prepare([t["csv"]], tmp_path / "chips", opts(val_fraction=0.0))
    # 9 windows of 32 px; the one inside the nodata corner (0 % valid) is skipped.
    assert report.chips == {"train": 8, "val": 0} and report.skipped_chips == 1
    manifest = json.loads((tmp_path / "chips" / "manifest.json").read_text())
    entry = manifest["sources"][0]
    assert entry["name"] == "list/hr" and entry["crs"] == UTM and entry["layout"] == "csv"
    assert entry["pixel_size"] == [1.0, 1.0] and entry["skipped_chips"] == 1
    valid = t["hr"][0] != 0
    want = normalize.band_percentiles(t["hr"], valid, normalize.DEFAULT_PERCENTILES)
    assert [tuple(p) for p in entry["percentiles"]["hr"]] == list(want)
    hr_scaling = normalize.BandScaling.from_dict(entry["scaling"]["hr"])
    assert entry["scaling"]["ref"] == {"low": [0.0] * 3, "high": [255.0] * 3}  # uint8
    chips = chips_by_source(tmp_path / "chips")[0]
    assert len(chips) == 8
    for _, chip in chips:
        r, c = chip.origin
        crop = t["hr"][:, r : r + CHIP, c : c + CHIP]
        crop_valid = valid[r : r + CHIP, c : c + CHIP]
        np.testing.assert_array_equal(chip.hr_valid[0], crop_valid)
        expected = np.clip(normalize.to_model(crop, hr_scaling), -1, 1) * crop_valid
        np.testing.assert_allclose(chip.hr, expected, atol=F16)
        # The ref, independently warped onto this chip's grid (cubic).
        warped = np.zeros((3, CHIP, CHIP), np.float32)
        rasterio.warp.reproject(
            t["ref"],
            warped,
            src_transform=t["ref_transform"],
            src_crs="EPSG:3857",
            dst_transform=HR_TRANSFORM * Affine.translation(c, r),
            dst_crs=UTM,
            resampling=rasterio.warp.Resampling.cubic,
        )
        dn = (chip.ref.astype(np.float64) + 1.0) * 127.5
        assert chip.ref_valid.all()
        # The warp reads into the ref's uint8, so values round to whole DN (a one-pixel shift
        # gives a mean error near 3.6 DN here).
        assert np.abs(dn - warped).max() <= 1.0
        assert np.abs(dn - warped).mean() <= 0.4
        np.testing.assert_array_equal(chip.mask[0], t["mask"][r : r + CHIP, c : c + CHIP])


def test_csv_with_a_missing_file_names_the_line(tmp_path: Path) -> None:
    csv = tmp_path / "list.csv"
    csv.write_text("hr,ref,mask\n# a comment\nhr.tif,ref.tif,mask.tif\n")
    with pytest.raises(InputError, match=r"list\.csv, line 3: hr file .*hr\.tif does not exist"):
        prepare([csv], tmp_path / "chips", opts())


# --------------------------------------------------------------------------------------------
# Splits and reproducibility


def test_split_by_source_is_leak_free_and_byte_reproducible(tmp_path: Path) -> None:
    names = {"test_1": (64, 64), "val_2": (64, 64), "train_3": (64, 64)}
    names.update({f"tile_{i}": (64, 64) for i in range(6)})
    make_cd(tmp_path / "ds", names)
    first = prepare([tmp_path / "ds"], tmp_path / "one", opts(val_fraction=0.5, seed=3))
    prepare([tmp_path / "ds"], tmp_path / "two", opts(val_fraction=0.5, seed=3))
    manifest = json.loads((tmp_path / "one" / "manifest.json").read_text())
    splits = {s["name"]: s["split"] for s in manifest["sources"]}
    assert splits["ds/test_1"] == "val" and splits["ds/val_2"] == "val"
    assert splits["ds/train_3"] == "train"
    assert {"train", "val"} <= set(splits.values())
    for index, chips in chips_by_source(tmp_path / "one").items():
        assert {split for split, _ in chips} == {manifest["sources"][index]["split"]}
        assert len(chips) == manifest["sources"][index]["chips"] == 4
    assert sum(first.chips.values()) == 4 * len(names)
    for path in sorted((tmp_path / "one").rglob("*")):
        twin = tmp_path / "two" / path.relative_to(tmp_path / "one")
        if path.is_file():
            assert path.read_bytes() == twin.read_bytes(), f"{path.name} differs between runs"
    other = prepare([tmp_path / "ds"], tmp_path / "three", opts(val_fraction=0.5, seed=4))
    other_splits = {s.name: s.split for s in other.sources}
    assert other_splits["ds/test_1"] == "val"  # prefixes do not depend on the seed


# --------------------------------------------------------------------------------------------
# Synthesised changes


def test_synthesized_ref_differs_only_inside_the_mask() -> None:
    hr = to_model_u8(scene(96, 80, 5)).astype(np.float32)
    valid = np.ones((96, 80), bool)
    config = SynthesisConfig(blur_probability=0.0)
    made = synthesize_ref(hr, valid, rng=rng_for(7, "a"), config=config)
    again = synthesize_ref(hr, valid, rng=rng_for(7, "a"), config=config)
    other = synthesize_ref(hr, valid, rng=rng_for(8, "a"), config=config)
    np.testing.assert_array_equal(made.ref, again.ref)
    np.testing.assert_array_equal(made.mask, again.mask)
    assert not np.array_equal(made.mask, other.mask)
    changed = made.mask[0] > 0
    assert 0.0 < changed.mean() < 0.9
    kinds = {a.kind for a in made.alterations}
    assert kinds == {"paste", "remove"}
    # Undo the global colour shift independently: outside the mask ref is exactly it.
    c = made.colour
    gain, gamma, offset = (np.asarray(v)[:, None, None] for v in (c.gain, c.gamma, c.offset))
    shifted = 2 * np.clip(offset + gain * ((hr + 1) / 2) ** gamma, 0, 1) - 1
    np.testing.assert_allclose(made.ref[:, ~changed], shifted[:, ~changed], atol=1e-5)
    differs = np.abs(made.ref - shifted).max(axis=0) > 1e-3
    assert differs[changed].mean() > 0.5  # the marked pixels really were altered
    assert made.ref_valid.all()


def test_synthesized_ref_with_blur_keeps_the_mask_exact() -> None:
    hr = to_model_u8(scene(64, 64, 1)).astype(np.float32)
    made = synthesize_ref(
        hr,
        np.ones((64, 64), bool),
        rng=rng_for(0, "b"),
        config=SynthesisConfig(blur_probability=1.0),
    )
    assert made.blur_sigma_px > 0
    outside = made.mask[0] == 0
    np.testing.assert_array_equal(made.ref[:, outside], made.base(hr)[:, outside])
    assert not np.allclose(made.base(hr), made.colour.apply(hr))  # the blur did something


def test_prepare_synthesize_changes_is_deterministic_per_seed(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    for i in range(2):
        write_image(folder / f"img{i}.png", scene(64, 64, 40 + i))
    run = opts(synthesize_changes=True, val_fraction=0.0, seed=1)
    report = prepare([folder], tmp_path / "a", run)
    prepare([folder], tmp_path / "b", run)
    prepare([folder], tmp_path / "c", opts(synthesize_changes=True, val_fraction=0.0, seed=2))
    assert report.chips == {"train": 8, "val": 0} and report.mask_encoding["kind"] == "binary"
    shards = ("train-00000/ref.npy", "train-00000/mask.npy", "manifest.json")
    for name in shards:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / shards[0]).read_bytes() != (tmp_path / "c" / shards[0]).read_bytes()
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    entry = manifest["sources"][0]
    assert entry["synthesized"] and entry["layout"] == "images" and entry["name"] == "photos/img0"
    assert set(entry["paths"]) == {"hr"}
    assert entry["synthesis"]["pastes"] >= 1 and entry["synthesis"]["removals"] >= 1
    chips = [chip for _, chip in chips_by_source(tmp_path / "a")[0]]
    assert sum(float(chip.mask.sum()) for chip in chips) > 0


def test_synthesize_from_a_geotiff_list_keeps_nodata_invalid(
    make_raster: RasterFactory, tmp_path: Path
) -> None:
    y, x = np.mgrid[0:64, 0:64]
    hr = np.stack([500 + 9 * x, 800 + 5 * y]).astype(np.uint16)  # (2, 64, 64)
    hr[:, :16, :] = 0
    make_raster("imgs/scene.tif", hr, crs=UTM, transform=HR_TRANSFORM, nodata=0)
    csv = tmp_path / "imgs" / "scenes.csv"
    csv.write_text("hr\nscene.tif\n")
    report = prepare([csv], tmp_path / "chips", opts(synthesize_changes=True, val_fraction=0))
    assert report.chips == {"train": 4, "val": 0}
    manifest = json.loads((tmp_path / "chips" / "manifest.json").read_text())
    entry = manifest["sources"][0]
    assert entry["name"] == "scenes/scene" and entry["crs"] == UTM and entry["synthesized"]
    assert manifest["bands"] == ["band_1", "band_2"]
    for _, chip in chips_by_source(tmp_path / "chips")[0]:
        r, c = chip.origin
        np.testing.assert_array_equal(chip.hr_valid[0], hr[0, r : r + CHIP, c : c + CHIP] != 0)
        unchanged = chip.mask[0] == 0
        np.testing.assert_array_equal(chip.ref_valid[0][unchanged], chip.hr_valid[0][unchanged])
        assert (chip.hr[:, ~chip.hr_valid[0]] == 0).all()


# --------------------------------------------------------------------------------------------
# Bad inputs and output safety


def test_folder_without_a_layout(tmp_path: Path) -> None:
    (tmp_path / "stuff" / "images").mkdir(parents=True)
    with pytest.raises(InputError, match="not a known layout") as info:
        prepare([tmp_path / "stuff"], tmp_path / "chips", opts())
    assert "stuff" in str(info.value) and "A/, B/ and label/" in str(info.value)


def test_existing_chips_folder_is_untouched_without_overwrite(tmp_path: Path) -> None:
    make_cd(tmp_path / "ds", {"a": (32, 32)})
    prepare([tmp_path / "ds"], tmp_path / "chips", opts())
    before = {p: p.read_bytes() for p in (tmp_path / "chips").rglob("*") if p.is_file()}
    with pytest.raises(OutputError, match="already has chips") as info:
        prepare([tmp_path / "ds"], tmp_path / "chips", opts(seed=5))
    assert info.value.exit_code == 4
    after = {p: p.read_bytes() for p in (tmp_path / "chips").rglob("*") if p.is_file()}
    assert after == before
    prepare([tmp_path / "ds"], tmp_path / "chips", opts(seed=5, overwrite=True))
    assert json.loads((tmp_path / "chips" / "manifest.json").read_text())["options"]["seed"] == 5


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    make_cd(tmp_path / "ds", {"a": (64, 64), "b": (40, 96)})
    report = prepare([tmp_path / "ds"], tmp_path / "chips", opts(dry_run=True))
    assert report.status == "dry-run" and report.manifest is None
    assert [(s.name, s.shape, s.chips) for s in report.sources] == [
        ("ds/a", (64, 64), 4),
        ("ds/b", (40, 96), 6),  # rows 0 and 8 (flush), columns 0, 32, 64
    ]
    assert not (tmp_path / "chips").exists()


def test_image_smaller_than_a_chip_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_cd(tmp_path / "ds", {"big": (64, 64), "tiny": (24, 64)})
    with caplog.at_level(logging.WARNING, logger="refdiff_cli"):
        report = prepare([tmp_path / "ds"], tmp_path / "chips", opts())
    assert report.skipped_images == (("ds/tiny", "smaller than a 32 px chip (64x24 px usable)"),)
    assert any("ds/tiny" in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)
    manifest = json.loads((tmp_path / "chips" / "manifest.json").read_text())
    assert [(s["name"], s["chips"]) for s in manifest["sources"]] == [("ds/big", 4), ("ds/tiny", 0)]


def test_no_chip_at_all_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    make_cd(tmp_path / "ds", {"tiny": (24, 24)})
    with pytest.raises(InputError, match="no chips"):
        prepare([tmp_path / "ds"], tmp_path / "chips", opts())
    assert not (tmp_path / "chips").exists()


def test_failure_midway_removes_the_shards_written(tmp_path: Path) -> None:
    make_cd(tmp_path / "ds", {"a": (64, 64)})
    (tmp_path / "ds" / "B" / "b.png").write_bytes(b"not a png")  # a corrupt second image
    write_image(tmp_path / "ds" / "A" / "b.png", scene(64, 64, 0))
    write_image(tmp_path / "ds" / "label" / "b.png", np.zeros((64, 64), np.uint8))
    with pytest.raises(InputError, match=r"B/b\.png"):
        # Two chips per shard: image a's four chips are on disk when b fails.
        prepare([tmp_path / "ds"], tmp_path / "chips", opts(shard_size=2))
    assert not (tmp_path / "chips").exists()


def test_duplicate_source_names_are_refused(tmp_path: Path) -> None:
    make_cd(tmp_path / "x" / "levir", {"a": (32, 32)})
    make_cd(tmp_path / "y" / "levir", {"a": (32, 32)})
    with pytest.raises(InputError, match="both named 'levir/a'"):
        prepare([tmp_path / "x" / "levir", tmp_path / "y" / "levir"], tmp_path / "c", opts())


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"chip_px": 36}, "--chip"),
        ({"stride_px": 12}, "--stride"),
        ({"stride_px": 64}, "--stride"),
        ({"val_fraction": 1.5}, "--val-fraction"),
        ({"synthesize_changes": True, "mask_encoding": "grey"}, "--mask-encoding"),
        ({"layout": "tiles"}, "--layout"),
    ],
)
def test_bad_options_name_the_option(kwargs: dict[str, Any], option: str) -> None:
    with pytest.raises(ConfigError, match=option):
        opts(**kwargs)
