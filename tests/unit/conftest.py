"""Fixtures shared by the unit tests."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch

from tests.conftest import SAMPLE_DATA


@pytest.fixture(scope="module")
def hr() -> torch.Tensor:
    """(1, 3, 256, 256) crop of the sample scene's ground truth, model space ([-1, 1])."""
    with rasterio.open(SAMPLE_DATA / "hr.tif") as src:
        values = src.read(window=((64, 320), (64, 320))).astype(np.float32)
    return torch.from_numpy(values)[None] / 127.5 - 1.0
