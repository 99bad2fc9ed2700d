"""Ref-Diff conditional U-Net: EDM's DDPM++ "SongUNet" with two SFT layers in every decoder block.

Dong et al., CVPR 2024 (arXiv 2403.17460), on top of Karras et al., NeurIPS 2022 (EDM). The network
maps ``(c_in * x, c_noise, LR_up, Ref, M)`` to ``F_x``; sigma, device placement and precision are
the caller's business (``model/precond.py``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from refdiff_cli.config import from_dict, to_dict
from refdiff_cli.errors import ConfigError

#: Residual branches are summed then multiplied by this (DDPM++ ``skip_scale``).
SKIP_SCALE = math.sqrt(0.5)
#: Weight scale of the last conv of every block and of the output conv (EDM ``init_zero``).
ZERO_INIT = 1e-5
#: Weight scale of the attention qkv conv (EDM ``init_attn``).
ATTN_INIT = math.sqrt(0.2)
GROUPNORM_EPS = 1e-6
SFT_LEAKY_SLOPE = 0.1


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


def check_shape(name: str, tensor: torch.Tensor, expected: tuple[int | None, ...]) -> None:
    """Raise ``ValueError`` naming both shapes unless ``tensor`` matches (None = any size)."""
    shape = tuple(tensor.shape)
    if len(shape) != len(expected) or any(
        e is not None and s != e for s, e in zip(shape, expected, strict=True)
    ):
        shown = tuple("*" if e is None else e for e in expected)
        raise ValueError(f"{name} has shape {shape}, expected {shown}")


def num_groups(channels: int) -> int:
    """GroupNorm groups: EDM's min(32, C // 4), lowered to the nearest divisor of C."""
    groups = max(1, min(32, channels // 4))
    while channels % groups:
        groups -= 1
    return groups


# ---------------------------------------------------------------------------------------------
# Layers with EDM initialisation (xavier uniform weights scaled by init_weight, zero biases).
# Weights are drawn from an explicit generator so that a seed fixes the whole network.


class Conv2d(nn.Module):
    """Square-kernel convolution with "same" padding and EDM initialisation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        *,
        generator: torch.Generator,
        init_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        with torch.no_grad():
            nn.init.xavier_uniform_(self.weight, generator=generator)
            self.weight.mul_(init_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.weight.shape[-1] // 2
        return F.conv2d(x, self.weight, self.bias, padding=pad)


class Linear(nn.Module):
    """Fully connected layer with EDM initialisation."""

    def __init__(self, in_features: int, out_features: int, *, generator: torch.Generator) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        with torch.no_grad():
            nn.init.xavier_uniform_(self.weight, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups(channels), channels, eps=GROUPNORM_EPS)


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of c_noise (EDM ``PositionalEmbedding``, endpoint=True, [sin, cos])."""

    def __init__(self, num_channels: int, max_positions: int = 10_000) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        exponents = torch.arange(half, dtype=torch.float32, device=c_noise.device) / (half - 1)
        freqs = (1.0 / self.max_positions) ** exponents  # (half,)
        angles = c_noise.to(torch.float32).outer(freqs)  # (B, half)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (B, num_channels)


class SFT(nn.Module):
    """Spatial feature transform: ``F * sigmoid(gate(F, G)) + shift(F, G)``.

    The guide G is nearest-resized to F's size and concatenated with F; the gate and the shift
    are each conv3x3 -> LeakyReLU(0.1) -> conv3x3, with separate weights.
    """

    def __init__(
        self, channels: int, guide_channels: int, hidden: int, *, generator: torch.Generator
    ) -> None:
        super().__init__()
        cin = channels + guide_channels
        self.gate0 = Conv2d(cin, hidden, 3, generator=generator)
        self.gate1 = Conv2d(hidden, channels, 3, generator=generator)
        self.shift0 = Conv2d(cin, hidden, 3, generator=generator)
        self.shift1 = Conv2d(hidden, channels, 3, generator=generator)

    def forward(self, feat: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        if guide.shape[-2:] != feat.shape[-2:]:
            guide = F.interpolate(guide, size=feat.shape[-2:], mode="nearest")
        z = torch.cat([feat, guide.to(feat.dtype)], dim=1)  # (B, C + G, h, w)
        gate: torch.Tensor = self.gate1(F.leaky_relu(self.gate0(z), SFT_LEAKY_SLOPE))
        shift: torch.Tensor = self.shift1(F.leaky_relu(self.shift0(z), SFT_LEAKY_SLOPE))
        return feat * torch.sigmoid(gate) + shift


class Attention(nn.Module):
    """Single-head self-attention over all pixels, residual (EDM ``UNetBlock`` attention)."""

    def __init__(self, channels: int, *, generator: torch.Generator) -> None:
        super().__init__()
        self.norm = _group_norm(channels)
        self.qkv = Conv2d(channels, 3 * channels, 1, generator=generator, init_weight=ATTN_INIT)
        self.proj = Conv2d(channels, channels, 1, generator=generator, init_weight=ZERO_INIT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # EDM channel layout: qkv channel 3 * i + j is channel i of q (j=0), k (1) or v (2).
        qkv = self.qkv(self.norm(x)).reshape(b, 1, c, 3, h * w)
        q, k, v = (t.transpose(-1, -2) for t in qkv.unbind(3))  # each (B, 1, hw, C)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, 1, hw, C)
        a = a.transpose(-1, -2).reshape(b, c, h, w)  # (B, C, h, w)
        out: torch.Tensor = x + self.proj(a)
        return out


class _ResBlock(nn.Module):
    """Parts shared by encoder and decoder blocks: convs, noise bias, skip, attention.

    Widths of the noise embedding and the dropout rate come from ``cfg``.
    """

    def __init__(
        self,
        cfg: NetworkConfig,
        in_channels: int,
        out_channels: int,
        *,
        resample: bool,
        attention: bool,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        gen = generator
        self.dropout = cfg.dropout
        self.norm0 = _group_norm(in_channels)
        self.conv0 = Conv2d(in_channels, out_channels, 3, generator=gen)
        self.affine = Linear(cfg.emb_channels, out_channels, generator=gen)
        self.norm1 = _group_norm(out_channels)
        self.conv1 = Conv2d(out_channels, out_channels, 3, generator=gen, init_weight=ZERO_INIT)
        # 1x1 conv on the skip path when channels or size change.
        changes = in_channels != out_channels or resample
        self.skip = Conv2d(in_channels, out_channels, 1, generator=gen) if changes else None
        self.attn = Attention(out_channels, generator=gen) if attention else None

    def _bias(self, emb: torch.Tensor) -> torch.Tensor:
        bias: torch.Tensor = self.affine(emb)  # (B, C_out)
        return bias[:, :, None, None]

    def _finish(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``(conv1(dropout(h)) + skip(x)) * sqrt(0.5)``, then attention if any."""
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        skip = x if self.skip is None else self.skip(x)
        out = (h + skip) * SKIP_SCALE
        if self.attn is not None:
            out = self.attn(out) * SKIP_SCALE
        return out


class EncoderBlock(_ResBlock):
    """Plain DDPM++ residual block, optionally with 2x2 average-pool downsampling."""

    def __init__(
        self,
        cfg: NetworkConfig,
        in_channels: int,
        out_channels: int,
        *,
        down: bool = False,
        attention: bool = False,
        generator: torch.Generator,
    ) -> None:
        super().__init__(
            cfg, in_channels, out_channels, resample=down, attention=attention, generator=generator
        )
        self.down = down

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm0(x))
        if self.down:
            h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
        h = self.conv0(h) + self._bias(emb)  # (B, C_out, h, w)
        return self._finish(F.silu(self.norm1(h)), x)


class DecoderBlock(_ResBlock):
    """DDPM++ residual block with SFT_sem after the first norm and SFT_tex after the second.

    Blocks with ``takes_skip`` get the matching encoder output concatenated to their input.
    """

    def __init__(
        self,
        cfg: NetworkConfig,
        in_channels: int,
        out_channels: int,
        *,
        up: bool = False,
        attention: bool = False,
        takes_skip: bool = True,
        generator: torch.Generator,
    ) -> None:
        super().__init__(
            cfg, in_channels, out_channels, resample=up, attention=attention, generator=generator
        )
        self.up = up
        self.takes_skip = takes_skip
        g, hidden = cfg.guide_channels, cfg.sft_hidden
        self.sft_sem = SFT(in_channels, g, hidden, generator=generator)
        self.sft_tex = SFT(out_channels, g, hidden, generator=generator)

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, sem: torch.Tensor, tex: torch.Tensor
    ) -> torch.Tensor:
        h = F.silu(self.sft_sem(self.norm0(x), sem))
        if self.up:
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        h = self.conv0(h)  # (B, C_out, h, w)
        h = self.sft_tex(self.norm1(h), tex)
        return self._finish(F.silu(h + self._bias(emb)), x)


class RefDiffUNet(nn.Module):
    """The conditional U-Net ``F`` of Ref-Diff: ``F(c_in * x, c_noise, LR_up, Ref, M) -> F_x``.

    Args:
        config: structure (see ``NetworkConfig`` and ``PRESETS``).
        seed: seed of the generator that draws the initial weights (EDM initialisation).
    """

    def __init__(self, config: NetworkConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.config = cfg = config
        gen = torch.Generator().manual_seed(seed)
        r, mc = cfg.stem_unshuffle, cfg.model_channels

        # Noise embedding: c_noise -> sinusoids -> Linear -> SiLU -> Linear -> SiLU.
        self.map_noise = PositionalEmbedding(mc)
        self.map_layer0 = Linear(mc, cfg.emb_channels, generator=gen)
        self.map_layer1 = Linear(cfg.emb_channels, cfg.emb_channels, generator=gen)

        # Encoder: stem, then per level a downsampling block (below the first) and num_blocks.
        self.stem = Conv2d(cfg.in_channels * r * r, mc, 3, generator=gen)
        self.enc = nn.ModuleList()
        cout = mc
        skips = [cout]  # channels of every encoder output, in order
        for level, mult in enumerate(cfg.channel_mult):
            if level > 0:
                self.enc.append(EncoderBlock(cfg, cout, cout, down=True, generator=gen))
                skips.append(cout)
            for _ in range(cfg.num_blocks):
                cin, cout = cout, mc * mult
                attn = level in cfg.attention_levels
                self.enc.append(EncoderBlock(cfg, cin, cout, attention=attn, generator=gen))
                skips.append(cout)

        # Decoder: two middle blocks at the lowest level, an upsampling block at the others,
        # then num_blocks + 1 blocks per level, each eating one encoder output.
        self.dec = nn.ModuleList()
        for level in reversed(range(cfg.levels)):
            if level == cfg.levels - 1:
                attn = cfg.middle_attention
                self.dec.append(
                    DecoderBlock(cfg, cout, cout, attention=attn, takes_skip=False, generator=gen)
                )
                self.dec.append(DecoderBlock(cfg, cout, cout, takes_skip=False, generator=gen))
            else:
                self.dec.append(
                    DecoderBlock(cfg, cout, cout, up=True, takes_skip=False, generator=gen)
                )
            for idx in range(cfg.num_blocks + 1):
                cin, cout = cout + skips.pop(), mc * cfg.channel_mult[level]
                attn = idx == cfg.num_blocks and level in cfg.attention_levels
                self.dec.append(DecoderBlock(cfg, cin, cout, attention=attn, generator=gen))
        assert not skips, "every encoder output must feed exactly one decoder block"

        # Head: GN -> SiLU -> conv3x3 (-> pixel shuffle when the stem unshuffles).
        self.head_norm = _group_norm(cout)
        self.head_conv = Conv2d(
            cout, cfg.image_channels * r * r, 3, generator=gen, init_weight=ZERO_INIT
        )

    def forward(
        self,
        x_in: torch.Tensor,
        c_noise: torch.Tensor,
        lr_up: torch.Tensor,
        ref: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """Run the network.

        Args:
            x_in: (B, C, H, W) the scaled noisy image ``c_in * x``; H and W multiples of
                ``config.size_multiple``.
            c_noise: (B,) noise conditioning ``ln(sigma) / 4``.
            lr_up: (B, C, H, W) LR upsampled to H x W, in [-1, 1].
            ref: (B, C, H, W) reference image, in [-1, 1].
            mask: (B, M, H, W) change mask, in [0, 1].

        Returns:
            (B, C, H, W) ``F_x``, in the autocast dtype when run under autocast.
        """
        cfg = self.config
        b, _, h, w = x_in.shape
        check_shape("x_in", x_in, (None, cfg.image_channels, None, None))
        check_shape("c_noise", c_noise, (b,))
        check_shape("lr_up", lr_up, (b, cfg.image_channels, h, w))
        check_shape("ref", ref, (b, cfg.image_channels, h, w))
        check_shape("mask", mask, (b, cfg.mask_channels, h, w))
        m = cfg.size_multiple
        if h % m or w % m:
            raise ValueError(
                f"tile of {h}x{w} px is not a multiple of the network's size multiple {m}"
            )

        r = cfg.stem_unshuffle
        emb = self.map_noise(c_noise)  # (B, model_channels)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))  # (B, emb_channels)
        sem = F.pixel_unshuffle(torch.cat([lr_up, mask], dim=1), r)  # (B, G, H/r, W/r)
        tex = F.pixel_unshuffle(torch.cat([ref, mask], dim=1), r)  # (B, G, H/r, W/r)

        x = F.pixel_unshuffle(torch.cat([x_in, lr_up, ref, mask], dim=1), r)  # (B, 10r², ...)
        x = self.stem(x)  # (B, model_channels, H/r, W/r)
        skips = [x]
        for block in self.enc:
            x = block(x, emb)
            skips.append(x)
        for block in self.dec:
            if block.takes_skip:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb, sem, tex)
        x = self.head_conv(F.silu(self.head_norm(x)))  # (B, C r², H/r, W/r)
        return F.pixel_shuffle(x, r)  # (B, C, H, W)
