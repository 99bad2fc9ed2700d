"""The pixels of a listed dataset item: its image files read, checked and cropped to the scale.

Labels are returned raw (``data/masks.py`` encodes them); palette label images give their
indices, which are the class codes.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from refdiff_cli.datasets.layouts import ImageItem
from refdiff_cli.errors import ConfigError, InputError
from refdiff_cli.geo.images import read_image

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class LoadedItem:
    """The pixels of one item, checked for consistent sizes and cropped to the scale.

    Attributes:
        name: the item's name.
        hr: (C, H, W) HR ground truth, H and W multiples of the scale.
        ref: (C, H, W) reference, same shape and dtype as ``hr``.
        mask: (H, W) raw mask values (label dtype, e.g. uint8 0/255 or class codes).
        lr: (C, H / scale, W / scale) LR input in ``hr``'s dtype, or None.
        dtype: the image dtype of hr, ref (and lr).
        cropped: True when the files were cut (top-left anchored) to multiples of the scale.
        source_shape: (height, width) of the HR file before cropping, in pixels.
    """

    name: str
    hr: npt.NDArray[Any]
    ref: npt.NDArray[Any]
    mask: npt.NDArray[Any]
    lr: npt.NDArray[Any] | None
    dtype: np.dtype[Any]
    cropped: bool
    source_shape: tuple[int, int]


def _single_band_mask(mask: npt.NDArray[Any], path: Path) -> npt.NDArray[Any]:
    """(C, H, W) label image -> (H, W); several bands must be identical (grey saved as RGB)."""
    if mask.shape[0] > 1 and not all(np.array_equal(mask[0], band) for band in mask[1:]):
        raise InputError(
            f"change mask {path} has {mask.shape[0]} differing bands: colour-coded labels are "
            "not supported",
            hint="save the class codes as a single-band grey or palette image",
        )
    return np.asarray(mask[0])


def _shape_text(array: npt.NDArray[Any]) -> str:
    return f"{array.shape[-1]}x{array.shape[-2]} px, {array.shape[0]} band(s)"


def load_item(item: ImageItem, *, scale: int) -> LoadedItem:
    """Read an item's files and check that they fit together.

    Args:
        item: from ``list_items``.
        scale: HR / LR size ratio (>= 1); HR, Ref and mask are cropped, top-left anchored,
            to multiples of it (SZTAKI's 952x640 images lose 8 columns at scale 16).

    Returns:
        The loaded item; ``cropped`` says whether pixels were cut.

    Raises:
        ConfigError: ``scale`` < 1.
        InputError: unreadable files; HR and Ref differing in size, band count or dtype; a
            mask of another size or with differing bands; an image smaller than ``scale``; an
            LR whose size times ``scale`` is not the cropped HR size or whose bands or dtype
            differ from HR. Messages name the files.
    """
    if scale < 1:
        raise ConfigError(f"--scale {scale}: use an integer >= 1")
    hr = read_image(item.hr)  # (C, H, W)
    ref = read_image(item.ref)  # (C, H, W)
    if hr.shape != ref.shape or hr.dtype != ref.dtype:
        raise InputError(
            f"{item.name}: HR {item.hr} ({_shape_text(hr)}, {hr.dtype}) and reference {item.ref} "
            f"({_shape_text(ref)}, {ref.dtype}) differ",
            hint="HR and reference images must have the same size, bands and data type",
        )
    mask = _single_band_mask(read_image(item.mask, palette="index"), item.mask)  # (H, W)
    height, width = hr.shape[1:]
    if mask.shape != (height, width):
        raise InputError(
            f"{item.name}: change mask {item.mask} is {mask.shape[1]}x{mask.shape[0]} px but HR "
            f"{item.hr} is {width}x{height} px",
            hint="the mask must be on the HR pixel grid",
        )
    crop_h, crop_w = height - height % scale, width - width % scale
    if crop_h == 0 or crop_w == 0:
        raise InputError(
            f"{item.name}: HR {item.hr} ({width}x{height} px) is smaller than the scale {scale}",
            hint="use larger images or a smaller scale",
        )
    cropped = (crop_h, crop_w) != (height, width)
    if cropped:
        logger.debug("%s: cropped %dx%d to %dx%d px", item.name, width, height, crop_w, crop_h)
    lr = None if item.lr is None else read_image(item.lr)  # (C, h, w)
    if lr is not None:
        lr_h, lr_w = lr.shape[1:]
        if (lr_h * scale, lr_w * scale) != (crop_h, crop_w):
            raise InputError(
                f"{item.name}: LR {item.lr} is {lr_w}x{lr_h} px; times the scale {scale} that is "
                f"{lr_w * scale}x{lr_h * scale} px, but HR {item.hr} is {crop_w}x{crop_h} px"
                + (f" (cropped from {width}x{height})" if cropped else ""),
                hint="check the scale and that the LR folder belongs to this HR folder",
            )
        if lr.shape[0] != hr.shape[0] or lr.dtype != hr.dtype:
            raise InputError(
                f"{item.name}: LR {item.lr} ({lr.shape[0]} band(s), {lr.dtype}) does not match "
                f"HR {item.hr} ({hr.shape[0]} band(s), {hr.dtype})",
                hint="LR and HR must have the same bands and data type",
            )
    return LoadedItem(
        name=item.name,
        hr=np.ascontiguousarray(hr[:, :crop_h, :crop_w]),
        ref=np.ascontiguousarray(ref[:, :crop_h, :crop_w]),
        mask=np.ascontiguousarray(mask[:crop_h, :crop_w]),
        lr=lr,
        dtype=hr.dtype,
        cropped=cropped,
        source_shape=(height, width),
    )
