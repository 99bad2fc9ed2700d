"""The ``refdiff`` command line: option parsing, exit codes, signals (the only typer user).

Each command lives in its own module and calls one tool function; this module owns what
they share: the app, ``--version``/``-v``/``-q``, and the mapping of errors and signals to
exit codes (0 ok, 1 bug, 2 usage, 3 input, 4 output, 5 partial batch, 130 SIGINT, 143 SIGTERM).
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Annotated

import click
import typer

from refdiff_cli import __version__
from refdiff_cli.cli import render
from refdiff_cli.errors import (
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_UNEXPECTED,
    EXIT_USAGE,
    Interrupted,
    RefdiffError,
)

app = typer.Typer(
    name="refdiff",
    help=(
        "Reference-based super-resolution of georeferenced rasters with Ref-Diff: an LR image, "
        "an older HR reference and a change mask in, a georeferenced HR GeoTIFF out."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        print(f"refdiff {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv for debug).")
    ] = 0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only errors on stderr; no progress.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    verbosity = -1 if quiet else verbose
    render.configure_logging(verbosity)
    ctx.obj = {"verbosity": verbosity}


def _register_commands() -> None:
    from refdiff_cli.cli import evaluate_command, prepare_command, train_command, upscale_command

    upscale_command.register(app)
    train_command.register(app)
    evaluate_command.register(app)
    prepare_command.register(app)


_register_commands()


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Interrupted("SIGTERM", EXIT_SIGTERM)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (never raises for user errors or signals)."""
    signal.signal(signal.SIGTERM, _raise_terminated)
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="refdiff", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        render.print_error("interrupted by SIGINT; nothing was published")
        return EXIT_SIGINT
    except RefdiffError as exc:
        render.print_error(str(exc))
        return exc.exit_code
    except BrokenPipeError:
        return _closed_stdout()
    except Exception as exc:  # a bug: say so in one line, traceback only with -v
        if "-v" in (argv or sys.argv) or "--verbose" in (argv or sys.argv):
            raise
        render.print_error(
            f"unexpected {type(exc).__name__}: {exc} (this is a bug in refdiff; rerun with -v "
            "and report the traceback)"
        )
        return EXIT_UNEXPECTED


def _closed_stdout() -> int:
    """The reader of stdout went away (``| head``): stop quietly, without a traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
