"""The trust layers: reference weight per engine, and the uncertainty's shape."""

from __future__ import annotations

import torch

from refdiff_cli.data.resample import downscale_bicubic
from refdiff_cli.reference.trust import UncertaintyGains, lr_texture, uncertainty
from refdiff_cli.upscale.engines import BicubicEngine, EngineBatch, GuidedEngine

SCALE = 8


def _batch(hr: torch.Tensor, changed_rows: slice = slice(0, 0)) -> EngineBatch:
    mask = torch.zeros_like(hr[:, :1])
    mask[..., changed_rows, :] = 1.0
    return EngineBatch(
        lr=downscale_bicubic(hr, SCALE),
        ref=hr,
        ref_valid=torch.ones_like(mask, dtype=torch.bool),
        mask=mask,
        origins=((0, 0),),
        seed=0,
    )


def test_texture_is_zero_on_flat_lr_and_grows_with_detail(hr: torch.Tensor) -> None:
    flat = torch.full((1, 3, 8, 8), 0.3)
    assert float(lr_texture(flat, SCALE).abs().max()) < 1e-6
    lr = downscale_bicubic(hr, SCALE)
    tau = lr_texture(lr, SCALE)
    assert tau.shape == (1, 1, 256, 256)
    assert float(lr_texture(2 * lr, SCALE).mean()) > 1.9 * float(tau.mean())


def test_uncertainty_follows_the_gains_and_the_weight(hr: torch.Tensor) -> None:
    lr = downscale_bicubic(hr, SCALE)
    gains = UncertaintyGains(k_0=0.01, k_lr=0.8, k_ref=0.2)
    none = uncertainty(lr, torch.zeros_like(hr[:, :1]), SCALE, gains)
    full = uncertainty(lr, torch.ones_like(hr[:, :1]), SCALE, gains)
    tau = lr_texture(lr, SCALE)
    assert torch.allclose(none, 0.01 + 0.8 * tau) and torch.allclose(full, 0.01 + 0.2 * tau)
    clipped = uncertainty(lr, torch.full_like(hr[:, :1], 3.0), SCALE, gains)
    assert torch.allclose(clipped, full), "weights above 1 (--ref-strength) count as 1"


def test_reference_weights_of_the_engines(hr: torch.Tensor) -> None:
    batch = _batch(hr, changed_rows=slice(0, 128))
    assert float(BicubicEngine(SCALE).reference_weight(batch).abs().max()) == 0.0
    weight = GuidedEngine(SCALE).reference_weight(batch)
    assert float(weight[..., :128, :].max()) == 0.0, "no reference detail where changed"
    assert float(weight[..., 160:, :].mean()) > 0.9, "a perfect reference is trusted"
    half = GuidedEngine(SCALE, ref_strength=0.5).reference_weight(batch)
    assert torch.allclose(half, 0.5 * weight)
