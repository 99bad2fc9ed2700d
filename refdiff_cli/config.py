"""Frozen option dataclasses shared by the CLI and the tools, with dict/TOML/JSON round trips.

Stdlib only (layer 0). Validation happens in ``__post_init__`` and raises ``ConfigError``
naming the offending field, so a bad value fails before any file is opened.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar, get_type_hints

from refdiff_cli.errors import ConfigError
from refdiff_cli.files import atomic_path

SamplerName = Literal["heun", "euler"]
StartName = Literal["noise", "lr", "mean"]
#: What fills the reference slot of the network: the warped reference, or the guided estimate.
ReferenceMode = Literal["raw", "guided"]
Precision = Literal["fp32", "bf16", "fp16"]

T = TypeVar("T")


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"invalid {field}: {message}")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TilingConfig:
    """How the output grid is cut into tiles; ``None`` fields take the model card's default.

    Attributes:
        tile_px: tile edge in output pixels (a multiple of the scale and of the network's
            size multiple), or None for the card's default.
        overlap_px: overlap between neighbouring tiles in output pixels, > 2 * margin_px.
        margin_px: blend weight is zero within this many pixels of an interior tile edge
            (the engine's receptive reach), or None for the card's default.
    """

    tile_px: int | None = None
    overlap_px: int | None = None
    margin_px: int | None = None

    def __post_init__(self) -> None:
        if self.tile_px is not None:
            _require(self.tile_px >= 8, "tile", f"{self.tile_px} px; use at least 8")
        if self.overlap_px is not None:
            _require(self.overlap_px >= 0, "overlap", f"{self.overlap_px} px is negative")
        if self.margin_px is not None:
            _require(self.margin_px >= 0, "margin", f"{self.margin_px} px is negative")
        if self.tile_px is not None and self.overlap_px is not None:
            _require(
                self.overlap_px <= self.tile_px // 2,
                "overlap",
                f"{self.overlap_px} px is more than half the tile ({self.tile_px} px)",
            )


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SamplerConfig:
    """EDM sampler settings (Karras et al. 2022, Algorithm 2; symbols as in the paper).

    Attributes:
        sampler: "heun" (2nd order, 2 network evaluations per step but the last) or "euler".
        steps: number of noise levels N (>= 1).
        sigma_min, sigma_max: ends of the noise schedule, 0 < sigma_min < sigma_max.
        rho: schedule curvature (7 in EDM).
        S_churn, S_min, S_max, S_noise: stochasticity; S_churn = 0 makes the sampler an ODE
            solver (deterministic given the start).
        start: "noise" starts from sigma_max * N(0, I); "lr" from sigma_max * LR_up, as the
            public Ref-Diff release does; "mean" from 0, the mean of the noise distribution:
            the first step then uses D(0; sigma_max), the model's estimate of the conditional
            mean, and a deterministic sampler draws no noise at all (no seed-dependent bytes).
    """

    sampler: SamplerName = "heun"
    steps: int = 16
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    S_churn: float = 0.0
    S_min: float = 0.0
    S_max: float = math.inf
    S_noise: float = 1.0
    start: StartName = "noise"

    def __post_init__(self) -> None:
        _require(
            self.sampler in ("heun", "euler"), "sampler", f"{self.sampler!r}; use heun or euler"
        )
        _require(self.steps >= 1, "steps", f"{self.steps}; use at least 1")
        _require(
            0 < self.sigma_min < self.sigma_max,
            "sigma range",
            f"need 0 < sigma_min ({self.sigma_min}) < sigma_max ({self.sigma_max})",
        )
        _require(self.rho > 0, "rho", f"{self.rho}; must be positive")
        _require(self.S_churn >= 0, "S_churn", f"{self.S_churn}; must be >= 0")
        _require(self.S_noise > 0, "S_noise", f"{self.S_noise}; must be positive")
        _require(
            self.start in ("noise", "lr", "mean"), "start", f"{self.start!r}; use noise, lr or mean"
        )

    @property
    def network_evaluations(self) -> int:
        """Network evaluations per tile: Heun needs 2 per step except the last."""
        return 2 * self.steps - 1 if self.sampler == "heun" else self.steps


SAMPLER_PRESETS: dict[str, SamplerConfig] = {
    # The paper's EDM stochastic Heun: 256 steps, 511 network evaluations per tile.
    "paper": SamplerConfig(
        sampler="heun",
        steps=256,
        sigma_min=0.002,
        sigma_max=80.0,
        rho=7.0,
        S_churn=40.0,
        S_min=0.05,
        S_max=50.0,
        S_noise=1.003,
    ),
}


def to_dict(obj: Any) -> dict[str, Any]:
    """Return a JSON-ready dict of a (nested) options dataclass; paths become strings."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {str(k): convert(v) for k, v in value.items()}
        if isinstance(value, float) and math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value

    result = convert(obj)
    assert isinstance(result, dict)
    return result


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise ConfigError naming them."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected a table for {cls.__name__}, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key(s) for {cls.__name__}: {', '.join(unknown)}",
            hint=f"known keys: {', '.join(fields)}",
        )
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value)  # type: ignore[arg-type]
        elif value in ("inf", "-inf") and float in getattr(hint, "__args__", (hint,)):
            value = float(value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"invalid {cls.__name__}: {exc}") from exc


def load_file(path: Path) -> dict[str, Any]:
    """Read a TOML (``.toml``) or JSON (``.json``) config file into a dict."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        if path.suffix == ".toml":
            return tomllib.loads(text)
        if path.suffix == ".json":
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ConfigError(f"config file {path} must hold a JSON object")
            return data
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid: {exc}") from exc
    raise ConfigError(f"config file {path} must end in .toml or .json")


def save_json(obj: Any, path: Path) -> None:
    """Write a resolved options dataclass as pretty JSON (atomic: temp file + rename)."""
    with atomic_path(path) as temp:
        temp.write_text(json.dumps(to_dict(obj), indent=2, sort_keys=True) + "\n", encoding="utf-8")


EngineName = Literal["auto", "diffusion", "guided", "bicubic"]
#: Largest ``--ref-strength``: beyond it the extrapolation only amplifies disagreement.
MAX_REF_STRENGTH = 4.0
#: Output data types ``--dtype`` accepts (GeoTIFF band types numpy and GDAL share).
OUTPUT_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
MaskGrid = Literal["own", "ref", "lr"]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class UpscaleOptions:
    """Everything ``refdiff upscale`` needs besides the input and output paths.

    ``None`` means "take the model card's default". ``mask_encoding`` is "auto", "binary",
    "grey" or the path of a class table (JSON or CSV; see ``data/masks.py``).
    ``ref_strength`` (0..``MAX_REF_STRENGTH``) weighs the reference: 0 ignores it, 1 is the
    engine as designed, above 1 pushes further towards it (``engines.py``). ``dtype`` (one of
    ``OUTPUT_DTYPES``) and ``nodata`` override the output's data type (values rounded half to
    even and clamped: ``normalize.cast_to_dtype``) and nodata value (NaN allowed for float
    types; it must fit the output type, checked per job); None keeps the LR's. ``bands``
    (``-b``) are the LR bands written (None: all but alpha), ``ref_bands`` (``--ref-bidx``)
    the reference band of each (0: none), ``rgb`` (``--rgb``) the LR bands of red, green and
    blue for the model (None: found from the LR's colour interpretation or band names);
    ``bands.py`` routes the rest. ``compile`` runs the model's network through
    ``torch.compile`` (``engines.py``).
    """

    engine: EngineName = "auto"
    model: Path | None = None
    model_sha256: str | None = None
    scale: int | None = None
    tiling: TilingConfig = dataclasses.field(default_factory=TilingConfig)
    sampler_preset: str | None = None
    sampler: SamplerName | None = None
    steps: int | None = None
    start: StartName | None = None
    S_churn: float | None = None
    seed: int = 0
    device: str = "auto"
    precision: Precision = "fp32"
    batch_size: int = 4
    bands: tuple[int, ...] | None = None
    ref_bands: tuple[int, ...] | None = None
    rgb: tuple[int, ...] | None = None
    mask_grid: MaskGrid = "own"
    mask_encoding: str = "auto"
    creation_options: tuple[str, ...] = ()
    cog: bool = False
    overwrite: bool = False
    skip_existing: bool = False
    dry_run: bool = False
    ref_strength: float = 1.0
    dtype: str | None = None
    nodata: float | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        _require(
            not (self.compile and self.engine in ("guided", "bicubic")),
            "--compile",
            f"compiles the model's network; the {self.engine} engine has none",
        )
        if self.dtype is not None and self.dtype not in OUTPUT_DTYPES:
            raise ConfigError(
                f"invalid --dtype: {self.dtype!r} is not an output data type",
                hint=f"use one of {', '.join(OUTPUT_DTYPES)}",
            )
        if self.nodata is not None and math.isinf(self.nodata):
            raise ConfigError(
                "invalid --nodata: infinity cannot mark nodata",
                hint="use a finite number, or nan for float outputs",
            )
        _require(
            math.isfinite(self.ref_strength) and 0 <= self.ref_strength <= MAX_REF_STRENGTH,
            "--ref-strength",
            f"{self.ref_strength}; use a number from 0 to {MAX_REF_STRENGTH:g}",
        )
        _require(
            self.engine in ("auto", "diffusion", "guided", "bicubic"),
            "--engine",
            f"{self.engine!r}; use auto, diffusion, guided or bicubic",
        )
        _require(self.batch_size >= 1, "--batch-size", f"{self.batch_size}; use at least 1")
        _require(self.precision in ("fp32", "bf16", "fp16"), "--precision", f"{self.precision!r}")
        _require(self.mask_grid in ("own", "ref", "lr"), "--mask-grid", f"{self.mask_grid!r}")
        _require(0 <= self.seed < 2**63, "--seed", f"{self.seed}; use 0 <= seed < 2**63")
        if self.scale is not None:
            _require(self.scale >= 2, "--scale", f"{self.scale}; use an integer >= 2")
        if self.steps is not None:
            _require(self.steps >= 1, "--steps", f"{self.steps}; use at least 1")
        if self.S_churn is not None:
            _require(self.S_churn >= 0, "--churn", f"{self.S_churn}; must be >= 0")
        if self.sampler_preset is not None:
            _require(
                self.sampler_preset in SAMPLER_PRESETS,
                "--sampler-preset",
                f"{self.sampler_preset!r}; known: {', '.join(SAMPLER_PRESETS)}",
            )
        for name, bands in (("-b/--bidx", self.bands), ("--rgb", self.rgb)):
            if bands is not None:
                _require(len(bands) >= 1, name, "empty band list")
                _require(all(b >= 1 for b in bands), name, f"{bands}: bands are 1-based")
        if self.rgb is not None:
            _require(
                len(self.rgb) == 3 and len(set(self.rgb)) == 3,
                "--rgb",
                f"{self.rgb}: give three different LR bands: red, green, blue (e.g. 3,2,1)",
            )
        if self.ref_bands is not None:
            _require(
                all(b >= 0 for b in self.ref_bands) and any(self.ref_bands),
                "--ref-bidx",
                f"{self.ref_bands}: bands are 1-based (0: this LR band has no reference band)",
            )
        _require(
            not (self.overwrite and self.skip_existing),
            "--skip-existing",
            "cannot be combined with --overwrite",
        )
        if self.model_sha256 is not None:
            digest = self.model_sha256.lower()
            _require(
                len(digest) == 64 and all(c in "0123456789abcdef" for c in digest),
                "--model-sha256",
                "expected 64 hexadecimal digits",
            )

    def resolved_sampler(self, default: SamplerConfig) -> SamplerConfig:
        """The sampler to run: the preset (or the card's ``default``) with explicit overrides."""
        base = SAMPLER_PRESETS[self.sampler_preset] if self.sampler_preset else default
        overrides: dict[str, Any] = {
            name: value
            for name, value in (
                ("sampler", self.sampler),
                ("steps", self.steps),
                ("start", self.start),
                ("S_churn", self.S_churn),
            )
            if value is not None
        }
        try:
            return dataclasses.replace(base, **overrides)
        except ConfigError as exc:
            raise ConfigError(f"sampler options: {exc.message}") from exc


TrainLRMethod = Literal["realistic", "bicubic", "mixed", "stored"]
TrainPrecision = Literal["fp32", "bf16"]
TrainTarget = Literal["hr", "residual"]
#: EDM's sigma_data per target: images in [-1, 1], and the residual HR - LR_up.
TARGET_SIGMA_DATA = {"hr": 0.5, "residual": 0.2}


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TrainConfig:
    """Everything ``refdiff train`` needs besides the chips and run folders.

    Defaults suit a CPU run of the "small" preset; the paper's values are in the comments.
    Sizes are HR pixels, ``batch_size`` is the global batch over all processes.

    Attributes:
        preset: network preset ("tiny", "small", "paper").
        network: overrides of the preset's ``NetworkConfig`` fields (e.g. {"dropout": 0.0}).
        scale: super-resolution factor; equals the chips' ``lr_scale`` with ``lr_method`` stored.
        crop_px: training crop edge (paper 256), a multiple of the scale and the network's size
            multiple, at most the chip size.
        batch_size: global effective batch per optimizer step (paper 24).
        steps: optimizer steps in total (paper: 10 M images / 24 = 416,667); may be raised on
            resume to train longer.
        lr: Adam learning rate after warm-up (paper 1e-4).
        betas, eps: Adam's moment decay rates and epsilon (paper 0.9/0.999, 1e-8).
        warmup_steps: linear learning-rate warm-up from lr / warmup_steps to lr (0 = none).
        ema_halflife_kimg: EMA half-life in thousands of images (EDM 500).
        ema_rampup_ratio: the half-life is at most this fraction of the images seen so far
            (EDM 0.05), or None for a fixed half-life.
        target: "hr" (the paper: the network generates the HR image) or "residual" (it
            generates HR - LR_up; the estimate of an untrained network is then LR_up).
        sigma_data: standard deviation of the target in model space (EDM's sigma_data); None
            takes the target's: 0.5 for "hr", 0.2 for "residual" (measured on cd_pairs + OSCD
            chips: 0.18).
        lr_method: how each step's LR is made: "realistic" (on-the-fly random degradation,
            the paper's training LR), "bicubic" (antialiased), "mixed" (each item by
            antialiased bicubic or by area averaging, half each: the two ways GIS tools make
            coarse rasters, ``gdalwarp -r cubic`` / ``-r average``), or "stored" (the chips'
            real LR images).
        seed: seed of every random draw (weights, data order, crops, degradations, noise).
        device: auto, cpu, cuda or cuda:N (under torchrun each rank takes cuda:LOCAL_RANK).
        precision: fp32 (paper) or bf16 (autocast, CUDA only).
        deterministic: ``torch.use_deterministic_algorithms(True)`` during training.
        checkpoint_every: steps between checkpoints (one is also written at the end and on
            Ctrl-C / SIGTERM).
        keep_checkpoints: newest checkpoints kept (older ones are deleted once the newest
            verifies).
        log_every: steps between ``stats.jsonl`` lines.
        val_every: steps between validations (0 = only at the end; none without val chips).
        val_chips: validation chips used (the first ones of the val split).
        grad_clip: clip the global gradient norm to this value, or None.
        max_bad_steps: consecutive steps with a non-finite loss or gradient before giving up.
        reference: what the network's reference input holds: "raw" (the warped reference,
            the paper) or "guided" (the guided estimate and its trust weight; the residual
            target is then HR - guided estimate). See ``model/precond.prepare_conditions``.
        synthesize_fraction: share of items whose reference is synthesised from their own
            HR with realistic nuisances (``train_references.py``), in [0, 1].
        drop_reference_fraction: share of items trained without a reference (mask all
            "changed"), in [0, 1]; with ``synthesize_fraction`` at most 1.
        mean_fraction: share of items trained from the input 0 at ``sigma_mean`` (EDMLoss),
            which the "mean" sampler start relies on; in [0, 1).
        sigma_mean: that noise level, model units, and the exported card's sigma_max.
        guided: overrides of ``GuidedConfig`` (reference "guided"); the card stores the
            resolved values, so a model always runs with the guided transfer it learned on.
        synthesis: overrides of ``SynthesisConfig`` for the synthesised references (e.g.
            {"blur_probability": 0.2}).
        init_from: a model file (``.safetensors`` from ``refdiff train``) whose weights the
            run starts from (fine-tuning), or "default" for the bundled model; its network,
            scale, bands and reference mode must match the run's. None starts from random
            weights. Ignored on resume (the checkpoint holds the weights).
    """

    preset: str = "small"
    network: dict[str, Any] = dataclasses.field(default_factory=dict)
    scale: int = 8
    crop_px: int = 128  # paper 256
    batch_size: int = 8  # paper 24
    steps: int = 20_000  # paper 416,667
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 500
    ema_halflife_kimg: float = 500.0
    ema_rampup_ratio: float | None = 0.05
    target: TrainTarget = "hr"
    sigma_data: float | None = None
    lr_method: TrainLRMethod = "realistic"
    seed: int = 0
    device: str = "auto"
    precision: TrainPrecision = "fp32"
    deterministic: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 50
    val_every: int = 1000
    val_chips: int = 8
    grad_clip: float | None = None
    max_bad_steps: int = 5
    reference: ReferenceMode = "raw"
    synthesize_fraction: float = 0.0
    drop_reference_fraction: float = 0.0
    mean_fraction: float = 0.0
    sigma_mean: float = 5.0
    guided: dict[str, Any] = dataclasses.field(default_factory=dict)
    synthesis: dict[str, Any] = dataclasses.field(default_factory=dict)
    init_from: str | None = None

    @property
    def target_sigma_data(self) -> float:
        """EDM's sigma_data of the target (``sigma_data``, filled from ``target`` if unset)."""
        return TARGET_SIGMA_DATA[self.target] if self.sigma_data is None else self.sigma_data

    def __post_init__(self) -> None:
        _require(isinstance(self.network, dict), "network", "must be a table of overrides")
        _require(self.scale >= 2, "--scale", f"{self.scale}; use an integer >= 2")
        _require(self.crop_px >= 8, "--crop", f"{self.crop_px} px; use at least 8")
        _require(self.batch_size >= 1, "--batch-size", f"{self.batch_size}; use at least 1")
        _require(self.steps >= 1, "--steps", f"{self.steps}; use at least 1")
        _require(0 < self.lr < 1, "--lr", f"{self.lr}; use a learning rate in (0, 1)")
        _require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "betas",
            f"{self.betas}; use two numbers in [0, 1)",
        )
        _require(self.eps > 0, "eps", f"{self.eps}; must be positive")
        _require(self.warmup_steps >= 0, "warmup_steps", f"{self.warmup_steps} is negative")
        _require(self.ema_halflife_kimg >= 0, "ema_halflife_kimg", "must be >= 0")
        if self.ema_rampup_ratio is not None:
            _require(self.ema_rampup_ratio > 0, "ema_rampup_ratio", "must be positive or unset")
        _require(self.target in TARGET_SIGMA_DATA, "target", f"{self.target!r}; use hr or residual")
        _require(self.target_sigma_data > 0, "sigma_data", f"{self.sigma_data}; must be positive")
        _require(
            self.lr_method in ("realistic", "bicubic", "mixed", "stored"),
            "lr_method",
            f"{self.lr_method!r}; use realistic, bicubic, mixed or stored",
        )
        _require(0 <= self.seed < 2**63, "--seed", f"{self.seed}; use 0 <= seed < 2**63")
        _require(
            self.precision in ("fp32", "bf16"),
            "--precision",
            f"{self.precision!r}; training runs in fp32 or bf16 (fp16 would need loss scaling)",
        )
        for name in ("checkpoint_every", "keep_checkpoints", "log_every", "max_bad_steps"):
            value = getattr(self, name)
            _require(value >= 1, name, f"{value}; use at least 1")
        _require(self.val_every >= 0, "--val-every", f"{self.val_every} is negative")
        _require(self.val_chips >= 0, "val_chips", f"{self.val_chips} is negative")
        if self.grad_clip is not None:
            _require(self.grad_clip > 0, "grad_clip", f"{self.grad_clip}; must be positive")
        _require(self.reference in ("raw", "guided"), "reference", f"{self.reference!r}")
        fractions = (self.synthesize_fraction, self.drop_reference_fraction)
        _require(
            all(0 <= f <= 1 for f in fractions) and sum(fractions) <= 1,
            "synthesize_fraction, drop_reference_fraction",
            f"{fractions}; use shares in [0, 1] that add up to at most 1",
        )
        _require(0 <= self.mean_fraction < 1, "mean_fraction", f"{self.mean_fraction}")
        _require(self.sigma_mean > 0, "sigma_mean", f"{self.sigma_mean}; must be positive")
        _require(isinstance(self.synthesis, dict), "synthesis", "must be a table of overrides")
