"""Layers of the Ref-Diff U-Net: conv, linear, noise embedding, SFT and attention, EDM-initialised.

Weights are xavier uniform scaled by ``init_weight`` with zero biases, drawn from an explicit
generator so that a seed fixes the whole network (``model/network.py`` assembles them).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: Weight scale of the last conv of every block and of the output conv (EDM ``init_zero``).
ZERO_INIT = 1e-5
#: Weight scale of the attention qkv conv (EDM ``init_attn``).
ATTN_INIT = math.sqrt(0.2)
GROUPNORM_EPS = 1e-6
SFT_LEAKY_SLOPE = 0.1


def num_groups(channels: int) -> int:
    """GroupNorm groups: EDM's min(32, C // 4), lowered to the nearest divisor of C."""
    groups = max(1, min(32, channels // 4))
    while channels % groups:
        groups -= 1
    return groups


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


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm of ``channels`` with ``num_groups`` groups and EDM's epsilon."""
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
        self.norm = group_norm(channels)
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
