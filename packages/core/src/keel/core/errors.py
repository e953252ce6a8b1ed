"""The exceptions keel raises for problems a user can fix.

The command line turns a :class:`KeelError` into one line on stderr and an exit status
(:attr:`KeelError.exit_code`) instead of a traceback; ``--debug`` shows the traceback.
"""

from __future__ import annotations


class KeelError(Exception):
    """A problem with the user's input or environment, reported as one line.

    Attributes:
        exit_code: Process exit status the command line uses for this error.
    """

    exit_code: int = 1


class ConfigError(KeelError):
    """An invalid experiment config, override or command-line usage (exit status 2)."""

    exit_code = 2


class DataError(KeelError):
    """Missing, empty, unreadable or corrupt data."""

    exit_code = 1


class CheckpointError(KeelError):
    """A checkpoint or run directory that is missing, truncated or unreadable."""

    exit_code = 1


class EnvironmentProblem(KeelError):
    """The machine lacks something the run needs (a CUDA device, an optional package)."""

    exit_code = 2


def missing_extra(module: str, extra: str, package: str = "keel-core") -> EnvironmentProblem:
    """Build the one-line error for an optional dependency that is not installed.

    Args:
        module: The module that failed to import.
        extra: The extra that provides it.
        package: The keel distribution that declares the extra.
    """
    return EnvironmentProblem(f"{module} is not installed; install it with: pip install '{package}[{extra}]'")


class NonFiniteLossError(KeelError):
    """The training loss became NaN or infinite."""

    exit_code = 1
