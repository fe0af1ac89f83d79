"""Exception classes, each carrying the exit code the CLI maps it to and a hint for the user,
and the rule that says which operating-system failures are the environment's (exit 4)."""

from __future__ import annotations

import difflib
import errno
import os
from typing import Any

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_CONFIG = 2
EXIT_GATE = 3
EXIT_ENVIRONMENT = 4
EXIT_INTERRUPTED = 130

# The "kind" of each failing exit code in the --json error object.
EXIT_KINDS = {
    EXIT_INTERNAL: "internal",
    EXIT_CONFIG: "config",
    EXIT_GATE: "gate",
    EXIT_ENVIRONMENT: "environment",
    EXIT_INTERRUPTED: "interrupted",
}

# Disk and permission failures: the machine's problem, not a bug (exit 4). The codes that only a
# write can raise say "writing"; a permission error may come from a read too.
DISK_ERRNOS = {
    errno.ENOSPC: "no space left on device while writing {path}",
    errno.EDQUOT: "disk quota exceeded while writing {path}",
    errno.EROFS: "read-only file system: cannot write {path}",
    errno.EACCES: "permission denied on {path}",
    errno.EPERM: "operation not permitted on {path}",
}


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
    """One or more release gates failed; `report` is the run's report.json content, if any."""

    exit_code = EXIT_GATE

    def __init__(self, message: str, hint: str | None = None,
                 report: dict[str, Any] | None = None) -> None:
        super().__init__(message, hint)
        self.report = report


class VariantsFailed(WandaExportError):
    """A sweep in which not every variant passed: the exit code is the worst of theirs (see
    `sweep/result.EXIT_SEVERITY`); `report` is the sweep's comparison."""

    def __init__(self, message: str, exit_code: int, report: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.report = report


class Interrupted(KeyboardInterrupt):
    """A stop signal (SIGINT or SIGTERM) raised as the same exception as Ctrl-C, so that every
    cleanup written for one runs for both."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


def missing_dependency(package: str, extra: str) -> EnvironmentProblem:
    """Build the error raised when an optional dependency is not installed."""
    return EnvironmentProblem(
        f"the optional dependency '{package}' is not installed",
        hint=f"pip install 'wanda-export[{extra}]'",
    )


def disk_failure(error: BaseException, where: str) -> str | None:
    """The one-line message when `error` is a full, read-only or forbidden disk, else None.

    An OSError carries its errno and usually the path. safetensors' Rust writer raises
    SafetensorError (torch's C++ writers a RuntimeError) whose text holds the operating system's
    message and no path, so those are recognised by that message and `where` names the place.
    """
    if isinstance(error, OSError):
        if error.errno not in DISK_ERRNOS:
            return None
        path = error.filename if error.filename is not None else error.filename2
        return DISK_ERRNOS[error.errno].format(path=where if path is None else os.fsdecode(path))
    from safetensors import SafetensorError

    if isinstance(error, (SafetensorError, RuntimeError)):
        text = str(error)
        for code, message in DISK_ERRNOS.items():
            if os.strerror(code) in text:
                return message.format(path=where)
    return None


def did_you_mean(word: str, choices: tuple[str, ...] | list[str]) -> str:
    """A "; did you mean 'x'?" suffix for the closest choice, or "" when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
