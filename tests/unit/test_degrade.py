"""Tests of LR synthesis: sizes, determinism, kernels, JPEG, noise, the one LR_up and ranges."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from refdiff_cli.config import from_dict, to_dict
from refdiff_cli.data.degrade import (
    DegradationConfig,
    anisotropic_gaussian_kernel,
    degrade,
    gaussian_kernel,
    make_lr,
    motion_kernel,
)
from refdiff_cli.data.jpeg import jpeg_roundtrip
from refdiff_cli.data.resample import downscale_bicubic, upsample
from refdiff_cli.errors import ConfigError
from refdiff_cli.train.validation import make_training_lr

#: Every step off: only the deterministic area pre-downscale and the final resize remain.
NOTHING = DegradationConfig(
    blur_prob=0.0, motion_prob=0.0, resize_prob=0.0, noise_prob=0.0, jpeg_prob=0.0
)
#: Every step always on (jitter included), to exercise all code paths at once.
EVERYTHING = DegradationConfig(
    blur_prob=1.0, motion_prob=1.0, resize_prob=1.0, noise_prob=1.0, jpeg_prob=1.0, jitter_prob=1.0
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_image(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Low-frequency sinusoids in [-0.8, 0.8]: a band-limited test scene."""
    g = gen(seed)
    yy = torch.arange(h, dtype=torch.float64)[:, None] / h
    xx = torch.arange(w, dtype=torch.float64)[None, :] / w
    planes = []
    for _ in range(b * c):
        fy, fx, phase = (torch.rand(3, generator=g, dtype=torch.float64) * 2).tolist()
        planes.append(0.8 * torch.sin(2 * math.pi * (fy * yy + fx * xx) + 3 * phase))
    return torch.stack(planes).reshape(b, c, h, w).float()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).pow(2).mean().item()
    return 10 * math.log10(4.0 / mse)  # peak-to-peak 2 in model space


def high_frequency_energy(x: torch.Tensor) -> float:
    """Energy of the 2-D spectrum above half the Nyquist frequency on either axis."""
    spectrum = torch.fft.fft2(x.double() - x.double().mean(dim=(-2, -1), keepdim=True)).abs() ** 2
    fy = torch.fft.fftfreq(x.shape[-2]).abs()[:, None]
    fx = torch.fft.fftfreq(x.shape[-1]).abs()[None, :]
    return float(spectrum[..., (fy > 0.25) | (fx > 0.25)].sum().item())


@pytest.mark.parametrize("scale", [2, 4, 8, 16])
@pytest.mark.parametrize(("height", "width"), [(128, 128), (64, 192)])
def test_output_sizes(scale: int, height: int, width: int) -> None:
    hr = torch.rand(2, 3, height, width, generator=gen(0)) * 2 - 1
    lr_shape = (2, 3, height // scale, width // scale)
    assert downscale_bicubic(hr, scale).shape == lr_shape
    assert degrade(hr, scale, EVERYTHING, generator=gen(1)).shape == lr_shape
    assert degrade(hr, scale, DegradationConfig(), generator=gen(2)).shape == lr_shape
    assert upsample(downscale_bicubic(hr, scale), scale).shape == hr.shape


def test_sizes_not_multiple_of_scale_are_rejected() -> None:
    hr = torch.zeros(1, 3, 64, 60)
    with pytest.raises(ValueError, match="multiple of the scale"):
        downscale_bicubic(hr, 8)
    with pytest.raises(ValueError, match="multiple of the scale"):
        degrade(hr, 8, NOTHING, generator=gen(0))
    with pytest.raises(ValueError, match="floating"):
        downscale_bicubic(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), 8)


@pytest.mark.parametrize("scale", [2, 4, 8, 16])
def test_bicubic_downscale_and_upsample_keep_a_constant(scale: int) -> None:
    hr = torch.full((1, 3, 64, 96), 0.37)
    lr = downscale_bicubic(hr, scale)
    torch.testing.assert_close(lr, torch.full_like(lr, 0.37), atol=1e-6, rtol=0)
    torch.testing.assert_close(upsample(lr, scale), hr, atol=1e-6, rtol=0)


def test_same_seed_same_bytes_different_seed_different_result() -> None:
    hr = torch.rand(3, 3, 64, 64, generator=gen(0)) * 2 - 1
    first = degrade(hr, 4, DegradationConfig(), generator=gen(7))
    again = degrade(hr, 4, DegradationConfig(), generator=gen(7))
    other = degrade(hr, 4, DegradationConfig(), generator=gen(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_a_sample_does_not_depend_on_the_other_samples_contents() -> None:
    hr = torch.rand(3, 3, 64, 64, generator=gen(0)) * 2 - 1
    changed = hr.clone()
    changed[1:] = torch.rand(2, 3, 64, 64, generator=gen(1)) * 2 - 1
    a = degrade(hr, 8, EVERYTHING, generator=gen(3))
    b = degrade(changed, 8, EVERYTHING, generator=gen(3))
    assert torch.equal(a[0], b[0])
    assert not torch.equal(a[1], b[1])


def test_with_every_step_off_only_the_resampling_remains() -> None:
    hr = torch.rand(4, 3, 64, 64, generator=gen(0)) * 2 - 1
    lr = degrade(hr, 8, NOTHING, generator=gen(0))
    work = F.avg_pool2d(hr, 2)  # x8 works at 4x the LR size
    candidates = [
        F.interpolate(work, size=(8, 8), mode="area"),
        F.interpolate(work, size=(8, 8), mode="bilinear", align_corners=False),
        F.interpolate(work, size=(8, 8), mode="bicubic", align_corners=False).clamp(-1, 1),
    ]
    for i in range(4):
        assert any(torch.allclose(lr[i], c[i], atol=1e-6) for c in candidates)


@settings(max_examples=30)
@given(
    sigma=st.floats(0.2, 4.0),
    sigma_y=st.floats(0.2, 4.0),
    theta=st.floats(0.0, math.pi),
    radius=st.integers(0, 8),
)
def test_kernels_sum_to_one_and_are_symmetric(
    sigma: float, sigma_y: float, theta: float, radius: int
) -> None:
    size = 2 * radius + 1
    iso = gaussian_kernel(sigma, size)
    aniso = anisotropic_gaussian_kernel(sigma, sigma_y, theta, size)
    for kernel in (iso, aniso):
        assert kernel.shape == (size, size)
        assert kernel.sum().item() == pytest.approx(1.0, abs=1e-5)
        assert (kernel >= 0).all()
        torch.testing.assert_close(kernel, kernel.flip(0, 1))  # point symmetry
    torch.testing.assert_close(iso, iso.flip(0))
    torch.testing.assert_close(iso, iso.flip(1))
    torch.testing.assert_close(iso, iso.T)


@settings(max_examples=30)
@given(length=st.floats(0.0, 7.0), angle=st.floats(0.0, 2 * math.pi))
def test_motion_kernel_sums_to_one_and_is_point_symmetric(length: float, angle: float) -> None:
    kernel = motion_kernel(length, angle, 9)
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert (kernel >= 0).all()
    torch.testing.assert_close(kernel, kernel.flip(0, 1), atol=1e-6, rtol=0)


def test_kernel_shapes_follow_their_parameters() -> None:
    axis = torch.arange(25, dtype=torch.float32) - 12
    wide_x = anisotropic_gaussian_kernel(3.0, 1.0, 0.0, 25)
    var_x = (wide_x.sum(0) * axis**2).sum().item()
    var_y = (wide_x.sum(1) * axis**2).sum().item()
    assert var_x == pytest.approx(9.0, rel=0.02)
    assert var_y == pytest.approx(1.0, rel=0.02)
    rotated = anisotropic_gaussian_kernel(3.0, 1.0, math.pi / 2, 25)
    torch.testing.assert_close(rotated, wide_x.T, atol=1e-6, rtol=0)
    delta = motion_kernel(0.0, 1.0, 5)
    assert delta[2, 2].item() == pytest.approx(1.0)
    horizontal = motion_kernel(4.0, 0.0, 7)
    assert horizontal[3].sum().item() == pytest.approx(1.0)  # all weight on the centre row
    axis7 = torch.arange(7, dtype=torch.float32) - 3
    spread = (horizontal[3] * axis7**2).sum().item()
    # Variance of a uniform segment, plus 1/6 px^2 on average from the bilinear splat.
    assert spread == pytest.approx(4.0**2 / 12 + 1 / 6, rel=0.1)
    with pytest.raises(ValueError, match="odd"):
        gaussian_kernel(1.0, 4)
    with pytest.raises(ValueError, match="does not fit"):
        motion_kernel(6.0, 0.0, 7)


def test_jpeg_quality_100_is_nearly_lossless() -> None:
    x = torch.rand(2, 3, 37, 45, generator=gen(0)) * 2 - 1  # not a multiple of 8
    y = jpeg_roundtrip(x, 100)
    assert y.shape == x.shape
    assert psnr(x, y) > 45.0
    assert ((y + 1) * 127.5 - ((y + 1) * 127.5).round()).abs().max() < 1e-4  # 8-bit levels


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_jpeg_quality_10_removes_high_frequencies(channels: int) -> None:
    # Fine texture of about 10 DN on a flat field (a smooth field would add block edges).
    x = 0.1 + 0.08 * torch.randn(1, channels, 64, 64, generator=gen(1))
    low, high = jpeg_roundtrip(x, 10), jpeg_roundtrip(x, 90)
    assert high_frequency_energy(low) < 0.1 * high_frequency_energy(x)
    assert high_frequency_energy(high) > 0.5 * high_frequency_energy(x)
    assert psnr(x, low) < psnr(x, high)


def test_jpeg_keeps_a_flat_image_flat() -> None:
    x = torch.full((1, 3, 16, 16), 0.2)
    y = jpeg_roundtrip(x, 75)  # DC step 8 = 1 DN per pixel at quality 75
    assert torch.equal(y, y[..., :1, :1].expand_as(y))
    assert (y - x).abs().max().item() < 2 / 127.5


def noise_only(sigma: float, colour: float) -> DegradationConfig:
    return dataclasses.replace(
        NOTHING, noise_prob=1.0, noise_sigma_range=(sigma, sigma), color_noise_prob=colour
    )


@pytest.mark.parametrize("colour", [0.0, 1.0])
def test_noise_level_statistics(colour: float) -> None:
    hr = smooth_image(2, 3, 256, 256)
    clean = degrade(hr, 2, NOTHING, generator=gen(5))
    noisy = degrade(hr, 2, noise_only(6.0, colour), generator=gen(5))
    noise = noisy - clean
    assert noise.std().item() == pytest.approx(6.0 * 2 / 255, rel=0.05)
    assert abs(noise.mean().item()) < 0.002
    spread = (noise - noise.mean(dim=1, keepdim=True)).abs().max().item()
    same_in_all_bands = spread < 1e-6  # float32 rounding only
    assert same_in_all_bands == (colour == 0.0)


@pytest.mark.parametrize("scale", [4, 8])
def test_upsample_of_bicubic_downscale_of_a_smooth_image_is_close(scale: int) -> None:
    hr = smooth_image(2, 3, 128, 192)
    lr_up = upsample(downscale_bicubic(hr, scale), scale)
    assert psnr(hr, lr_up) > 30.0
    assert psnr(hr, upsample(downscale_bicubic(hr, scale), scale, mode="bilinear")) > 25.0


def test_upsample_borders_are_replicate_padded() -> None:
    lr = torch.rand(1, 3, 9, 11, generator=gen(2)) * 1.6 - 0.8
    pad, scale = 3, 4
    padded = F.pad(lr, (pad, pad, pad, pad), mode="replicate")
    expected = upsample(padded, scale)[..., pad * scale : -pad * scale, pad * scale : -pad * scale]
    torch.testing.assert_close(upsample(lr, scale), expected)


def test_upsample_of_a_tile_matches_the_full_image_away_from_its_edges() -> None:
    lr = torch.rand(1, 3, 20, 20, generator=gen(3)) * 2 - 1
    scale, reach = 8, 2  # bicubic reads 2 LR pixels on each side
    full = upsample(lr, scale)
    tile = upsample(lr[..., 5:15, 5:15], scale)
    inner = slice(reach * scale, (10 - reach) * scale)
    full_inner = slice((5 + reach) * scale, (15 - reach) * scale)
    torch.testing.assert_close(tile[..., inner, inner], full[..., full_inner, full_inner])


def test_values_stay_in_range_for_extreme_images() -> None:
    checker = (torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2 * 2.0 - 1.0
    hr = checker.expand(2, 3, 64, 64).contiguous()
    for scale in (2, 4):
        lr = degrade(hr, scale, EVERYTHING, generator=gen(4))
        assert lr.min() >= -1.0
        assert lr.max() <= 1.0
        assert make_lr(hr, scale, "bicubic").abs().max() <= 1.0
    blocks = (torch.arange(8)[:, None] // 2 + torch.arange(8)[None, :] // 2) % 2 * 2.0 - 1.0
    up = upsample(blocks.expand(1, 3, 8, 8).contiguous(), 8)
    assert up.min() == -1.0
    assert up.max() == 1.0
    unclamped = F.interpolate(blocks[None, None], scale_factor=8, mode="bicubic")
    assert unclamped.abs().max() > 1.05  # the clamp is doing real work


def test_make_lr_dispatches() -> None:
    hr = smooth_image(1, 3, 64, 64)
    torch.testing.assert_close(make_lr(hr, 4, "bicubic"), downscale_bicubic(hr, 4).clamp(-1, 1))
    realistic = make_lr(hr, 4, "realistic", config=EVERYTHING, generator=gen(9))
    assert torch.equal(realistic, degrade(hr, 4, EVERYTHING, generator=gen(9)))
    with pytest.raises(ValueError, match="generator"):
        make_lr(hr, 4, "realistic")


def test_config_validation_and_round_trip() -> None:
    config = DegradationConfig(jitter_prob=0.5, jpeg_quality_range=(30, 60))
    assert from_dict(DegradationConfig, to_dict(config)) == config
    with pytest.raises(ConfigError, match="blur_prob"):
        DegradationConfig(blur_prob=1.5)
    with pytest.raises(ConfigError, match="sigma_range"):
        DegradationConfig(sigma_range=(2.0, 1.0))
    with pytest.raises(ConfigError, match="jpeg_quality_range"):
        DegradationConfig(jpeg_quality_range=(50, 120))


def test_area_lr_is_the_block_mean() -> None:
    hr = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
    lr = make_lr(hr, 8, "area")
    assert torch.allclose(lr, hr.reshape(1, 3, 2, 8, 3, 8).mean(dim=(3, 5)), atol=1e-6)


def test_mixed_training_lr_draws_one_operator_per_item_from_its_generator() -> None:
    hr = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def lr_of(seed: int) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(seed * 100 + i) for i in range(16)]
        return make_training_lr(hr, None, method="mixed", scale=8, generators=gens)

    lr = lr_of(0)
    area = [torch.allclose(lr[i], make_lr(hr[i : i + 1], 8, "area")[0]) for i in range(16)]
    bicubic = [torch.allclose(lr[i], make_lr(hr[i : i + 1], 8, "bicubic")[0]) for i in range(16)]
    assert all(a != b for a, b in zip(area, bicubic, strict=True)), "each item is one or the other"
    assert 0 < sum(area) < 16, "both operators occur"
    assert torch.equal(lr, lr_of(0)) and not torch.equal(lr, lr_of(1))
