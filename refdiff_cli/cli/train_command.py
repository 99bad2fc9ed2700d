"""``refdiff train``: option parsing for the training tool."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from refdiff_cli.cli import options as shared
from refdiff_cli.cli import render
from refdiff_cli.config import from_dict, load_file
from refdiff_cli.errors import EXIT_SIGINT, Interrupted
from refdiff_cli.train.options import TrainConfig, TrainLRMethod, TrainPrecision, TrainTarget

#: What an interrupted training run leaves: the error line (and --json) says so.
RESUME = "checkpoint saved, rerun to resume"
#: The values a flag falls back to when neither it nor the --config file gives one.
DEFAULTS = TrainConfig()
PresetName = Literal["tiny", "small", "paper"]


def _default(value: object) -> str:
    """The help suffix naming a flag's default (the flags are None so --config can set them)."""
    return f"  [default: {value} unless --config sets it]"


def _flag(*names: str, help: str, default: object) -> Any:
    """A flag that sets a TrainConfig key over the --config file's; None when not given."""
    return typer.Option(*names, help=help + _default(default))


# The flags of TrainConfig keys that no other command has.
Preset = Annotated[
    PresetName | None, _flag("--preset", help="Network preset.", default=DEFAULTS.preset)
]
Steps = Annotated[
    int | None,
    _flag("--steps", help="Optimizer steps in total (raise to continue).", default=DEFAULTS.steps),
]
BatchSize = Annotated[
    int | None,
    _flag("--batch-size", help="Global batch over all processes.", default=DEFAULTS.batch_size),
]
Crop = Annotated[
    int | None,
    _flag("--crop", help="Training crop edge in HR pixels.", default=DEFAULTS.crop_px),
]
LearningRate = Annotated[
    float | None,
    _flag(
        "--lr",
        "--learning-rate",
        help="Adam learning rate (not the LR image).",
        default=DEFAULTS.lr,
    ),
]
LRMethod = Annotated[
    TrainLRMethod | None,
    _flag(
        "--lr-method",
        help="How LR images are made: realistic degradation, bicubic, mixed (bicubic or area "
        "average per item), or stored (the chips').",
        default=DEFAULTS.lr_method,
    ),
]
Target = Annotated[
    TrainTarget | None,
    _flag(
        "--target",
        help="What the model generates: hr (the paper) or residual (HR - LR_up).",
        default=DEFAULTS.target,
    ),
]
CheckpointEvery = Annotated[
    int | None,
    _flag(
        "--checkpoint-every", help="Steps between checkpoints.", default=DEFAULTS.checkpoint_every
    ),
]
ValEvery = Annotated[
    int | None,
    _flag(
        "--val-every", help="Steps between validations (0: at the end).", default=DEFAULTS.val_every
    ),
]


def resolve_config(config_file: Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """The config file's values (if any), then every flag that was given on top."""
    data = load_file(config_file) if config_file is not None else {}
    data.update({key: value for key, value in overrides.items() if value is not None})
    return from_dict(TrainConfig, data)


def train_command(
    ctx: typer.Context,
    chips: Annotated[
        Path,
        typer.Argument(
            help="Chips folder written by `refdiff prepare`.", show_default=False, metavar="CHIPS"
        ),
    ],
    output: Annotated[
        Path, shared.output_option("Run folder: checkpoints, model, stats; re-run to resume.")
    ],
    config_file: Annotated[
        Path | None,
        typer.Option("--config", help="TOML or JSON file of TrainConfig keys ([network] table)."),
    ] = None,
    preset: Preset = None,
    steps: Steps = None,
    batch_size: BatchSize = None,
    crop: Crop = None,
    lr: LearningRate = None,
    lr_method: LRMethod = None,
    target: Target = None,
    seed: Annotated[
        int | None, shared.seed_option("Seed of every random draw." + _default(DEFAULTS.seed))
    ] = None,
    device: Annotated[
        str | None, shared.device_option("auto, cpu, cuda or cuda:N." + _default(DEFAULTS.device))
    ] = None,
    precision: Annotated[
        TrainPrecision | None,
        shared.precision_option("bf16: CUDA only." + _default(DEFAULTS.precision)),
    ] = None,
    checkpoint_every: CheckpointEvery = None,
    val_every: ValEvery = None,
    init_from: Annotated[
        str | None,
        typer.Option(
            "--init-from",
            help="Start from this model's weights (fine-tuning): a .safetensors file, or "
            "'default' for the bundled model; its network, scale, bands and reference mode "
            "must match the run's.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, shared.dry_run_option("Check and print the resolved config; train nothing.")
    ] = False,
    as_json: Annotated[
        bool, shared.json_option("Print the final report as JSON on stdout.")
    ] = False,
) -> int:
    """Train a Ref-Diff model on prepared chips; re-running the same command resumes it.

    Example: refdiff train chips/ -o runs/small-x8 --steps 20000
    """
    from refdiff_cli.train import run as train_tool
    from refdiff_cli.train.plan import resolve

    config = resolve_config(
        config_file,
        {
            "preset": preset,
            "steps": steps,
            "batch_size": batch_size,
            "crop_px": crop,
            "lr": lr,
            "lr_method": lr_method,
            "target": target,
            "seed": seed,
            "device": device,
            "precision": precision,
            "checkpoint_every": checkpoint_every,
            "val_every": val_every,
            "init_from": init_from,
        },
    )
    if dry_run:
        render.print_json(resolve(config, chips).describe(output))
        return 0
    verbosity = ctx.obj["verbosity"] if ctx.obj else 0
    progress = render.ProgressRenderer(enabled=verbosity >= 0)
    try:
        report = train_tool.train(config, chips, output, on_event=progress)
    except KeyboardInterrupt:
        raise Interrupted("SIGINT", EXIT_SIGINT, outcome=RESUME) from None
    except Interrupted as exc:
        raise Interrupted(exc.signal_name, exc.exit_code, outcome=RESUME) from None
    finally:
        progress.close()
    if report.rank != 0:
        return 0  # under torchrun, rank 0 alone reports
    if as_json:
        render.print_json(report.to_dict())
    else:
        with render.reader_may_leave():
            print(
                f"trained {output} to step {report.step} ({report.images_seen} images, "
                f"{report.skipped_steps} skipped steps) in {report.seconds:.1f} s; "
                f"model {report.model}"
            )
    return 0


def register(app: typer.Typer) -> None:
    """Add the command to the app."""
    app.command("train", no_args_is_help=True)(train_command)
