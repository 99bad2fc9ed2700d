"""EDM schedule and samplers against analytic oracles, plus the tiling/noise acceptance checks."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from refdiff_cli.config import SAMPLER_PRESETS, SamplerConfig, StartName
from refdiff_cli.diffusion.noise import PixelNoise, make_noise_fn
from refdiff_cli.diffusion.sampler import edm_sampler, initial_state, karras_sigmas, sample

S_DATA = 0.5  # standard deviation of the Gaussian test data


def gaussian_denoiser(s: float = S_DATA) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Ideal denoiser of data ~ N(0, s^2): D(x; sigma) = x s^2 / (s^2 + sigma^2)."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.float32
        assert sigma.dtype == torch.float32
        assert sigma.shape == (x.shape[0],)
        return x * (s**2 / (s**2 + sigma**2))[:, None, None, None]

    return denoise


def no_noise(draw: int) -> torch.Tensor:
    raise AssertionError(f"a deterministic sampler asked for noise draw {draw}")


def churned(steps: int) -> SamplerConfig:
    """The paper's stochastic settings with S_churn scaled so gamma_i stays 40 / 256."""
    paper = SAMPLER_PRESETS["paper"]
    return dataclasses.replace(paper, steps=steps, S_churn=paper.S_churn * steps / paper.steps)


# --- schedule ---------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    steps=st.integers(min_value=1, max_value=400),
    rho=st.floats(min_value=0.5, max_value=12.0),
    sigma_min=st.floats(min_value=1e-4, max_value=0.5),
    ratio=st.floats(min_value=1.5, max_value=1e5),
)
def test_schedule_endpoints_monotonicity_and_eq5(
    steps: int, rho: float, sigma_min: float, ratio: float
) -> None:
    sigma_max = sigma_min * ratio
    sigmas = karras_sigmas(steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
    assert sigmas.dtype == torch.float64
    assert sigmas.shape == (steps + 1,)
    assert float(sigmas[0]) == sigma_max
    assert float(sigmas[-1]) == 0.0
    if steps > 1:
        assert float(sigmas[-2]) == sigma_min
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    i = (steps - 1) // 2  # away from sigma_min, where Eq. 5 in floats cancels badly
    if steps > 1:  # Eq. 5 written out independently
        a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
        assert math.isclose(float(sigmas[i]), (a + i / (steps - 1) * (b - a)) ** rho, rel_tol=1e-9)


def test_paper_schedule() -> None:
    paper = SAMPLER_PRESETS["paper"]
    sigmas = karras_sigmas(paper.steps, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    assert sigmas.shape == (257,)
    assert float(sigmas[255]) == 0.002


@pytest.mark.parametrize(
    ("steps", "sigma_min", "sigma_max", "rho", "match"),
    [
        (0, 0.002, 80.0, 7.0, "steps"),
        (8, 1.0, 1.0, 7.0, "sigma_min"),
        (8, 0.0, 80.0, 7.0, "sigma_min"),
        (8, 0.002, math.inf, 7.0, "sigma_max"),
        (8, 0.002, 80.0, 0.0, "rho"),
    ],
)
def test_schedule_rejects_bad_arguments(
    steps: int, sigma_min: float, sigma_max: float, rho: float, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        karras_sigmas(steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)


# --- start state ------------------------------------------------------------------------------


def test_initial_state_noise_and_lr_starts() -> None:
    noise0 = PixelNoise(0, 3)(0, [(0, 0)], (4, 4))
    lr_up = torch.linspace(-1, 1, 48).reshape(1, 3, 4, 4)
    assert torch.equal(initial_state("noise", 80.0, noise0, lr_up), 80.0 * noise0)
    assert torch.equal(initial_state("lr", 80.0, noise0, lr_up), 80.0 * lr_up)
    assert torch.equal(initial_state("mean", 80.0, noise0, lr_up), torch.zeros_like(lr_up))
    with pytest.raises(ValueError, match="start"):
        initial_state("zeros", 80.0, noise0, lr_up)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="differ"):
        initial_state("noise", 80.0, noise0, lr_up[:, :2])


# --- oracles ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["heun", "euler"])
@pytest.mark.parametrize("steps", [1, 2, 7, 32])
def test_deterministic_samplers_return_the_fixed_image_of_a_constant_denoiser(
    name: str, steps: int
) -> None:
    x0 = torch.linspace(-1, 1, 2 * 3 * 5 * 4).reshape(2, 3, 5, 4)

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x0.clone()

    x_T = 80.0 * PixelNoise(1, 3)(0, [(0, 0), (0, 4)], (5, 4))
    sigmas = karras_sigmas(steps, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    out = edm_sampler(denoise, x_T, sigmas, noise=no_noise, solver=name)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-5)


def test_heun_is_second_order_and_euler_first_order_on_the_gaussian_ode() -> None:
    # For data ~ N(0, s^2) the probability-flow ODE dx/dsigma = x sigma / (s^2 + sigma^2)
    # gives x(0) = x(sigma_max) s / sqrt(s^2 + sigma_max^2) exactly.
    x_T = 80.0 * torch.linspace(-2, 2, 101).reshape(1, 1, 1, 101)
    exact = x_T.double() * S_DATA / math.sqrt(S_DATA**2 + 80.0**2)
    errors: dict[str, list[float]] = {"heun": [], "euler": []}
    for steps in (16, 32, 64):
        sigmas = karras_sigmas(steps, sigma_min=0.002, sigma_max=80.0, rho=7.0)
        for name in ("heun", "euler"):
            out = edm_sampler(gaussian_denoiser(), x_T, sigmas, noise=no_noise, solver=name)
            errors[name].append(float((out.double() - exact).abs().max()))
    heun, euler = errors["heun"], errors["euler"]
    assert heun[0] / heun[1] > 3.5  # error ~ N^-2
    assert heun[1] / heun[2] > 3.5
    assert 1.6 < euler[0] / euler[1] < 2.4  # error ~ N^-1
    assert 1.6 < euler[1] / euler[2] < 2.4
    assert heun[2] < 0.01 * float(exact.abs().max())


@pytest.mark.parametrize("churn", [True, False])
def test_samples_of_gaussian_data_have_the_data_std(churn: bool) -> None:
    config = churned(64) if churn else dataclasses.replace(churned(64), S_churn=0.0)
    origins = [(0, 0), (0, 96)]
    noise = make_noise_fn(PixelNoise(2024, 1), origins, (96, 96), "cpu")
    x_T = initial_state("noise", config.sigma_max, noise(0), torch.zeros(2, 1, 96, 96))
    out = sample(config, gaussian_denoiser(), x_T, noise=noise)  # 18,432 pixels
    assert abs(float(out.std()) / S_DATA - 1.0) < 0.03
    assert abs(float(out.mean())) < 0.03 * S_DATA


def test_paper_preset_makes_511_network_evaluations() -> None:
    paper = SAMPLER_PRESETS["paper"]
    calls = 0
    progress: list[tuple[int, int]] = []

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return torch.zeros_like(x)

    noise = make_noise_fn(PixelNoise(0, 1), [(0, 0)], (2, 2), "cpu")
    sample(paper, denoise, 80.0 * noise(0), noise=noise, callback=lambda *p: progress.append(p))
    assert calls == 511 == paper.network_evaluations
    assert progress == [(k, 511) for k in range(1, 512)]

    euler = dataclasses.replace(paper, sampler="euler")
    calls = 0
    sample(euler, denoise, 80.0 * noise(0), noise=noise)
    assert calls == 256 == euler.network_evaluations


def test_noise_draws_are_step_plus_one_and_only_where_churn_applies() -> None:
    paper = SAMPLER_PRESETS["paper"]
    field = make_noise_fn(PixelNoise(0, 1), [(0, 0)], (1, 1), "cpu")
    draws: list[int] = []

    def noise(draw: int) -> torch.Tensor:
        draws.append(draw)
        return field(draw)

    sample(paper, gaussian_denoiser(), 80.0 * field(0), noise=noise)
    sigmas = karras_sigmas(256, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    expected = [i + 1 for i in range(256) if paper.S_min <= float(sigmas[i]) <= paper.S_max]
    assert draws == expected
    assert 0 not in draws
    assert len(draws) < 256


def test_no_hidden_randomness() -> None:
    config = churned(16)
    noise = make_noise_fn(PixelNoise(5, 3), [(0, 0)], (8, 8), "cpu")
    x_T = 80.0 * noise(0)
    torch.manual_seed(0)
    first = sample(config, gaussian_denoiser(), x_T, noise=noise)
    torch.manual_seed(1)
    torch.rand(100)
    second = sample(config, gaussian_denoiser(), x_T, noise=noise)
    assert torch.equal(first, second)
    other = make_noise_fn(PixelNoise(6, 3), [(0, 0)], (8, 8), "cpu")
    assert not torch.equal(first, sample(config, gaussian_denoiser(), x_T, noise=other))


def test_sample_dispatches_to_the_named_sampler_on_the_karras_schedule() -> None:
    config = dataclasses.replace(churned(12), sampler="euler")
    noise = make_noise_fn(PixelNoise(3, 2), [(0, 0)], (4, 4), "cpu")
    sigmas = karras_sigmas(12, sigma_min=config.sigma_min, sigma_max=config.sigma_max, rho=7.0)
    direct = edm_sampler(
        gaussian_denoiser(),
        80.0 * noise(0),
        sigmas,
        noise=noise,
        solver="euler",
        S_churn=config.S_churn,
        S_min=config.S_min,
        S_max=config.S_max,
        S_noise=config.S_noise,
    )
    assert torch.equal(sample(config, gaussian_denoiser(), 80.0 * noise(0), noise=noise), direct)
    heun = sample(
        dataclasses.replace(config, sampler="heun"),
        gaussian_denoiser(),
        80.0 * noise(0),
        noise=noise,
    )
    assert not torch.equal(heun, direct)


def test_shape_mismatches_are_reported() -> None:
    sigmas = karras_sigmas(4, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="noise draw 1"):
        edm_sampler(
            gaussian_denoiser(), x, sigmas, noise=lambda i: torch.zeros(1, 1, 3, 3), S_churn=1.0
        )
    with pytest.raises(ValueError, match="denoiser returned"):
        edm_sampler(lambda x, s: x[:, :, :2], x, sigmas, noise=no_noise)
    with pytest.raises(ValueError, match="decreasing"):
        edm_sampler(gaussian_denoiser(), x, sigmas.flip(0), noise=no_noise)
    with pytest.raises(ValueError, match="solver"):
        edm_sampler(gaussian_denoiser(), x, sigmas, noise=no_noise, solver="rk4")  # type: ignore[arg-type]


# --- tiles, batches and the noise field -------------------------------------------------------


def conditioned_denoiser(
    mean: torch.Tensor,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Ideal denoiser of data ~ N(mean, s^2) per pixel; ``mean`` is the tiles' condition."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s2, v = S_DATA**2, (sigma**2)[:, None, None, None]
        return (x * s2 + mean * v) / (s2 + v)

    return denoise


def smooth_condition(height: int, width: int, channels: int) -> torch.Tensor:
    rows = torch.arange(height, dtype=torch.float32)[:, None]
    cols = torch.arange(width, dtype=torch.float32)[None, :]
    base = 0.6 * torch.sin(rows / 17.0) * torch.cos(cols / 23.0)  # (H, W)
    return torch.stack([base * (c + 1) / channels for c in range(channels)])[None]  # (1, C, H, W)


def run_tiles(
    config: SamplerConfig, cond: torch.Tensor, origins: list[tuple[int, int]], tile: int, seed: int
) -> torch.Tensor:
    """Sample a batch of tiles cut from the global condition, with the global noise field."""
    mean = torch.cat([cond[:, :, r : r + tile, c : c + tile] for r, c in origins])
    noise = make_noise_fn(PixelNoise(seed, cond.shape[1]), origins, (tile, tile), "cpu")
    x_T = initial_state(config.start, config.sigma_max, noise(0), mean)
    return sample(config, conditioned_denoiser(mean), x_T, noise=noise)


@pytest.mark.parametrize("start", ["noise", "lr"])
def test_same_seed_gives_identical_bytes_whatever_the_batch(start: StartName) -> None:
    config = dataclasses.replace(churned(24), start=start)
    cond = smooth_condition(48, 80, 3)
    origins = [(0, 0), (16, 48)]
    together = run_tiles(config, cond, origins, 32, seed=9)
    apart = torch.cat([run_tiles(config, cond, [o], 32, seed=9) for o in origins])
    assert torch.equal(together, apart)
    swapped = run_tiles(config, cond, origins[::-1], 32, seed=9)
    assert torch.equal(swapped, together.flip(0))


def test_pixel_local_denoiser_gives_the_untiled_result_in_every_tile() -> None:
    config = churned(24)
    cond = smooth_condition(64, 64, 2)
    whole = run_tiles(config, cond, [(0, 0)], 64, seed=3)
    tiles = run_tiles(config, cond, [(0, 0), (0, 32), (32, 16)], 32, seed=3)
    assert torch.equal(tiles[0], whole[0, :, :32, :32])
    assert torch.equal(tiles[1], whole[0, :, :32, 32:])
    assert torch.equal(tiles[2], whole[0, :, 32:, 16:48])


def cosine_ramps(starts: list[int], tile: int, overlap: int, width: int) -> np.ndarray:
    """Per-column blend weight of each tile: cosine over interior overlaps, 1 elsewhere."""
    k = np.arange(overlap)
    rise = np.sin(np.pi * (k + 0.5) / (2 * overlap)) ** 2  # rise + reversed rise = 1
    weights = np.zeros((len(starts), width))
    for t, start in enumerate(starts):
        w = np.ones(tile)
        if t > 0:
            w[:overlap] = rise
        if t < len(starts) - 1:
            w[-overlap:] = rise[::-1]
        weights[t, start : start + tile] = w
    return weights


def test_overlap_texture_std_matches_inside_with_global_noise_but_not_per_tile_noise() -> None:
    # Acceptance (docs/reliability.md, finding 10): blended overlaps keep the texture std.
    tile, overlap, height, channels, n_tiles = 64, 16, 64, 3, 8
    starts = [t * (tile - overlap) for t in range(n_tiles)]
    width = starts[-1] + tile
    config = churned(32)
    cond = torch.zeros(1, channels, height, width)  # texture = output - condition mean
    origins = [(0, s) for s in starts]

    global_tiles = run_tiles(config, cond, origins, tile, seed=77).numpy()

    per_tile = []
    for t in range(n_tiles):  # the rejected design: an independent generator per tile
        gen = torch.Generator().manual_seed(1000 + t)

        def noise(draw: int, gen: torch.Generator = gen) -> torch.Tensor:
            return torch.randn((1, channels, height, tile), generator=gen)

        x_T = initial_state(
            "noise", config.sigma_max, noise(0), torch.zeros(1, channels, height, tile)
        )
        per_tile.append(sample(config, gaussian_denoiser(), x_T, noise=noise))
    per_tile_tiles = torch.cat(per_tile).numpy()

    weights = cosine_ramps(starts, tile, overlap, width)  # (T, W)
    mid = ((weights > 0.25) & (weights < 0.75)).any(axis=0)  # both tiles weigh 0.25-0.75
    inside = (weights == 1.0).sum(axis=0) == 1

    def blend(tiles: np.ndarray) -> np.ndarray:
        acc = np.zeros((channels, height, width))
        for t, start in enumerate(starts):
            acc[:, :, start : start + tile] += weights[t, start : start + tile] * tiles[t]
        out: np.ndarray = acc / weights.sum(axis=0)
        return out

    ratios = {}
    for name, tiles in (("global", global_tiles), ("per_tile", per_tile_tiles)):
        out = blend(tiles)
        ratios[name] = out[:, :, mid].std() / out[:, :, inside].std()
    assert int(mid.sum()) >= 6 * (n_tiles - 1)
    assert abs(ratios["global"] - 1.0) < 0.05
    assert ratios["per_tile"] < 0.8  # ~0.72: averaging two independent samples
