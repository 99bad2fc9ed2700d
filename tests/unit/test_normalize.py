"""DN <-> model space mapping, dtype casts that never wrap, and the output nodata choice."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdiff_cli.data.normalize import (
    BandScaling,
    Normalization,
    PercentileAccumulator,
    band_percentiles,
    cast_to_dtype,
    choose_output_nodata,
    from_model,
    reserve_nodata,
    scaling_for,
    to_model,
)

DTYPES = ["uint8", "uint16", "int16", "float32"]


def test_uint8_uses_the_full_range_and_other_types_their_percentiles() -> None:
    assert scaling_for("uint8", [(10.0, 20.0)] * 3) == BandScaling(
        low=(0.0,) * 3, high=(255.0,) * 3
    )
    scaling = scaling_for("uint16", [(100.0, 3000.0), (5.0, 5.0)])
    assert scaling.low == (100.0, 5.0)
    assert scaling.high == (3000.0, 6.0)  # a constant band still gets a usable range


def test_reference_range_maps_to_minus_one_and_one() -> None:
    scaling = BandScaling(low=(100.0,), high=(3000.0,))
    x = to_model(np.array([[[100.0, 1550.0, 3000.0, 6000.0]]]), scaling)
    np.testing.assert_allclose(x[0, 0], [-1.0, 0.0, 1.0, 2 * 5900 / 2900 - 1], atol=1e-6)  # no clip


@given(
    dtype=st.sampled_from(DTYPES),
    low=st.floats(-1000, 1000),
    width=st.floats(1, 60000),
    seed=st.integers(0, 2**16),
)
def test_round_trip_is_exact_after_casting_back(
    dtype: str, low: float, width: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    kind = np.dtype(dtype)
    if kind.kind in "iu":
        info = np.iinfo(kind)
        values = rng.integers(info.min, info.max, size=(2, 5, 7), endpoint=True).astype(kind)
    else:
        values = rng.normal(0, 1e4, size=(2, 5, 7)).astype(kind)
    scaling = BandScaling(low=(low, low), high=(low + width, low + width))
    back, clamped = cast_to_dtype(from_model(to_model(values, scaling), scaling), kind)
    assert clamped == 0
    if kind.kind in "iu":
        assert np.array_equal(back, values)
    else:
        np.testing.assert_allclose(back, values, rtol=1e-5, atol=1e-2)


@pytest.mark.parametrize(
    ("dtype", "value", "expected"),
    [("uint8", 300.7, 255), ("uint8", -3.0, 0), ("uint16", -5.0, 0), ("int16", 40000.0, 32767)],
)
def test_casts_clamp_instead_of_wrapping(dtype: str, value: float, expected: int) -> None:
    cast, clamped = cast_to_dtype(np.array([value, 12.4]), dtype)
    assert cast.tolist() == [expected, 12]
    assert clamped == 1


def test_nan_becomes_zero_and_is_counted_for_integers() -> None:
    cast, clamped = cast_to_dtype(np.array([math.nan, 1.6]), "uint16")
    assert cast.tolist() == [0, 2]
    assert clamped == 1


def test_output_nodata_marks_exactly_the_lr_invalid_pixels() -> None:
    assert choose_output_nodata("uint16", 0.0, lr_has_invalid=True) == 0.0
    assert math.isnan(choose_output_nodata("float32", None, lr_has_invalid=False) or 0.0)
    assert choose_output_nodata("uint8", None, lr_has_invalid=False) is None
    assert choose_output_nodata("int16", None, lr_has_invalid=True) == -32768.0
    assert choose_output_nodata("uint8", 300.0, lr_has_invalid=True) == 0.0  # invalid declared


def test_valid_pixels_equal_to_nodata_are_moved_off_it() -> None:
    values = np.array([[[0, 0, 5], [0, 9, 0]]], dtype=np.uint8)
    valid = np.array([[True, False, True], [True, True, True]])
    moved = reserve_nodata(values, valid, 0.0)
    assert moved == 3
    assert values.tolist() == [[[1, 0, 5], [1, 9, 1]]]  # the invalid pixel keeps nodata
    top = np.array([[[255, 3]]], dtype=np.uint8)
    assert reserve_nodata(top, np.ones((1, 2), bool), 255.0) == 1
    assert top.tolist() == [[[254, 3]]]


def test_normalization_round_trips_through_its_dict() -> None:
    norm = Normalization(p_low=1.0, p_high=99.0)
    assert Normalization.from_dict(norm.to_dict()) == norm
    with pytest.raises(ValueError, match="p_low"):
        Normalization(p_low=50.0, p_high=10.0)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16"])
def test_percentiles_are_the_same_whole_or_in_chunks(dtype: str) -> None:
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype)
    values = rng.integers(info.min, info.max, size=(2, 60, 50), endpoint=True).astype(dtype)
    valid = rng.random((60, 50)) > 0.2
    whole = band_percentiles(values, valid, (0.5, 99.5))
    chunked = PercentileAccumulator(dtype, 2, pixels=valid.size)
    for row in range(0, 60, 7):
        chunked.add(values[:, row : row + 7], valid[row : row + 7])
    assert chunked.percentiles((0.5, 99.5)) == whole
    expected = [np.percentile(values[b][valid], (0.5, 99.5), method="inverted_cdf") for b in (0, 1)]
    assert [tuple(map(float, e)) for e in expected] == [tuple(w) for w in whole]
