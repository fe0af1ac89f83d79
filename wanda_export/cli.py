"""The `wanda-export` command line. The only place that turns exceptions into exit codes.

Machine output (--json) goes to stdout; logs and progress bars go to stderr. With --json every
failing exit also prints an error object on stdout (`error_object`).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer._click import Context  # typer vendors click: its own exceptions, not click's
from typer._click.exceptions import UsageError
from typer.core import TyperGroup

from wanda_export import __version__
from wanda_export.config.stages import STAGE_MODELS
from wanda_export.errors import (
    EXIT_ENVIRONMENT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_KINDS,
    ConfigError,
    GateFailure,
    Interrupted,
    WandaExportError,
    disk_failure,
)

JSON_FLAG = "--json"
DEFAULT_OUT = "wanda-out"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _JsonAwareGroup(TyperGroup):
    """Typer's group, printing the --json error object for a usage error (an unknown option, a
    missing argument) too: click raises those before any command of ours runs."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        ctx.meta[JSON_FLAG] = JSON_FLAG in args
        with _usage_errors_as_json(ctx):
            return super().parse_args(ctx, args)

    def invoke(self, ctx: Context) -> Any:
        with _usage_errors_as_json(ctx):
            return super().invoke(ctx)


@contextmanager
def _usage_errors_as_json(ctx: Context) -> Iterator[None]:
    try:
        yield
    except UsageError as error:
        if ctx.meta.get(JSON_FLAG):
            _print_json({"error": error_object(error.exit_code, error.format_message())})
        raise


app = typer.Typer(
    name="wanda-export",
    help="Prune a Hugging Face causal LM with Wanda and ship verified sparse artifacts.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    cls=_JsonAwareGroup,
)
cache_app = typer.Typer(help="Inspect or clear the activation-statistics cache.",
                        no_args_is_help=True)
app.add_typer(cache_app, name="cache")

stderr = Console(stderr=True)
log = logging.getLogger("wanda_export")

FileArg = Annotated[Path, typer.Argument(help="The pipeline YAML file.", show_default=False)]
OutOpt = Annotated[str, typer.Option(
    "--out", "-o", help="Output folder: new, empty, or an earlier release (replaced on success).")]
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Replace a non-empty --out that is not an earlier release. Never the current "
    "folder or a parent, home, the model, the pipeline's folder, the cache or a git repository.")]
JsonOpt = Annotated[bool, typer.Option(JSON_FLAG, help="Machine-readable JSON on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or info logs.")]
CacheOpt = Annotated[Path | None, typer.Option(
    "--cache-dir", help="Cache folder (default: $WANDA_EXPORT_CACHE or the user cache dir).")]


def _setup_logging(quiet: bool) -> None:
    """Our progress logs on stderr; other libraries only when they warn (their INFO is noise)."""
    import warnings

    from rich.logging import RichHandler

    logging.basicConfig(level=logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=stderr, show_path=False)], force=True)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed"
    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def error_object(code: int, message: str, hint: str | None = None,
                 locations: list[dict] | None = None) -> dict:
    """The --json error object: exit code, its kind, the message, a hint, and for a pipeline file
    error every problem's {path, line, column, message}."""
    return {"exit_code": code, "kind": EXIT_KINDS[code], "message": message, "hint": hint,
            "locations": list(locations or [])}


def _print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")


def _fail(code: int, message: str, *, as_json: bool, hint: str | None = None,
          locations: list[dict] | None = None, report: dict | None = None) -> None:
    text = (message if hint is None else f"{message}\nhint: {hint}").replace("[", "\\[")
    stderr.print(f"[bold red]error[/]: {text}", highlight=False, markup=True, soft_wrap=True)
    if as_json:
        _print_json({**(report or {}), "error": error_object(code, message, hint, locations)})
    raise typer.Exit(code)


@contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
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


def _guarded(fn, *, as_json: bool = False, writing: str = "the outputs"):
    """Run `fn`, mapping every failure to its documented exit code (and, with --json, printing
    the error object). `writing` names the place for a disk error that carries no path."""
    try:
        with _stop_signals_interrupt():
            return fn()
    except typer.Exit:
        raise
    except WandaExportError as error:
        _fail(error.exit_code, error.message, as_json=as_json, hint=error.hint,
              locations=getattr(error, "problems", None),
              report=error.report if isinstance(error, GateFailure) else None)
    except KeyboardInterrupt as error:
        by = f" by {error.signal_name}" if isinstance(error, Interrupted) else ""
        _fail(EXIT_INTERRUPTED, f"interrupted{by}; nothing was written", as_json=as_json)
    except MemoryError:
        _fail(EXIT_ENVIRONMENT, "out of memory; try a smaller batch_size, nsamples or seqlen",
              as_json=as_json)
    except Exception as error:  # an unexpected failure is a bug: exit 1 with the traceback
        import torch

        if isinstance(error, torch.OutOfMemoryError):
            _fail(EXIT_ENVIRONMENT, f"out of GPU memory: {error}", as_json=as_json)
        disk = disk_failure(error, writing)
        if disk is not None:
            _fail(EXIT_ENVIRONMENT, disk, as_json=as_json)
        log.exception("internal error")
        _fail(EXIT_INTERNAL, f"internal error: {type(error).__name__}: {error}", as_json=as_json)


def _cache(cache_dir: Path | None):
    from wanda_export.cache.store import CacheStore

    return CacheStore(cache_dir)


def _emit(as_json: bool, payload, human: str) -> None:
    if as_json:
        _print_json(payload)
    else:
        stderr.print(human, highlight=False, soft_wrap=True)


def _run(file: Path, out_text: str, as_json: bool, quiet: bool, cache_dir, until: str | None,
         force: bool) -> None:
    _setup_logging(quiet)

    def go():
        from wanda_export.config import load_config
        from wanda_export.pipeline.outdir import parse_out
        from wanda_export.pipeline.progress import NullProgress, RichProgress
        from wanda_export.pipeline.runner import run_pipeline

        out = parse_out(out_text)
        config = load_config(file)
        if until is not None and until not in config.stage_names():
            raise ConfigError(f"the pipeline {file} has no '{until}' stage; it has: "
                                f"{', '.join(config.stage_names())}")
        progress = NullProgress() if quiet else RichProgress(stderr)
        record = run_pipeline(config, out, cache=_cache(cache_dir), progress=progress,
                              until=until, force=force)
        failed = [gate for gate in record.gates if not gate.passed]
        lines = [f"{'passed' if not failed else 'FAILED'}: outputs in {out}"]
        lines += [f"  gate {g.name}: {'ok' if g.passed else 'FAILED'} "
                  f"(value {g.value}, threshold {g.threshold}) {g.message}" for g in record.gates]
        human = "\n".join(lines)
        if failed:  # with --json, _guarded prints the report with the error object added
            if not as_json:
                _emit(False, None, human)
            raise GateFailure(f"{len(failed)} gate(s) failed: "
                              + ", ".join(gate.name for gate in failed), report=record.to_dict())
        _emit(as_json, record.to_dict(), human)

    _guarded(go, as_json=as_json, writing=f"the release for --out {out_text}")


@app.command()
def run(file: FileArg, out: OutOpt = DEFAULT_OUT, json_: JsonOpt = False,
        quiet: QuietOpt = False, cache_dir: CacheOpt = None, force: ForceOpt = False) -> None:
    """Run every stage of FILE and write the release folder (exit 3 when a gate fails)."""
    _run(file, out, json_, quiet, cache_dir, None, force)


@app.command()
def validate(file: FileArg, json_: JsonOpt = False) -> None:
    """Check FILE (schema, paths, cross-stage rules) without loading a model."""
    def go():
        from wanda_export.config import check_against_model, load_config
        from wanda_export.pipeline.runner import model_source

        config = load_config(file)
        source = config.model.resolved_path(config.base_dir)
        if source is None or Path(source).exists():  # local model: layer rules from its config
            check_against_model(config, model_source(config))
        _emit(json_, {"valid": True, "file": str(file), "config_digest": config.digest(),
                      "stages": config.stage_names()},
              f"{file}: valid ({', '.join(config.stage_names())})")

    _guarded(go, as_json=json_)


@app.command()
def plan(file: FileArg, json_: JsonOpt = False, cache_dir: CacheOpt = None) -> None:
    """List FILE's stages and whether each one's output is already in the cache."""
    _setup_logging(True)

    def go():
        from wanda_export.config import load_config, meta_model
        from wanda_export.pipeline.plan import plan_pipeline
        from wanda_export.pipeline.runner import model_source
        from wanda_export.pipeline.streamed import decide_memory_mode

        config = load_config(file)
        source = model_source(config)
        rows = plan_pipeline(config, _cache(cache_dir), source)
        skeleton = meta_model(source, revision=config.model.revision,
                              trust_remote_code=config.model.trust_remote_code)
        memory = decide_memory_mode(config, config.stage_names(), skeleton)
        _emit(json_, {"file": str(file), "memory": memory.to_dict(), "stages": rows},
              "\n".join([f"{'memory':24s} {memory.describe()}",
                         *(f"{row['stage']:24s} cache: {row['cache']}" for row in rows)]))

    _guarded(go, as_json=json_)


def _stage_command(stage: str, summary: str):
    def command(file: FileArg, out: OutOpt = DEFAULT_OUT, json_: JsonOpt = False,
                quiet: QuietOpt = False, cache_dir: CacheOpt = None,
                force: ForceOpt = False) -> None:
        _run(file, out, json_, quiet, cache_dir, stage, force)

    command.__doc__ = (f"{summary} Runs FILE's stages up to and including '{stage}' "
                       "(earlier stages come from the cache when they can).")
    app.command(name=stage)(command)


for _stage, _model in STAGE_MODELS.items():
    _stage_command(_stage, _model.summary)


@cache_app.command("ls")
def cache_ls(json_: JsonOpt = False, cache_dir: CacheOpt = None) -> None:
    """List cache entries."""
    def go():
        entries = _cache(cache_dir).entries()
        rows = [{"kind": e.kind, "key": e.key, "bytes": e.bytes, "path": str(e.path),
                 "created": e.created.isoformat() if e.created else None} for e in entries]
        _emit(json_, rows, "\n".join(f"{r['kind']:12s} {r['key'][:16]}  {r['bytes']:>12,d} B  "
                                     f"{r['created']}" for r in rows) or "cache is empty")

    _guarded(go, as_json=json_)


@cache_app.command("clear")
def cache_clear(kind: Annotated[str | None, typer.Option(help="Only this kind.")] = None,
                json_: JsonOpt = False, cache_dir: CacheOpt = None) -> None:
    """Remove cache entries."""
    def go():
        removed = _cache(cache_dir).clear(kind)
        _emit(json_, {"removed": removed}, f"removed {removed} entries")

    _guarded(go, as_json=json_)


@app.command()
def version() -> None:
    """Print the version."""
    sys.stdout.write(f"wanda-export {__version__}\n")
