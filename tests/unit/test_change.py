"""Change masks estimated from LR and reference, change vector analysis, and mask scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refdiff_cli.data.resample import downscale_bicubic
from refdiff_cli.metrics.scores import mask_counts, mask_scores
from refdiff_cli.reference.change import (
    ChangeConfig,
    ChangeEvidence,
    change_vector_analysis,
    decide,
    estimate_change,
    grow_regions,
    otsu_threshold,
)

SCALE = 8


def _estimate(
    hr: torch.Tensor, ref: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    lr = downscale_bicubic(hr, SCALE)
    ref_valid = torch.ones_like(hr[:, :1], dtype=torch.bool) if valid is None else valid
    return estimate_change(lr, ref, ref_valid=ref_valid, scale=SCALE)


def _share(mask: torch.Tensor, rows: slice, cols: slice) -> float:
    return float(mask[0, 0, rows, cols].mean())


def test_a_faithful_reference_is_unchanged_even_recoloured(hr: torch.Tensor) -> None:
    assert _share(_estimate(hr, hr), slice(None), slice(None)) < 0.02
    recoloured = (0.8 * hr + 0.1).clamp(-1, 1)  # another date's radiometry, same land
    assert _share(_estimate(hr, recoloured), slice(None), slice(None)) < 0.05


def test_replaced_content_and_missing_reference_are_changed(hr: torch.Tensor) -> None:
    ref = hr.clone()
    ref[..., 64:160, 64:160] = hr.flip(-1)[..., 64:160, 64:160]  # another place pasted in
    mask = _estimate(hr, ref)
    assert _share(mask, slice(80, 144), slice(80, 144)) > 0.7
    assert _share(mask, slice(192, 256), slice(0, 256)) < 0.05

    valid = torch.ones_like(hr[:, :1], dtype=torch.bool)
    valid[..., :, 192:] = False
    missing = _estimate(hr, hr, valid)
    assert _share(missing, slice(None), slice(200, 256)) == 1.0
    assert _share(missing, slice(None), slice(0, 176)) < 0.02


def test_a_flat_brightness_change_is_caught_by_the_radiometric_test(hr: torch.Tensor) -> None:
    """A local offset (a field paved over) fits the local colour model; the tile model does not."""
    ref = hr.clone()
    ref[..., 96:176, 96:176] = ref[..., 96:176, 96:176] - 0.5
    config = ChangeConfig(structure_threshold=1.0)  # structure alone sees nothing
    lr = downscale_bicubic(hr, SCALE)
    valid = torch.ones_like(hr[:, :1], dtype=torch.bool)
    mask = estimate_change(lr, ref, ref_valid=valid, scale=SCALE, config=config)
    assert _share(mask, slice(112, 160), slice(112, 160)) > 0.9
    assert _share(mask, slice(0, 64), slice(None)) < 0.05


def test_change_vector_analysis_finds_a_bright_square(hr: torch.Tensor) -> None:
    ref = hr.clone()
    ref[..., 128:224, 32:128] = 1.0
    lr = downscale_bicubic(hr, SCALE)
    valid = torch.ones_like(hr[:, :1], dtype=torch.bool)
    cva = change_vector_analysis(lr, ref, ref_valid=valid, scale=SCALE)
    assert cva.shape == hr[:, :1].shape and set(cva.unique().tolist()) <= {0.0, 1.0}
    assert _share(cva, slice(144, 208), slice(48, 112)) > 0.9
    assert _share(cva, slice(0, 96), slice(None)) < 0.2


def test_otsu_splits_two_modes() -> None:
    values = torch.cat([torch.full((300,), 0.1), torch.full((100,), 0.9)])
    values = values + 0.01 * torch.randn(400, generator=torch.Generator().manual_seed(0))
    cut = float(otsu_threshold(values))
    assert bool((values[:300] < cut).all()) and bool((values[300:] > cut).all())
    assert float(otsu_threshold(torch.full((5,), 0.3))) == pytest.approx(0.3)


def test_mask_scores() -> None:
    truth = np.array([1, 1, 0, 0, 0, 1], dtype=bool)
    predicted = np.array([1, 0, 1, 0, 0, 1], dtype=bool)
    counts = mask_counts(predicted, truth)
    assert counts == {"tp": 2, "fp": 1, "fn": 1, "tn": 2}
    scores = mask_scores(counts)
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3) and scores["iou"] == pytest.approx(0.5)
    nothing = mask_scores(mask_counts(np.zeros(4, bool), np.zeros(4, bool)))
    assert nothing == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "iou": 1.0}
    assert mask_scores(mask_counts(np.ones(4, bool), np.zeros(4, bool)))["f1"] == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        mask_counts(np.zeros(3, bool), np.zeros(4, bool))


def test_grow_regions_keeps_the_allowed_regions_that_touch_a_seed() -> None:
    allowed = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    allowed[..., 0:3, 0:3] = True  # region A, seeded at one corner
    allowed[..., 3, 3] = True  # diagonal neighbour of A: 8-connected to it
    allowed[..., 6:8, 5:8] = True  # region B, no seed
    seeds = torch.zeros_like(allowed)
    seeds[..., 0, 0] = True
    seeds[..., 5, 0] = True  # a seed outside ``allowed`` grows nothing
    grown = grow_regions(seeds, allowed)
    expected = torch.zeros_like(allowed)
    expected[..., 0:3, 0:3] = True
    expected[..., 3, 3] = True
    assert torch.equal(grown, expected)


def _evidence(z: torch.Tensor) -> ChangeEvidence:
    """Evidence whose radiometric z-score is ``z`` (spread 1, no noise floor), no structure."""
    return ChangeEvidence(
        structure=torch.zeros_like(z),
        excess=z,
        residual_spread=torch.ones(1, 1, 1, 1),
        cells_valid=torch.ones_like(z, dtype=torch.bool),
    )


def test_radiometric_hysteresis_drops_weak_clusters_without_a_strong_core() -> None:
    z = torch.zeros(1, 1, 16, 16)
    z[..., 1:5, 1:5] = 2.0  # weak everywhere: a correlated residual of unchanged land
    z[..., 9:14, 9:14] = 2.0  # weak, with a strong core: a changed building
    z[..., 11, 11] = 9.0
    config = ChangeConfig(radiometric_threshold=1.5, radiometric_seed=6.0, noise_floor=0.0)
    mask = decide(_evidence(z), config, scale=1)[0, 0]
    assert float(mask[1:5, 1:5].sum()) == 0
    assert bool(mask[10:13, 10:13].all())
    without = ChangeConfig(radiometric_threshold=1.5, radiometric_seed=1.5, noise_floor=0.0)
    assert bool(decide(_evidence(z), without, scale=1)[0, 0, 2:4, 2:4].all())


def test_the_seed_threshold_cannot_be_below_the_threshold() -> None:
    with pytest.raises(ValueError, match="radiometric_seed"):
        ChangeConfig(radiometric_threshold=2.0, radiometric_seed=1.0)
