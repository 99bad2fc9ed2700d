"""What one upscale is asked and what it answers: ``UpscaleJob`` (the files in and out) and
``UpscaleReport`` (what the run did or, dry, would do)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from refdiff_cli.config import to_dict


@dataclasses.dataclass(frozen=True, kw_only=True)
class UpscaleJob:
    """One output to produce: LR, reference and change mask in, one GeoTIFF out.

    Attributes:
        mask: the change mask file, or None to estimate it from LR and reference
            (``reference/change.py``).
        mask_out: where to write the mask the run used (given or estimated) on the output
            grid, uint8 0 unchanged / 1 changed / 255 nodata; None writes none.
        trust_out: where to write the trust layers (``reference/trust.py``) on the output grid,
            float32: band 1 the reference weight, band 2 the uncertainty in output units,
            NaN nodata; None writes none.
    """

    lr: Path
    ref: Path
    mask: Path | None
    output: Path
    mask_out: Path | None = None
    trust_out: Path | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class UpscaleReport:
    """What one upscale did (or, with ``dry_run``, would do); rendered by the CLI or as JSON."""

    output: Path
    status: str  # "written", "dry-run" or "shared" (torchrun ranks other than 0)
    width: int
    height: int
    bands: int
    dtype: str
    crs: str
    transform: tuple[float, ...]
    tiles: int
    tile_px: int
    overlap_px: int
    ref_coverage: float
    mask_coverage: float
    mask_source: str  # "file" or "estimated"
    mask_out: Path | None  # where the mask used was written (--mask-out)
    trust_out: Path | None  # where the trust layers were written (--trust-out)
    seconds: float
    output_bytes_raw: int
    peak_memory_estimate_bytes: int
    free_bytes: int
    engine: dict[str, Any]
    clamped_values: int = 0
    warnings: tuple[str, ...] = ()
    #: Dry runs: ``seconds`` (expected run time: the preflight as measured plus every tile
    #: batch at the measured rate), ``batch_seconds`` and ``batch_tiles`` (one batch measured
    #: on ``device``), ``batches``. None for written outputs.
    time_estimate: dict[str, Any] | None = None
    #: Strips (and the tiles behind them) taken over verified from an interrupted run.
    resumed_strips: int = 0
    resumed_tiles: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings)."""
        return to_dict(self)
