"""Tests of the EDM preconditioning: Table 1 identities, limits, wiring and reduced precision."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from refdiff_cli.model.layers import Conv2d
from refdiff_cli.model.network import RefDiffUNet
from refdiff_cli.model.network_config import PRESETS
from refdiff_cli.model.precond import Conditioning, EDMPrecond, edm_coefficients

SIGMA_DATA = 0.5
SIGMAS = [0.002, 0.05, 0.5, 2.0, 80.0]


def active_net(seed: int = 0) -> RefDiffUNet:
    """A tiny network with every conv at full xavier scale, so F is far from zero."""
    net = RefDiffUNet(PRESETS["tiny"], seed=seed).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, Conv2d):
                nn.init.xavier_uniform_(m.weight, generator=g)
    return net


def batch(b: int, size: int, sigma: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Clean image y in [-1, 1], noisy x = y + sigma n and matching conditions."""
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(b, 3, size, size, generator=g) * 2 - 1
    x = y + sigma.reshape(-1, 1, 1, 1) * torch.randn(b, 3, size, size, generator=g)
    lr_up = (y + 0.1 * torch.randn(b, 3, size, size, generator=g)).clamp(-1, 1)
    ref = torch.rand(b, 3, size, size, generator=g) * 2 - 1
    mask = (torch.rand(b, 1, size, size, generator=g) > 0.7).float()
    return y, x, lr_up, ref, mask


sigmas = st.floats(1e-3, 200.0)
sigma_datas = st.floats(0.05, 5.0)


@given(sigma=sigmas, sigma_data=sigma_datas)
def test_table1_identities(sigma: float, sigma_data: float) -> None:
    s = torch.tensor(sigma, dtype=torch.float64)
    c = edm_coefficients(s, sigma_data)
    sd2 = sigma_data**2
    # c_in makes the network input unit variance: c_in^2 (sigma^2 + sigma_data^2) = 1.
    assert float(c.c_in**2 * (s**2 + sd2)) == pytest.approx(1.0, rel=1e-12)
    # Skip and output weights share the variance budget: c_skip + c_out^2 / sigma_data^2 = 1.
    assert float(c.c_skip + c.c_out**2 / sd2) == pytest.approx(1.0, rel=1e-12)
    # The effective training target (y - c_skip (y + n)) / c_out has unit variance (EDM B.6).
    target_var = (sd2 * (1 - c.c_skip) ** 2 + c.c_skip**2 * s**2) / c.c_out**2
    assert float(target_var) == pytest.approx(1.0, rel=1e-9)
    # The loss weight lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 is 1 / c_out^2.
    lam = (s**2 + sd2) / (s * sigma_data) ** 2
    assert float(lam * c.c_out**2) == pytest.approx(1.0, rel=1e-12)
    assert float(c.c_noise) == pytest.approx(float(s.log()) / 4, rel=1e-12, abs=1e-15)


def test_coefficients_at_the_extremes() -> None:
    c = edm_coefficients(torch.tensor([1e-6, 1e6], dtype=torch.float64), SIGMA_DATA)
    torch.testing.assert_close(c.c_skip, torch.tensor([1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(c.c_out, torch.tensor([1e-6, SIGMA_DATA], dtype=torch.float64))


def test_denoiser_is_identity_as_sigma_goes_to_zero() -> None:
    pre = EDMPrecond(active_net(), sigma_data=SIGMA_DATA)
    sigma = torch.full((2,), 1e-4)
    _, x, lr_up, ref, mask = batch(2, 32, sigma)
    with torch.no_grad():
        D_x = pre(x, sigma, Conditioning(lr_up=lr_up, ref=ref, mask=mask))
        F_x = pre.net(x, sigma.log() / 4, lr_up, ref, mask)
    assert float(F_x.abs().mean()) > 0.1  # the network is not silent ...
    assert float((D_x - x).abs().max()) < 1e-4 * 1.01 * float(F_x.abs().max())  # ... D = x + O(σ)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_denoiser_wiring_matches_eq7(sigma: float) -> None:
    net = active_net()
    pre = EDMPrecond(net, sigma_data=SIGMA_DATA)
    s = torch.full((2,), sigma)
    _, x, lr_up, ref, mask = batch(2, 16, s)
    with torch.no_grad():
        D_x = pre(x, s, Conditioning(lr_up=lr_up, ref=ref, mask=mask))
        sd2 = SIGMA_DATA**2
        c_in = 1 / (sigma**2 + sd2) ** 0.5
        F_x = net(c_in * x, torch.full((2,), sigma).log() / 4, lr_up, ref, mask)
        expected = sd2 / (sigma**2 + sd2) * x + sigma * SIGMA_DATA * c_in * F_x
    torch.testing.assert_close(D_x, expected, rtol=1e-5, atol=1e-5)


def test_scalar_and_per_sample_sigma_agree_and_samples_are_independent() -> None:
    pre = EDMPrecond(active_net())
    s = torch.tensor([0.3, 7.0])
    _, x, lr_up, ref, mask = batch(2, 16, s)
    cond = Conditioning(lr_up=lr_up, ref=ref, mask=mask)
    with torch.no_grad():
        both = pre(x, s, cond)
        first = pre(x[:1], 0.3, Conditioning(lr_up=lr_up[:1], ref=ref[:1], mask=mask[:1]))
        as_tensor = pre(x, torch.tensor(0.3, dtype=torch.float64), cond)
        as_float = pre(x, 0.3, cond)
    torch.testing.assert_close(both[:1], first, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(as_tensor, as_float)


def test_float64_input_returns_float32() -> None:
    pre = EDMPrecond(active_net())
    s = torch.tensor([1.0])
    _, x, lr_up, ref, mask = batch(1, 16, s)
    with torch.no_grad():
        out = pre(x.double(), s.double(), Conditioning(lr_up=lr_up, ref=ref, mask=mask))
    assert out.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("sigma", SIGMAS)
def test_autocast_on_cpu_is_float32_finite_and_close(sigma: float, dtype: torch.dtype) -> None:
    pre = EDMPrecond(active_net())
    s = torch.full((2,), sigma)
    _, x, lr_up, ref, mask = batch(2, 32, s)
    cond = Conditioning(lr_up=lr_up, ref=ref, mask=mask)
    with torch.no_grad():
        full = pre(x, s, cond)
        half = pre(x, s, cond, dtype=dtype)
    assert half.dtype == torch.float32
    assert bool(torch.isfinite(half).all())
    # Only the network output F_x is rounded; D's error is c_out times F's error.
    c = edm_coefficients(s, SIGMA_DATA)
    c_skip, c_out = c.c_skip[:, None, None, None], c.c_out[:, None, None, None]
    F_full, F_half = (full - c_skip * x) / c_out, (half - c_skip * x) / c_out
    assert float((F_half - F_full).abs().max()) < 0.05 * float(F_full.abs().max())
    assert float((F_half - F_full).abs().mean()) < 0.03 * float(F_full.abs().mean())
    err = float((half - full).abs().max())
    assert err < 0.05


def test_network_really_runs_in_bf16_under_autocast() -> None:
    pre = EDMPrecond(active_net())
    dtypes: list[torch.dtype] = []
    pre.net.head_conv.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    s = torch.tensor([1.0])
    _, x, lr_up, ref, mask = batch(1, 16, s)
    with torch.no_grad():
        pre(x, s, Conditioning(lr_up=lr_up, ref=ref, mask=mask), dtype=torch.bfloat16)
        pre(x, s, Conditioning(lr_up=lr_up, ref=ref, mask=mask))
    assert dtypes == [torch.bfloat16, torch.float32]


@pytest.mark.gpu
@pytest.mark.parametrize("sigma", SIGMAS)
def test_fp16_on_cuda_is_finite_and_close(sigma: float) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pre = EDMPrecond(active_net()).cuda()
    s = torch.full((2,), sigma)
    _, x, lr_up, ref, mask = (t.cuda() for t in batch(2, 64, s))
    cond = Conditioning(lr_up=lr_up, ref=ref, mask=mask)
    with torch.no_grad():
        full = pre(x, s.cuda(), cond)
        half = pre(x, s.cuda(), cond, dtype=torch.float16)
    assert half.dtype == torch.float32
    assert bool(torch.isfinite(half).all())
    assert float((half - full).abs().max()) < 0.05


def test_conditioning_to_and_frozen() -> None:
    cond = Conditioning(
        lr_up=torch.zeros(1, 3, 4, 4), ref=torch.ones(1, 3, 4, 4), mask=torch.zeros(1, 1, 4, 4)
    )
    moved = cond.to("cpu")
    assert torch.equal(moved.ref, cond.ref)
    assert moved.mask.device.type == "cpu"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cond.ref = torch.zeros(1)  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"Conditioning.mask has shape \(1, 1, 4, 2\)"):
        Conditioning(lr_up=cond.lr_up, ref=cond.ref, mask=torch.zeros(1, 1, 4, 2))


def test_bad_arguments_raise() -> None:
    net = RefDiffUNet(PRESETS["tiny"])
    with pytest.raises(ValueError, match="sigma_data"):
        EDMPrecond(net, sigma_data=0.0)
    pre = EDMPrecond(net)
    s = torch.ones(2)
    _, x, lr_up, ref, mask = batch(2, 16, s)
    cond = Conditioning(lr_up=lr_up, ref=ref, mask=mask)
    with pytest.raises(ValueError, match=r"sigma has shape \(3,\), expected \(2,\)"):
        pre(x, torch.ones(3), cond)
    with pytest.raises(ValueError, match="float64"):
        pre(x, s, cond, dtype=torch.float64)
