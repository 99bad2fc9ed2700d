"""``refdiff upscale``: option parsing for the upscale tool."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, cast

import typer

from refdiff_cli import api
from refdiff_cli.cli import options as shared
from refdiff_cli.cli import render
from refdiff_cli.config import (
    SAMPLER_PRESETS,
    EngineName,
    MaskGrid,
    StartName,
    TilingConfig,
)
from refdiff_cli.errors import ConfigError

ENGINE_HELP = (
    "diffusion: the Ref-Diff model; guided: classical reference transfer (registration, "
    "colour match, trust weighting; CPU-fast); bicubic: LR upsampling only (a baseline); "
    "auto: diffusion when a model is available."
)


def parse_nodata(text: str | None) -> float | None:
    """Parse ``--nodata``: a number, or ``nan``; ConfigError (exit 2) otherwise."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(
            f"--nodata expects a number or nan, got {text!r}",
            hint="e.g. --nodata 0, --nodata -9999 or --nodata nan (float outputs)",
        ) from None
    return value


def resolve_jobs(
    lr: list[Path],
    ref: Path | None,
    mask: Path | None,
    output: Path | None,
    from_list: Path | None,
    mask_out: Path | None = None,
    trust_out: Path | None = None,
) -> list[Any]:
    """Turn positional inputs or a list file into upscale jobs with explicit output paths."""
    from refdiff_cli.geo.preflight import check_output_name
    from refdiff_cli.upscale.batch import check_layer_outputs, jobs_from_list, output_names
    from refdiff_cli.upscale.job import UpscaleJob

    if from_list is not None:
        if lr or ref or mask:
            raise ConfigError("--from-list replaces LR, --ref and --mask; give one or the other")
        if mask_out is not None or trust_out is not None:
            option = "--mask-out" if mask_out is not None else "--trust-out"
            raise ConfigError(f"{option} names one file: use it without --from-list")
        return jobs_from_list(from_list, output_dir=output)
    if not lr:
        raise ConfigError("no input: give LR raster(s) with --ref, or --from-list FILE")
    if ref is None:
        raise ConfigError(
            "--ref is required",
            hint="refdiff upscale lr.tif --ref ref.tif [--mask cd.tif] -o out.tif",
        )
    if output is None:
        raise ConfigError("-o/--output is required (a file, or a folder for several inputs)")
    check_output_name(output)
    if len(lr) > 1 or output.is_dir():
        if not output.is_dir():
            raise ConfigError(f"-o {output}: with several inputs, -o must be an existing folder")
        if mask_out is not None or trust_out is not None:
            option = "--mask-out" if mask_out is not None else "--trust-out"
            raise ConfigError(f"{option} names one file: use it with one LR input and -o FILE")
        outputs = output_names(lr, output)
    else:
        outputs = [output]
    check_layer_outputs(output, mask_out=mask_out, trust_out=trust_out)
    return [
        UpscaleJob(lr=p, ref=ref, mask=mask, output=o, mask_out=mask_out, trust_out=trust_out)
        for p, o in zip(lr, outputs, strict=True)
    ]


def upscale_command(
    ctx: typer.Context,
    lr: Annotated[
        list[Path],
        typer.Argument(
            help="Low-resolution GeoTIFF(s) to upscale.", show_default=False, metavar="LR"
        ),
    ] = [],  # noqa: B006
    ref: Annotated[
        Path | None,
        typer.Option(
            "--ref",
            help="Older high-resolution reference GeoTIFF (any CRS/grid).  [required without "
            "--from-list]",
        ),
    ] = None,
    mask: Annotated[
        Path | None,
        typer.Option(
            "--mask",
            help="Change mask GeoTIFF: nonzero where land cover changed. Without it the mask "
            "is estimated from where the registered reference disagrees with the LR.",
        ),
    ] = None,
    mask_out: Annotated[
        Path | None,
        typer.Option(
            "--mask-out",
            help="Also write the change mask the run used (given or estimated) on the output "
            "grid: uint8, 0 unchanged, 1 changed, 255 nodata.",
            dir_okay=False,
        ),
    ] = None,
    trust_out: Annotated[
        Path | None,
        typer.Option(
            "--trust-out",
            help="Also write the trust layers on the output grid (float32, NaN nodata): band 1 "
            "the reference's weight in each pixel (0 LR only, 1 reference detail), band 2 the "
            "uncertainty (expected absolute error, output units).",
            dir_okay=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        shared.output_option(
            "Output GeoTIFF, or a folder for several inputs.  [required without --from-list]"
        ),
    ] = None,
    from_list: Annotated[
        Path | None,
        typer.Option(
            "--from-list",
            help="CSV with columns lr,ref[,mask][,output]: paths relative to the CSV's folder "
            "(an empty mask is estimated), outputs to -o DIR when given.",
        ),
    ] = None,
    overwrite: Annotated[bool, shared.overwrite_option("Replace existing outputs.")] = False,
    skip_existing: Annotated[
        bool,
        typer.Option(
            "--skip-existing", help="Skip outputs already complete with the same parameters."
        ),
    ] = False,
    engine: Annotated[
        EngineName, typer.Option("--engine", help=ENGINE_HELP, envvar="REFDIFF_ENGINE")
    ] = "auto",
    model: shared.Model = None,
    model_sha256: shared.ModelSha256 = None,
    scale: Annotated[
        int | None,
        shared.scale_option(
            "Scale factor (guided and bicubic engines; must match the model otherwise)."
        ),
    ] = None,
    steps: shared.Steps = None,
    sampler: shared.Sampler = None,
    sampler_preset: Annotated[
        str | None,
        typer.Option(
            "--sampler-preset",
            help=f"Named sampler settings: {', '.join(SAMPLER_PRESETS)} "
            "(the paper's 256-step stochastic Heun).",
        ),
    ] = None,
    start: Annotated[
        StartName | None,
        typer.Option(
            "--start",
            help="Start the chain from 'noise', from sigma_max * LR_up ('lr'), or from 0 "
            "('mean': the model's conditional-mean estimate, no seed noise).",
        ),
    ] = None,
    churn: Annotated[
        float | None, typer.Option("--churn", help="EDM S_churn (0 = deterministic ODE sampling).")
    ] = None,
    seed: shared.Seed = 0,
    ref_strength: shared.RefStrength = 1.0,
    device: shared.Device = "auto",
    precision: shared.Precision = "fp32",
    batch_size: shared.BatchSize = 4,
    compile_network: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="Compile the model's network with torch.compile: 0.75-0.85x the time per "
            "network call after a compile of a minute or more (cached for later runs); pays "
            "for multi-step samplers and large scenes. Results equal up to float rounding.",
        ),
    ] = False,
    tile: Annotated[int | None, shared.tile_option("from the model card")] = None,
    overlap: Annotated[int | None, shared.overlap_option("from the model card")] = None,
    margin: Annotated[
        int | None,
        typer.Option(
            "--margin", help="Blend margin in output pixels [default: from the model card]."
        ),
    ] = None,
    bidx: Annotated[
        str | None,
        shared.bidx_option("LR bands to write, 1-based, e.g. 3,2,1 [default: all but alpha]."),
    ] = None,
    ref_bidx: Annotated[
        str | None,
        shared.ref_bidx_option(
            "Reference band of each LR band, 1-based, 0 for none [default: as -b, else by band "
            "name, else in order]."
        ),
    ] = None,
    rgb: Annotated[
        str | None,
        typer.Option(
            "--rgb",
            help="LR bands of red, green and blue, 1-based, e.g. 3,2,1: the model's bands; the "
            "others go through the guided transfer [default: from colour interpretation or "
            "band names].",
        ),
    ] = None,
    mask_grid: Annotated[
        str, shared.mask_grid_option("LR", note=", at its pixel size or the output's")
    ] = "own",
    mask_encoding: Annotated[
        str, shared.mask_encoding_option("auto, binary, grey, or a class table file (JSON/CSV).")
    ] = "auto",
    co: Annotated[
        list[str], typer.Option("--co", help="GDAL creation option NAME=VALUE (repeatable).")
    ] = [],  # noqa: B006
    cog: Annotated[bool, typer.Option("--cog", help="Write a Cloud Optimized GeoTIFF.")] = False,
    dtype: Annotated[
        str | None,
        typer.Option(
            "--dtype",
            help="Output data type: uint8, int8, uint16, int16, uint32, int32, float32 or "
            "float64 [default: the LR's]. Values are rounded half to even and clamped to the "
            "type's range, never rescaled.",
        ),
    ] = None,
    nodata: Annotated[
        str | None,
        typer.Option(
            "--nodata",
            help="Output nodata value: a number valid for the output type, or nan for float "
            "types [default: the LR's].",
        ),
    ] = None,
    dry_run: Annotated[
        bool, shared.dry_run_option("Validate and plan only: grid, tiles, sizes, memory.")
    ] = False,
    as_json: shared.Json = False,
) -> int:
    """Super-resolve LR raster(s) with a reference (and a change mask) into georeferenced GeoTIFFs.

    Example: refdiff upscale lr.tif --ref ref.tif --mask cd.tif -o out.tif
    (without --mask, the change mask is estimated; --mask-out writes it)
    """
    options = api.upscale_options(
        engine=engine,
        **shared.ModelSettings(
            model, model_sha256, steps, sampler, seed, ref_strength, device, precision, batch_size
        )._asdict(),
        scale=scale,
        tiling=TilingConfig(tile_px=tile, overlap_px=overlap, margin_px=margin),
        sampler_preset=sampler_preset,
        start=start,
        S_churn=churn,
        compile=compile_network,
        bands=shared.bands(bidx),
        ref_bands=shared.ref_bands(ref_bidx),
        rgb=shared.parse_bands(rgb, "--rgb"),
        mask_grid=cast(MaskGrid, shared.resolve_mask_grid(mask_grid, image_role="lr")),
        mask_encoding=mask_encoding,
        creation_options=tuple(co),
        cog=cog,
        overwrite=overwrite,
        skip_existing=skip_existing,
        dry_run=dry_run,
        dtype=dtype,
        nodata=parse_nodata(nodata),
    )
    jobs = resolve_jobs(lr, ref, mask, output, from_list, mask_out, trust_out)
    verbosity = ctx.obj["verbosity"] if ctx.obj else 0
    from refdiff_cli.upscale.distributed import World

    main_rank = World.from_env().rank == 0  # under torchrun, rank 0 alone speaks
    if not main_rank and verbosity <= 0:
        render.configure_logging(-1)
    progress = render.ProgressRenderer(enabled=verbosity >= 0 and not dry_run and main_rank)
    try:
        report = api.run_upscale(jobs, options, on_event=progress)
    finally:
        progress.close()
    if not main_rank:
        return report.exit_code
    if as_json:
        render.print_json(report.to_dict() if len(jobs) > 1 else report.items[0].to_dict())
    else:
        render.print_batch_summary(report)
    if len(jobs) == 1 and report.failed:
        render.print_error(report.failed[0].message or "failed")
    elif report.failed:  # each failure was logged above; the last line sums them up
        failed = [f"{item.output.name} ({item.error_class})" for item in report.failed]
        render.print_error(
            f"{len(failed)} of {len(jobs)} items failed: {', '.join(failed[:3])}"
            + (f" and {len(failed) - 3} more" if len(failed) > 3 else "")
        )
    return report.exit_code


def register(app: typer.Typer) -> None:
    """Add the command to the app."""
    app.command("upscale", no_args_is_help=True)(upscale_command)
