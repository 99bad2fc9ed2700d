"""What an upscale writes: the output's data type and nodata, each finished strip's arrays,
and the ``--mask-out`` / ``--trust-out`` layer files beside the output."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from refdiff_cli.config import UpscaleOptions
from refdiff_cli.data import normalize
from refdiff_cli.data.tiling import Strip
from refdiff_cli.errors import ConfigError
from refdiff_cli.geo import grid as geogrid
from refdiff_cli.geo import write
from refdiff_cli.upscale.job import UpscaleJob
from refdiff_cli.upscale.pipeline import Layer, Valid

#: Nodata value of ``--mask-out`` files (0 unchanged, 1 changed).
MASK_OUT_NODATA = 255


def output_layers(job: UpscaleJob) -> tuple[Layer, ...]:
    """The layers ``sr_strips`` appends for the job's ``--mask-out`` and ``--trust-out``."""
    layers: tuple[Layer, ...] = ()
    if job.mask_out is not None:
        layers += ("mask",)
    if job.trust_out is not None:
        layers += ("weight", "uncertainty")
    return layers


def strip_arrays(
    strip: Strip, n_bands: int, dtype: np.dtype[Any], nodata: float | None, layers: Sequence[Layer]
) -> dict[str, npt.NDArray[Any]]:
    """What is written for one strip, by name: "image" (C, rows, W) in ``dtype``, "valid"
    (rows, W), "clamped" ([count] of clamped values), "mask" (1, rows, W) uint8 with
    ``--mask-out``, "trust" (2, rows, W) float32 with ``--trust-out``. Overwrites the strip's
    image values (integer outputs)."""
    # The strip's image values are not needed after the cast: rounded in place.
    values, n_clamped = normalize.cast_to_dtype(strip.values[:n_bands], dtype, overwrite=True)
    normalize.reserve_nodata(values, strip.valid, nodata)
    arrays = {"image": values, "valid": strip.valid, "clamped": np.array([n_clamped], np.int64)}
    extra = dict(zip(layers, strip.values[n_bands:], strict=True))
    if "mask" in extra:
        arrays["mask"] = mask_values(extra["mask"], strip.valid)[None]
    if "weight" in extra:
        trust = np.stack([extra["weight"], extra["uncertainty"]])
        trust[:, ~strip.valid] = np.nan
        arrays["trust"] = trust.astype(np.float32)
    return arrays


#: The layer files beside the output: (bands, data type, nodata, band descriptions).
LAYER_FILES: dict[str, tuple[int, str, float, tuple[str, ...]]] = {
    "mask": (1, "uint8", MASK_OUT_NODATA, ("change mask (1 = changed)",)),
    "trust": (
        2,
        "float32",
        float("nan"),
        (
            "reference weight (0 LR only, 1 reference detail)",
            "uncertainty (expected absolute error, output units)",
        ),
    ),
}


def layer_writer(
    kind: str, path: Path, grid: geogrid.Grid, options: UpscaleOptions
) -> write.RasterWriter:
    """The writer of ``--mask-out`` ("mask": uint8, 0 unchanged / 1 changed / 255 nodata) or
    ``--trust-out`` ("trust": float32, reference weight and uncertainty, NaN nodata)."""
    count, dtype, nodata, descriptions = LAYER_FILES[kind]
    return write.RasterWriter(
        path,
        grid,
        count=count,
        dtype=np.dtype(dtype),
        nodata=nodata,
        band_descriptions=descriptions,
        creation_options=options.creation_options,
        overwrite=options.overwrite,
        cog=options.cog,
        overviews=True,
        rgb=False,
    )


def mask_values(blended: npt.NDArray[np.float32], valid: Valid) -> npt.NDArray[np.uint8]:
    """The blended mask channel (rows, W) as 0/1 (changed where >= 0.5), nodata where invalid."""
    used = (blended >= 0.5).astype(np.uint8)
    used[~valid] = MASK_OUT_NODATA
    return used


def output_type(lr_dtype: str, options: UpscaleOptions) -> tuple[np.dtype[Any], float | None]:
    """The output data type and the ``--nodata`` value (None: the LR's rule) of one job.

    Raises:
        ConfigError: ``--nodata`` is not representable in the output type (exit 2).
    """
    dtype = np.dtype(options.dtype or lr_dtype)
    nodata = options.nodata
    if nodata is not None and not write.nodata_fits(nodata, dtype):
        source = (
            "set by --dtype"
            if options.dtype is not None
            else "the LR's data type, which the output keeps"
        )
        raise ConfigError(
            f"--nodata {nodata:g} is not a {dtype.name} value ({dtype.name}: {source})",
            hint=_nodata_hint(dtype),
        )
    return dtype, nodata


def _nodata_hint(dtype: np.dtype[Any]) -> str:
    if dtype.kind == "f":
        return f"use nan or a finite number within the {dtype.name} range"
    info = np.iinfo(dtype)
    return (
        f"use a whole number from {info.min} to {info.max}, or pass --dtype with a type "
        "that holds your value"
    )


def layer_bands(job: UpscaleJob) -> int:
    """Channels ``--mask-out`` and ``--trust-out`` add to the strips (``LAYER_FILES``)."""
    paths = {"mask": job.mask_out, "trust": job.trust_out}
    return sum(LAYER_FILES[kind][0] for kind, path in paths.items() if path is not None)
