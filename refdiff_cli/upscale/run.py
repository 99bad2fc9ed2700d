"""The upscale tool's one job: check the inputs, plan the output, then run the tile pipeline
and stream the finished strips (and the layer files) through the safe writer."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy.typing as npt

from refdiff_cli.config import UpscaleOptions
from refdiff_cli.data import normalize
from refdiff_cli.data.tiling import first_tile
from refdiff_cli.errors import InputError
from refdiff_cli.events import EventHandler, Progress, Started, ignore_event
from refdiff_cli.geo import grid as geogrid
from refdiff_cli.geo import preflight, read, write
from refdiff_cli.upscale.bands import BandRoutes, RoutedEngine, route_bands
from refdiff_cli.upscale.distributed import TileRows
from refdiff_cli.upscale.engines import Engine
from refdiff_cli.upscale.estimate import memory_estimate, time_estimate
from refdiff_cli.upscale.job import UpscaleJob, UpscaleReport
from refdiff_cli.upscale.journal import open_journal
from refdiff_cli.upscale.outputs import (
    layer_bands,
    layer_writer,
    output_layers,
    output_type,
    strip_arrays,
)
from refdiff_cli.upscale.pipeline import model_space, sr_strips, sr_tiles, tile_plan
from refdiff_cli.upscale.provenance import provenance_tags, resume_binding

logger = logging.getLogger(__name__)


def upscale(
    job: UpscaleJob,
    engine: Engine,
    options: UpscaleOptions,
    *,
    on_event: EventHandler = ignore_event,
    rows: TileRows | None = None,
) -> UpscaleReport:
    """Super-resolve ``job.lr`` with ``engine`` and publish a georeferenced GeoTIFF.

    Steps: check the inputs' headers, decide the output grid and the tile plan, check the
    output location and free space (all fast whatever the declared size), then fully decode
    the inputs, sample tile batches and stream finished strips through the safe writer
    (temporary file, verification, no-clobber publish).

    Under torchrun, ``rows`` shares the tile rows among the ranks: rank 0 writes, the others
    only compute their rows and send them (their report's status is "shared").
    """
    started = time.monotonic()
    checked = read.check_sources(
        job.lr,
        job.ref,
        job.mask,
        scale=engine.scale,
        bands=options.bands,
        ref_bands=options.ref_bands,
        mask_grid=options.mask_grid,
        partial_ref=True,
    )
    routes = band_routes(checked, engine, options)
    if not routes.is_direct:
        engine = RoutedEngine(engine, routes, ref_strength=options.ref_strength)
    out_grid = geogrid.upscaled(checked.lr_grid, engine.scale)
    plan = tile_plan(out_grid.shape, engine, options)
    n_bands = len(checked.lr_bands)
    dtype, nodata_override = output_type(checked.lr.dtype, options)
    raw_bytes = out_grid.width * out_grid.height * n_bands * dtype.itemsize
    inputs = [p for p in (job.lr, job.ref, job.mask) if p is not None]
    free = preflight.preflight_output(
        job.output, inputs=inputs, overwrite=options.overwrite, raw_bytes=raw_bytes
    )
    pixels = out_grid.width * out_grid.height
    for layer_path, layer_bytes in ((job.mask_out, pixels), (job.trust_out, 8 * pixels)):
        if layer_path is not None:
            preflight.preflight_output(
                layer_path, inputs=inputs, overwrite=options.overwrite, raw_bytes=layer_bytes
            )
    sources = read.decode_sources(checked, percentiles=engine.normalization.percentiles)
    space = model_space(sources, options.mask_encoding, routes)
    report = UpscaleReport(
        output=job.output,
        status="dry-run",
        width=out_grid.width,
        height=out_grid.height,
        bands=n_bands,
        dtype=dtype.name,
        crs=out_grid.crs.to_string(),
        transform=tuple(out_grid.transform)[:6],
        tiles=len(plan.tiles),
        tile_px=plan.tile_px,
        overlap_px=plan.overlap_px,
        ref_coverage=sources.ref_coverage,
        mask_coverage=sources.mask_coverage,
        mask_source=space.mask_mode,
        mask_out=job.mask_out,
        trust_out=job.trust_out,
        seconds=0.0,
        output_bytes_raw=raw_bytes,
        peak_memory_estimate_bytes=memory_estimate(
            plan, out_grid.width, n_bands + layer_bands(job), options.batch_size, engine
        ),
        free_bytes=free,
        engine=engine.describe(),
        warnings=sources.warnings,
    )
    if options.dry_run:
        estimate = time_estimate(
            sources, out_grid, engine, plan, space, options, spent=time.monotonic() - started
        )
        return dataclasses.replace(report, time_estimate=estimate)

    layers = output_layers(job)
    if rows is not None and not rows.writer:
        with read.SourceReader(sources, out_grid) as reader:
            start = first_tile(plan, rows.start_row(0))
            tiles = (plan.tiles[i] for i in rows.mine(plan, start))
            rows.send(
                plan,
                sr_tiles(
                    reader,
                    engine,
                    tiles,
                    space,
                    seed=options.seed,
                    batch_size=options.batch_size,
                    layers=layers,
                ),
            )
        return dataclasses.replace(report, status="shared", seconds=time.monotonic() - started)

    nodata = nodata_override
    if nodata is None:
        nodata = normalize.choose_output_nodata(
            dtype, sources.lr.nodata, lr_has_invalid=sources.lr_has_invalid
        )
    band_paths = routes.paths(engine, sources.lr_bands, sources.ref_bands)
    tags = provenance_tags(job, engine, options, plan, sources, space, band_paths)
    on_event(Started(task=job.output.name, total=len(plan.tiles)))
    clamped = 0
    with (
        write.RasterWriter(
            job.output,
            out_grid,
            count=n_bands,
            dtype=dtype,
            nodata=nodata,
            band_descriptions=sources.band_descriptions,
            creation_options=options.creation_options,
            overwrite=options.overwrite,
            cog=options.cog,
            overviews=True,
            rgb=write.output_is_rgb(
                job.lr,
                sources.lr_bands,
                descriptions=sources.band_descriptions,
                model_bands=_model_band_names(engine) if routes.is_direct else None,
            ),
        ) as writer,
        read.SourceReader(sources, out_grid) as reader,
        contextlib.ExitStack() as extra,
    ):
        mask_writer = trust_writer = None
        if job.mask_out is not None:
            mask_writer = extra.enter_context(layer_writer("mask", job.mask_out, out_grid, options))
        if job.trust_out is not None:
            trust_writer = extra.enter_context(
                layer_writer("trust", job.trust_out, out_grid, options)
            )

        journal = extra.enter_context(  # left first: deleted or kept under the output's lock
            open_journal(
                job.output,
                resume_binding(job, engine, options, writer, layers),
                restart=options.overwrite,
            )
        )
        first_row = journal.resumed_rows if rows is None else rows.start_row(journal.resumed_rows)
        resumed_tiles = first_tile(plan, first_row)

        def progress(done: int) -> None:
            on_event(Progress(task=job.output.name, done=done, total=len(plan.tiles)))

        def write_rows(row_off: int, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
            nonlocal clamped
            clamped += int(arrays["clamped"][0])
            writer.write_strip(row_off, arrays["image"], arrays["valid"])
            if mask_writer is not None:
                mask_writer.write_strip(row_off, arrays["mask"], arrays["valid"])
            if trust_writer is not None:
                trust_writer.write_strip(row_off, arrays["trust"], arrays["valid"])

        if resumed_tiles:
            progress(resumed_tiles)
        for row_off, arrays in journal.replay():
            write_rows(row_off, arrays)
        strips = sr_strips(
            reader,
            engine,
            plan,
            space,
            seed=options.seed,
            batch_size=options.batch_size,
            block_rows=writer.block_rows,
            on_tiles=progress,
            layers=layers,
            first_row=first_row,
            rows=rows,
        )
        for strip in strips:
            arrays = strip_arrays(strip, n_bands, dtype, nodata, layers)
            write_rows(strip.row_off, arrays)
            journal.commit(strip.row_off, arrays)
            del strip, arrays  # freed before the next strip is computed: peak memory
        if clamped:
            logger.info("%d output values were clamped to the %s range", clamped, dtype.name)
        writer.finalize(
            tags,
            band_tags=[
                {"REFDIFF_PATH": row["path"], "REFDIFF_REF_BAND": str(row["ref_band"] or "none")}
                for row in band_paths
            ],
            before_publish=lambda: check_inputs_unchanged(sources),
        )
        if mask_writer is not None:
            mask_writer.finalize({**tags, "REFDIFF_LAYER": "change mask used"})
        if trust_writer is not None:
            trust_writer.finalize({**tags, "REFDIFF_LAYER": "trust: reference weight, uncertainty"})
    seconds = time.monotonic() - started
    return dataclasses.replace(
        report,
        status="written",
        seconds=seconds,
        clamped_values=clamped,
        resumed_strips=journal.resumed_strips,
        resumed_tiles=resumed_tiles,
    )


def _model_band_names(engine: Engine) -> tuple[str, ...] | None:
    """The band names of the engine's model card (("red", "green", "blue")), or None."""
    card = getattr(getattr(engine, "model", None), "card", None)
    bands = getattr(card, "bands", None)
    return tuple(bands) if bands is not None else None


def band_routes(
    checked: read.CheckedSources, engine: Engine, options: UpscaleOptions
) -> BandRoutes:
    """Each output band's path (``bands.py``) for these inputs and this engine."""
    return route_bands(
        names=checked.lr.band_names(checked.lr_bands),
        lr_bands=checked.lr_bands,
        ref_of_lr=checked.ref_of_lr,
        rgb=options.rgb,
        engine=engine,
        lr_path=checked.lr.path,
        ref_path=checked.ref.path,
    )


def check_inputs_unchanged(sources: read.Sources) -> None:
    """Abort the publish if an input changed since the preflight (exit 3, nothing published)."""
    changed = sources.changed_inputs()
    if changed:
        raise InputError(
            f"input changed during the run: {', '.join(map(str, changed))}; nothing was published",
            hint="rerun once the input is final",
        )
