"""Exact per-band statistics of an output, gathered from its strips as they are written."""

from __future__ import annotations

import math

import numpy as np

#: Rows of a strip band merged at a time (16 rows of a 8192 px wide band: 1 MiB of float64).
CHUNK_ROWS = 16


class BandStatistics:
    """Exact running statistics of one band over the strips written (Chan et al.'s merge).

    Pixels count when they are valid, differ from the nodata value and are not NaN: GDAL's
    own rule, so the tags match what ``gdalinfo -stats`` computes.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the mean
        self.minimum = math.inf
        self.maximum = -math.inf

    def add(self, values: np.ndarray, valid: np.ndarray | None, nodata: float | None) -> None:
        """Take one strip of one band: ``values`` (rows, W), ``valid`` (rows, W) or None.

        Taken ``CHUNK_ROWS`` rows at a time, so the float64 copy it needs stays a few MiB
        whatever the strip's width (a whole 256 x 8192 strip band was 16 MiB).
        """
        for top in range(0, values.shape[0], CHUNK_ROWS):
            rows = slice(top, top + CHUNK_ROWS)
            self._add_rows(values[rows], None if valid is None else valid[rows], nodata)

    def _add_rows(self, values: np.ndarray, valid: np.ndarray | None, nodata: float | None) -> None:
        """Merge the statistics of a few rows of one band into the running ones."""
        keep = np.ones(values.shape, dtype=bool) if valid is None else valid.copy()
        if values.dtype.kind == "f":
            keep &= ~np.isnan(values)
        if nodata is not None and not math.isnan(nodata):
            keep &= values != np.asarray(nodata).astype(values.dtype)
        picked = values[keep].astype(np.float64)  # (N,)
        n = picked.size
        if n == 0:
            return
        mean = float(picked.mean())
        self.minimum = min(self.minimum, float(picked.min()))
        self.maximum = max(self.maximum, float(picked.max()))
        # Squared deviations in place: one float64 copy of the rows, not three.
        np.subtract(picked, mean, out=picked)
        m2 = float(np.square(picked, out=picked).sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    def tags(self, pixels: int) -> dict[str, str]:
        """GDAL's ``STATISTICS_*`` band tags for a band of ``pixels`` pixels; {} without data."""
        if self.count == 0:
            return {}
        return {
            "STATISTICS_MINIMUM": f"{self.minimum:.17g}",
            "STATISTICS_MAXIMUM": f"{self.maximum:.17g}",
            "STATISTICS_MEAN": f"{self.mean:.17g}",
            "STATISTICS_STDDEV": f"{math.sqrt(self.m2 / self.count):.17g}",
            "STATISTICS_VALID_PERCENT": f"{100.0 * self.count / pixels:.6g}",
        }
