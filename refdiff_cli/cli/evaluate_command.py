"""``refdiff evaluate``: option parsing for the evaluation tool."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, cast

import typer

from refdiff_cli import api
from refdiff_cli.cli import options as shared
from refdiff_cli.cli import render
from refdiff_cli.config import MaskGrid, TilingConfig
from refdiff_cli.errors import ConfigError

#: --layout and --lr-kind values (``evaluate_inputs.LayoutName``, ``data.layouts.LrKind``:
#: not imported here, to keep ``refdiff --help`` free of numpy and rasterio).
LayoutChoice = Literal["auto", "cd", "paper", "csv"]
LrKindChoice = Literal["bicubic", "real"]
MaskSourceChoice = Literal["label", "estimated", "none"]  # ``evaluate_options.MaskSource``

METHODS_HELP = (
    "Comma-separated engine methods: bicubic (LR upsampling), ref (copy the reference), hpf "
    "(bicubic + the reference's high-pass detail where unchanged), guided (registered, "
    "colour-matched reference detail where it agrees with the LR), model (the diffusion "
    "model) [default: bicubic,ref,hpf,guided, plus model when one is available]."
)


def parse_methods(text: str | None) -> tuple[str, ...] | None:
    """Parse "bicubic,ref" into ("bicubic", "ref"); None keeps the default."""
    if text is None:
        return None
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parse_sr_dirs(values: list[str]) -> tuple[tuple[str, Path], ...]:
    """Parse repeated ``NAME=DIR`` values; ConfigError naming a malformed one."""
    parsed = []
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or not name.strip() or not folder.strip():
            raise ConfigError(
                f"--sr-dir {value!r} is not NAME=DIR", hint="e.g. --sr-dir esrgan=results/esrgan"
            )
        parsed.append((name.strip(), Path(folder.strip())))
    return tuple(parsed)


def parse_figure_images(text: str) -> int | tuple[str, ...]:
    """A number of figure rows ("4") or comma-separated image names ("a,b")."""
    stripped = text.strip()
    if stripped.isdigit():
        return int(stripped)
    names = tuple(part.strip() for part in stripped.split(",") if part.strip())
    if not names:
        raise ConfigError("--figure-images expects a number or image names like a,b")
    return names


def evaluate_command(
    ctx: typer.Context,
    dataset: Annotated[
        Path,
        typer.Argument(
            help="Dataset: a cd folder (A/, B/, label/), a paper folder (HR_512/, Ref/, "
            "CD_mask/, Bic_LR_D8_32/...) or a CSV of GeoTIFF sets lr,ref,mask,hr.",
            show_default=False,
            metavar="DATASET",
        ),
    ],
    layout: Annotated[
        LayoutChoice, shared.layout_option("Dataset layout (auto: from the path).")
    ] = "auto",
    scale: Annotated[
        int | None,
        shared.scale_option(
            "SR factor [default: the paper layout's LR folder, else the model's, else 8]."
        ),
    ] = None,
    lr_kind: Annotated[
        LrKindChoice | None,
        typer.Option("--lr-kind", help="Paper layout: the bicubic or the real LR folder."),
    ] = None,
    methods: Annotated[str | None, typer.Option("--methods", help=METHODS_HELP)] = None,
    sr_dir: Annotated[
        list[str],
        typer.Option(
            "--sr-dir", help="NAME=DIR: score existing SR images named like the items (repeatable)."
        ),
    ] = [],  # noqa: B006
    model: shared.Model = None,
    model_sha256: shared.ModelSha256 = None,
    steps: shared.Steps = None,
    sampler: shared.Sampler = None,
    seed: shared.Seed = 0,
    ref_strength: shared.RefStrength = 1.0,
    device: shared.Device = "auto",
    precision: shared.Precision = "fp32",
    batch_size: shared.BatchSize = 4,
    tile: Annotated[int | None, shared.tile_option("each engine's")] = None,
    overlap: Annotated[int | None, shared.overlap_option("each engine's")] = None,
    bidx: Annotated[str | None, shared.bidx_option("CSV sets: LR/HR bands, 1-based.")] = None,
    ref_bidx: Annotated[str | None, shared.ref_bidx_option()] = None,
    mask_grid: Annotated[str, shared.mask_grid_option("LR", where="CSV sets. ")] = "own",
    mask_source: Annotated[
        MaskSourceChoice,
        typer.Option(
            "--mask-source",
            help="The mask the methods get: label (the dataset's), estimated (as upscale "
            "without --mask; also scored against the labels beside change vector analysis) "
            "or none (all changed). Regions are always the labels'.",
        ),
    ] = "label",
    mask_encoding: Annotated[
        str,
        shared.mask_encoding_option(
            "auto (cd: binary, paper: grey codes, CSV: from the values), binary, grey, or a "
            "class table file."
        ),
    ] = "auto",
    border: Annotated[
        int, typer.Option("--border", help="Pixels cropped from every side before metrics.")
    ] = 0,
    data_range: Annotated[
        float | None,
        typer.Option(
            "--data-range",
            help="Peak range for PSNR/SSIM [default: 255 for uint8, else the HR's max - min].",
        ),
    ] = None,
    rgb: Annotated[
        bool,
        typer.Option("--rgb/--no-rgb", help="Treat 3-band images as R,G,B (Y-channel metrics)."),
    ] = True,
    lpips_weights: Annotated[
        Path | None,
        typer.Option("--lpips-weights", help="LPIPS-Alex .safetensors file (else no LPIPS)."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Evaluate the first N images only.")
    ] = None,
    csv_path: Annotated[
        Path | None,
        typer.Option("--csv", help="Write one row per image x method x region to this CSV."),
    ] = None,
    figure: Annotated[
        Path | None, typer.Option("--figure", help="Write a PNG comparison grid here.")
    ] = None,
    figure_images: Annotated[
        str,
        typer.Option(
            "--figure-images", help="Figure rows: a number (most changed first) or names a,b."
        ),
    ] = "4",
    as_json: shared.Json = False,
) -> int:
    """Score SR methods on a test set, overall and in changed and unchanged regions.

    Example: refdiff evaluate data/levir --scale 8 --methods bicubic,ref,hpf --json
    """
    options = dict(
        methods=parse_methods(methods),
        sr_dirs=parse_sr_dirs(sr_dir),
        layout=layout,
        scale=scale,
        lr_kind=lr_kind,
        mask_encoding=mask_encoding,
        bands=shared.bands(bidx),
        ref_bands=shared.ref_bands(ref_bidx),
        mask_grid=cast(MaskGrid, shared.resolve_mask_grid(mask_grid, image_role="lr")),
        **shared.ModelSettings(
            model, model_sha256, steps, sampler, seed, ref_strength, device, precision, batch_size
        )._asdict(),
        tiling=TilingConfig(tile_px=tile, overlap_px=overlap),
        border=border,
        data_range=data_range,
        rgb=rgb,
        lpips_weights=lpips_weights,
        limit=limit,
        csv_path=csv_path,
        figure_path=figure,
        figure_images=parse_figure_images(figure_images),
        mask_source=mask_source,
    )
    verbosity = ctx.obj["verbosity"] if ctx.obj else 0
    progress = render.ProgressRenderer(enabled=verbosity >= 0)
    try:
        report = api.evaluate(dataset, on_event=progress, **options)
    finally:
        progress.close()
    if as_json:
        render.print_json(report.to_dict())
    else:
        render.print_evaluation(report.to_dict())
    if report.figure_error is not None:  # after the metrics, which it must not take along
        render.print_error(str(report.figure_error))
        return report.figure_error.exit_code
    return 0


def register(app: typer.Typer) -> None:
    """Add the command to the app."""
    app.command("evaluate", no_args_is_help=True)(evaluate_command)
