"""Build the default model's validation sets from a chips manifest (maintainers' script).

Usage: python scripts/default_model_validation.py CHIPS_DIR OUT_DIR

The validation split of `refdiff prepare` is by source image. This script gathers the
validation sources of a chips folder for `refdiff evaluate`:

- change-detection sources (A/ B/ label/ folders) become OUT_DIR/cd/{A,B,label}/ with
  symbolic links to the original files, named "<folder>_<stem>" (the LR is made by evaluate);
- GeoTIFF triplet sources (hr, ref, mask) become rows of OUT_DIR/geotiff.csv with an LR
  GeoTIFF written next to it: the HR downscaled by antialiased bicubic (the cd protocol), on
  the HR grid scaled by the chips' scale.

Nothing of the data is copied into the repository; OUT_DIR holds links and derived LR files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine

from refdiff_cli.data.degrade import downscale_bicubic
from refdiff_cli.data.normalize import cast_to_dtype


def link(target: Path, link_path: Path) -> None:
    link_path.parent.mkdir(parents=True, exist_ok=True)
    if link_path.is_symlink() or link_path.exists():
        link_path.unlink()
    link_path.symlink_to(target.resolve())


def write_lr(hr_path: Path, lr_path: Path, scale: int) -> None:
    """LR = antialiased bicubic downscale of the HR, on the HR grid scaled by ``scale``."""
    with rasterio.open(hr_path) as src:
        hr = src.read()
        rows, cols = src.height // scale * scale, src.width // scale * scale
        profile = src.profile
        transform = src.transform
    hr64 = torch.from_numpy(hr[:, :rows, :cols].astype(np.float64))[None]
    lr, _ = cast_to_dtype(downscale_bicubic(hr64, scale)[0].numpy(), hr.dtype)
    profile.update(
        width=lr.shape[2],
        height=lr.shape[1],
        transform=transform * Affine.scale(scale),
        tiled=False,
        compress="deflate",
    )
    profile.pop("blockxsize", None)
    profile.pop("blockysize", None)
    with rasterio.open(lr_path, "w", **profile) as dst:
        dst.write(lr)


def main(chips: Path, out: Path) -> None:
    manifest = json.loads((chips / "manifest.json").read_text())
    scale = int(manifest["options"].get("scale", 8))
    rows = ["lr,ref,mask,hr"]
    for source in manifest["sources"]:
        if source["split"] != "val":
            continue
        paths = {role: Path(p) for role, p in source["paths"].items()}
        name = source["name"].replace("/", "_")
        if source["layout"] == "cd":
            suffix = paths["hr"].suffix
            link(paths["hr"], out / "cd" / "B" / f"{name}{suffix}")
            link(paths["ref"], out / "cd" / "A" / f"{name}{paths['ref'].suffix}")
            link(paths["mask"], out / "cd" / "label" / f"{name}{paths['mask'].suffix}")
        else:
            out.mkdir(parents=True, exist_ok=True)
            lr = out / f"{name}_lr.tif"
            write_lr(paths["hr"], lr, scale)
            rows.append(f"{lr},{paths['ref']},{paths['mask']},{paths['hr']}")
    if len(rows) > 1:
        (out / "geotiff.csv").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
