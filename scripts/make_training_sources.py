"""Lay out the default model's training sources from ../shared/data for `refdiff prepare`.

Usage: python scripts/make_training_sources.py SHARED_DATA OUT_DIR

Writes (symbolic links and small derived files only; nothing here may enter the repository):
- OUT_DIR/<source>/{A,B,label}: the change-detection pairs of each cd_pairs source except the
  validation images of docs/default-model-split.toml (names that start with test_ or val_
  are prefixed train_ so that `prepare` keeps them in the training split);
- OUT_DIR/single/{A,B,label}: every training pair's earlier image A as a single-date image
  (A = B, an all-zero label): training synthesises its references (`train/references.py`);
- OUT_DIR/oscd/oscd_train.csv: the OSCD cities outside the validation list, as RGB GeoTIFF
  triplets (scripts/oscd_to_geotiff.py).

Then: refdiff prepare OUT_DIR/{levir,dsifn,egy,sztaki,paddlers,single} OUT_DIR/oscd/oscd_train.csv
-o chips --scale 8 --chip 256 --stride 128 --val-fraction 0 (docs/default-model.md).
"""

from __future__ import annotations

import csv
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import numpy as np
import rasterio

REPO = Path(__file__).resolve().parents[1]
SPLIT = REPO / "docs" / "default-model-split.toml"
FOLDERS = ("A", "B", "label")


def validation_split() -> dict[str, object]:
    """The held-out images of docs/default-model-split.toml."""
    with SPLIT.open("rb") as file:
        return tomllib.load(file)["validation"]  # type: ignore[no-any-return]


def link(target: Path, link_path: Path) -> None:
    link_path.parent.mkdir(parents=True, exist_ok=True)
    if not link_path.exists():
        link_path.symlink_to(target.resolve())


def zero_label(like: Path, path: Path) -> None:
    with rasterio.open(like) as src:
        height, width = src.height, src.width
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", driver="PNG", width=width, height=height, count=1, dtype="uint8"
    ) as dst:
        dst.write(np.zeros((1, height, width), dtype=np.uint8))


def main() -> None:
    shared, out = Path(sys.argv[1]), Path(sys.argv[2])
    warnings.filterwarnings("ignore", category=rasterio.errors.NotGeoreferencedWarning)
    held_out = validation_split()
    for source, names in held_out["cd_pairs"].items():  # type: ignore[attr-defined]
        for image in sorted((shared / "cd_pairs" / source / "B").iterdir()):
            if image.stem in names:
                continue
            name = image.name
            if name.startswith(("test_", "val_")):
                name = f"train_{name}"
            for folder in FOLDERS:
                (match,) = sorted((shared / "cd_pairs" / source / folder).glob(f"{image.stem}.*"))
                link(match, out / source / folder / f"{Path(name).stem}{match.suffix}")
            earlier = out / source / "A" / f"{Path(name).stem}{image.suffix}"
            single = f"{source}_{Path(name).stem}"
            for folder in ("A", "B"):
                link(earlier, out / "single" / folder / f"{single}{image.suffix}")
            zero_label(earlier, out / "single" / "label" / f"{single}.png")
    oscd = out / "oscd"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "oscd_to_geotiff.py"),
            str(shared / "oscd"),
            str(oscd),
        ],
        check=True,
    )
    cities = set(held_out["oscd"]["cities"])  # type: ignore[index]
    with (oscd / "oscd.csv").open(encoding="utf-8") as file:
        rows = [r for r in csv.DictReader(file) if r["hr"].split("_hr")[0] not in cities]
    with (oscd / "oscd_train.csv").open("w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["hr", "ref", "mask"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"training sources in {out}: {len(rows)} OSCD cities")


if __name__ == "__main__":
    main()
