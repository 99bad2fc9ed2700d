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

SamplerName = Literal["heun", "euler"]
StartName = Literal["noise", "lr"]
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
            public Ref-Diff release does.
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
        _require(self.sampler in ("heun", "euler"), "sampler", f"{self.sampler!r}; use heun or euler")
        _require(self.steps >= 1, "steps", f"{self.steps}; use at least 1")
        _require(
            0 < self.sigma_min < self.sigma_max,
            "sigma range",
            f"need 0 < sigma_min ({self.sigma_min}) < sigma_max ({self.sigma_max})",
        )
        _require(self.rho > 0, "rho", f"{self.rho}; must be positive")
        _require(self.S_churn >= 0, "S_churn", f"{self.S_churn}; must be >= 0")
        _require(self.S_noise > 0, "S_noise", f"{self.S_noise}; must be positive")
        _require(self.start in ("noise", "lr"), "start", f"{self.start!r}; use noise or lr")

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
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(to_dict(obj), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
