"""The methods evaluate compares (baseline engines, SR folders) and how one sample is run.

Every engine method runs through ``upscale.sr_strips`` (the tiled pipeline users get), fed by
:class:`ArrayReader` for in-memory images or by ``geo.read.SourceReader`` for GeoTIFF sets.
The baselines follow the ``engines.Engine`` protocol and work in model space (bands in
[-1, 1]), like every engine.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from refdiff_cli.config import UpscaleOptions
from refdiff_cli.data import normalize
from refdiff_cli.data.resample import downscale_bicubic, upsample
from refdiff_cli.data.tiling import PixelWindow, Strip, TilePlan
from refdiff_cli.errors import ConfigError, InputError
from refdiff_cli.evaluate.inputs import Sample
from refdiff_cli.geo import read
from refdiff_cli.geo.images import read_image
from refdiff_cli.reference.change import change_vector_analysis
from refdiff_cli.upscale.engines import BicubicEngine, Engine, EngineBatch
from refdiff_cli.upscale.pipeline import MaskMode, ModelSpace, model_space, sr_strips, tile_plan

logger = logging.getLogger(__name__)

#: Engine methods of ``refdiff evaluate`` in their default report order.
ENGINE_METHODS = ("bicubic", "ref", "hpf", "guided", "model")
#: Image suffixes looked up in an ``--sr-dir`` folder (case-insensitive).
SR_SUFFIXES = frozenset({".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff"})

#: Rows per strip when SR strips are assembled in memory (any value gives the same image).
BLOCK_ROWS = 64

Array = npt.NDArray[np.float32]
Valid = npt.NDArray[np.bool_]
Output = tuple[npt.NDArray[Any], Valid]  # SR (C, H, W) in its dtype, validity (H, W)


class ArrayReader:
    """A ``upscale.TileReader`` over in-memory arrays (evaluation of image datasets).

    Args:
        lr: (C, h, w) LR values in any real dtype.
        ref: (C, H, W) reference on the output grid (H = h * scale).
        mask: (H, W) raw change-mask values on the output grid.
        lr_valid, ref_valid, mask_valid: (h, w) / (H, W) validity; None = all valid.
    """

    def __init__(
        self,
        lr: npt.NDArray[Any],
        ref: npt.NDArray[Any],
        mask: npt.NDArray[Any],
        *,
        lr_valid: Valid | None = None,
        ref_valid: Valid | None = None,
        mask_valid: Valid | None = None,
    ) -> None:
        if lr.ndim != 3 or ref.ndim != 3 or mask.ndim != 2:
            raise ValueError(f"need lr (C,h,w), ref (C,H,W), mask (H,W): {lr.shape} {ref.shape}")
        if ref.shape[1:] != mask.shape:
            raise ValueError(f"ref {ref.shape} and mask {mask.shape} are not on one grid")
        self.lr = lr
        self.ref = ref
        self.mask = mask
        self.lr_valid = _all_valid(lr.shape[1:]) if lr_valid is None else lr_valid
        self.ref_valid = _all_valid(ref.shape[1:]) if ref_valid is None else ref_valid
        self.mask_valid = _all_valid(mask.shape) if mask_valid is None else mask_valid

    def read_lr(self, window: PixelWindow) -> tuple[Array, Valid]:
        """LR values (C, h, w) float32 and validity (h, w) of an LR-pixel window."""
        rows, cols = _slices(window, self.lr.shape[1:])
        return self.lr[:, rows, cols].astype(np.float32), self.lr_valid[rows, cols].copy()

    def read_ref(self, window: PixelWindow) -> tuple[Array, Valid]:
        """Reference values (C, H, W) float32 and validity (H, W) of an output-pixel window."""
        rows, cols = _slices(window, self.ref.shape[1:])
        return self.ref[:, rows, cols].astype(np.float32), self.ref_valid[rows, cols].copy()

    def read_mask(self, window: PixelWindow) -> tuple[Array, Valid]:
        """Raw mask values (H, W) float32 and validity (H, W) of an output-pixel window."""
        rows, cols = _slices(window, self.mask.shape)
        return self.mask[rows, cols].astype(np.float32), self.mask_valid[rows, cols].copy()


def _all_valid(shape: tuple[int, ...]) -> Valid:
    return np.ones(shape, dtype=bool)  # (H, W)


def _slices(window: PixelWindow, shape: tuple[int, ...]) -> tuple[slice, slice]:
    if (
        window.row_off < 0
        or window.col_off < 0
        or window.row_end > shape[0]
        or (window.col_end > shape[1])
    ):
        raise ValueError(f"{window} is outside the array of shape {shape}")
    return slice(window.row_off, window.row_end), slice(window.col_off, window.col_end)


class RefEngine(BicubicEngine):
    """Copy the reference: an upper bound in unchanged areas, a lower bound in changed ones.

    The copy happens in model space, so for uint8 data (fixed 0..255 scaling) the output is the
    reference's DN exactly; for other types the reference is linearly matched to the LR's
    percentile range (its own [p_low, p_high] becomes the LR's). Where the reference has no
    data (or the mask none), the output falls back to bicubic upsampling of the LR, whose
    reach (2 LR pixels) sets the blend margin.
    """

    name = "ref"

    def __call__(self, batch: EngineBatch) -> torch.Tensor:
        lr_up = super().__call__(batch)  # (B, C, H, W)
        return torch.where(batch.ref_valid, batch.ref.float(), lr_up)

    def reference_weight(self, batch: EngineBatch) -> torch.Tensor:
        return batch.ref_valid.float()


class HighPassEngine(BicubicEngine):
    """LR_up plus the reference's high-pass detail in unchanged areas (pan-sharpening transfer).

    ``SR = LR_up + (1 - M) * (Ref - up(down(Ref)))`` with the bicubic down/up of
    ``data.resample`` and M = 1 where the mask channel is non-zero (changed). Where the
    reference or the mask has no data, no detail is added. The detail reaches 4 * scale output
    pixels (2 LR pixels for the antialiased downscale, 2 for the upsampling), its blend margin.
    """

    name = "hpf"

    def __init__(self, scale: int) -> None:
        super().__init__(scale)
        self.margin_px = 4 * scale
        self.overlap_px = 12 * scale

    def __call__(self, batch: EngineBatch) -> torch.Tensor:
        s = self.scale
        ref = batch.ref.double()  # (B, C, H, W)
        lr_up = upsample(batch.lr.double(), s, clamp=False)  # (B, C, H, W)
        ref_low = upsample(downscale_bicubic(ref, s), s, clamp=False)  # (B, C, H, W)
        return (lr_up + self.reference_weight(batch).double() * (ref - ref_low)).float()

    def reference_weight(self, batch: EngineBatch) -> torch.Tensor:
        return ((batch.mask[:, :1] <= 0) & batch.ref_valid).float()  # (B, 1, H, W)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SrFolder:
    """Existing super-resolved images in a folder, matched to dataset items by file stem.

    Attributes:
        name: the method's name in reports (``--sr-dir NAME=DIR``).
        path: the folder.
        files: file stem -> image file.
    """

    name: str
    path: Path
    files: dict[str, Path]

    @classmethod
    def scan(cls, name: str, path: Path) -> SrFolder:
        """Index the images of ``path`` by stem (InputError for a missing folder or a clash)."""
        path = Path(path)
        if not path.is_dir():
            raise InputError(
                f"--sr-dir {name}={path}: the folder does not exist",
                hint="pass NAME=DIR with a folder of SR images named like the dataset's items",
            )
        files: dict[str, Path] = {}
        for file in sorted(path.iterdir()):
            if file.name.startswith(".") or file.suffix.lower() not in SR_SUFFIXES:
                continue
            if file.stem in files:
                raise InputError(
                    f"--sr-dir {name}: {path} holds two images named {file.stem!r} "
                    f"({files[file.stem].name} and {file.name})",
                    hint="keep one file per name",
                )
            files[file.stem] = file
        return cls(name=name, path=path, files=files)

    def find(self, item: str) -> Path:
        """The SR image of dataset item ``item``: stem ``item`` or ``item_sr`` (upscale's name)."""
        for stem in (item, f"{item}_sr"):
            if stem in self.files:
                return self.files[stem]
        raise InputError(
            f"--sr-dir {self.name}: no SR image named {item} (or {item}_sr) in {self.path}",
            hint="name each SR image like its dataset item (any image suffix)",
        )


def fit_sr(
    sr: npt.NDArray[Any], *, hr_shape: tuple[int, ...], source_shape: tuple[int, int], path: Path
) -> npt.NDArray[Any]:
    """Check an ``--sr-dir`` image against the HR and crop it like the HR was cropped.

    Args:
        sr: (C, H', W') the SR image as read.
        hr_shape: (C, H, W) of the (cropped) HR.
        source_shape: (height, width) of the HR file before the crop to the scale.
        path: the SR file, for messages.

    Returns:
        (C, H, W) the SR image, top-left anchored crop when it had the HR file's full size.

    Raises:
        InputError: band count or size differs from the HR, naming the file.
    """
    bands, height, width = hr_shape
    if sr.shape[0] != bands:
        raise InputError(
            f"SR image {path} has {sr.shape[0]} band(s); the HR has {bands}",
            hint="write the SR images with the HR's bands",
        )
    if sr.shape[1:] == (height, width):
        return sr
    if sr.shape[1:] == source_shape:
        return sr[:, :height, :width]
    raise InputError(
        f"SR image {path} is {sr.shape[2]}x{sr.shape[1]} px but the HR is {width}x{height} px",
        hint="the SR must have the size of the HR (cropped to a multiple of the scale)",
    )


def sample_reader(sample: Sample) -> ArrayReader:
    """The tile reader of an in-memory sample (its arrays and validity)."""
    return ArrayReader(
        sample.lr,
        sample.ref,
        sample.mask,
        lr_valid=sample.lr_valid,
        ref_valid=sample.ref_valid,
        mask_valid=sample.mask_valid,
    )


def array_space(sample: Sample, engine: Engine) -> ModelSpace:
    """Upscale's model-space rule on in-memory arrays: ``scaling_for`` of the band percentiles."""
    levels = engine.normalization.percentiles
    return ModelSpace(
        lr=normalize.scaling_for(
            sample.lr.dtype, normalize.band_percentiles(sample.lr, sample.lr_valid, levels)
        ),
        ref=normalize.scaling_for(
            sample.ref.dtype, normalize.band_percentiles(sample.ref, sample.ref_valid, levels)
        ),
        mask=sample.encoding,
        mask_source=sample.mask_source,
    )


def engine_sr(
    sample: Sample, engine: Engine, options: UpscaleOptions, *, mask_mode: MaskMode = "file"
) -> tuple[Output, TilePlan]:
    """Super-resolve one sample exactly as upscale would, in memory.

    Args:
        sample: the image (arrays, or a GeoTIFF set read through ``geo.read.SourceReader``).
        engine: the method.
        options: tiling (``tile_plan``), seed, batch size, bands and mask options of upscale.
        mask_mode: the engine's mask: the sample's ("file"), "estimated" or "none".

    Returns:
        ((SR (C, H, W) in the LR dtype, 0 where invalid; validity (H, W)), the tile plan).
    """
    shape = (sample.hr.shape[1], sample.hr.shape[2])
    try:
        plan = tile_plan(shape, engine, options)
    except ConfigError as exc:
        raise ConfigError(f"method {engine.name}: {exc.message}", hint=exc.hint) from exc
    bands = sample.lr.shape[0]
    if sample.geo is None:
        if engine.bands is not None and engine.bands != bands:
            raise InputError(
                f"{sample.name}: the images have {bands} band(s); the model takes {engine.bands}",
                hint="evaluate a model trained on these bands",
            )
        strips = sr_strips(
            sample_reader(sample),
            engine,
            plan,
            dataclasses.replace(array_space(sample, engine), mask_mode=mask_mode),
            seed=options.seed,
            batch_size=options.batch_size,
            block_rows=BLOCK_ROWS,
        )
        return _assemble(strips, (bands, *shape), sample.dtype), plan
    geo = sample.geo
    sources = geo.sources
    if engine.normalization.percentiles != geo.levels or engine.bands not in (None, bands):
        sources = read.open_sources(
            geo.lr,
            geo.ref,
            geo.mask,
            scale=engine.scale,
            bands=options.bands,
            ref_bands=options.ref_bands,
            mask_grid=options.mask_grid,
            expect_bands=engine.bands,
            percentiles=engine.normalization.percentiles,
        )
    space = dataclasses.replace(model_space(sources, options.mask_encoding), mask_mode=mask_mode)
    with read.SourceReader(sources, geo.out_grid) as source_reader:
        strips = sr_strips(
            source_reader,
            engine,
            plan,
            space,
            seed=options.seed,
            batch_size=options.batch_size,
            block_rows=BLOCK_ROWS,
        )
        return _assemble(strips, (bands, *shape), sample.dtype), plan


def estimated_masks(sample: Sample, scale: int, options: UpscaleOptions) -> dict[str, Valid]:
    """The change masks refdiff estimates for ``sample`` (H, W) bool, True = changed.

    "estimated": ``change.estimate_change`` tile by tile and blended, exactly the mask an
    upscale without ``--mask`` gives the engine (its ``--mask-out``); "cva": change vector
    analysis of the whole image, the classical baseline.
    """
    engine = BicubicEngine(scale)
    shape = (sample.hr.shape[1], sample.hr.shape[2])
    plan = tile_plan(shape, engine, options)
    bands = sample.lr.shape[0]
    space = dataclasses.replace(array_space(sample, engine), mask_mode="estimated")
    estimated = np.zeros(shape, dtype=bool)
    strips = sr_strips(
        sample_reader(sample),
        engine,
        plan,
        space,
        seed=0,
        batch_size=4,
        block_rows=BLOCK_ROWS,
        layers=("mask",),
    )
    for strip in strips:
        rows = slice(strip.row_off, strip.row_off + strip.values.shape[1])
        estimated[rows] = strip.values[bands] >= 0.5
    lr = np.where(sample.lr_valid[None], normalize.to_model(sample.lr, space.lr), 0.0)
    ref = np.where(sample.ref_valid[None], normalize.to_model(sample.ref, space.ref), 0.0)
    cva = change_vector_analysis(
        torch.from_numpy(lr.astype(np.float32))[None],
        torch.from_numpy(ref.astype(np.float32))[None],
        ref_valid=torch.from_numpy(sample.ref_valid)[None, None],
        scale=scale,
    )
    return {"estimated": estimated, "cva": cva[0, 0].numpy() > 0.5}


def _assemble(strips: Iterator[Strip], shape: tuple[int, int, int], dtype: np.dtype[Any]) -> Output:
    """Cast finished strips to ``dtype`` (as upscale writes them) and stack them."""
    sr = np.zeros(shape, dtype=dtype)  # (C, H, W)
    valid = np.zeros(shape[1:], dtype=bool)  # (H, W)
    for strip in strips:
        rows = slice(strip.row_off, strip.row_off + strip.values.shape[1])
        values, _ = normalize.cast_to_dtype(strip.values, dtype)
        sr[:, rows] = np.where(strip.valid[None], values, 0)
        valid[rows] = strip.valid
    return sr, valid


def read_sr(folder: SrFolder, sample: Sample) -> Output:
    """The SR image of ``sample`` in ``folder``, checked and cropped like the HR; all valid."""
    path = folder.find(sample.name)
    sr = fit_sr(
        read_image(path), hr_shape=sample.hr.shape, source_shape=sample.source_shape, path=path
    )
    return sr, np.ones(sr.shape[1:], dtype=bool)
