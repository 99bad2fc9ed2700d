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


def require(condition: bool, field: str, message: str) -> None:
    """Raise ``ConfigError`` "invalid <field>: <message>" unless ``condition`` holds."""
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
            require(self.tile_px >= 8, "tile", f"{self.tile_px} px; use at least 8")
        if self.overlap_px is not None:
            require(self.overlap_px >= 0, "overlap", f"{self.overlap_px} px is negative")
        if self.margin_px is not None:
            require(self.margin_px >= 0, "margin", f"{self.margin_px} px is negative")
        if self.tile_px is not None and self.overlap_px is not None:
            require(
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
        require(
            self.sampler in ("heun", "euler"), "sampler", f"{self.sampler!r}; use heun or euler"
        )
        require(self.steps >= 1, "steps", f"{self.steps}; use at least 1")
        require(
            0 < self.sigma_min < self.sigma_max,
            "sigma range",
            f"need 0 < sigma_min ({self.sigma_min}) < sigma_max ({self.sigma_max})",
        )
        require(self.rho > 0, "rho", f"{self.rho}; must be positive")
        require(self.S_churn >= 0, "S_churn", f"{self.S_churn}; must be >= 0")
        require(self.S_noise > 0, "S_noise", f"{self.S_noise}; must be positive")
        require(
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
    engine as designed, above 1 pushes further towards it (``upscale/engines.py``). ``dtype``
    (one of ``OUTPUT_DTYPES``) and ``nodata`` override the output's data type (values rounded
    half to even and clamped: ``normalize.cast_to_dtype``) and nodata value (NaN allowed for
    float types; it must fit the output type, checked per job); None keeps the LR's. ``bands``
    (``-b``) are the LR bands written (None: all but alpha), ``ref_bands`` (``--ref-bidx``)
    the reference band of each (0: none), ``rgb`` (``--rgb``) the LR bands of red, green and
    blue for the model (None: found from the LR's colour interpretation or band names);
    ``upscale/bands.py`` routes the rest. ``compile`` runs the model's network through
    ``torch.compile`` (``upscale/engines.py``).
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
        require(
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
        require(
            math.isfinite(self.ref_strength) and 0 <= self.ref_strength <= MAX_REF_STRENGTH,
            "--ref-strength",
            f"{self.ref_strength}; use a number from 0 to {MAX_REF_STRENGTH:g}",
        )
        require(
            self.engine in ("auto", "diffusion", "guided", "bicubic"),
            "--engine",
            f"{self.engine!r}; use auto, diffusion, guided or bicubic",
        )
        require(self.batch_size >= 1, "--batch-size", f"{self.batch_size}; use at least 1")
        require(self.precision in ("fp32", "bf16", "fp16"), "--precision", f"{self.precision!r}")
        require(self.mask_grid in ("own", "ref", "lr"), "--mask-grid", f"{self.mask_grid!r}")
        require(0 <= self.seed < 2**63, "--seed", f"{self.seed}; use 0 <= seed < 2**63")
        if self.scale is not None:
            require(self.scale >= 2, "--scale", f"{self.scale}; use an integer >= 2")
        if self.steps is not None:
            require(self.steps >= 1, "--steps", f"{self.steps}; use at least 1")
        if self.S_churn is not None:
            require(self.S_churn >= 0, "--churn", f"{self.S_churn}; must be >= 0")
        if self.sampler_preset is not None:
            require(
                self.sampler_preset in SAMPLER_PRESETS,
                "--sampler-preset",
                f"{self.sampler_preset!r}; known: {', '.join(SAMPLER_PRESETS)}",
            )
        for name, bands in (("-b/--bidx", self.bands), ("--rgb", self.rgb)):
            if bands is not None:
                require(len(bands) >= 1, name, "empty band list")
                require(all(b >= 1 for b in bands), name, f"{bands}: bands are 1-based")
        if self.rgb is not None:
            require(
                len(self.rgb) == 3 and len(set(self.rgb)) == 3,
                "--rgb",
                f"{self.rgb}: give three different LR bands: red, green, blue (e.g. 3,2,1)",
            )
        if self.ref_bands is not None:
            require(
                all(b >= 0 for b in self.ref_bands) and any(self.ref_bands),
                "--ref-bidx",
                f"{self.ref_bands}: bands are 1-based (0: this LR band has no reference band)",
            )
        require(
            not (self.overwrite and self.skip_existing),
            "--skip-existing",
            "cannot be combined with --overwrite",
        )
        if self.model_sha256 is not None:
            digest = self.model_sha256.lower()
            require(
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


#: EDM's sigma_data per target: images in [-1, 1], and the residual HR - LR_up.
TARGET_SIGMA_DATA = {"hr": 0.5, "residual": 0.2}
