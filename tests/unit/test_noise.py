"""PixelNoise: a pure function of (seed, draw, channel, absolute pixel), and standard normal."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from refdiff_cli.diffusion.noise import (
    GAMMA,
    MASK64,
    PixelNoise,
    make_noise_fn,
    mix64,
    mix64_int,
)

U64 = st.integers(min_value=0, max_value=MASK64)
COORD = st.integers(min_value=0, max_value=2**40)


def _as_int64(values: list[int]) -> torch.Tensor:
    return torch.tensor([v - (1 << 64) if v >= 1 << 63 else v for v in values], dtype=torch.int64)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a64 = a.double().flatten() - a.double().mean()
    b64 = b.double().flatten() - b.double().mean()
    return float((a64 * b64).sum() / (a64.norm() * b64.norm()))


def _normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))


def test_mix64_int_reproduces_the_splitmix64_reference_stream() -> None:
    # First outputs of SplitMix64 seeded with 0 (Steele et al. 2014; Vigna's splitmix64.c).
    expected = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F, 0xF88BB8A8724C81EC]
    state = 0
    outputs = []
    for _ in expected:
        state = (state + GAMMA) & MASK64
        outputs.append(mix64_int(state))
    assert outputs == expected


@settings(max_examples=50, deadline=None)
@given(st.lists(U64, min_size=1, max_size=64))
def test_mix64_on_int64_tensors_matches_the_uint64_reference_bit_for_bit(values: list[int]) -> None:
    values = [*values, 0, 1, MASK64, 1 << 63, (1 << 63) - 1]
    tensor = _as_int64(values)
    mixed = mix64(tensor).tolist()
    assert [m & MASK64 for m in mixed] == [mix64_int(v) for v in values]
    assert tensor.tolist() == _as_int64(values).tolist()  # the input is not modified


def test_pinned_values_never_change() -> None:
    # Changing the field changes every output for a given seed and breaks resuming runs.
    got = PixelNoise(0, 2)(0, [(0, 0)], (1, 3))
    expected = torch.tensor(
        [[[[0.30583956837654114, -0.034303437918424606, 0.34378716349601746]],
          [[-1.4086329936981201, 1.263862133026123, 0.17220701277256012]]]],
        dtype=torch.float32,
    )  # fmt: skip
    assert torch.equal(got, expected)
    extreme = PixelNoise(2**63 - 1, 1)(511, [(2**20, 5)], (1, 2))
    assert torch.equal(extreme, torch.tensor([[[[1.1650995016098022, 0.7426589727401733]]]]))


@settings(max_examples=40, deadline=None)
@given(
    seed=U64,
    draw=st.integers(min_value=0, max_value=1000),
    row=COORD,
    col=COORD,
    height=st.integers(min_value=1, max_value=24),
    width=st.integers(min_value=1, max_value=24),
    data=st.data(),
)
def test_any_window_equals_the_crop_of_a_larger_window(
    seed: int, draw: int, row: int, col: int, height: int, width: int, data: st.DataObject
) -> None:
    field = PixelNoise(seed, 2)
    whole = field(draw, [(row, col)], (height, width))  # (1, 2, H, W)
    top = data.draw(st.integers(min_value=0, max_value=height - 1))
    left = data.draw(st.integers(min_value=0, max_value=width - 1))
    h = data.draw(st.integers(min_value=1, max_value=height - top))
    w = data.draw(st.integers(min_value=1, max_value=width - left))
    part = field(draw, [(row + top, col + left)], (h, w))
    assert torch.equal(part, whole[:, :, top : top + h, left : left + w])


def test_overlapping_tiles_agree_exactly_in_their_overlap() -> None:
    field = PixelNoise(7, 3)
    tiles = field(4, [(96, 200), (96, 248), (144, 200)], (64, 64))  # (3, 3, 64, 64)
    assert torch.equal(tiles[0, :, :, 48:], tiles[1, :, :, :16])  # horizontal overlap
    assert torch.equal(tiles[0, :, 48:, :], tiles[2, :, :16, :])  # vertical overlap
    assert not torch.equal(tiles[0], tiles[1])


def test_batch_composition_and_order_do_not_matter() -> None:
    field = PixelNoise(123, 4)
    origins = [(0, 0), (8, 1000), (2**20, 3)]
    batch = field(9, origins, (16, 12))
    singles = torch.cat([field(9, [o], (16, 12)) for o in origins])
    assert torch.equal(batch, singles)
    reversed_batch = field(9, origins[::-1], (16, 12))
    assert torch.equal(reversed_batch, batch.flip(0))
    assert batch.shape == (3, 4, 16, 12)
    assert batch.dtype == torch.float32


def test_channel_count_does_not_change_the_first_channels() -> None:
    three = PixelNoise(5, 3)(2, [(10, 20)], (8, 8))
    one = PixelNoise(5, 1)(2, [(10, 20)], (8, 8))
    assert torch.equal(three[:, :1], one)


def test_make_noise_fn_binds_the_windows() -> None:
    field = PixelNoise(11, 3)
    origins = [(0, 0), (32, 64)]
    noise = make_noise_fn(field, origins, (16, 16), "cpu")
    for draw in (0, 1, 255):
        assert torch.equal(noise(draw), field(draw, origins, (16, 16)))
    assert not torch.equal(noise(1), noise(2))


@pytest.mark.parametrize(
    ("other_seed", "other_draw", "other_channel", "transpose"),
    [(1, 0, 0, False), (0, 1, 0, False), (0, 0, 1, False), (0, 0, 0, True), (2**63, 0, 0, False)],
)
def test_changing_any_key_gives_uncorrelated_noise(
    other_seed: int, other_draw: int, other_channel: int, transpose: bool
) -> None:
    n = 128
    base = PixelNoise(0, 2)(0, [(0, 0)], (n, n))[0, 0]
    other = PixelNoise(other_seed, 2)(other_draw, [(0, 0)], (n, n))[0, other_channel]
    if transpose:
        other = other.T
    assert not torch.equal(base, other)
    assert abs(_corr(base, other)) < 5 / n  # 5 standard errors of a correlation of n^2 pairs


def test_one_draw_is_standard_normal() -> None:
    z = PixelNoise(2024, 3)(17, [(512, 768)], (256, 256)).double()  # (1, 3, 256, 256)
    n = z.numel()
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.std()) - 1.0) < 5 / math.sqrt(2 * n)
    kurtosis = float((z**4).mean() / (z**2).mean() ** 2)
    assert abs(kurtosis - 3.0) < 5 * math.sqrt(24 / n)
    # Kolmogorov-Smirnov distance to N(0, 1); 1.95 / sqrt(n) is the 0.1 % critical value.
    ordered = z.flatten().sort().values
    cdf = _normal_cdf(ordered)
    upper = torch.arange(1, n + 1, dtype=torch.float64) / n
    ks = float(torch.maximum(upper - cdf, cdf - (upper - 1.0 / n)).max())
    assert ks < 1.95 / math.sqrt(n)
    assert float(z.abs().max()) < math.sqrt(-2 * math.log(2.0**-32)) + 1e-9


def test_neighbours_channels_and_draws_are_uncorrelated() -> None:
    field = PixelNoise(99, 3)
    z = field(3, [(40, 40)], (256, 256))[0]  # (3, 256, 256)
    bound = 5 / 256
    assert abs(_corr(z[:, :, 1:], z[:, :, :-1])) < bound  # right neighbour
    assert abs(_corr(z[:, 1:, :], z[:, :-1, :])) < bound  # lower neighbour
    assert abs(_corr(z[:, 1:, 1:], z[:, :-1, :-1])) < bound  # diagonal neighbour
    assert abs(_corr(z[0], z[1])) < 5 / math.sqrt(256 * 256)  # channels
    assert abs(_corr(z[1], z[2])) < 5 / math.sqrt(256 * 256)
    nxt = field(4, [(40, 40)], (256, 256))[0]
    assert abs(_corr(z, nxt)) < bound  # consecutive draws
    seed_next = PixelNoise(100, 3)(3, [(40, 40)], (256, 256))[0]
    assert abs(_corr(z, seed_next)) < bound  # consecutive seeds


@pytest.mark.parametrize(
    ("seed", "origin"),
    [(2**63 - 1, (2**20, 2**20)), (MASK64, (2**40, 0)), (0, (0, 2**40)), (1, (-5000, -7))],
)
def test_extreme_seeds_and_coordinates_stay_standard_normal(
    seed: int, origin: tuple[int, int]
) -> None:
    z = PixelNoise(seed, 3)(511, [origin], (64, 64)).double()
    n = z.numel()
    assert bool(torch.isfinite(z).all())
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.std()) - 1.0) < 5 / math.sqrt(2 * n)
    assert abs(_corr(z[..., 1:], z[..., :-1])) < 5 / math.sqrt(n)


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="seed"):
        PixelNoise(-1, 3)
    with pytest.raises(ValueError, match="seed"):
        PixelNoise(1 << 64, 3)
    with pytest.raises(ValueError, match="channels"):
        PixelNoise(0, 0)
    with pytest.raises(ValueError, match="draw"):
        PixelNoise(0, 1)(-1, [(0, 0)], (2, 2))


@pytest.mark.gpu
def test_cuda_gives_the_cpu_values() -> None:
    field = PixelNoise(31337, 3)
    origins = [(0, 0), (2**20, 77)]
    cpu = field(5, origins, (64, 64))
    cuda = field(5, origins, (64, 64), device="cuda")
    assert cuda.device.type == "cuda"
    # Integer hashing is exact; float64 log/cos may differ by an ulp between devices.
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=0, atol=1e-6)
