"""Plain (non-georeferenced) image files: read any GDAL image as (C, H, W), write PNG figures."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import rasterio
import rasterio.errors
from rasterio.enums import ColorInterp
from rasterio.io import DatasetReader
from rasterio.windows import Window

from refdiff_cli.errors import InputError, OutputError
from refdiff_cli.geo.env import rasterio_env

logger = logging.getLogger(__name__)

PaletteMode = Literal["rgb", "index"]

#: Largest decoded image read_image accepts, in bytes: dataset images are chips or scenes of a
#: few thousand pixels; anything bigger belongs in a GeoTIFF set read window by window.
MAX_IMAGE_BYTES = 1 << 30
#: Rows decoded per read. Full-window reads of a PNG are never used: GDAL 3.10 (rasterio 1.4.4)
#: fills a truncated PNG's missing rows with whatever was in the buffer and reports no error
#: when the read covers the whole image, while partial-window reads raise (measured).
STRIP_ROWS = 64

_SUPPORTED = "PNG, BMP, JPEG or TIFF"


@contextlib.contextmanager
def _quiet_georeferencing() -> Iterator[None]:
    """Silence rasterio's NotGeoreferencedWarning here only: plain images have no CRS."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        yield


def _strip_windows(height: int, width: int) -> Iterator[Window]:
    """Windows covering the image, never the whole image in one window unless it is 1x1."""
    if height >= 2:
        rows = max(1, min(STRIP_ROWS, height // 2))
        for row in range(0, height, rows):
            yield Window(0, row, width, min(rows, height - row))
    elif width >= 2:
        half = width // 2
        yield Window(0, 0, half, 1)
        yield Window(half, 0, width - half, 1)
    else:
        yield Window(0, 0, width, height)


def _decode(src: DatasetReader, path: Path) -> npt.NDArray[Any]:
    """Decode every pixel of every band, strip by strip, so that truncation raises."""
    data = np.empty((src.count, src.height, src.width), dtype=src.dtypes[0])  # (C, H, W)
    try:
        for window in _strip_windows(src.height, src.width):
            rows = slice(window.row_off, window.row_off + window.height)
            cols = slice(window.col_off, window.col_off + window.width)
            data[:, rows, cols] = src.read(window=window)
    except rasterio.errors.RasterioError as exc:
        raise InputError(
            f"{path} is truncated or corrupt: GDAL could not decode all of it ({exc})",
            hint="re-copy or re-export the file",
        ) from exc
    return data


def _expand_palette(
    src: DatasetReader, index: npt.NDArray[Any], path: Path
) -> npt.NDArray[np.uint8]:
    """Map a (1, H, W) palette index image to (3, H, W) uint8 RGB via its colour table."""
    colormap = src.colormap(1)
    size = max(colormap, default=-1) + 1
    lut = np.zeros((size, 3), dtype=np.uint8)  # (N, 3); palette alpha is ignored
    for entry, rgba in colormap.items():
        lut[entry] = rgba[:3]
    top = int(index.max())
    if top >= size:
        raise InputError(
            f"{path}: palette index {top} is beyond its {size}-entry colour table",
            hint="re-export the image as RGB",
        )
    return np.ascontiguousarray(np.moveaxis(lut[index[0]], -1, 0))  # (3, H, W)


def _drop_alpha(
    data: npt.NDArray[Any], colorinterp: tuple[ColorInterp, ...], path: Path
) -> npt.NDArray[Any]:
    """Remove alpha bands that are fully opaque; transparent pixels are an error."""
    alpha = [i for i, ci in enumerate(colorinterp) if ci == ColorInterp.alpha]
    if not alpha or len(alpha) == len(colorinterp):
        return data
    opaque = np.iinfo(data.dtype).max if data.dtype.kind in "iu" else 1.0
    for i in alpha:
        if not np.all(data[i] == opaque):
            raise InputError(
                f"{path} has transparent pixels (alpha band {i + 1}); plain images carry no "
                "nodata here",
                hint="flatten the image onto an opaque background or use a GeoTIFF with nodata",
            )
    keep = [i for i in range(len(colorinterp)) if i not in alpha]
    logger.debug("%s: dropped %d fully opaque alpha band(s)", path, len(alpha))
    return np.ascontiguousarray(data[keep])


def read_image(path: Path, *, palette: PaletteMode = "rgb") -> npt.NDArray[Any]:
    """Read a whole plain image file (any GDAL-readable PNG, BMP, JPEG, TIFF) into memory.

    Georeferencing, if any, is ignored. Every pixel is decoded (strip by strip), so a
    truncated or corrupt file raises instead of returning partly filled arrays. A fully
    opaque alpha band (RGBA, grey+alpha) is dropped; transparent pixels raise.

    Args:
        path: the image file.
        palette: for single-band palette images: "rgb" maps indices through the colour table
            to (3, H, W) uint8 (for photographs); "index" returns the raw (1, H, W) indices
            (for label images, whose indices are the class codes: e.g. PaddleRS's class map
            draws code 0 white and code 1 black). Ignored for other images.

    Returns:
        (C, H, W) array in the file's dtype (uint8 for expanded palettes), C >= 1.

    Raises:
        InputError: the file is missing, empty, not a readable image, larger than
            ``MAX_IMAGE_BYTES`` decoded, mixes band dtypes, has transparent pixels, or is
            truncated or corrupt; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise InputError(f"image {path} {what}", hint="check the dataset folder")
    if path.stat().st_size == 0:
        raise InputError(f"image {path} is empty (0 bytes)", hint="re-copy or re-export the file")
    try:
        with rasterio_env(), _quiet_georeferencing(), rasterio.open(path) as src:
            if src.count == 0 or src.width == 0 or src.height == 0:
                raise InputError(f"image {path} has no pixels", hint="re-export the file")
            if len(set(src.dtypes)) != 1:
                raise InputError(
                    f"image {path} mixes band data types {sorted(set(src.dtypes))}",
                    hint="re-export it with one data type for all bands",
                )
            nbytes = src.count * src.width * src.height * np.dtype(src.dtypes[0]).itemsize
            if nbytes > MAX_IMAGE_BYTES:
                raise InputError(
                    f"image {path} is {nbytes / 2**30:.1f} GiB decoded, more than the "
                    f"{MAX_IMAGE_BYTES / 2**30:.0f} GiB a plain-image dataset may hold",
                    hint="cut it into chips or list it as a GeoTIFF set in a CSV",
                )
            data = _decode(src, path)
            colorinterp = tuple(src.colorinterp)
            if src.count == 1 and colorinterp[0] == ColorInterp.palette and palette == "rgb":
                return _expand_palette(src, data, path)
            return _drop_alpha(data, colorinterp, path)
    except rasterio.errors.RasterioError as exc:
        raise InputError(
            f"cannot read {path} as an image ({exc})",
            hint=f"use a {_SUPPORTED} file",
        ) from exc


def _remove_quietly(path: Path) -> None:
    for candidate in (path, path.with_name(path.name + ".aux.xml")):
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()


def write_png(path: Path, array: npt.NDArray[np.uint8]) -> None:
    """Write a figure as PNG, atomically: a hidden temp file in the same folder, then rename.

    An existing ``path`` is replaced. No ``.aux.xml`` side file is written (GDAL PAM is off),
    and the temp file is removed on any failure.

    Args:
        path: the PNG to write; its folder must exist.
        array: (3, H, W) RGB or (1, H, W) grey uint8 pixels.

    Raises:
        ValueError: ``array`` is not uint8 of shape (3, H, W) or (1, H, W) (a caller bug).
        OutputError: the folder is missing or the file cannot be written (exit 4).
    """
    path = Path(path)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[0] not in (1, 3):
        raise ValueError(
            f"write_png needs (3, H, W) or (1, H, W) uint8, got {array.shape} {array.dtype}"
        )
    if array.shape[1] == 0 or array.shape[2] == 0:
        raise ValueError(f"write_png got an empty image of shape {array.shape}")
    folder = path.absolute().parent
    if not folder.is_dir():
        raise OutputError(f"output folder {folder} does not exist", hint=f"mkdir -p {folder}")
    temp = folder / f".{path.name}.{secrets.token_hex(4)}.partial"
    count, height, width = array.shape
    try:
        with (
            rasterio_env(GDAL_PAM_ENABLED="NO"),
            _quiet_georeferencing(),
            rasterio.open(
                temp, "w", driver="PNG", width=width, height=height, count=count, dtype="uint8"
            ) as dst,
        ):
            dst.write(array)
        os.replace(temp, path)
    except (rasterio.errors.RasterioError, OSError) as exc:
        _remove_quietly(temp)
        raise OutputError(
            f"cannot write {path} ({exc})", hint="check the folder's permissions and free space"
        ) from exc
    except BaseException:
        _remove_quietly(temp)
        raise
