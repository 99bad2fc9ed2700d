"""Resampling shared by training, evaluation and inference: the one LR_up and the test LR.

``upsample`` is THE LR_up the network is trained and run on; ``downscale_bicubic`` is the
paper's test-time LR. Pure torch, no randomness, no degradation model.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

UpsampleMode = Literal["bicubic", "bilinear"]


def check_image(x: torch.Tensor, scale: int, name: str) -> None:
    """Raise ValueError unless ``x`` is a floating (B, C, H, W) tensor and ``scale`` >= 1."""
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"{name} must be a floating (B, C, H, W) tensor, got {tuple(x.shape)}")
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")


def check_divisible(hr: torch.Tensor, scale: int) -> None:
    """``check_image``, and raise ValueError unless H and W are multiples of ``scale``."""
    check_image(hr, scale, "hr")
    height, width = hr.shape[-2:]
    if height % scale or width % scale:
        raise ValueError(f"hr size {height}x{width} is not a multiple of the scale {scale}")


def downscale_bicubic(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Antialiased bicubic downscale, the test-time LR of the paper.

    Args:
        hr: (B, C, H, W) image, any value range; H and W must be multiples of ``scale``.
        scale: integer downscale factor >= 1.

    Returns:
        (B, C, H/scale, W/scale) image, not clamped (bicubic may overshoot slightly).

    Raises:
        ValueError: H or W is not a multiple of ``scale``, or ``hr`` is not 4-D floating.
    """
    check_divisible(hr, scale)
    height, width = hr.shape[-2:]
    return F.interpolate(
        hr,
        size=(height // scale, width // scale),
        mode="bicubic",
        antialias=True,
        align_corners=False,
    )


def upsample(
    lr: torch.Tensor, scale: int, *, mode: UpsampleMode = "bicubic", clamp: bool = True
) -> torch.Tensor:
    """THE LR_up of refdiff: one interpolation for training, evaluation and inference.

    Borders are replicate-padded: torch's bilinear and bicubic kernels clamp source indices
    to the image, which is exactly interpolation of the replicate-padded image (tested). So a
    tile's LR_up equals the full image's LR_up farther than 2 LR pixels (2 * scale output
    pixels) from an interior tile edge. The result is clamped to the model range [-1, 1]: it
    removes bicubic overshoot (up to about 10 % of a step), and training HR and LR (see
    ``data.degrade``) never leave [-1, 1], so the network never sees LR_up outside it.

    Args:
        lr: (B, C, h, w) image in model space [-1, 1].
        scale: integer upsampling factor >= 1.
        mode: "bicubic" (default, Keys a = -0.75) or "bilinear"; recorded in the model card.
        clamp: clamp to [-1, 1] (what the network sees); False keeps the raw interpolation
            (the bicubic baseline engine, whose values outside [-1, 1] are real data).

    Returns:
        (B, C, h * scale, w * scale) image, in [-1, 1] when ``clamp``.
    """
    check_image(lr, scale, "lr")
    if mode not in ("bicubic", "bilinear"):
        raise ValueError(f"unknown upsample mode {mode!r}; use bicubic or bilinear")
    height, width = lr.shape[-2:]
    up = F.interpolate(lr, size=(height * scale, width * scale), mode=mode, align_corners=False)
    return up.clamp(-1.0, 1.0) if clamp else up  # (B, C, h*scale, w*scale)
