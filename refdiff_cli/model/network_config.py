"""Structure of the Ref-Diff U-Net (``NetworkConfig``) and its named presets (paper, small, tiny).

Torch-free, so a card or a training plan can be checked without building the network.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from refdiff_cli.config import from_dict, to_dict
from refdiff_cli.errors import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class NetworkConfig:
    """Every structural choice of ``RefDiffUNet``; the defaults are the paper's network.

    Attributes:
        image_channels: bands of x, LR_up and Ref (3 for RGB).
        mask_channels: channels of the change mask M (values in [0, 1]).
        model_channels: base width; level ``i`` has ``model_channels * channel_mult[i]`` channels.
        channel_mult: width multiplier per resolution level, finest first; its length is the
            number of levels (each level below the first halves H and W).
        num_blocks: residual blocks per encoder level (the decoder has ``num_blocks + 1``).
        embedding_mult: noise-embedding width = ``model_channels * embedding_mult``.
        sft_hidden: hidden width of the two convs inside each SFT branch.
        dropout: dropout probability before the last conv of every block, in [0, 1).
        middle_attention: single-head self-attention in the first middle block.
        attention_levels: levels whose encoder blocks and last decoder block also get
            self-attention (SongUNet ``attn_resolutions``, given as level indices).
        stem_unshuffle: pixel-unshuffle factor r of the stem (1 = none, the paper). With r > 1
            the network runs on an (H/r, W/r) space-to-depth image, the SFT guides are
            unshuffled the same way and the head pixel-shuffles back: r^2 fewer pixels per conv.
    """

    image_channels: int = 3
    mask_channels: int = 1
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (2, 2, 2)
    num_blocks: int = 4
    embedding_mult: int = 4
    sft_hidden: int = 128
    dropout: float = 0.2
    middle_attention: bool = True
    attention_levels: tuple[int, ...] = ()
    stem_unshuffle: int = 1

    def __post_init__(self) -> None:
        ints = ("image_channels", "mask_channels", "num_blocks", "embedding_mult", "sft_hidden")
        for name in (*ints, "stem_unshuffle"):
            value = getattr(self, name)
            _require(_is_int(value) and value >= 1, name, f"{value!r}; use an integer >= 1")
        mc = self.model_channels
        _require(
            _is_int(mc) and mc >= 4 and mc % 2 == 0, "model_channels", f"{mc!r}; use even >= 4"
        )
        mult = self.channel_mult
        _require(
            isinstance(mult, tuple) and len(mult) >= 1 and all(_is_int(m) and m >= 1 for m in mult),
            "channel_mult",
            f"{mult!r}; use a non-empty list of integers >= 1",
        )
        p = self.dropout
        _require(
            isinstance(p, (int, float)) and not isinstance(p, bool) and 0.0 <= p < 1.0,
            "dropout",
            f"{p!r}; use a number in [0, 1)",
        )
        _require(
            isinstance(self.middle_attention, bool),
            "middle_attention",
            f"{self.middle_attention!r}; use true or false",
        )
        _require(
            isinstance(self.attention_levels, tuple)
            and all(_is_int(lv) and 0 <= lv < len(mult) for lv in self.attention_levels),
            "attention_levels",
            f"{self.attention_levels!r}; use level indices in 0..{len(mult) - 1}",
        )

    @property
    def levels(self) -> int:
        """Number of resolution levels."""
        return len(self.channel_mult)

    @property
    def emb_channels(self) -> int:
        """Width of the noise embedding fed to every block."""
        return self.model_channels * self.embedding_mult

    @property
    def in_channels(self) -> int:
        """Channels of the stem input concat(x_in, LR_up, Ref, M)."""
        return 3 * self.image_channels + self.mask_channels

    @property
    def guide_channels(self) -> int:
        """Channels of one SFT guide concat(LR_up or Ref, M), after the stem unshuffle."""
        return (self.image_channels + self.mask_channels) * self.stem_unshuffle**2

    @property
    def size_multiple(self) -> int:
        """Tile height and width must be multiples of this (unshuffle x one 2x per level)."""
        return int(self.stem_unshuffle * 2 ** (self.levels - 1))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (tuples become lists)."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkConfig:
        """Build from ``to_dict()`` output; unknown keys or bad values raise ``ConfigError``."""
        return from_dict(cls, data)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(
            f"invalid network option {field}: {message}",
            hint="check the [network] table of the config or model card",
        )


PRESETS: dict[str, NetworkConfig] = {
    # Ref-Diff as published: 116,740,739 parameters, 3 levels of 256 channels, size multiple 4.
    "paper": NetworkConfig(),
    # CPU default: 4,210,988 parameters (16.8 MB fp32), 39.8 GFLOP per 256x256 forward, about
    # 0.23 s fp32 / 0.13 s bf16 on 2 CPU cores; pixel-unshuffle stem (r=2), size multiple 8.
    # With r=1 the same widths cost 152 GFLOP and 0.73-0.86 s: the unshuffle stem is 4x cheaper.
    "small": NetworkConfig(
        model_channels=32,
        channel_mult=(1, 2, 2),
        num_blocks=2,
        sft_hidden=32,
        dropout=0.1,
        stem_unshuffle=2,
    ),
    # Unit tests: 475,795 parameters, two levels, size multiple 2; its middle attention spans
    # (H/2)(W/2) pixels, so keep its tiles at 128 px or less.
    "tiny": NetworkConfig(
        model_channels=16,
        channel_mult=(1, 2),
        num_blocks=1,
        sft_hidden=16,
        dropout=0.1,
    ),
}
