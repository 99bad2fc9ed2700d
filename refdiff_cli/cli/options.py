"""Options that several commands share, declared once (rasterio's click options, the typer way)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from refdiff_cli.config import Precision as PrecisionName
from refdiff_cli.config import SamplerName
from refdiff_cli.errors import ConfigError

Model = Annotated[
    Path | None,
    typer.Option(
        "--model",
        help="Model .safetensors file [default: the bundled model].",
        envvar="REFDIFF_MODEL",
    ),
]
ModelSha256 = Annotated[
    str | None,
    typer.Option(
        "--model-sha256",
        help="Refuse the model unless its sha256 matches.",
        envvar="REFDIFF_MODEL_SHA256",
    ),
]
Steps = Annotated[
    int | None, typer.Option("--steps", help="Sampler steps [default: from the model card].")
]
Sampler = Annotated[
    SamplerName | None,
    typer.Option("--sampler", help="ODE sampler [default: from the model card]."),
]
RefStrength = Annotated[
    float,
    typer.Option(
        "--ref-strength",
        help="Weight of the reference, 0-4: 0 ignores it (LR only), 1 as trained, above 1 "
        "pushes further towards it (guided and diffusion engines).",
    ),
]
Seed = Annotated[
    int,
    typer.Option(
        "--seed",
        help="Seed of every random draw; the same seed gives the same result.",
        envvar="REFDIFF_SEED",
    ),
]
Device = Annotated[
    str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.", envvar="REFDIFF_DEVICE")
]
Precision = Annotated[
    PrecisionName,
    typer.Option(
        "--precision",
        help="Compute precision (fp16: GPU only; bf16: fast on GPUs and CPUs with bf16 "
        "instructions).",
        envvar="REFDIFF_PRECISION",
    ),
]
BatchSize = Annotated[
    int,
    typer.Option(
        "--batch-size",
        help="Tiles per engine call (on the CPU the bytes do not depend on it).",
        envvar="REFDIFF_BATCH_SIZE",
    ),
]
RefBidx = Annotated[
    str | None, typer.Option("--ref-bidx", help="Reference bands, 1-based [default: as -b].")
]
Json = Annotated[bool, typer.Option("--json", help="Print a JSON report on stdout.")]


#: ``--mask-grid`` values, the same in upscale, evaluate and prepare: a mask without
#: georeferencing lies on the grid of the reference ("ref") or of the image the command works
#: on ("image": the LR in upscale and evaluate, the HR in prepare).
MASK_GRID_CHOICES = ("own", "ref", "image")
MASK_GRID_METAVAR = "<own|ref|image>"


def mask_grid_help(image: str, *, where: str = "", note: str = "") -> str:
    """Help of ``--mask-grid`` where the command's image is ``image`` ("LR", "HR")."""
    return (
        f"{where}Masks without georeferencing: 'ref' (on the reference's grid) or 'image' (on "
        f"the {image}'s grid{note}); 'own': the mask is georeferenced."
    )


def resolve_mask_grid(value: str, *, image_role: str) -> str:
    """The internal ``--mask-grid`` value: "own", "ref", or ``image_role`` ("lr", "hr").

    ``image_role`` itself is the command's former spelling of "image" (upscale and evaluate
    took "lr", prepare "hr"): still accepted, with a deprecation warning.

    Raises:
        ConfigError: any other value (exit 2).
    """
    if value == image_role:
        logging.getLogger("refdiff_cli.cli").warning(
            "--mask-grid %s is deprecated; it is now called --mask-grid image (the same grid)",
            value,
        )
        return value
    if value == "image":
        return image_role
    if value in MASK_GRID_CHOICES:
        return value
    raise ConfigError(
        f"Invalid value for '--mask-grid': {value!r} is not one of "
        + ", ".join(repr(c) for c in MASK_GRID_CHOICES),
        hint="'image' is the grid of the image the command works on",
    )
