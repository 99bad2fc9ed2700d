"""Ref-Diff conditional U-Net: EDM's DDPM++ "SongUNet" with two SFT layers in every decoder block.

Dong et al., CVPR 2024 (arXiv 2403.17460), on top of Karras et al., NeurIPS 2022 (EDM). The network
maps ``(c_in * x, c_noise, LR_up, Ref, M)`` to ``F_x``; sigma, device placement and precision are
the caller's business (``model/precond.py``). Its structure and presets are in
``model/network_config.py``, its layers in ``model/layers.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from refdiff_cli.model.layers import (
    SFT,
    ZERO_INIT,
    Attention,
    Conv2d,
    Linear,
    PositionalEmbedding,
    group_norm,
)
from refdiff_cli.model.network_config import NetworkConfig

#: Residual branches are summed then multiplied by this (DDPM++ ``skip_scale``).
SKIP_SCALE = math.sqrt(0.5)


def check_shape(name: str, tensor: torch.Tensor, expected: tuple[int | None, ...]) -> None:
    """Raise ``ValueError`` naming both shapes unless ``tensor`` matches (None = any size)."""
    shape = tuple(tensor.shape)
    if len(shape) != len(expected) or any(
        e is not None and s != e for s, e in zip(shape, expected, strict=True)
    ):
        shown = tuple("*" if e is None else e for e in expected)
        raise ValueError(f"{name} has shape {shape}, expected {shown}")


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
        self.norm0 = group_norm(in_channels)
        self.conv0 = Conv2d(in_channels, out_channels, 3, generator=gen)
        self.affine = Linear(cfg.emb_channels, out_channels, generator=gen)
        self.norm1 = group_norm(out_channels)
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
        self.head_norm = group_norm(cout)
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
