"""The options of ``refdiff evaluate``: which methods, on which data, scored how (validated)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Literal

from refdiff_cli.config import (
    MaskGrid,
    Precision,
    SamplerName,
    TilingConfig,
    UpscaleOptions,
)
from refdiff_cli.datasets.layouts import LrKind
from refdiff_cli.errors import ConfigError
from refdiff_cli.evaluate.inputs import LayoutName
from refdiff_cli.evaluate.methods import ENGINE_METHODS
from refdiff_cli.model.checkpoint import default_model_installed

#: What ``evaluate --mask-source`` gives the methods as their change mask.
MaskSource = Literal["label", "estimated", "none"]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class EvalOptions:
    """Everything ``refdiff evaluate`` needs besides the dataset path.

    Attributes:
        methods: engine methods among bicubic, ref, hpf, guided, model, in report order;
            None = bicubic, ref, hpf, guided, plus model when ``model`` is given or a default
            model is installed.
        sr_dirs: (name, folder) of existing SR images to score as extra methods.
        layout: "auto", "cd", "paper" or "csv".
        scale: SR factor; None = the paper layout's LR folder, else the model's, else 8.
        lr_kind: paper layout: "bicubic" or "real" LR folder.
        mask_encoding: "auto" (cd: binary, paper: grey codes, CSV: inferred like upscale),
            "binary", "grey" or a class table file.
        bands, ref_bands, mask_grid: band selection and bare-mask grid of GeoTIFF sets.
        model, model_sha256, steps, sampler, seed, device, precision, batch_size, tiling: as for
            ``refdiff upscale`` (tiling None fields: each engine's defaults).
        border: pixels cropped from every image side before any metric (>= 0).
        data_range: peak range for PSNR/SSIM; None = 255 for uint8 HR, else the HR's valid
            (max - min) per image.
        rgb: a 3-band image is R, G, B (adds psnr_y and ssim_y).
        lpips_weights: LPIPS-Alex safetensors file; None = no LPIPS.
        limit: evaluate the first ``limit`` items only.
        csv_path: write one row per image x method x region there.
        figure_path: write a PNG comparison grid there.
        figure_images: number of figure rows (most changed pixels first) or their item names.
        ref_strength: the guided and model methods' ``--ref-strength`` (``UpscaleOptions``).
        mask_source: the mask the methods are given: "label" (the dataset's), "estimated"
            (``change.estimate_change``, as ``upscale`` without ``--mask``; the estimate is
            also scored against the labels, beside change vector analysis) or "none"
            (everything changed). Changed / unchanged regions are always the labels'.
    """

    methods: tuple[str, ...] | None = None
    sr_dirs: tuple[tuple[str, Path], ...] = ()
    layout: LayoutName = "auto"
    scale: int | None = None
    lr_kind: LrKind | None = None
    mask_encoding: str = "auto"
    bands: tuple[int, ...] | None = None
    ref_bands: tuple[int, ...] | None = None
    mask_grid: MaskGrid = "own"
    model: Path | None = None
    model_sha256: str | None = None
    steps: int | None = None
    sampler: SamplerName | None = None
    seed: int = 0
    device: str = "auto"
    precision: Precision = "fp32"
    batch_size: int = 4
    tiling: TilingConfig = dataclasses.field(default_factory=TilingConfig)
    border: int = 0
    data_range: float | None = None
    rgb: bool = True
    lpips_weights: Path | None = None
    limit: int | None = None
    csv_path: Path | None = None
    figure_path: Path | None = None
    figure_images: int | tuple[str, ...] = 4
    mask_source: MaskSource = "label"
    ref_strength: float = 1.0

    def __post_init__(self) -> None:
        if self.layout not in ("auto", "cd", "paper", "csv"):
            raise ConfigError(f"--layout {self.layout!r}: use auto, cd, paper or csv")
        if self.methods is not None:
            unknown = [m for m in self.methods if m not in ENGINE_METHODS]
            if unknown:
                raise ConfigError(
                    f"--methods: unknown method(s) {', '.join(unknown)}",
                    hint=f"choose among {', '.join(ENGINE_METHODS)}; score SR folders with "
                    "--sr-dir NAME=DIR",
                )
        names = [*(self.methods or ()), *(name for name, _ in self.sr_dirs)]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(
                f"method name(s) {', '.join(repeated)} given twice",
                hint="give every --sr-dir a name of its own, different from the engine methods",
            )
        for name, _ in self.sr_dirs:
            if not name or name in ENGINE_METHODS:
                raise ConfigError(
                    f"--sr-dir {name}=...: the name must be non-empty and not one of "
                    f"{', '.join(ENGINE_METHODS)}"
                )
        if self.methods == () and not self.sr_dirs:
            raise ConfigError("no method to evaluate", hint="pass --methods or --sr-dir NAME=DIR")
        dr = self.data_range
        checks = [
            (self.scale is None or self.scale >= 2, "--scale", self.scale, "use an integer >= 2"),
            (self.border >= 0, "--border", self.border, "use 0 or more pixels"),
            (self.batch_size >= 1, "--batch-size", self.batch_size, "use at least 1"),
            (self.limit is None or self.limit >= 1, "--limit", self.limit, "use at least 1"),
            (0 <= self.seed < 2**63, "--seed", self.seed, "use 0 <= seed < 2**63"),
            (dr is None or (math.isfinite(dr) and dr > 0), "--data-range", dr, "use a number > 0"),
            (
                not isinstance(self.figure_images, int) or self.figure_images >= 1,
                "--figure-images",
                self.figure_images,
                "use a number >= 1 or image names",
            ),
            (self.lr_kind in (None, "bicubic", "real"), "--lr-kind", self.lr_kind, "bicubic/real"),
            (self.mask_grid in ("own", "ref", "lr"), "--mask-grid", self.mask_grid, "own/ref/lr"),
            (
                self.precision in ("fp32", "bf16", "fp16"),
                "--precision",
                self.precision,
                "use fp32, bf16 or fp16",
            ),
            (self.sampler in (None, "heun", "euler"), "--sampler", self.sampler, "heun or euler"),
            (self.steps is None or self.steps >= 1, "--steps", self.steps, "use at least 1"),
            (
                self.mask_source in ("label", "estimated", "none"),
                "--mask-source",
                self.mask_source,
                "use label, estimated or none",
            ),
        ]
        for ok, option, value, fix in checks:
            if not ok:
                raise ConfigError(f"{option} {value!r} is invalid", hint=fix)

    def resolved_methods(self) -> tuple[str, ...]:
        """The engine methods to run, in report order."""
        if self.methods is not None:
            return self.methods
        with_model = self.model is not None or default_model_installed()
        return ("bicubic", "ref", "hpf", "guided") + (("model",) if with_model else ())

    def upscale_options(self, scale: int | None) -> UpscaleOptions:
        """The ``UpscaleOptions`` an upscale with these settings would use."""
        return UpscaleOptions(
            engine="diffusion",
            model=self.model,
            model_sha256=self.model_sha256,
            scale=scale,
            tiling=self.tiling,
            sampler=self.sampler,
            steps=self.steps,
            seed=self.seed,
            device=self.device,
            precision=self.precision,
            batch_size=self.batch_size,
            bands=self.bands,
            ref_bands=self.ref_bands,
            mask_grid=self.mask_grid,
            mask_encoding=self.mask_encoding,
            ref_strength=self.ref_strength,
        )
