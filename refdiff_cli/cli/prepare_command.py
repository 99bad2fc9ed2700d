"""``refdiff prepare``: option parsing for the prepare tool."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import typer
from rich.console import Console
from rich.table import Table

from refdiff_cli.cli import options as shared
from refdiff_cli.cli import render

LAYOUT_HELP = (
    "Source layout; auto: per SRC, a .csv list, a cd or paper folder, or an image folder with "
    "--synthesize-changes."
)
#: --layout and --mask-grid values (``data.prepare_sources.LayoutOption`` and
#: ``MaskGridOption``: not imported here, to keep ``refdiff --help`` free of torch).
LayoutChoice = Literal["auto", "cd", "paper", "csv", "images"]
MaskGridChoice = Literal["own", "ref", "hr"]
MASK_HELP = (
    "auto (cd: binary, paper: grey class codes, CSV: from the values), binary, grey, or a "
    "class table file (JSON/CSV)."
)


def print_summary(report: Any) -> None:
    """Human summary on stdout: the sources (in a dry run), then the chip counts."""
    console = Console(no_color="NO_COLOR" in os.environ, highlight=False)
    if report.status == "dry-run":
        table = Table(show_edge=False, pad_edge=False, box=None)
        for column in ("source", "layout", "split", "size", "chips"):
            table.add_column(column)
        for s in report.sources:
            chips = str(s.chips) if s.skipped is None else f"0 ({s.skipped})"
            table.add_row(s.name, s.layout, s.split, f"{s.shape[1]}x{s.shape[0]}", chips)
        console.print(table)
    verb = "would write" if report.status == "dry-run" else "wrote"
    chips = report.chips
    line = (
        f"{verb} {chips['train'] + chips['val']} chips (train {chips['train']}, val "
        f"{chips['val']}) from {len(report.sources)} images to {report.output}"
    )
    skipped = []
    if report.skipped_chips:
        skipped.append(f"{report.skipped_chips} chips with too few valid pixels")
    if report.skipped_images:
        skipped.append(f"{len(report.skipped_images)} images")
    if skipped:
        line += "; skipped " + " and ".join(skipped)
    console.print(line)


def prepare_command(
    ctx: typer.Context,
    srcs: Annotated[
        list[Path],
        typer.Argument(
            help="Dataset folders (cd: A/ B/ label/; paper: HR_512/ Ref/ CD_mask/) or CSV lists "
            "of GeoTIFF triplets (hr,ref,mask).",
            show_default=False,
            metavar="SRC",
        ),
    ],
    output: Annotated[Path, shared.output_option("Chips folder to write.")],
    layout: Annotated[LayoutChoice, shared.layout_option(LAYOUT_HELP)] = "auto",
    scale: Annotated[
        int, shared.scale_option("Super-resolution factor; chip offsets are multiples.")
    ] = 8,
    chip: Annotated[int, typer.Option("--chip", help="Chip edge in HR pixels.")] = 256,
    stride: Annotated[
        int | None, typer.Option("--stride", help="Step between chips [default: the chip size].")
    ] = None,
    val_fraction: Annotated[
        float,
        typer.Option(
            "--val-fraction", help="Share of images without a train_/val_/test_ prefix in val."
        ),
    ] = 0.2,
    seed: Annotated[int, shared.seed_option("Seed of the split and of synthesised changes.")] = 0,
    mask_encoding: Annotated[str, shared.mask_encoding_option(MASK_HELP)] = "auto",
    bidx: Annotated[str | None, shared.bidx_option("Bands to use, 1-based, e.g. 3,2,1.")] = None,
    mask_grid: Annotated[str, shared.mask_grid_option("HR", where="CSV sets. ")] = "own",
    min_valid: Annotated[
        float, typer.Option("--min-valid", help="Skip chips with fewer valid HR pixels (0-1].")
    ] = 0.5,
    synthesize_changes: Annotated[
        bool,
        typer.Option(
            "--synthesize-changes",
            help="Single-date images: make Ref and mask from HR by seeded random alterations.",
        ),
    ] = False,
    overwrite: Annotated[
        bool, shared.overwrite_option("Replace an existing chips folder.")
    ] = False,
    dry_run: Annotated[
        bool, shared.dry_run_option("List sources and chip counts; write nothing.")
    ] = False,
    as_json: Annotated[bool, shared.json_option("Print a JSON summary on stdout.")] = False,
) -> int:
    """Write training chips (shards + manifest.json) from dataset folders or GeoTIFF lists.

    Example: refdiff prepare data/levir data/sztaki -o chips/ --scale 8 --chip 128
    """
    from refdiff_cli.prepare.options import PrepareOptions
    from refdiff_cli.prepare.run import prepare

    options = PrepareOptions(
        layout=layout,
        scale=scale,
        chip_px=chip,
        stride_px=stride,
        val_fraction=val_fraction,
        seed=seed,
        mask_encoding=mask_encoding,
        bands=shared.bands(bidx),
        mask_grid=cast(MaskGridChoice, shared.resolve_mask_grid(mask_grid, image_role="hr")),
        synthesize_changes=synthesize_changes,
        min_valid=min_valid,
        overwrite=overwrite,
        dry_run=dry_run,
    )
    verbosity = ctx.obj["verbosity"] if ctx.obj else 0
    progress = render.ProgressRenderer(enabled=verbosity >= 0 and not dry_run)
    try:
        report = prepare(srcs, output, options, on_event=progress)
    finally:
        progress.close()
    if as_json:
        render.print_json(report.to_dict())
    else:
        with render.reader_may_leave():
            print_summary(report)
    return 0


def register(app: typer.Typer) -> None:
    """Add the command to the app."""
    app.command("prepare", no_args_is_help=True)(prepare_command)
