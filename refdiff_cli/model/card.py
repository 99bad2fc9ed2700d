"""The model card: everything needed to use a set of weights, stored inside the weights file."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from refdiff_cli.config import SamplerConfig, from_dict, to_dict
from refdiff_cli.errors import ModelError
from refdiff_cli.model.precond import MASK_CHANNELS, TARGETS
from refdiff_cli.reference.guided import GuidedConfig

CARD_FORMAT = "refdiff-model"
CARD_FORMAT_VERSION = 1
#: Key of the card in the safetensors ``__metadata__`` (k-diffusion keeps its config there too).
CARD_METADATA_KEY = "refdiff.card"


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ModelCard:
    """Description of a trained Ref-Diff network and how to run it.

    Attributes:
        name: short model name, e.g. "refdiff-small-x8".
        preset: network preset the weights were trained with ("paper", "small", "tiny", ...).
        network: the full ``NetworkConfig`` as a dict (the preset may have been customised).
        scale: super-resolution factor (output pixel size = LR pixel size / scale).
        bands: names of the image bands, in order (e.g. ("red", "green", "blue")).
        normalization: how input values map to model space [-1, 1]:
            {"mode": "percentile", "p_low": 0.5, "p_high": 99.5} stretches each input band
            between its own percentiles (uint8 rasters use their full 0..255 range), the
            setting training used (``data/normalize.py``).
        mask_encoding: the ``MaskEncoding`` dict (see ``data/masks.py``) the mask channel expects.
        lr_upsample: interpolation that makes LR_up from LR, in training and inference alike.
        train_tile_px: HR tile edge used in training (pixels).
        tile_px, overlap_px, margin_px: default inference tiling (output pixels); margin_px is the
            blend margin, the network's effective receptive reach near a tile edge.
        sigma_data: EDM's data standard deviation of the target (0.5 for images in [-1, 1];
            about 0.2 for the residual HR - LR_up).
        target: what the diffusion model generates: "hr", the HR image itself (the paper), or
            "residual", HR - LR_up, added back to LR_up after sampling (``model/precond.py``,
            ``TARGETS``).
        reference: what the network's reference input holds: "raw", the warped reference
            (the paper), or "guided", the guided estimate of ``reference/guided.py`` with its trust
            weight as a second mask channel; the residual target is then HR - that estimate.
        guided: the ``GuidedConfig`` the model was trained with (reference "guided"), as a
            dict; inference uses exactly these values.
        sampler: default ``SamplerConfig`` as a dict.
        training: provenance: data sources and licences, steps, seeds, validation scores.
        refdiff_version: version of refdiff that wrote the card.
    """

    format: str = CARD_FORMAT
    format_version: int = CARD_FORMAT_VERSION
    name: str
    preset: str
    network: dict[str, Any]
    scale: int
    bands: tuple[str, ...]
    normalization: dict[str, Any]
    mask_encoding: dict[str, Any]
    lr_upsample: str = "bicubic"
    train_tile_px: int
    tile_px: int
    overlap_px: int
    margin_px: int
    sigma_data: float = 0.5
    target: str = "hr"
    reference: str = "raw"
    guided: dict[str, Any] = dataclasses.field(default_factory=dict)
    sampler: dict[str, Any]
    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    refdiff_version: str

    def __post_init__(self) -> None:
        scale_ok = isinstance(self.scale, int) and self.scale >= 2
        checks = [
            (self.format == CARD_FORMAT, "format", f"{self.format!r} is not {CARD_FORMAT!r}"),
            (
                self.format_version == CARD_FORMAT_VERSION,
                "format_version",
                f"{self.format_version} is not supported "
                f"(this refdiff reads {CARD_FORMAT_VERSION})",
            ),
            (scale_ok, "scale", f"{self.scale!r}; a model scales by 2 or more"),
            (len(self.bands) >= 1, "bands", "no bands listed"),
            (
                self.tile_px > 0 and (not scale_ok or self.tile_px % self.scale == 0),
                "tile_px",
                f"{self.tile_px}",
            ),
            (
                0 <= 2 * self.margin_px < self.overlap_px < self.tile_px,
                "overlap_px",
                "need 2*margin < overlap < tile",
            ),
            (self.sigma_data > 0, "sigma_data", f"{self.sigma_data}"),
            (self.target in TARGETS, "target", f"{self.target!r}; use {' or '.join(TARGETS)}"),
            (self.lr_upsample in ("bicubic", "bilinear"), "lr_upsample", f"{self.lr_upsample!r}"),
            (
                self.reference in MASK_CHANNELS,
                "reference",
                f"{self.reference!r}; use {' or '.join(MASK_CHANNELS)}",
            ),
            (
                self.network.get("mask_channels", 1) == MASK_CHANNELS.get(self.reference),
                "network.mask_channels",
                f"{self.network.get('mask_channels', 1)} does not fit reference "
                f"{self.reference!r} ({MASK_CHANNELS.get(self.reference)} channel(s))",
            ),
        ]
        for ok, field, detail in checks:
            if not ok:
                raise ModelError(f"model card field {field!r} is invalid: {detail}")
        self.guided_config  # noqa: B018 - validates the guided dict

    @property
    def guided_config(self) -> GuidedConfig | None:
        """The guided transfer the model was trained with (reference "guided"), else None.

        Raises:
            ModelError: the card's ``guided`` settings are not a valid ``GuidedConfig``.
        """
        if self.reference != "guided":
            return None
        try:
            return GuidedConfig(**self.guided)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"model card field 'guided' is invalid: {exc}") from exc

    @property
    def sampler_config(self) -> SamplerConfig:
        """The card's default sampler settings as a validated ``SamplerConfig``."""
        return from_dict(SamplerConfig, self.sampler)

    def to_json(self) -> str:
        """Serialise to compact JSON with sorted keys (stable bytes for hashing)."""
        return json.dumps(to_dict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        """Parse and validate a card; any problem raises ``ModelError`` naming the field."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"model card is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ModelError("model card must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"model card has unknown field(s): {', '.join(unknown)}")
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in data
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        )
        if missing:
            raise ModelError(f"model card lacks field(s): {', '.join(missing)}")
        data["bands"] = tuple(data["bands"])
        try:
            card = cls(**data)
            card.sampler_config  # noqa: B018 - validates the sampler dict
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise ModelError(f"model card is invalid: {exc}") from exc
        return card
