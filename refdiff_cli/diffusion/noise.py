"""A global, counter-based Gaussian noise field keyed by (seed, draw, channel, output pixel).

Why: noise drawn per tile from a generator makes overlapping tiles disagree, and blending two
independent samples lowers the texture variance in every overlap, leaving a visible grid
(docs/reliability.md, finding 10). Here every value is a pure function of
(seed, draw, channel, absolute output row, absolute output column), so overlapping tiles see
the same noise in their overlap, and the result does not depend on the tile size, the batch
size or composition, the tile order, the number of devices, or on resuming a run part-way.

How: SplitMix64 (Steele, Lea and Flood, OOPSLA 2014) used as a counter-based hash. The key
``h`` is refined one coordinate at a time by ``h <- mix64(h + (v + 1) * GAMMA)``, i.e. ``h``
becomes output number v + 1 of the SplitMix64 stream whose state is ``h``. The last 64-bit
hash gives two 32-bit uniforms, turned into one standard normal by the Box-Muller transform
(in float64; |values| <= sqrt(-2 ln 2^-32) ~ 6.66, a tail probability of ~3e-11 is cut).
torch has no full uint64 arithmetic, so the hash runs on int64 tensors: addition and
multiplication wrap modulo 2^64 exactly like uint64, and the logical right shift is an
arithmetic shift followed by a mask; ``mix64`` is checked bit for bit against ``mix64_int``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from refdiff_cli.diffusion.sampler import NoiseFn

MASK64 = (1 << 64) - 1
#: SplitMix64 increment (odd, 2^64 / golden ratio) and the constants of its "Mix13" finaliser.
GAMMA = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
#: Key of the whole field before the seed is absorbed; changing it changes every value.
_DOMAIN = 0x5EED_F1E1_D000_0001
_TWO_PI = 2.0 * math.pi
_INV_2_32 = 2.0**-32


def _signed(value: int) -> int:
    """Return the int64 whose bits are the uint64 ``value`` (reduced modulo 2^64)."""
    value &= MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def mix64_int(z: int) -> int:
    """SplitMix64 finaliser on a Python int, the reference for ``mix64``.

    Args:
        z: any integer; its value modulo 2^64 is used.

    Returns:
        The mixed value in [0, 2^64).
    """
    z &= MASK64
    z = ((z ^ (z >> 30)) * _M1) & MASK64
    z = ((z ^ (z >> 27)) * _M2) & MASK64
    return z ^ (z >> 31)


def _shift_right(z: Tensor, bits: int, out: Tensor) -> Tensor:
    """Logical right shift of int64 bit patterns into ``out`` (torch's >> is arithmetic)."""
    torch.bitwise_right_shift(z, bits, out=out)
    return out.bitwise_and_((1 << (64 - bits)) - 1)


def _mix64_(z: Tensor, scratch: Tensor) -> Tensor:
    """In-place SplitMix64 finaliser on int64 ``z``; ``scratch`` is a same-shape buffer.

    In-place operations matter: allocating a fresh (B, C, H, W) int64 tensor for each of the
    ~12 operations made the field 10-20x slower on a loaded CPU.
    """
    z.bitwise_xor_(_shift_right(z, 30, scratch)).mul_(_signed(_M1))
    z.bitwise_xor_(_shift_right(z, 27, scratch)).mul_(_signed(_M2))
    return z.bitwise_xor_(_shift_right(z, 31, scratch))


def mix64(z: Tensor) -> Tensor:
    """SplitMix64 finaliser on int64 tensors holding uint64 bit patterns (wrapping arithmetic).

    Args:
        z: int64 tensor of any shape and device (not modified).

    Returns:
        int64 tensor of the same shape whose bits equal ``mix64_int`` of the input's bits.
    """
    out = z.clone()
    return _mix64_(out, torch.empty_like(out))


def _absorb_int(h: int, v: int) -> int:
    """Output v + 1 of the SplitMix64 stream with state ``h`` (Python ints)."""
    return mix64_int(h + (v + 1) * GAMMA)


@dataclasses.dataclass(frozen=True, slots=True)
class PixelNoise:
    """Standard normal noise field over the output grid of one run.

    Args:
        seed: run seed, 0 <= seed < 2^64.
        channels: number of channels C >= 1 of every draw.
    """

    seed: int
    channels: int

    def __post_init__(self) -> None:
        if not 0 <= self.seed <= MASK64:
            raise ValueError(f"seed must be in [0, 2^64), got {self.seed}")
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")

    def __call__(
        self,
        draw: int,
        origins: Sequence[tuple[int, int]],
        shape: tuple[int, int],
        *,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Return draw ``draw`` of the field for a batch of windows.

        Args:
            draw: draw index >= 0 (0 is the sampler's start state, i + 1 its step i).
            origins: absolute output-pixel (row, col) of each window's top-left corner;
                any integers (rows and columns beyond 2^20 are fine).
            shape: (H, W) of every window in pixels.
            device: where to compute and return the noise (default: CPU); on MPS, which has
                no float64, the field is computed on the CPU and moved.

        Returns:
            (B, C, H, W) float32 with B = len(origins); value [b, c, i, j] depends only on
            (seed, draw, c, origins[b][0] + i, origins[b][1] + j).
        """
        if draw < 0:
            raise ValueError(f"draw must be >= 0, got {draw}")
        height, width = shape
        if height < 0 or width < 0:
            raise ValueError(f"shape must be non-negative, got {shape}")
        target = torch.device("cpu" if device is None else device)
        device = torch.device("cpu") if target.type == "mps" else target
        key = _absorb_int(_absorb_int(_DOMAIN, self.seed), draw)
        keys = [_signed(_absorb_int(key, c)) for c in range(self.channels)]
        h_c = torch.tensor(keys, dtype=torch.int64, device=device)  # (C,)
        corner = torch.tensor(
            [(int(r), int(c)) for r, c in origins], dtype=torch.int64, device=device
        ).reshape(-1, 2)  # (B, 2)
        rows = corner[:, :1] + torch.arange(height, dtype=torch.int64, device=device)  # (B, H)
        cols = corner[:, 1:] + torch.arange(width, dtype=torch.int64, device=device)  # (B, W)
        # _absorb of each coordinate: h <- mix64(h + (v + 1) * GAMMA), wrapping modulo 2^64.
        gamma = _signed(GAMMA)
        h_row = h_c[None, :, None] + (rows[:, None, :] + 1) * gamma  # (B, C, H)
        _mix64_(h_row, torch.empty_like(h_row))
        h = h_row[..., None] + ((cols + 1) * gamma)[:, None, None, :]  # (B, C, H, W)
        scratch = torch.empty_like(h)  # (B, C, H, W)
        _mix64_(h, scratch)
        # Two 32-bit uniforms: u1 in (0, 1] (so log(u1) is finite), u2 in [0, 1).
        u1 = _shift_right(h, 32, scratch).add_(1).to(torch.float64).mul_(_INV_2_32)
        u2 = h.bitwise_and_(0xFFFFFFFF).to(torch.float64)
        del h, scratch
        # Box-Muller: sqrt(-2 ln u1) cos(2 pi u2) ~ N(0, 1), in float64.
        normal = u1.log_().mul_(-2.0).sqrt_().mul_(u2.mul_(_TWO_PI * _INV_2_32).cos_())
        return normal.to(device=target, dtype=torch.float32)  # (B, C, H, W)


def make_noise_fn(
    field: PixelNoise,
    origins: Sequence[tuple[int, int]],
    shape: tuple[int, int],
    device: torch.device | str | None,
) -> NoiseFn:
    """Bind a field to a batch of windows: the sampler's ``noise(i)`` for those tiles.

    Args:
        field: the run's noise field.
        origins: absolute output-pixel (row, col) of each tile's top-left corner.
        shape: (H, W) of every tile in output pixels.
        device: where the noise is computed and returned.

    Returns:
        ``noise(i) -> (B, C, H, W)`` float32, draw i of the field on those windows.
    """
    fixed = tuple((int(r), int(c)) for r, c in origins)

    def noise(draw: int) -> Tensor:
        return field(draw, fixed, shape, device=device)

    return noise
