"""Options that several commands share, declared once (rasterio's click options, the typer way)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import typer

from refdiff_cli.config import Precision as PrecisionName
from refdiff_cli.config import SamplerName
from refdiff_cli.errors import ConfigError


# Options whose help each command words for itself: declared here, worded there.
def json_option(help: str) -> Any:
    """``--json``, where the command says what its JSON document is."""
    return typer.Option("--json", help=help)


def output_option(help: str) -> Any:
    """``-o/--output``: what the command writes."""
    return typer.Option("--output", "-o", help=help)


def scale_option(help: str) -> Any:
    """``--scale``: the super-resolution factor."""
    return typer.Option("--scale", help=help)


def layout_option(help: str) -> Any:
    """``--layout``: the layout of a dataset folder or list."""
    return typer.Option("--layout", help=help)


def overwrite_option(help: str) -> Any:
    """``--overwrite``: replace what the command would refuse to write over."""
    return typer.Option("--overwrite", help=help)


def dry_run_option(help: str) -> Any:
    """``--dry-run``: check and say what the command would do, do nothing."""
    return typer.Option("--dry-run", help=help)


def tile_option(default: str) -> Any:
    """``--tile``, where ``default`` says whose tile edge applies without it."""
    return typer.Option("--tile", help=f"Tile edge in output pixels [default: {default}].")


def overlap_option(default: str) -> Any:
    """``--overlap``, where ``default`` says whose overlap applies without it."""
    return typer.Option("--overlap", help=f"Tile overlap in output pixels [default: {default}].")


def bidx_option(help: str) -> Any:
    """``-b/--bidx``: 1-based band numbers like 3,2,1 (``bands`` parses them)."""
    return typer.Option("--bidx", "-b", help=help)


def ref_bidx_option(help: str = "Reference bands, 1-based [default: as -b].") -> Any:
    """``--ref-bidx``: the reference's bands (``ref_bands`` parses them)."""
    return typer.Option("--ref-bidx", help=help)


def mask_encoding_option(help: str) -> Any:
    """``--mask-encoding``: how mask values read (auto, binary, grey, or a class table)."""
    return typer.Option("--mask-encoding", help=help)


def seed_option(help: str, *, envvar: str | None = None) -> Any:
    """``--seed``: the seed of the command's random draws."""
    return typer.Option("--seed", help=help, envvar=envvar)


def device_option(help: str, *, envvar: str | None = None) -> Any:
    """``--device``: where the model runs."""
    return typer.Option("--device", help=help, envvar=envvar)


def precision_option(help: str, *, envvar: str | None = None) -> Any:
    """``--precision``: the compute precision (the choices are the annotation's)."""
    return typer.Option("--precision", help=help, envvar=envvar)


#: ``--mask-grid`` values, the same in upscale, evaluate and prepare: a mask without
#: georeferencing lies on the grid of the reference ("ref") or of the image the command works
#: on ("image": the LR in upscale and evaluate, the HR in prepare).
MASK_GRID_CHOICES = ("own", "ref", "image")
MASK_GRID_METAVAR = "<own|ref|image>"


def mask_grid_option(image: str, *, where: str = "", note: str = "") -> Any:
    """``--mask-grid`` where the command's image is ``image`` ("LR", "HR").

    Its value goes through ``resolve_mask_grid``.
    """
    return typer.Option(
        "--mask-grid",
        metavar=MASK_GRID_METAVAR,
        help=f"{where}Masks without georeferencing: 'ref' (on the reference's grid) or 'image' "
        f"(on the {image}'s grid{note}); 'own': the mask is georeferenced.",
    )


# The options upscale and evaluate share, worded the same in both.
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
    seed_option(
        "Seed of every random draw; the same seed gives the same result.", envvar="REFDIFF_SEED"
    ),
]
Device = Annotated[str, device_option("auto, cpu, cuda, cuda:N or mps.", envvar="REFDIFF_DEVICE")]
Precision = Annotated[
    PrecisionName,
    precision_option(
        "Compute precision (fp16: GPU only; bf16: fast on GPUs and CPUs with bf16 instructions).",
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
Json = Annotated[bool, json_option("Print a JSON report on stdout.")]


class ModelSettings(NamedTuple):
    """The model options above, by their ``UpscaleOptions`` and ``EvalOptions`` names.

    Upscale and evaluate take them all and pass ``**ModelSettings(...)._asdict()`` on.
    """

    model: Path | None
    model_sha256: str | None
    steps: int | None
    sampler: SamplerName | None
    seed: int
    ref_strength: float
    device: str
    precision: PrecisionName
    batch_size: int


def parse_bands(text: str | None, option: str) -> tuple[int, ...] | None:
    """Parse "3,2,1" into (3, 2, 1); ConfigError naming ``option`` otherwise."""
    if text is None:
        return None
    try:
        bands = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise ConfigError(
            f"{option} expects 1-based band numbers like 3,2,1, got {text!r}"
        ) from exc
    if not bands:
        raise ConfigError(f"{option} expects at least one band number")
    return bands


def bands(bidx: str | None) -> tuple[int, ...] | None:
    """The bands of ``-b/--bidx`` (None: the command's default)."""
    return parse_bands(bidx, "-b/--bidx")


def ref_bands(ref_bidx: str | None) -> tuple[int, ...] | None:
    """The bands of ``--ref-bidx`` (None: the command's default)."""
    return parse_bands(ref_bidx, "--ref-bidx")


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
