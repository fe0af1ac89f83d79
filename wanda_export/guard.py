"""The one place a failure becomes an exit code: `guarded` runs a command, maps whatever it
raises (`failure_of`: our errors by their class, interrupts, out of memory, a full or read-only
disk, anything else a bug with its traceback) and exits with the documented code, printing the
error object with --json. SIGINT and SIGTERM take one path (`Interrupted`)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from wanda_export.console import error_object, log, print_error, print_json, results_on_stdout
from wanda_export.errors import (
    EXIT_ENVIRONMENT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    Interrupted,
    WandaExportError,
    disk_failure,
)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def fail(code: int, message: str, *, as_json: bool, hint: str | None = None,
          locations: list[dict] | None = None, report: dict | None = None) -> None:
    """Print the error (and with --json the error object, added to `report`), then exit."""
    print_error(message, hint)
    if as_json:
        print_json({**(report or {}), "error": error_object(code, message, hint, locations)})
    raise typer.Exit(code)


@contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """For the command's duration, SIGINT and SIGTERM both raise `Interrupted` (a
    KeyboardInterrupt), so one cleanup path serves both; a repeat while cleaning up is ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        for number in STOP_SIGNALS:
            signal.signal(number, signal.SIG_IGN)
        raise Interrupted(signal.Signals(signum).name)

    previous = {number: signal.signal(number, handler) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, action in previous.items():
            signal.signal(number, action)


def failure_of(error: BaseException, writing: str) -> tuple[int, str, str | None]:
    """The exit code, message and hint of a failure: the mapping `guarded` applies (the sweep
    applies it to each variant). `writing` names the place for a disk error without a path."""
    if isinstance(error, WandaExportError):
        return error.exit_code, error.message, error.hint
    if isinstance(error, KeyboardInterrupt):
        by = f" by {error.signal_name}" if isinstance(error, Interrupted) else ""
        kept = getattr(error, "kept", None) or "nothing was written"
        return EXIT_INTERRUPTED, f"interrupted{by}; {kept}", None
    if isinstance(error, MemoryError):
        return EXIT_ENVIRONMENT, "out of memory; try a smaller batch_size, nsamples or seqlen", None
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        return EXIT_ENVIRONMENT, f"out of GPU memory: {error}", None
    disk = disk_failure(error, writing)
    if disk is not None:
        return EXIT_ENVIRONMENT, disk, None
    return EXIT_INTERNAL, f"internal error: {type(error).__name__}: {error}", None


def guarded(fn, *, as_json: bool = False, writing: str = "the outputs"):
    """Run `fn` with stdout kept for results, mapping every failure to its documented exit code
    (and, with --json, printing the error object). `writing` names the place for a disk error
    that carries no path."""
    with results_on_stdout():
        try:
            with stop_signals_interrupt():
                return fn()
        except typer.Exit:
            raise
        except (Exception, KeyboardInterrupt) as error:  # noqa: BLE001 (mapped to exit codes)
            code, message, hint = failure_of(error, writing)
            if code == EXIT_INTERNAL:  # an unexpected failure is a bug: the traceback on stderr
                log.exception("internal error")
            known = isinstance(error, WandaExportError)
            fail(code, message, as_json=as_json, hint=hint,
                  locations=getattr(error, "problems", None) if known else None,
                  report=getattr(error, "report", None) if known else None)
