"""Synthetic LR images for training: the "real-world" degradation model and ``make_lr``."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
import torch.nn.functional as F

from refdiff_cli.data.jpeg import jpeg_roundtrip
from refdiff_cli.data.resample import check_divisible, downscale_bicubic
from refdiff_cli.errors import ConfigError

LRMethod = Literal["bicubic", "area", "realistic"]
ResizeMode = Literal["area", "bilinear", "bicubic"]
RESIZE_MODES: tuple[ResizeMode, ...] = ("area", "bilinear", "bicubic")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class DegradationConfig:
    """Ranges of the "real-world" degradation; our own choice (the paper publishes none).

    Lengths are in LR pixels (so one config serves every scale); each range (lo, hi) is drawn
    uniformly. Order: sub-pixel jitter, Gaussian blur, motion blur, resize, noise, JPEG.

    Attributes:
        blur_prob: probability of a Gaussian blur (the sensor PSF beyond the resampling).
        anisotropic_prob: given a blur, probability that it is anisotropic instead of isotropic.
        sigma_range: isotropic Gaussian sigma, LR pixels.
        anisotropic_sigma_range: sigma along each principal axis, LR pixels; the rotation is
            uniform in [0, pi).
        motion_prob: probability of a linear motion blur, angle uniform in [0, pi).
        motion_length_range: motion blur length, LR pixels.
        resize_prob: probability of a two-step resize through a random intermediate size;
            otherwise one resize straight to the LR size. Each step picks area, bilinear or
            bicubic uniformly (bilinear and bicubic without antialiasing: aliasing is part of
            the mix, area is the filtered case).
        intermediate_scale_range: intermediate size / LR size (< 1 loses detail and comes back
            up, > 1 goes down in two steps).
        noise_prob: probability of additive Gaussian noise.
        noise_sigma_range: noise sigma in DN of an 8-bit image (0..255 scale).
        color_noise_prob: given noise, probability of independent noise per channel; otherwise
            the same noise is added to every channel.
        jpeg_prob: probability of a JPEG round trip (8x8 DCT quantisation of YCbCr, no chroma
            subsampling; images that are not 3-band quantise each band with the luma table).
        jpeg_quality_range: JPEG quality (IJG scale 1..100), integers, both ends included.
        jitter_prob: probability of a sub-pixel misregistration shift (off by default).
        jitter_max_px: largest shift along each axis, LR pixels.
    """

    blur_prob: float = 0.8
    anisotropic_prob: float = 0.5
    sigma_range: tuple[float, float] = (0.3, 1.2)
    anisotropic_sigma_range: tuple[float, float] = (0.3, 1.5)
    motion_prob: float = 0.1
    motion_length_range: tuple[float, float] = (0.5, 2.0)
    resize_prob: float = 0.7
    intermediate_scale_range: tuple[float, float] = (0.75, 2.0)
    noise_prob: float = 0.5
    noise_sigma_range: tuple[float, float] = (1.0, 8.0)
    color_noise_prob: float = 0.4
    jpeg_prob: float = 0.5
    jpeg_quality_range: tuple[int, int] = (40, 95)
    jitter_prob: float = 0.0
    jitter_max_px: float = 0.5

    def __post_init__(self) -> None:
        def require(condition: bool, field: str, message: str) -> None:
            if not condition:
                raise ConfigError(f"invalid degradation {field}: {message}")

        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name.endswith("_prob"):
                require(0.0 <= value <= 1.0, field.name, f"{value}; use a probability in [0, 1]")
            elif field.name.endswith("_range"):
                low, high = value
                minimum = 1.0 if field.name == "jpeg_quality_range" else 0.0
                require(minimum <= low <= high, field.name, f"{value}; need {minimum} <= lo <= hi")
        quality = self.jpeg_quality_range
        require(quality[1] <= 100, "jpeg_quality_range", f"{quality}; quality is at most 100")
        require(all(float(q).is_integer() for q in quality), "jpeg_quality_range", "use integers")
        for name in ("sigma_range", "anisotropic_sigma_range", "intermediate_scale_range"):
            require(getattr(self, name)[0] > 0, name, "the lower end must be positive")
        require(0.0 <= self.jitter_max_px <= 2.0, "jitter_max_px", f"{self.jitter_max_px}")


def _centred_grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be odd and >= 1, got {size}")
    axis = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")  # (size, size) each
    return yy, xx


def anisotropic_gaussian_kernel(
    sigma_x: float, sigma_y: float, theta: float, size: int
) -> torch.Tensor:
    """Rotated 2-D Gaussian kernel, normalised to sum 1.

    Args:
        sigma_x, sigma_y: standard deviations along the kernel's principal axes, pixels (> 0).
        theta: rotation of the first principal axis from the image x axis, radians.
        size: odd kernel edge, pixels.

    Returns:
        (size, size) float32 kernel, point-symmetric (k[i, j] == k[-1-i, -1-j]).
    """
    if sigma_x <= 0 or sigma_y <= 0:
        raise ValueError(f"sigmas must be positive, got {sigma_x}, {sigma_y}")
    yy, xx = _centred_grid(size)
    u = xx * math.cos(theta) + yy * math.sin(theta)
    v = -xx * math.sin(theta) + yy * math.cos(theta)
    kernel = torch.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))  # (size, size)
    return (kernel / kernel.sum()).float()


def gaussian_kernel(sigma: float, size: int) -> torch.Tensor:
    """Isotropic 2-D Gaussian kernel of standard deviation ``sigma`` pixels, summing to 1.

    Returns:
        (size, size) float32 kernel, symmetric under flips and transposition.
    """
    return anisotropic_gaussian_kernel(sigma, sigma, 0.0, size)


def motion_kernel(length: float, angle: float, size: int) -> torch.Tensor:
    """Linear motion blur: a centred segment of ``length`` pixels at ``angle`` radians.

    The segment is sampled every 1/8 pixel and splatted bilinearly, so sub-pixel lengths and
    any angle are represented; a length of 0 is the identity.

    Args:
        length: segment length, pixels (>= 0, at most size - 2).
        angle: direction from the image x axis, radians.
        size: odd kernel edge, pixels.

    Returns:
        (size, size) float32 kernel summing to 1, point-symmetric about its centre.
    """
    yy, _ = _centred_grid(size)
    if not 0.0 <= length <= size - 2:
        raise ValueError(f"motion length {length} does not fit a {size}x{size} kernel")
    points = max(2, math.ceil(8 * length)) + 1
    t = torch.linspace(-length / 2, length / 2, points, dtype=torch.float64)
    centre = (size - 1) / 2
    px = centre + t * math.cos(angle)
    py = centre + t * math.sin(angle)
    x0, y0 = px.floor(), py.floor()
    fx, fy = px - x0, py - y0
    kernel = torch.zeros_like(yy)  # (size, size)
    for dy, dx, weight in (
        (0, 0, (1 - fy) * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 0, fy * (1 - fx)),
        (1, 1, fy * fx),
    ):
        kernel.index_put_(((y0 + dy).long(), (x0 + dx).long()), weight, accumulate=True)
    return (kernel / kernel.sum()).float()


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class _Draw:
    """One sample's random parameters (lengths in LR pixels); None = step skipped."""

    jitter: tuple[float, float] | None
    gaussian: tuple[float, float, float] | None  # sigma_x, sigma_y, theta
    motion: tuple[float, float] | None  # length, angle
    intermediate: float | None
    modes: tuple[ResizeMode, ResizeMode]
    noise_sigma: float | None
    color_noise: bool
    jpeg_quality: int | None


_UNIFORMS_PER_SAMPLE = 20


def _draw(config: DegradationConfig, generator: torch.Generator) -> _Draw:
    """Draw a sample's parameters from a fixed number of uniforms (stable random stream)."""
    u = torch.rand(_UNIFORMS_PER_SAMPLE, generator=generator, dtype=torch.float64).tolist()

    def between(value: float, bounds: tuple[float, float]) -> float:
        return bounds[0] + value * (bounds[1] - bounds[0])

    gaussian = None
    if u[0] < config.blur_prob:
        if u[1] < config.anisotropic_prob:
            bounds = config.anisotropic_sigma_range
            gaussian = (between(u[2], bounds), between(u[3], bounds), math.pi * u[4])
        else:
            sigma = between(u[2], config.sigma_range)
            gaussian = (sigma, sigma, 0.0)
    motion = None
    if u[5] < config.motion_prob:
        motion = (between(u[6], config.motion_length_range), math.pi * u[7])
    jitter = None
    if u[8] < config.jitter_prob:
        reach = config.jitter_max_px
        jitter = (between(u[9], (-reach, reach)), between(u[10], (-reach, reach)))
    intermediate = None
    if u[11] < config.resize_prob:
        intermediate = between(u[12], config.intermediate_scale_range)
    modes = (RESIZE_MODES[int(3 * u[13])], RESIZE_MODES[int(3 * u[14])])
    noise_sigma = between(u[16], config.noise_sigma_range) if u[15] < config.noise_prob else None
    q_low, q_high = config.jpeg_quality_range
    quality = int(q_low + math.floor(u[19] * (q_high - q_low + 1)))
    return _Draw(
        jitter=jitter,
        gaussian=gaussian,
        motion=motion,
        intermediate=intermediate,
        modes=modes,
        noise_sigma=noise_sigma,
        color_noise=u[17] < config.color_noise_prob,
        jpeg_quality=quality if u[18] < config.jpeg_prob else None,
    )


def _work_factor(scale: int) -> int:
    """Blur and jitter run at ``factor`` x the LR resolution (4, 2 or 1, dividing the scale)."""
    return next(f for f in (4, 2, 1) if scale % f == 0)


def _convolve(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    channels, radius = x.shape[1], kernel.shape[-1] // 2
    weight = kernel.to(x).expand(channels, 1, *kernel.shape)  # (C, 1, k, k)
    padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(padded, weight, groups=channels)


def _resize(x: torch.Tensor, size: tuple[int, int], mode: ResizeMode) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=False)


def _shift(x: torch.Tensor, dx: float, dy: float) -> torch.Tensor:
    """Translate by (dx, dy) pixels with bilinear interpolation and replicated borders."""
    height, width = x.shape[-2:]
    theta = torch.tensor(
        [[[1.0, 0.0, 2 * dx / width], [0.0, 1.0, 2 * dy / height]]], dtype=x.dtype, device=x.device
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (1, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _degrade_one(
    work: torch.Tensor,
    lr_size: tuple[int, int],
    factor: int,
    draw: _Draw,
    config: DegradationConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """Degrade one (1, C, factor*h, factor*w) image to (1, C, h, w)."""
    x = work
    if draw.jitter is not None:
        x = _shift(x, draw.jitter[0] * factor, draw.jitter[1] * factor)
    if draw.gaussian is not None:
        largest = max(config.sigma_range[1], config.anisotropic_sigma_range[1]) * factor
        size = 2 * math.ceil(3 * largest) + 1  # fixed per config: batch-independent result
        sigma_x, sigma_y, theta = draw.gaussian
        kernel = anisotropic_gaussian_kernel(sigma_x * factor, sigma_y * factor, theta, size)
        x = _convolve(x, kernel)
    if draw.motion is not None:
        size = 2 * math.ceil(config.motion_length_range[1] * factor / 2) + 3
        x = _convolve(x, motion_kernel(draw.motion[0] * factor, draw.motion[1], size))
    if draw.intermediate is not None:
        middle_h, middle_w = (max(1, round(n * draw.intermediate)) for n in lr_size)
        x = _resize(x, (middle_h, middle_w), draw.modes[0])
    x = _resize(x, lr_size, draw.modes[1])  # (1, C, h, w)
    if draw.noise_sigma is not None:
        channels = x.shape[1] if draw.color_noise else 1
        noise = torch.randn((1, channels, *lr_size), generator=generator, dtype=torch.float64)
        x = x + (noise * (draw.noise_sigma * 2 / 255)).to(x)
    if draw.jpeg_quality is not None:
        x = jpeg_roundtrip(x, draw.jpeg_quality)
    return x.clamp(-1.0, 1.0)


def degrade(
    hr: torch.Tensor, scale: int, config: DegradationConfig, *, generator: torch.Generator
) -> torch.Tensor:
    """Synthesize a "real-world" LR image from HR, with per-sample random parameters.

    The HR is first area-averaged to a working resolution (4, 2 or 1 x the LR size, the
    largest dividing ``scale``) where blur and jitter are applied with lengths converted from
    LR pixels, then resized to the LR size, noised and JPEG-compressed (``DegradationConfig``).

    Determinism: ``generator`` draws one seed per sample; each sample then draws its
    parameters and noise from its own CPU generator, so the same generator state gives the
    same bytes on a given device, and a sample's result depends only on that state and its
    index in the batch (not on other samples' contents or draws). Changing the batch size or
    order changes which seed a sample gets.

    Args:
        hr: (B, C, H, W) image in model space [-1, 1]; H and W multiples of ``scale``.
        scale: integer downscale factor >= 1.
        config: degradation ranges.
        generator: source of all randomness (CPU or on ``hr``'s device).

    Returns:
        (B, C, H/scale, W/scale) LR image clamped to [-1, 1], ``hr``'s dtype and device.

    Raises:
        ValueError: H or W is not a multiple of ``scale``, or ``hr`` is not 4-D floating.
    """
    check_divisible(hr, scale)
    factor = _work_factor(scale)
    height, width = hr.shape[-2:]
    lr_size = (height // scale, width // scale)
    pool = scale // factor
    work = F.avg_pool2d(hr, pool) if pool > 1 else hr  # (B, C, factor*h, factor*w)
    seeds = torch.randint(
        0, 2**62, (hr.shape[0],), generator=generator, device=generator.device
    ).tolist()
    outputs = []
    for index, seed in enumerate(seeds):
        sample_generator = torch.Generator().manual_seed(seed)
        draw = _draw(config, sample_generator)
        outputs.append(
            _degrade_one(work[index : index + 1], lr_size, factor, draw, config, sample_generator)
        )
    return torch.cat(outputs)  # (B, C, H/scale, W/scale)


def make_lr(
    hr: torch.Tensor,
    scale: int,
    method: LRMethod,
    *,
    config: DegradationConfig | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """LR from HR by ``method``: "bicubic" (the paper's test LR), "area" or "realistic".

    "area" averages each ``scale`` x ``scale`` block (``gdalwarp -r average``); "realistic" is
    ``degrade``.

    Args:
        hr: (B, C, H, W) image in model space [-1, 1]; H and W multiples of ``scale``.
        scale: integer downscale factor >= 1.
        method: "bicubic", "area" or "realistic".
        config: degradation ranges for "realistic" (default ``DegradationConfig()``).
        generator: required for "realistic", unused by "bicubic".

    Returns:
        (B, C, H/scale, W/scale) LR image clamped to [-1, 1].
    """
    if method == "bicubic":
        return downscale_bicubic(hr, scale).clamp(-1.0, 1.0)
    if method == "area":
        return F.interpolate(hr, scale_factor=1 / scale, mode="area")
    if method == "realistic":
        if generator is None:
            raise ValueError("the realistic degradation needs an explicit generator")
        return degrade(hr, scale, config or DegradationConfig(), generator=generator)
    raise ValueError(f"unknown LR method {method!r}; use bicubic, area or realistic")
