"""Exception classes, each carrying the exit code the CLI maps it to and a hint for the user."""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_CONFIG = 2
EXIT_GATE = 3
EXIT_ENVIRONMENT = 4
EXIT_INTERRUPTED = 130


class WandaExportError(Exception):
    """Base class: an expected failure with a message meant for the user."""

    exit_code: int = EXIT_INTERNAL

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nhint: {self.hint}"


class ConfigError(WandaExportError):
    """The user's input (pipeline file, option, data path, model path) is wrong."""

    exit_code = EXIT_CONFIG


class EnvironmentProblem(WandaExportError):
    """The machine lacks something: an optional dependency, a GPU, the network, memory."""

    exit_code = EXIT_ENVIRONMENT


class GateFailure(WandaExportError):
    """One or more release gates failed."""

    exit_code = EXIT_GATE


def missing_dependency(package: str, extra: str) -> EnvironmentProblem:
    """Build the error raised when an optional dependency is not installed."""
    return EnvironmentProblem(
        f"the optional dependency '{package}' is not installed",
        hint=f"pip install 'wanda-export[{extra}]'",
    )
