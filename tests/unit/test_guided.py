"""The guided reference transfer on the sample scene's HR: both ends and each safeguard."""

from __future__ import annotations

import pytest
import torch

from refdiff_cli.data.resample import downscale_bicubic, upsample
from refdiff_cli.reference.guided import GuidedConfig, guided_transfer, register, shift_image

SCALE = 8


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(4.0 / ((a - b) ** 2).mean()))


def _run(
    hr: torch.Tensor, ref: torch.Tensor, mask_value: float = 0.0
) -> tuple[float, float, torch.Tensor]:
    lr = downscale_bicubic(hr, SCALE)
    mask = torch.full_like(hr[:, :1], mask_value)
    valid = torch.ones_like(mask, dtype=torch.bool)
    result = guided_transfer(lr, ref, mask=mask, ref_valid=valid, scale=SCALE)
    bicubic = upsample(lr, SCALE, clamp=False)
    return _psnr(result.estimate, hr), _psnr(bicubic, hr), result.estimate


def _shift(x: torch.Tensor, dy: float, dx: float) -> torch.Tensor:
    return shift_image(x, torch.tensor([[dy, dx]], dtype=torch.float32))


def _recolour(x: torch.Tensor) -> torch.Tensor:
    gain = torch.tensor([1.12, 0.9, 1.05])[None, :, None, None]
    gamma = torch.tensor([1.15, 0.9, 1.0])[None, :, None, None]
    return (((x + 1) / 2).clamp(0, 1) ** gamma * gain + 0.03) * 2 - 1


def test_a_perfect_reference_gives_the_truth_back(hr: torch.Tensor) -> None:
    guided, bicubic, _ = _run(hr, hr)
    assert guided > 45.0 > bicubic + 15


def test_registration_and_colour_match_recover_a_misregistered_recoloured_reference(
    hr: torch.Tensor,
) -> None:
    guided, bicubic, _ = _run(hr, _recolour(_shift(hr, 1.5, -1.0)))
    assert guided > bicubic + 8.0


def test_register_finds_a_known_shift(hr: torch.Tensor) -> None:
    lr = downscale_bicubic(hr, SCALE)
    field = register(_shift(hr, -2.0, 3.0), lr, SCALE, GuidedConfig())
    centre = field[0, :, 8:24, 8:24].mean(dim=(1, 2))
    # R_d(p) = R(p + d): a reference moved by (-2, 3) is read back at d = (2, -3).
    assert torch.allclose(centre, torch.tensor([2.0, -3.0]), atol=0.5)


@pytest.mark.parametrize(
    "garbage",
    [
        lambda hr: torch.zeros_like(hr),
        lambda hr: _shift(hr, 37.0, 0.0),
        lambda hr: torch.flip(hr, dims=(2, 3)),
    ],
    ids=["flat-grey", "shift-37px", "another-place"],
)
def test_a_garbage_reference_costs_almost_nothing(hr: torch.Tensor, garbage) -> None:  # type: ignore[no-untyped-def]
    # The trust test admits chance correlations of a 7 x 7 LR window: up to 0.11 dB lost on
    # this 256 px crop (26.03 vs 26.14 for the 37 px shift); 0.06 dB on the whole scene.
    guided, bicubic, _ = _run(hr, garbage(hr))
    assert guided >= bicubic - 0.15


def test_changed_or_missing_reference_is_exactly_bicubic(hr: torch.Tensor) -> None:
    lr = downscale_bicubic(hr, SCALE)
    bicubic = upsample(lr, SCALE, clamp=False)
    _, _, changed = _run(hr, hr, mask_value=1.0)
    assert torch.equal(changed, bicubic)
    no_data = torch.zeros_like(hr[:, :1], dtype=torch.bool)
    missing = guided_transfer(
        lr, hr, mask=torch.zeros_like(hr[:, :1]), ref_valid=no_data, scale=SCALE
    )
    assert torch.equal(missing.estimate, bicubic)
    assert float(missing.weight.max()) == 0.0


def test_zero_shift_is_the_identity(hr: torch.Tensor) -> None:
    assert torch.allclose(_shift(hr, 0.0, 0.0), hr, atol=1e-5)


def test_config_refuses_inconsistent_thresholds() -> None:
    with pytest.raises(ValueError, match="trust_low"):
        GuidedConfig(trust_low=0.9, trust_high=0.5)
