"""Fidelity metrics: parity with scikit-image, known values, region split, means, properties."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from refdiff_cli.metrics.pixel import psnr, psnr_y, rgb_to_y, ssim, ssim_y
from refdiff_cli.metrics.scores import PSNR_CAP_DB, REGIONS, image_metrics, mean_metrics
from refdiff_cli.metrics.spectral import ergas, sam


def skimage_ssim(sr: np.ndarray, hr: np.ndarray, data_range: float) -> float:
    return float(
        structural_similarity(
            sr,
            hr,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=data_range,
            channel_axis=0,
        )
    )


def noisy_pair(
    shape: tuple[int, int, int], dtype: str, data_range: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """hr uniform over the range, sr = hr + 8 % Gaussian noise, clipped, both of ``dtype``."""
    rng = np.random.default_rng(seed)
    low = -data_range / 2 if dtype == "float64_signed" else 0.0
    hr = low + rng.random(shape) * data_range
    sr = np.clip(hr + rng.normal(0.0, 0.08 * data_range, shape), low, low + data_range)
    if dtype.startswith("float"):
        return sr, hr
    return np.round(sr).astype(dtype), np.round(hr).astype(dtype)


# --- parity with scikit-image --------------------------------------------------------------------

CASES = [
    ((1, 11, 11), "uint8", 255.0),
    ((3, 32, 48), "uint8", 255.0),
    ((1, 40, 17), "float64", 1.0),
    ((3, 23, 64), "float64_signed", 2.0),
    ((4, 30, 30), "uint16", 4095.0),
]


@pytest.mark.parametrize(("shape", "dtype", "data_range"), CASES)
def test_psnr_and_ssim_match_skimage(shape, dtype, data_range) -> None:
    sr, hr = noisy_pair(shape, dtype, data_range, seed=sum(shape))
    assert psnr(sr, hr, data_range=data_range) == pytest.approx(
        peak_signal_noise_ratio(hr, sr, data_range=data_range), abs=1e-9
    )
    expected = skimage_ssim(sr, hr, data_range)
    assert abs(ssim(sr, hr, data_range=data_range) - expected) < 1e-6
    assert 0.0 < expected < 0.99  # the noise is visible: the comparison is not between ones


def test_border_crop_equals_skimage_on_cropped_images() -> None:
    sr, hr = noisy_pair((3, 40, 36), "uint8", 255.0, seed=7)
    b = 4
    crop = (slice(None), slice(b, -b), slice(b, -b))
    assert psnr(sr, hr, data_range=255, border=b) == pytest.approx(
        peak_signal_noise_ratio(hr[crop], sr[crop], data_range=255), abs=1e-9
    )
    assert (
        abs(ssim(sr, hr, data_range=255, border=b) - skimage_ssim(sr[crop], hr[crop], 255)) < 1e-6
    )


def test_y_channel_matches_skimage_rgb2ycbcr() -> None:
    sr, _ = noisy_pair((3, 16, 20), "uint8", 255.0, seed=3)
    expected = rgb2ycbcr(np.moveaxis(sr, 0, -1))[..., 0]  # (H, W), Y in [16, 235]
    np.testing.assert_allclose(rgb_to_y(sr, data_range=255)[0], expected, atol=1e-9)
    white = np.full((3, 2, 2), 1.0)
    black = np.zeros((3, 2, 2))
    assert rgb_to_y(white, data_range=1.0) == pytest.approx(235 / 255)
    assert rgb_to_y(black, data_range=1.0) == pytest.approx(16 / 255)


@pytest.mark.real_data
def test_real_levir_pairs(shared_data: Path) -> None:
    from skimage import io

    levir = shared_data / "cd_pairs" / "levir"
    names = sorted(p.name for p in (levir / "A").glob("*.png"))
    assert names, f"no PNGs in {levir / 'A'}"
    saw_unchanged_only = False
    for name in names:
        ref = np.moveaxis(io.imread(levir / "A" / name)[..., :3], -1, 0)  # (3, H, W) uint8
        hr = np.moveaxis(io.imread(levir / "B" / name)[..., :3], -1, 0)  # (3, H, W) uint8
        changed = io.imread(levir / "label" / name) > 0  # (H, W)
        assert psnr(ref, hr, data_range=255) == pytest.approx(
            peak_signal_noise_ratio(hr, ref, data_range=255), abs=1e-9
        )
        assert abs(ssim(ref, hr, data_range=255) - skimage_ssim(ref, hr, 255)) < 1e-6
        y_ref = rgb2ycbcr(np.moveaxis(ref, 0, -1))[..., 0][None]
        y_hr = rgb2ycbcr(np.moveaxis(hr, 0, -1))[..., 0][None]
        assert abs(ssim_y(ref, hr, data_range=255) - skimage_ssim(y_ref, y_hr, 255)) < 1e-6

        report = image_metrics(ref, hr, changed=changed, data_range=255, scale=8)
        n_all = report["all"]["pixels"]
        n_c, n_u = report["changed"]["pixels"], report["unchanged"]["pixels"]
        assert n_all == changed.size and n_c + n_u == n_all and n_c == changed.sum()
        if n_c == 0:
            saw_unchanged_only = True
            assert all(v is None for k, v in report["changed"].items() if k != "pixels")
            assert report["unchanged"]["psnr"] == pytest.approx(report["all"]["psnr"])
            continue
        # The whole image's MSE is the pixel-weighted mean of the two regions' MSEs.
        mse = {k: 255.0**2 / 10 ** (report[k]["psnr"] / 10) for k in REGIONS}
        assert n_all * mse["all"] == pytest.approx(n_c * mse["changed"] + n_u * mse["unchanged"])
    assert saw_unchanged_only, "expected one LEVIR pair without building change"


# --- known values --------------------------------------------------------------------------------


def test_identical_images() -> None:
    img, _ = noisy_pair((3, 16, 16), "float64", 1.0, seed=1)
    img = img + 0.1  # no zero vectors
    assert psnr(img, img, data_range=1.0) == math.inf
    assert ssim(img, img, data_range=1.0) == pytest.approx(1.0, abs=1e-12)
    assert sam(img, img) == 0.0
    assert ergas(img, img, scale=8) == 0.0
    assert psnr_y(img, img, data_range=1.0) == math.inf


@pytest.mark.parametrize("offset", [1, 5, 20])
def test_constant_offset_psnr(offset: int) -> None:
    rng = np.random.default_rng(offset)
    hr = rng.integers(0, 200, size=(3, 12, 14)).astype(np.uint8)
    sr = hr + np.uint8(offset)
    assert psnr(sr, hr, data_range=255) == pytest.approx(20 * math.log10(255 / offset), rel=1e-12)


def test_sam_known_angles() -> None:
    def image(vec: tuple[float, float]) -> np.ndarray:
        return np.broadcast_to(np.array(vec)[:, None, None], (2, 3, 4)).copy()  # (2, 3, 4)

    assert sam(image((1, 0)), image((0, 1))) == pytest.approx(90.0)
    assert sam(image((1, 0)), image((-2, 0))) == pytest.approx(180.0)
    assert sam(image((1, 0)), image((3, 3))) == pytest.approx(45.0)
    sr, hr = image((1, 0)), image((0, 1))
    hr[:, 0, 0] = 0.0  # zero-norm pixel: skipped, not counted as 0 or 90
    sr[:, 1, 1] = (1, 1)  # this one is at 45 degrees
    assert sam(sr, hr) == pytest.approx((10 * 90 + 45) / 11)
    assert math.isnan(sam(np.zeros((2, 3, 4)), hr))
    with pytest.raises(ValueError, match="at least 2 bands"):
        sam(sr[:1], hr[:1])


def test_ergas_hand_computed() -> None:
    hr = np.stack([np.full((2, 2), 10.0), np.full((2, 2), 20.0)])  # (2, 2, 2)
    sr = hr.copy()
    sr[0] += 1.0  # RMSE^2 / mean^2 = 1 / 100
    sr[1] += np.array([[2.0, -2.0], [2.0, -2.0]])  # 4 / 400
    assert ergas(sr, hr, scale=4) == pytest.approx(100 / 4 * math.sqrt(0.01))
    # Region: only the first column -> same ratios.
    region = np.array([[True, False], [True, False]])
    assert ergas(sr, hr, scale=4, region=region) == pytest.approx(2.5)
    hr[1] = 0.0
    assert math.isnan(ergas(sr, hr, scale=4))


def test_border_crop_effect() -> None:
    rng = np.random.default_rng(5)
    hr = rng.random((1, 20, 24))
    sr = hr.copy()
    sr[:, :2, :] += 0.5  # differences only in the outer 2-pixel frame
    sr[:, :, -2:] -= 0.5
    assert math.isfinite(psnr(sr, hr, data_range=1.0))
    assert psnr(sr, hr, data_range=1.0, border=2) == math.inf
    frame = np.zeros((20, 24), dtype=bool)
    frame[:2] = True
    assert math.isfinite(psnr(sr, hr, data_range=1.0, region=frame))
    assert math.isnan(psnr(sr, hr, data_range=1.0, region=frame, border=2))


def test_ssim_region_mode_uses_the_window_interior() -> None:
    sr, hr = noisy_pair((1, 30, 30), "float64", 1.0, seed=11)
    full = ssim(sr, hr, data_range=1.0)
    assert ssim(sr, hr, data_range=1.0, region=np.ones((30, 30), dtype=bool)) == pytest.approx(full)
    edge = np.zeros((30, 30), dtype=bool)
    edge[:5] = True  # only pixels closer than the window radius to the edge
    assert math.isnan(ssim(sr, hr, data_range=1.0, region=edge))
    top = np.zeros((30, 30), dtype=bool)
    top[:15] = True
    bottom = ~top
    # The interior splits into 10 rows x 20 cols in each half: the halves average to the whole.
    halves = ssim(sr, hr, data_range=1.0, region=top) + ssim(sr, hr, data_range=1.0, region=bottom)
    assert halves / 2 == pytest.approx(full)


# --- region split --------------------------------------------------------------------------------


def split_case(offset: float = 10.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    hr = rng.integers(20, 200, size=(3, 32, 40)).astype(np.float64)  # (3, 32, 40)
    changed = np.zeros((32, 40), dtype=bool)
    changed[:, :20] = True
    sr = hr + offset * changed
    return sr, hr, changed


def test_region_split_known_answer() -> None:
    sr, hr, changed = split_case(10.0)
    report = image_metrics(sr, hr, changed=changed, data_range=255, scale=8)
    assert list(report) == ["all", "changed", "unchanged"]
    assert set(report["all"]) == {"pixels", "psnr", "ssim", "psnr_y", "ssim_y", "sam", "ergas"}
    unchanged, change, whole = report["unchanged"], report["changed"], report["all"]
    assert unchanged["pixels"] == change["pixels"] == 32 * 20
    assert whole["pixels"] == 32 * 40
    assert unchanged["psnr"] == math.inf
    assert unchanged["sam"] == 0.0 and unchanged["ergas"] == 0.0
    assert change["psnr"] == pytest.approx(20 * math.log10(255 / 10))
    assert whole["psnr"] == pytest.approx(10 * math.log10(255**2 / 50))  # MSE 100 on half
    assert change["psnr"] < whole["psnr"] < unchanged["psnr"]
    assert change["ssim"] < whole["ssim"] < unchanged["ssim"] <= 1.0
    assert change["sam"] > 0.0 and change["ergas"] > 0.0


def test_region_split_with_border_and_valid() -> None:
    sr, hr, changed = split_case()
    valid = np.ones((32, 40), dtype=bool)
    valid[:, -3:] = False  # invalid strip in the unchanged half; border 2 removes 2 of its 3
    sr[:, :, -3:] = 0.0  # garbage where invalid
    report = image_metrics(sr, hr, changed=changed, valid=valid, data_range=255, scale=8, border=2)
    assert report["changed"]["pixels"] == 28 * 18
    assert report["unchanged"]["pixels"] == 28 * 17
    assert report["all"]["pixels"] == 28 * 35
    assert report["unchanged"]["psnr"] == math.inf  # the garbage is outside every region


def test_no_changed_pixels_gives_none() -> None:
    sr, hr, _ = split_case()
    report = image_metrics(sr, hr, changed=np.zeros((32, 40), np.uint8), data_range=255, scale=8)
    assert report["changed"] == dict.fromkeys(report["all"]) | {"pixels": 0}
    assert report["unchanged"]["pixels"] == 32 * 40


def test_keys_depend_on_bands() -> None:
    sr, hr, changed = split_case()
    one = image_metrics(sr[:1], hr[:1], changed=changed, data_range=255, scale=8)
    assert set(one["all"]) == {"pixels", "psnr", "ssim", "ergas"}
    four = image_metrics(
        np.concatenate([sr, sr[:1]]), np.concatenate([hr, hr[:1]]), changed=changed,
        data_range=255, scale=8,
    )  # fmt: skip
    assert set(four["all"]) == {"pixels", "psnr", "ssim", "sam", "ergas"}
    no_rgb = image_metrics(sr, hr, changed=changed, data_range=255, scale=8, rgb=False)
    assert "psnr_y" not in no_rgb["all"] and "sam" in no_rgb["all"]


def test_mean_metrics_skips_none_and_caps_inf() -> None:
    sr, hr, changed = split_case()
    first = image_metrics(sr, hr, changed=changed, data_range=255, scale=8)
    second = image_metrics(hr, hr, changed=np.zeros_like(changed), data_range=255, scale=8)
    means = mean_metrics([first, second])
    assert means["changed"]["n_images"] == 1
    assert means["changed"]["psnr"] == pytest.approx(first["changed"]["psnr"])
    assert means["changed"]["pixels"] == 32 * 20
    assert means["unchanged"]["n_images"] == 2
    assert means["unchanged"]["psnr"] == PSNR_CAP_DB  # both infinite, both capped
    assert means["unchanged"]["psnr_capped"] == 2
    assert means["all"]["psnr"] == pytest.approx((first["all"]["psnr"] + PSNR_CAP_DB) / 2)
    assert means["all"]["psnr_capped"] == 1
    assert means["all"]["ssim"] == pytest.approx((first["all"]["ssim"] + 1.0) / 2)
    empty = mean_metrics([second])
    assert empty["changed"]["n_images"] == 0 and empty["changed"]["psnr"] is None


# --- validation ----------------------------------------------------------------------------------


def test_validation_errors() -> None:
    a = np.zeros((3, 16, 16))
    with pytest.raises(ValueError, match=r"\(3, 16, 16\).*\(3, 16, 15\)"):
        psnr(a, np.zeros((3, 16, 15)), data_range=1)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        ssim(a[0], a[0], data_range=1)
    for bad in (0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="data_range"):
            psnr(a, a, data_range=bad)
    with pytest.raises(ValueError, match="region has shape"):
        psnr(a, a, data_range=1, region=np.ones((16, 15), bool))
    with pytest.raises(ValueError, match="border"):
        psnr(a, a, data_range=1, border=8)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(a, a, data_range=1, border=3)
    with pytest.raises(ValueError, match="NaN"):
        psnr(a + np.nan, a, data_range=1)
    with pytest.raises(ValueError, match="scale"):
        ergas(a + 1, a + 1, scale=0)
    with pytest.raises(ValueError, match="3-band"):
        rgb_to_y(a[:2], data_range=1)
    with pytest.raises(ValueError, match="changed has shape"):
        image_metrics(a, a, changed=np.zeros((4, 4), bool), data_range=1, scale=8)


# --- properties ----------------------------------------------------------------------------------

images = st.integers(1, 3).flatmap(
    lambda c: st.tuples(
        *[hnp.arrays(np.float64, (c, 12, 13), elements=st.floats(0, 1, width=32)) for _ in range(2)]
    )
)


@settings(max_examples=40)
@given(pair=images)
def test_psnr_ssim_symmetric_and_bounded(pair: tuple[np.ndarray, np.ndarray]) -> None:
    sr, hr = pair
    assert psnr(sr, hr, data_range=1.0) == psnr(hr, sr, data_range=1.0)
    forward, backward = ssim(sr, hr, data_range=1.0), ssim(hr, sr, data_range=1.0)
    assert forward == pytest.approx(backward, abs=1e-12)
    assert -1.0 <= forward <= 1.0 + 1e-12


@settings(max_examples=40)
@given(
    pair=st.integers(2, 4).flatmap(
        lambda c: st.tuples(
            *[
                hnp.arrays(np.float64, (c, 3, 4), elements=st.floats(-1e3, 1e3, width=32))
                for _ in range(2)
            ]
        )
    )
)
def test_sam_in_range(pair: tuple[np.ndarray, np.ndarray]) -> None:
    value = sam(*pair)
    assert math.isnan(value) or 0.0 <= value <= 180.0
    assert value == pytest.approx(sam(pair[1], pair[0]), nan_ok=True)
