"""The ``refdiff`` command line: option parsing, exit codes, signals (the only typer user).

Each command lives in its own module and calls one tool function; this module owns what
they share: the app, ``--version``/``-v``/``-q``, and the mapping of errors and signals to
exit codes (0 ok, 1 bug, 2 usage, 3 input, 4 output, 5 partial batch, 130 SIGINT, 143 SIGTERM).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable, MutableMapping
from types import FrameType
from typing import Annotated, Any, cast

import typer

from refdiff_cli import __version__
from refdiff_cli.cli import render
from refdiff_cli.errors import (
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_UNEXPECTED,
    EXIT_USAGE,
    ConfigError,
    Interrupted,
    OutputError,
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
    for info in app.registered_commands:
        if info.callback is not None:
            info.callback = _checked(info.callback)


def _checked(command: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command: Ctrl-C becomes ``Interrupted``.

    typer >= 0.29 would turn Ctrl-C into a silent exit 130; by the time it reaches this
    wrapper every ``with`` block below has cleaned up on the KeyboardInterrupt.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            raise Interrupted("SIGINT", EXIT_SIGINT) from None

    return wrapper


_register_commands()


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Interrupted("SIGTERM", EXIT_SIGTERM)


def _click_class(name: str) -> type[Exception]:
    """click's exception class ``name`` as the installed typer raises it.

    typer >= 0.29 raises a bundled copy of click's exceptions, older typer click's own: the
    public ``typer.BadParameter`` derives from whichever copy is in use.
    """
    for cls in typer.BadParameter.__mro__:
        if cls.__name__ == name:
            return cast(type[Exception], cls)
    raise ImportError(f"typer.BadParameter does not derive from a click {name}")


_CLICK_EXCEPTION = _click_class("ClickException")
_USAGE_ERROR = _click_class("UsageError")


def _wants_json(argv: list[str]) -> bool:
    """True when ``--json`` was asked for (before a ``--`` that ends the options)."""
    for arg in argv:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def _fail(argv: list[str], exit_code: int, error: str, message: str) -> int:
    """Report a failure: the one error line on stderr, and the JSON document with ``--json``."""
    render.print_error(message)
    if _wants_json(argv):
        render.print_json(
            {"status": "failed", "exit_code": exit_code, "error": error, "message": message}
        )
    return exit_code


def _usage_error(argv: list[str], exc: Exception) -> int:
    """Usage line and help hint (or the whole help for no arguments), then the error line."""
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
        print(ctx.get_help(), file=sys.stderr)
        message = f"{ctx.command_path}: no arguments given (help above)"
    else:
        if ctx is not None:
            print(ctx.get_usage(), file=sys.stderr)
            print(f"Try '{ctx.command_path} --help' for help.", file=sys.stderr)
        message = cast(Any, exc).format_message()
    return _fail(argv, EXIT_USAGE, "UsageError", message)


def _check_arguments(group: Any, args: list[str]) -> None:
    """What click lets through silently: non-UTF-8 paths, repeated options, ``-o missing/``.

    Raises:
        ConfigError: an argument is not UTF-8, or a single-value option is given twice (exit 2).
        OutputError: ``upscale -o DIR/`` names a folder that does not exist (exit 4).
    """
    undecodable = [arg for arg in args if not _is_utf8(arg)]
    if undecodable:
        raise ConfigError(
            f"argument {os.fsencode(undecodable[0])!r} is not valid UTF-8, and GDAL opens no "
            "such path",
            hint="rename the file or folder, or link it under a UTF-8 name",
        )
    if "--help" in args:
        return
    name = next((arg for arg in args if not arg.startswith("-")), None)
    command = getattr(group, "commands", {}).get(name)
    if command is None:
        return
    rest = args[args.index(str(name)) + 1 :]
    rest = rest[: rest.index("--")] if "--" in rest else rest
    for param in command.params:
        if param.param_type_name != "option" or param.multiple or param.count or param.is_flag:
            continue
        names = [*param.opts, *param.secondary_opts]
        values = _option_values(rest, names)
        if len(values) > 1:
            raise ConfigError(
                f"{'/'.join(names)} given {len(values)} times ({', '.join(values)}); it takes "
                "one value",
                hint="give it once"
                + (", listing the bands in one value: --bidx 3,2,1" if "--bidx" in names else ""),
            )
        if name == "upscale" and "--output" in names and values:
            _check_output_folder_argument(values[0])


def _option_values(args: list[str], names: list[str]) -> list[str]:
    """The raw values given to the option called ``names`` (``--o V``, ``--o=V``, ``-oV``)."""
    values = []
    for i, arg in enumerate(args):
        for option in names:
            if arg == option:
                values.append(args[i + 1] if i + 1 < len(args) else "")
            elif option.startswith("--") and arg.startswith(option + "="):
                values.append(arg[len(option) + 1 :])
            elif len(option) == 2 and not arg.startswith("--") and arg.startswith(option):
                values.append(arg[2:])
    return values


def _check_output_folder_argument(value: str) -> None:
    """``-o newdir/``: a trailing slash means a folder, which must exist (not a file "newdir")."""
    if value.endswith(("/", os.sep)) and not os.path.isdir(value):
        raise OutputError(
            f"-o {value}: the folder does not exist"
            + (" (a file has that name)" if os.path.lexists(value.rstrip("/")) else ""),
            hint=f"mkdir -p {value}, or give -o a file name",
        )


def _is_utf8(arg: str) -> bool:
    """False for an argument with bytes that are not UTF-8 (surrogate-escaped by Python)."""
    try:
        arg.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _interrupted(argv: list[str]) -> int:
    return _fail(argv, EXIT_SIGINT, "Interrupted", Interrupted("SIGINT", EXIT_SIGINT).message)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (never raises for user errors or signals)."""
    args = list(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _raise_terminated)
    command = typer.main.get_command(app)
    try:
        _check_arguments(command, args)
        result = command.main(args=args, prog_name="refdiff", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except typer.Exit as exc:
        # typer >= 0.29 turns Ctrl-C into Exit(130), raised from the KeyboardInterrupt.
        if isinstance(exc.__cause__, KeyboardInterrupt):
            return _interrupted(args)
        return exc.exit_code
    except _USAGE_ERROR as exc:
        return _usage_error(args, exc)
    except _CLICK_EXCEPTION as exc:
        message = cast(Any, exc).format_message()
        return _fail(args, cast(Any, exc).exit_code, type(exc).__name__, message)
    except (typer.Abort, KeyboardInterrupt):
        return _interrupted(args)
    except RefdiffError as exc:
        return _fail(args, exc.exit_code, type(exc).__name__, str(exc))
    except BrokenPipeError:
        return _closed_stdout()
    except Exception as exc:  # a bug: say so in one line, traceback only with -v
        if "-v" in args or "--verbose" in args or "-vv" in args:
            raise
        return _fail(
            args,
            EXIT_UNEXPECTED,
            type(exc).__name__,
            f"unexpected {type(exc).__name__}: {exc} (this is a bug in refdiff; rerun with -v "
            "and report the traceback)",
        )


def _closed_stdout() -> int:
    """The reader of stdout went away (``| head``): stop quietly, without a traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0


#: Iterations an idle OpenMP thread of libgomp (PyTorch's CPU thread pool) spins before it
#: sleeps. Its default spins for milliseconds, which on cores shared with other work (any cron
#: host) burns the time the other threads need: a 1k^2 upscale under load took 4.7x as long
#: with 2 threads as with 1. Capped, 2 threads kept their speed on quiet cores and ran in
#: 0.45-0.58x the time under load, with identical bytes (issue 11; README, "Speed on the CPU").
GOMP_SPINCOUNT = "10000"


def cap_openmp_spinning(environ: MutableMapping[str, str]) -> None:
    """Set ``GOMP_SPINCOUNT`` unless the user chose it or ``OMP_WAIT_POLICY``.

    libgomp reads it once, when torch loads it: call this before anything imports torch.
    """
    if "GOMP_SPINCOUNT" not in environ and "OMP_WAIT_POLICY" not in environ:
        environ["GOMP_SPINCOUNT"] = GOMP_SPINCOUNT


def main() -> None:
    """Console-script and ``python -m refdiff_cli`` entry point."""
    cap_openmp_spinning(os.environ)
    sys.exit(run())
