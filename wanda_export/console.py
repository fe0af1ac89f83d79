"""Where the command line's output goes: results (human or --json) on stdout, logs, progress
bars and error messages on stderr, at the verbosity asked for (-q, default, -v). Other
libraries' warnings and log messages are silenced unless -v: they are not the user's problem
and drown the run's own messages."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from contextvars import ContextVar
from typing import Any, TextIO

from rich.console import Console

from wanda_export.errors import EXIT_KINDS, ConfigError

QUIET, NORMAL, VERBOSE = 0, 1, 2
# Libraries whose loggers are set to ERROR (WARNING with -v); their Python warnings are ignored.
THIRD_PARTY_LOGGERS = ("torch", "torch.onnx", "torchvision", "transformers", "onnxruntime",
                       "onnxscript", "onnx_ir", "onnx", "huggingface_hub", "datasets", "lm_eval",
                       "filelock", "urllib3", "httpx")
_OUR_LEVELS = {QUIET: logging.WARNING, NORMAL: logging.INFO, VERBOSE: logging.DEBUG}

stderr = Console(stderr=True)
log = logging.getLogger("wanda_export")
_results: ContextVar[TextIO | None] = ContextVar("results", default=None)


def verbosity(quiet: bool, verbose: bool) -> int:
    """QUIET, NORMAL or VERBOSE from the -q and -v flags; both at once is a usage error."""
    if quiet and verbose:
        raise ConfigError("--quiet and --verbose contradict each other; give one of them")
    return QUIET if quiet else VERBOSE if verbose else NORMAL


def setup_logging(level: int) -> None:
    """Our logs on stderr at `level`'s threshold; other libraries' warnings (Python warnings,
    their loggers, transformers' progress bars) only with -v. torch is imported first because
    importing it resets its loggers' levels."""
    import torch  # noqa: F401  (see the docstring)
    from rich.logging import RichHandler
    from transformers.utils import logging as hf_logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=stderr, show_path=False)], force=True)
    log.setLevel(_OUR_LEVELS[level])
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if level == VERBOSE else logging.ERROR)
    hf_logging.set_verbosity_warning() if level == VERBOSE else hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if level < VERBOSE:
        warnings.filterwarnings("ignore")
        warnings.filterwarnings("default", module=r"wanda_export(\.|$)")


@contextmanager
def results_on_stdout() -> Iterator[None]:
    """For a command's duration, anything a library prints goes to stderr; only `emit` and
    `print_json` write to the stdout the command started with, so stdout holds results only."""
    token = _results.set(sys.stdout)
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        _results.reset(token)


def _stdout() -> TextIO:
    return _results.get() or sys.stdout


def print_json(payload: Any) -> None:
    """`payload` as indented JSON on stdout."""
    _stdout().write(json.dumps(payload, indent=2) + "\n")


def print_rich(*renderables: Any) -> None:
    """Rich renderables (tables) as a command's result on stdout."""
    Console(file=_stdout(), soft_wrap=True).print(*renderables)


def emit(as_json: bool, payload: Any, human: str) -> None:
    """A command's result on stdout: `payload` as JSON with --json, else the `human` text."""
    if as_json:
        print_json(payload)
    else:
        _stdout().write(human.rstrip("\n") + "\n")


def error_object(code: int, message: str, hint: str | None = None,
                 locations: list[dict] | None = None) -> dict:
    """The --json error object: exit code, its kind, the message, a hint, and for a pipeline file
    error every problem's {path, line, column, origin, message}."""
    return {"exit_code": code, "kind": EXIT_KINDS[code], "message": message, "hint": hint,
            "locations": list(locations or [])}


def print_error(message: str, hint: str | None) -> None:
    """`error: message` (and `hint: ...`) on stderr."""
    text = (message if hint is None else f"{message}\nhint: {hint}").replace("[", "\\[")
    stderr.print(f"[bold red]error[/]: {text}", highlight=False, markup=True, soft_wrap=True)
