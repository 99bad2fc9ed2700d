"""EDMLoss: weighting, noise distribution, masking and seeded determinism."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from refdiff_cli.diffusion.loss import EDMLoss, masked_mean


class Recorder:
    """A denoiser returning a fixed estimate and remembering what it was given."""

    def __init__(self, estimate: torch.Tensor | None = None) -> None:
        self.estimate = estimate
        self.x: torch.Tensor | None = None
        self.sigma: torch.Tensor | None = None
        self.cond: object = None

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: object) -> torch.Tensor:
        self.x, self.sigma, self.cond = x, sigma, cond
        return torch.zeros_like(x) if self.estimate is None else self.estimate


def image(b: int = 2, c: int = 3, h: int = 8, w: int = 8) -> torch.Tensor:
    return torch.linspace(-1, 1, b * c * h * w).reshape(b, c, h, w)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_weight_formula_known_values() -> None:
    loss = EDMLoss()  # sigma_data = 0.5
    sigma = torch.tensor([0.5, 1.0, 0.1, 1e4], dtype=torch.float64)
    # (s^2 + 0.25) / (0.25 s^2): 0.5 -> 8, 1 -> 5, 0.1 -> 104, large -> 1 / sigma_data^2 = 4.
    expected = torch.tensor([8.0, 5.0, 104.0, 4.0], dtype=torch.float64)
    torch.testing.assert_close(loss.weight(sigma), expected, rtol=1e-7, atol=0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32), sigma_data=st.floats(0.1, 2.0))
def test_loss_is_the_weighted_squared_error(seed: int, sigma_data: float) -> None:
    y = image()
    zero = Recorder()
    loss = EDMLoss(sigma_data=sigma_data)(zero, y, "cond", generator=gen(seed))
    assert zero.sigma is not None
    sigma = zero.sigma.double()
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2  # written out independently
    expected = weight[:, None, None, None] * y.double() ** 2  # D = 0: lambda (0 - y)^2
    assert loss.shape == y.shape
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


def test_an_ideal_denoiser_has_zero_loss() -> None:
    y = image()
    loss = EDMLoss()(Recorder(estimate=y.clone()), y, None, generator=gen(3))
    assert torch.equal(loss, torch.zeros_like(y))


def test_sigma_and_noise_distributions() -> None:
    y = torch.zeros(20000, 1, 2, 2)
    rec = Recorder()
    EDMLoss()(rec, y, None, generator=gen(11))
    assert rec.sigma is not None
    assert rec.x is not None
    log_sigma = rec.sigma.double().log()
    se = 1.2 / math.sqrt(20000)
    assert abs(float(log_sigma.mean()) + 1.2) < 4 * se  # ln(sigma) ~ N(-1.2, 1.2^2)
    assert abs(float(log_sigma.std()) - 1.2) < 4 * se
    unit = rec.x.double() / rec.sigma.double()[:, None, None, None]  # n / sigma ~ N(0, 1)
    assert abs(float(unit.mean())) < 4 / math.sqrt(unit.numel())
    assert abs(float(unit.std()) - 1.0) < 4 / math.sqrt(2 * unit.numel())


def test_custom_p_mean_and_p_std() -> None:
    rec = Recorder()
    EDMLoss(P_mean=0.5, P_std=0.1)(rec, torch.zeros(5000, 1, 1, 1), None, generator=gen(2))
    assert rec.sigma is not None
    log_sigma = rec.sigma.double().log()
    assert abs(float(log_sigma.mean()) - 0.5) < 0.01
    assert abs(float(log_sigma.std()) - 0.1) < 0.01


def test_condition_is_passed_through_unchanged() -> None:
    cond = {"ref": torch.ones(1)}
    rec = Recorder()
    EDMLoss()(rec, image(), cond, generator=gen())
    assert rec.cond is cond


def test_seeded_determinism_and_no_hidden_randomness() -> None:
    y = image()
    torch.manual_seed(0)
    first = EDMLoss()(Recorder(), y, None, generator=gen(42))
    torch.manual_seed(1)
    torch.rand(10)
    second = EDMLoss()(Recorder(), y, None, generator=gen(42))
    assert torch.equal(first, second)
    assert not torch.equal(first, EDMLoss()(Recorder(), y, None, generator=gen(43)))


def nonlocal_denoiser(x: torch.Tensor, sigma: torch.Tensor, cond: object) -> torch.Tensor:
    """Every output pixel depends on every input pixel (like a UNet with attention)."""
    return 0.5 * x + 0.1 * x.mean(dim=(2, 3), keepdim=True)


def test_invalid_pixels_do_not_contribute() -> None:
    y = image()
    valid = torch.ones(2, 1, 8, 8, dtype=torch.bool)
    valid[0, :, :3] = False
    valid[1, :, :, 5:] = False
    loss = EDMLoss()(nonlocal_denoiser, y, None, generator=gen(5), valid=valid)
    assert bool((loss[~valid.expand_as(loss)] == 0).all())
    assert bool((loss[valid.expand_as(loss)] > 0).all())

    garbage = torch.where(valid, y, torch.full_like(y, float("nan")))
    garbage[1, :, :, 6] = 1e6
    other = EDMLoss()(nonlocal_denoiser, garbage, None, generator=gen(5), valid=valid)
    assert torch.equal(masked_mean(other, valid), masked_mean(loss, valid))
    assert bool(torch.isfinite(masked_mean(other, valid)))


def test_gradients_stay_finite_with_nan_in_invalid_pixels() -> None:
    scale = torch.tensor(0.7, requires_grad=True)

    def denoise(x: torch.Tensor, sigma: torch.Tensor, cond: object) -> torch.Tensor:
        return scale * x

    y = image(1, 1, 4, 4)
    valid = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    valid[..., 0, 0] = False
    y[..., 0, 0] = float("nan")
    masked_mean(EDMLoss()(denoise, y, None, generator=gen(), valid=valid), valid).backward()
    assert scale.grad is not None
    assert bool(torch.isfinite(scale.grad))
    assert float(scale.grad) != 0.0


def test_masked_mean() -> None:
    loss = torch.arange(16, dtype=torch.float32).reshape(1, 2, 2, 4)
    assert float(masked_mean(loss)) == float(loss.mean())
    valid = torch.tensor([[[[True, False, False, False], [False, False, False, True]]]])
    # valid pixels (0, 0) and (1, 3) in both channels: values 0, 7, 8, 15.
    assert float(masked_mean(loss, valid)) == pytest.approx(30 / 4)
    none = torch.zeros_like(valid)
    weights = loss.clone().requires_grad_(True)
    empty = masked_mean(weights, none)
    assert float(empty.detach()) == 0.0
    empty.backward()
    assert weights.grad is not None
    assert bool(torch.isfinite(weights.grad).all())


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="P_std"):
        EDMLoss(P_std=0.0)
    with pytest.raises(ValueError, match="sigma_data"):
        EDMLoss(sigma_data=-1.0)
    with pytest.raises(ValueError, match="valid"):
        EDMLoss()(Recorder(), image(), None, generator=gen(), valid=torch.ones(2, 3, 8, 8) > 0)


def test_mean_items_see_zero_input_at_sigma_mean_and_others_are_unchanged() -> None:
    y = image(b=64)
    plain, mixed = Recorder(), Recorder()
    EDMLoss()(plain, y, None, generator=gen(5))
    EDMLoss(mean_fraction=0.5, sigma_mean=5.0)(mixed, y, None, generator=gen(5))
    assert plain.x is not None and plain.sigma is not None
    assert mixed.x is not None and mixed.sigma is not None
    chosen = mixed.sigma == 5.0
    assert 16 < int(chosen.sum()) < 48  # about half of 64 items
    assert bool((mixed.x[chosen] == 0).all())
    # The other items keep exactly the draws of a run without mean items.
    assert torch.equal(mixed.x[~chosen], plain.x[~chosen])
    assert torch.equal(mixed.sigma[~chosen], plain.sigma[~chosen])


def test_noise_levels_follow_sigma_data() -> None:
    loss = EDMLoss.for_sigma_data(0.1)
    assert loss.sigma_data == 0.1
    assert loss.P_mean == pytest.approx(-1.2 + math.log(0.2))
    assert EDMLoss.for_sigma_data(0.5).P_mean == pytest.approx(-1.2)
    with pytest.raises(ValueError, match="mean_fraction"):
        EDMLoss(mean_fraction=1.0)
