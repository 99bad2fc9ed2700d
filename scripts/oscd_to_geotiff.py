"""Stack OSCD Sentinel-2 cities into RGB GeoTIFF triplets (hr, ref, mask) and a CSV for prepare.

Usage: python scripts/oscd_to_geotiff.py OSCD_DIR OUT_DIR

For each city: hr = imgs_2 (later date) bands B04, B03, B02 (red, green, blue), uint16;
ref = imgs_1 (earlier date), same bands; mask = cm == 2 (changed) as uint8 0/1. The change
map has no georeferencing but is on the images' pixel grid (OSCD README), so it is written
with the images' CRS and transform. Writes OUT_DIR/oscd.csv with columns hr,ref,mask. The
output holds derived data of OSCD (images: modified Copernicus Sentinel-2 data; labels
CC BY-NC-SA, Daudt et al. 2018): keep it out of the repository.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import rasterio

BANDS = ("B04", "B03", "B02")


def read_stack(folder: Path) -> tuple[np.ndarray, dict[str, object]]:
    """The RGB stack (3, H, W) uint16 of one date and its georeferencing."""
    arrays = []
    for band in BANDS:
        (path,) = sorted(folder.glob(f"*_{band}.tif"))
        with rasterio.open(path) as src:
            arrays.append(src.read(1))
            geo = {"crs": src.crs, "transform": src.transform}
    return np.stack(arrays), geo


def write(path: Path, data: np.ndarray, geo: dict[str, object], names: tuple[str, ...]) -> None:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        photometric="minisblack",
        compress="deflate",
        **geo,  # type: ignore[arg-type]
    ) as dst:
        dst.write(data)
        for index, name in enumerate(names, start=1):
            dst.set_band_description(index, name)


def main(oscd: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = ["hr,ref,mask"]
    for city in sorted(p for p in oscd.iterdir() if (p / "cm").is_dir()):
        hr, geo = read_stack(city / "imgs_2")
        ref, _ = read_stack(city / "imgs_1")
        (cm_path,) = sorted((city / "cm").glob("*.tif"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(cm_path) as src:
                changed = (src.read(1) == 2).astype(np.uint8)[None]
        for name, data, bands in (
            ("hr", hr, ("red", "green", "blue")),
            ("ref", ref, ("red", "green", "blue")),
            ("mask", changed, ("changed",)),
        ):
            write(out / f"{city.name}_{name}.tif", data, geo, bands)
        rows.append(f"{city.name}_hr.tif,{city.name}_ref.tif,{city.name}_mask.tif")
    (out / "oscd.csv").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
