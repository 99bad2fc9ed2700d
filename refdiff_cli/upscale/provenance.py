"""How an output records what made it: the parameters hash (``--skip-existing``), the
binding a resumed run must share with the interrupted one, and the GDAL provenance tags."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from typing import Any

from refdiff_cli import __version__
from refdiff_cli.config import UpscaleOptions, to_dict
from refdiff_cli.data.tiling import TilePlan
from refdiff_cli.geo import raster_info, read, write
from refdiff_cli.upscale.engines import Engine
from refdiff_cli.upscale.job import UpscaleJob
from refdiff_cli.upscale.pipeline import Layer, ModelSpace


def resume_binding(
    job: UpscaleJob,
    engine: Engine,
    options: UpscaleOptions,
    writer: write.RasterWriter,
    layers: Sequence[Layer],
) -> str:
    """Hash of what the strips of a resumed run must share with the interrupted run's: the
    parameters and inputs (``params_hash``), the inputs' stamps (size, mtime, inode), the
    device, the output's data type, nodata and block height, and the layers written."""
    inputs = [p for p in (job.lr, job.ref, job.mask) if p is not None]
    relevant = {
        "params": params_hash(job, engine, options),
        "stamps": [dataclasses.astuple(raster_info.stamp(p)) for p in inputs],
        "device": str(getattr(engine, "device", "cpu")),
        "output": [writer.dtype.name, repr(writer.nodata), writer.block_rows, writer.count],
        "layers": list(layers),
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def params_hash(job: UpscaleJob, engine: Engine, options: UpscaleOptions) -> str:
    """Hash of everything that determines the output bytes (for --skip-existing)."""
    relevant = {
        "version": __version__,
        "engine": engine.describe(),
        "options": {
            k: v
            for k, v in to_dict(options).items()
            if k not in ("overwrite", "skip_existing", "dry_run", "device", "batch_size")
        },
        "inputs": [
            raster_info.fingerprint(p) for p in (job.lr, job.ref, job.mask) if p is not None
        ],
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def provenance_tags(
    job: UpscaleJob,
    engine: Engine,
    options: UpscaleOptions,
    plan: TilePlan,
    sources: read.Sources,
    space: ModelSpace,
    band_paths: list[dict[str, Any]],
) -> dict[str, str]:
    """GDAL metadata recording how the output was made (REFDIFF_COMPLETE is added last);
    ``band_paths`` is ``BandRoutes.paths``: each output band's path."""
    return {
        "REFDIFF_VERSION": __version__,
        "REFDIFF_ENGINE": json.dumps(engine.describe(), sort_keys=True),
        "REFDIFF_MODEL_SHA256": engine.sha256 or "none",
        "REFDIFF_SCALE": str(engine.scale),
        "REFDIFF_SEED": str(options.seed),
        "REFDIFF_TILE_PX": str(plan.tile_px),
        "REFDIFF_OVERLAP_PX": str(plan.overlap_px),
        "REFDIFF_MARGIN_PX": str(plan.margin_px),
        "REFDIFF_REF_COVERAGE": f"{sources.ref_coverage:.4f}",
        "REFDIFF_MASK_COVERAGE": f"{sources.mask_coverage:.4f}",
        "REFDIFF_BANDS": json.dumps(
            {
                "lr": sources.lr_bands,
                "ref": sources.ref_bands,
                "paths": band_paths,
            }
        ),
        "REFDIFF_NORMALIZATION": json.dumps(
            {
                "lr": space.lr.to_dict(),
                "ref": space.ref.to_dict(),
                "mask": space.mask_mode if space.mask is None else space.mask.to_dict(),
            },
            sort_keys=True,
        ),
        "REFDIFF_INPUTS": json.dumps(
            {
                role: "estimated" if p is None else raster_info.fingerprint(p)
                for role, p in (("lr", job.lr), ("ref", job.ref), ("mask", job.mask))
            },
            sort_keys=True,
        ),
        "REFDIFF_OPTIONS": json.dumps(to_dict(options), sort_keys=True),
        "REFDIFF_PARAMS_HASH": params_hash(job, engine, options),
    }
