"""End-to-end `refdiff prepare` in a subprocess: exit codes, JSON summary, real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from refdiff_cli.datasets.chips import ChipDataset
from tests.conftest import run_cli
from tests.unit.test_prepare import make_cd


def files_of(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_prepare_writes_chips_and_a_json_summary(tmp_path: Path) -> None:
    make_cd(tmp_path / "ds", {"train_a": (64, 64), "val_b": (64, 96), "tiny": (16, 64)})
    out = tmp_path / "chips"
    result = run_cli(["prepare", str(tmp_path / "ds"), "-o", str(out), "--chip", "32", "--json"])
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "written"
    assert summary["chips"] == {"train": 4, "val": 6}
    assert summary["skipped_images"] == [
        {"name": "ds/tiny", "reason": "smaller than a 32 px chip (64x16 px usable)"}
    ]
    assert summary["output"] == str(out)
    assert "ds/tiny" in result.stderr  # the warning reaches the user
    assert len(ChipDataset(out, "train", verify=True)) == 4


def test_existing_chips_exit_4_and_stay_untouched(tmp_path: Path) -> None:
    make_cd(tmp_path / "ds", {"a": (32, 32)})
    out = tmp_path / "chips"
    args = ["prepare", str(tmp_path / "ds"), "-o", str(out), "--chip", "32"]
    assert run_cli(args).returncode == 0
    before = files_of(out)
    result = run_cli([*args, "--seed", "9"])
    assert result.returncode == 4
    assert "already has chips" in result.stderr and "--overwrite" in result.stderr
    assert files_of(out) == before
    assert run_cli([*args, "--seed", "9", "--overwrite"]).returncode == 0


def test_dry_run_lists_sources_and_writes_nothing(tmp_path: Path) -> None:
    make_cd(tmp_path / "ds", {"a": (64, 64), "b": (32, 96)})
    out = tmp_path / "chips"
    args = ["prepare", str(tmp_path / "ds"), "-o", str(out), "--chip", "32", "--dry-run"]
    result = run_cli([*args, "--json"])
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "dry-run" and summary["manifest"] is None
    assert [(s["name"], s["chips"]) for s in summary["sources"]] == [("ds/a", 4), ("ds/b", 3)]
    text = run_cli(args)
    assert "ds/b" in text.stdout and "would write 7 chips" in text.stdout
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--chip", "36"], 2, "--chip 36"),
        (["--layout", "csv"], 3, "--layout csv needs a CSV file"),
    ],
)
def test_bad_options_and_inputs_exit_codes(
    tmp_path: Path, args: list[str], code: int, needle: str
) -> None:
    make_cd(tmp_path / "ds", {"a": (32, 32)})
    result = run_cli(["prepare", str(tmp_path / "ds"), "-o", str(tmp_path / "c"), *args])
    assert result.returncode == code, result.stderr
    assert needle in result.stderr
    assert not (tmp_path / "c").exists()


def test_a_folder_that_is_no_layout_exits_3(tmp_path: Path) -> None:
    (tmp_path / "photos" / "2020").mkdir(parents=True)
    result = run_cli(["prepare", str(tmp_path / "photos"), "-o", str(tmp_path / "c")])
    assert result.returncode == 3
    assert "photos is not a known layout: found 2020/" in result.stderr


@pytest.mark.real_data
def test_real_levir_and_sztaki(shared_data: Path, tmp_path: Path) -> None:
    levir, sztaki = shared_data / "cd_pairs" / "levir", shared_data / "cd_pairs" / "sztaki"
    out = tmp_path / "chips"
    args = ["prepare", str(levir), str(sztaki), "-o", str(out), "--scale", "8", "--chip", "128"]
    result = run_cli([*args, "--json"])
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    by_name = {s["name"]: s for s in summary["sources"]}
    assert len(by_name) == 16
    # LEVIR 256x256: 2 x 2 chips each. SZTAKI 952x640: 8 columns (the last flush at 824) x 5 rows.
    for name, source in by_name.items():
        assert source["chips"] == (4 if name.startswith("levir/") else 40), name
    assert summary["chips"]["train"] + summary["chips"]["val"] == 6 * 4 + 10 * 40
    for name, source in by_name.items():
        stem = name.split("/", 1)[1]
        if stem.startswith(("test_", "val_")):
            assert source["split"] == "val", name
        if stem.startswith("train_"):
            assert source["split"] == "train", name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["mask_encoding"]["kind"] == "binary"
    val = ChipDataset(out, "val")
    splits = {i: s["split"] for i, s in enumerate(manifest["sources"])}
    assert {splits[val.chip(i).source] for i in range(len(val))} == {"val"}
    # SZTAKI's anti-aliased 0/255 labels: every non-zero value is "changed", and some chips
    # carry change.
    masks = [val.chip(i).mask for i in range(len(val))]
    assert all(set(np.unique(m).tolist()) <= {0.0, 1.0} for m in masks)
    assert any(float(m.max()) == 1.0 for m in masks)
