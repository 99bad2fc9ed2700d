"""Options that several commands share, declared once (rasterio's click options, the typer way)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from refdiff_cli.config import Precision as PrecisionName
from refdiff_cli.config import SamplerName

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
