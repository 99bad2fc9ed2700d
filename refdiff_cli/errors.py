"""Error hierarchy: every failure a user can cause maps to one class and one exit code.

Exit codes (see README, "Exit codes"):
    0 success, 1 unexpected error, 2 usage error, 3 bad input data or model,
    4 output error, 5 batch finished with some items failed,
    130 interrupted (SIGINT), 143 terminated (SIGTERM).

Messages name the offending file or option and say how to fix it. Stdlib only.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_OUTPUT = 4
EXIT_PARTIAL_BATCH = 5
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class RefdiffError(Exception):
    """Base class of all errors refdiff reports to the user.

    Args:
        message: one line saying what is wrong, naming the file or option.
        hint: optional one line saying how to fix it.
    """

    exit_code: int = EXIT_UNEXPECTED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class ConfigError(RefdiffError, ValueError):
    """An option, option combination or config file is invalid (exit 2)."""

    exit_code = EXIT_USAGE


class InputError(RefdiffError, ValueError):
    """An input raster or list file cannot be used as given (exit 3)."""

    exit_code = EXIT_INPUT


class ModelError(RefdiffError):
    """A model file is missing, corrupt, untrusted or does not fit the request (exit 3)."""

    exit_code = EXIT_INPUT


class OutputError(RefdiffError, OSError):
    """The output cannot be written: exists, locked, unwritable, disk full (exit 4)."""

    exit_code = EXIT_OUTPUT


class Interrupted(RefdiffError):
    """The run was stopped by a signal; nothing was published (exit 130 or 143)."""

    def __init__(
        self, signal_name: str, exit_code: int, *, outcome: str = "nothing was published"
    ) -> None:
        super().__init__(f"interrupted by {signal_name}; {outcome}")
        self.signal_name = signal_name
        self.exit_code = exit_code


class TrainingDiverged(RefdiffError):
    """The training loss or gradients stayed non-finite for too long (exit 1)."""

    exit_code = EXIT_UNEXPECTED
