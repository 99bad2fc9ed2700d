"""JPEG compression artefacts for the training degradation: an 8x8 DCT round trip in torch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from refdiff_cli.data.resample import check_image

# Standard JPEG quantisation tables (ITU-T T.81, Annex K), row-major 8x8, quality 50.
# fmt: off
_LUMA_Q50 = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)
_CHROMA_Q50 = (
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
) + (99,) * 32
# fmt: on
# JFIF RGB -> YCbCr (before the +128 offset of Cb and Cr).
_RGB_TO_YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.168736, -0.331264, 0.5),
    (0.5, -0.418688, -0.081312),
)


def _quant_table(base: tuple[int, ...], quality: int) -> torch.Tensor:
    """IJG quality scaling of a base table: 50 is the base, 100 is all ones."""
    quality = min(max(int(quality), 1), 100)
    factor = 5000 / quality if quality < 50 else 200 - 2 * quality
    table = torch.tensor(base, dtype=torch.float64).reshape(8, 8)
    return torch.floor((table * factor + 50) / 100).clamp(1, 255)  # (8, 8)


def _dct_matrix() -> torch.Tensor:
    k = torch.arange(8, dtype=torch.float64)[:, None]
    n = torch.arange(8, dtype=torch.float64)[None, :]
    matrix = torch.cos(math.pi * (2 * n + 1) * k / 16) * math.sqrt(2 / 8)
    matrix[0] /= math.sqrt(2)
    return matrix  # (8, 8) orthonormal DCT-II


def jpeg_roundtrip(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Approximate JPEG compression and decompression, in torch.

    8-bit quantisation, JFIF YCbCr for 3-band images, 8x8 DCT with the standard tables
    scaled by ``quality``; no chroma subsampling and no entropy coding (which is lossless).

    Args:
        x: (B, C, H, W) image in model space [-1, 1] (values outside are clipped first).
        quality: IJG quality 1..100 (100: all quantisation steps 1, nearly lossless).

    Returns:
        (B, C, H, W) decoded image in [-1, 1], on 256 grey levels like a real JPEG.
    """
    check_image(x, 1, "x")
    batch, channels, height, width = x.shape
    dtype = torch.float64
    pixels = ((x.to(dtype).clamp(-1, 1) + 1) * 127.5).round()  # (B, C, H, W) in 0..255
    colour = torch.tensor(_RGB_TO_YCBCR, dtype=dtype, device=x.device)
    if channels == 3:
        pixels = torch.einsum("ij,bjhw->bihw", colour, pixels)
        pixels[:, 1:] += 128
    pad_h, pad_w = -height % 8, -width % 8
    pixels = F.pad(pixels, (0, pad_w, 0, pad_h), mode="replicate") - 128
    rows, cols = (height + pad_h) // 8, (width + pad_w) // 8
    blocks = pixels.reshape(batch, channels, rows, 8, cols, 8).permute(0, 1, 2, 4, 3, 5)
    dct = _dct_matrix().to(x.device)
    coefficients = dct @ blocks @ dct.T  # (B, C, rows, cols, 8, 8)
    luma = _quant_table(_LUMA_Q50, quality).to(x.device)
    chroma = _quant_table(_CHROMA_Q50, quality).to(x.device)
    tables = [luma, chroma, chroma] if channels == 3 else [luma] * channels
    steps = torch.stack(tables)[None, :, None, None]  # (1, C, 1, 1, 8, 8)
    coefficients = torch.round(coefficients / steps) * steps
    blocks = dct.T @ coefficients @ dct
    pixels = blocks.permute(0, 1, 2, 4, 3, 5).reshape(batch, channels, rows * 8, cols * 8) + 128
    pixels = pixels[..., :height, :width]
    if channels == 3:
        pixels[:, 1:] -= 128
        pixels = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(colour), pixels)
    pixels = pixels.round().clamp(0, 255)
    return (pixels / 127.5 - 1).to(x.dtype)
