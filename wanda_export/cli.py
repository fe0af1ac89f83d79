"""The `wanda-export` command line; every command runs through `guard.guarded`, the one place
that turns exceptions into exit codes.

Results (human text, or JSON with --json) go to stdout; logs, progress bars and errors go to
stderr (console.py). With --json every failing exit also prints an error object on stdout.
Every command takes -h, --json, -q and -v; the pipeline commands take --set KEY=VALUE,
--device and --dtype, which override the file through one path (config/overrides.py).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from typer._click import Context  # typer vendors click: its own exceptions, not click's
from typer._click.exceptions import UsageError
from typer.core import TyperGroup

from wanda_export import __version__
from wanda_export.config.stages import STAGE_MODELS
from wanda_export.console import (
    QUIET,
    emit,
    error_object,
    log,
    print_json,
    print_rich,
    setup_logging,
    stderr,
    verbosity,
)
from wanda_export.errors import (
    EXIT_INTERNAL,
    ConfigError,
    GateFailure,
)
from wanda_export.guard import failure_of, guarded

JSON_FLAG = "--json"
DEFAULT_OUT = "wanda-out"
HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


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
            print_json({"error": error_object(error.exit_code, error.format_message())})
        raise


app = typer.Typer(
    name="wanda-export",
    help="Prune a Hugging Face causal LM with Wanda and ship verified sparse artifacts.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    cls=_JsonAwareGroup,
    context_settings=HELP_OPTIONS,
)
cache_app = typer.Typer(help="Inspect, clear or trim the activation-statistics cache.",
                        no_args_is_help=True, context_settings=HELP_OPTIONS)
app.add_typer(cache_app, name="cache")


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"wanda-export {__version__}\n")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the version and exit.")] = False) -> None:
    """Prune a Hugging Face causal LM with Wanda and ship verified sparse artifacts."""


FileArg = Annotated[Path, typer.Argument(help="The pipeline YAML file.", show_default=False)]
OutOpt = Annotated[str, typer.Option(
    "--out", "-o", help="Output folder: new, empty, or an earlier release (replaced on success).")]
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Replace a non-empty --out that is not an earlier release. Never the current "
    "folder or a parent, home, the model, the pipeline's folder, the cache or a git repository.")]
JsonOpt = Annotated[bool, typer.Option(JSON_FLAG, help="Machine-readable JSON on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or info logs.")]
VerboseOpt = Annotated[bool, typer.Option(
    "--verbose", "-v", help="Debug logs, and other libraries' warnings (hidden otherwise).")]
CacheOpt = Annotated[Path | None, typer.Option(
    "--cache-dir", help="Cache folder (default: $WANDA_EXPORT_CACHE or the user cache dir).")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", metavar="KEY=VALUE", show_default=False,
    help="Override a setting of FILE, e.g. mask.sparsity=0.6 or model.dtype=float16 "
    "(repeatable; the value is read as YAML; checked like the file).")]
DeviceOpt = Annotated[str | None, typer.Option(
    "--device", help="Override the file's model.device (auto, cpu, cuda, cuda:N, mps).")]
DtypeOpt = Annotated[str | None, typer.Option(
    "--dtype", help="Override the file's model.dtype.")]


@dataclass(frozen=True)
class Overrides:
    """The command line's changes to the pipeline file: --set, --device, --dtype."""

    sets: list[str] | None
    device: str | None
    dtype: str | None

    def load(self, file: Path):
        """The pipeline file with the overrides applied (ConfigError: every problem)."""
        from wanda_export.config import load_config
        from wanda_export.config.overrides import parse_override

        options = {"--device": ("model.device", self.device), "--dtype": ("model.dtype",
                                                                         self.dtype)}
        extra = [parse_override(f"{key}={value}", option=option, keyed=False)
                 for option, (key, value) in options.items() if value is not None]
        return load_config(file, [*(self.sets or []), *extra])


def _cache(cache_dir: Path | None):
    from wanda_export.cache.store import CacheStore

    return CacheStore(cache_dir)


def _command(fn, as_json: bool, quiet: bool, verbose: bool, **guard: str) -> None:
    """Set the verbosity up, then run `fn(level)` guarded."""
    def go():
        level = verbosity(quiet, verbose)
        setup_logging(level)
        return fn(level)

    guarded(go, as_json=as_json, **guard)


def _run(file: Path, out_text: str, as_json: bool, quiet: bool, verbose: bool, cache_dir,
         until: str | None, force: bool, overrides: Overrides) -> None:
    def go(level: int):
        from wanda_export.pipeline.outdir import parse_out
        from wanda_export.pipeline.progress import NullProgress, RichProgress
        from wanda_export.pipeline.runner import run_pipeline

        out = parse_out(out_text)
        config = overrides.load(file)
        if until is not None and until not in config.stage_names():
            raise ConfigError(f"the pipeline {file} has no '{until}' stage; it has: "
                              f"{', '.join(config.stage_names())}")
        progress = NullProgress() if level == QUIET else RichProgress(stderr)
        record = run_pipeline(config, out, cache=_cache(cache_dir), progress=progress,
                              until=until, force=force)
        failed = [gate for gate in record.gates if not gate.passed]
        lines = [f"{'passed' if not failed else 'FAILED'}: outputs in {out}"]
        lines += [f"  gate {g.name}: {'ok' if g.passed else 'FAILED'} "
                  f"(value {g.value}, threshold {g.threshold}) {g.message}" for g in record.gates]
        if failed:  # with --json, _guarded prints the report with the error object added
            if not as_json:
                emit(False, None, "\n".join(lines))
            raise GateFailure(f"{len(failed)} gate(s) failed: "
                              + ", ".join(gate.name for gate in failed), report=record.to_dict())
        emit(as_json, record.to_dict(), "\n".join(lines))

    _command(go, as_json, quiet, verbose, writing=f"the release for --out {out_text}")


def _pipeline_command(name: str, until: str | None, doc: str) -> None:
    """Register command `name`: run FILE's stages (all, or up to `until`) into --out."""
    def command(file: FileArg, out: OutOpt = DEFAULT_OUT, json_: JsonOpt = False,
                quiet: QuietOpt = False, verbose: VerboseOpt = False, cache_dir: CacheOpt = None,
                force: ForceOpt = False, set_: SetOpt = None, device: DeviceOpt = None,
                dtype: DtypeOpt = None) -> None:
        _run(file, out, json_, quiet, verbose, cache_dir, until, force,
             Overrides(set_, device, dtype))

    command.__doc__ = doc
    app.command(name=name)(command)


_pipeline_command("run", None, "Run every stage of FILE and write the release folder (exit 3 "
                  "when a gate fails).")


@app.command()
def validate(file: FileArg, json_: JsonOpt = False, quiet: QuietOpt = False,
             verbose: VerboseOpt = False, set_: SetOpt = None, device: DeviceOpt = None,
             dtype: DtypeOpt = None) -> None:
    """Check FILE (schema, paths, cross-stage rules, the model's shapes) without loading
    weights."""
    def go(level: int):
        from wanda_export.config import check_against_model
        from wanda_export.pipeline.runner import model_source

        config = Overrides(set_, device, dtype).load(file)
        source = config.model.resolved_path(config.base_dir)
        if source is None or Path(source).exists():  # local model: layer rules from its config
            check_against_model(config, model_source(config))
        emit(json_, {"valid": True, "file": str(file), "config_digest": config.digest(),
                     "stages": config.stage_names()},
             f"{file}: valid ({', '.join(config.stage_names())})")

    _command(go, json_, quiet, verbose)


@app.command()
def plan(file: FileArg, json_: JsonOpt = False, quiet: QuietOpt = False,
         verbose: VerboseOpt = False, cache_dir: CacheOpt = None, set_: SetOpt = None,
         device: DeviceOpt = None, dtype: DtypeOpt = None) -> None:
    """List FILE's stages, the memory mode, and whether each stage's inputs are already in the
    cache (no weights are loaded)."""
    def go(level: int):
        from wanda_export.config import meta_model
        from wanda_export.pipeline.plan import plan_pipeline
        from wanda_export.pipeline.runner import model_source
        from wanda_export.pipeline.streamed import decide_memory_mode

        config = Overrides(set_, device, dtype).load(file)
        source = model_source(config)
        skeleton = meta_model(source, revision=config.model.revision,
                              trust_remote_code=config.model.trust_remote_code)
        rows = plan_pipeline(config, _cache(cache_dir), source, skeleton=skeleton)
        memory = decide_memory_mode(config, config.stage_names(), skeleton)
        emit(json_, {"file": str(file), "memory": memory.to_dict(), "stages": rows},
             "\n".join([f"{'memory':24s} {memory.describe()}",
                        *(f"{row['stage']:24s} cache: {row['cache']}" for row in rows)]))

    _command(go, json_, quiet, verbose)


for _stage, _model in STAGE_MODELS.items():
    _pipeline_command(_stage, _stage, f"{_model.summary} Runs FILE's stages up to and including "
                      f"'{_stage}' (earlier stages come from the cache when they can).")


GridOpt = Annotated[list[str], typer.Option(
    "--grid", help="KEY=V1,V2,...: a setting and the values to try (e.g. mask.sparsity=0.5,0.6);"
    " several --grid options make a grid of every combination.", show_default=False)]


@app.command()
def sweep(file: FileArg, grid: GridOpt, out: OutOpt = "wanda-sweep", set_: SetOpt = None,
          json_: JsonOpt = False, quiet: QuietOpt = False, verbose: VerboseOpt = False,
          cache_dir: CacheOpt = None, force: ForceOpt = False) -> None:
    """Run FILE once per combination of the --grid values, each into OUT/VARIANT, and compare
    them (OUT/summary.md, OUT/report.json, OUT/charts/sweep.png). Exit code: the worst
    variant's (1 > 4 > 2 > 3 > 0), 130 when interrupted (finished variants are kept)."""
    def go(level: int):
        from wanda_export.errors import VariantsFailed
        from wanda_export.pipeline.outdir import parse_out
        from wanda_export.pipeline.progress import NullProgress, RichProgress
        from wanda_export.sweep import comparison, comparison_text, parse_axis, run_sweep

        def on_failure(error: BaseException, release: Path) -> tuple[int, str]:
            code, message, _hint = failure_of(error, f"the release {release}")
            if code == EXIT_INTERNAL:
                log.exception("variant %s: internal error", release.name)
            log.error("variant %s failed (exit %d): %s", release.name, code, message)
            return code, message

        axes = [parse_axis(text) for text in grid]
        result = run_sweep(file, axes, parse_out(out), sets=set_ or [], cache=_cache(cache_dir),
                           progress=NullProgress() if level == QUIET else RichProgress(stderr),
                           force=force, on_failure=on_failure)
        data = comparison(result)
        if result.exit_code:
            if not json_:
                emit(False, None, comparison_text(data))
            failed = sum(row["exit_code"] != 0 for row in data["variants"])
            raise VariantsFailed(f"{failed} of {len(data['variants'])} variants did not pass",
                                 result.exit_code, report=data)
        emit(json_, data, comparison_text(data))

    _command(go, json_, quiet, verbose, writing=f"the sweep in --out {out}")


ReportArg = Annotated[Path, typer.Argument(help="A release folder or its report.json.",
                                           show_default=False)]


@app.command()
def diff(old: ReportArg, new: ReportArg, json_: JsonOpt = False, md: Annotated[bool, typer.Option(
        "--md", help="Markdown for a pull-request comment.")] = False, quiet: QuietOpt = False,
         verbose: VerboseOpt = False) -> None:
    """Compare two runs: metrics, gates and plan of OLD and NEW side by side, with the change."""
    def go(level: int):
        from wanda_export.report.diff import diff_reports, diff_tables, load_report, render_diff_md

        result = diff_reports(load_report(old), load_report(new))
        if json_ or md:
            emit(json_, result, render_diff_md(result) if md else "")
        else:
            print_rich(*diff_tables(result))

    _command(go, json_, quiet, verbose)


@app.command()
def push(out: Annotated[Path, typer.Argument(help="A release folder (the --out of a run).",
                                             show_default=False)],
         repo_id: Annotated[str, typer.Option("--repo-id", help="The hub model repo, ORG/NAME.",
                                              show_default=False)],
         private: Annotated[bool, typer.Option(
             "--private", help="Create the repo private (an existing repo keeps its setting).")
         ] = False, json_: JsonOpt = False, quiet: QuietOpt = False,
         verbose: VerboseOpt = False) -> None:
    """Upload a release's model/ (and onnx/) to the Hugging Face Hub in one commit, after
    checking every file against its manifest (exit 4 offline or without a token)."""
    def go(level: int):
        from wanda_export.pipeline.publish import push_release

        result = push_release(out, repo_id, private=private)
        emit(json_, result, f"pushed {result['files']} files to {result['repo_id']}: "
                             f"{result['url']}")

    _command(go, json_, quiet, verbose)


def _entry_rows(entries) -> list[dict]:
    return [{"kind": e.kind, "key": e.key, "bytes": e.bytes, "path": str(e.path),
             "created": e.created.isoformat() if e.created else None,
             "used": e.used.isoformat() if e.used else None} for e in entries]


def _entry_table(rows: list[dict]) -> str:
    return "\n".join(f"{r['kind']:14s} {r['key'][:16]}  {r['bytes']:>12,d} B  {r['created']}"
                     for r in rows)


@cache_app.command("ls")
def cache_ls(json_: JsonOpt = False, quiet: QuietOpt = False, verbose: VerboseOpt = False,
             cache_dir: CacheOpt = None) -> None:
    """List cache entries."""
    def go(level: int):
        rows = _entry_rows(_cache(cache_dir).entries())
        emit(json_, rows, _entry_table(rows) or "cache is empty")

    _command(go, json_, quiet, verbose)


@cache_app.command("clear")
def cache_clear(kind: Annotated[str | None, typer.Option(help="Only this kind.")] = None,
                json_: JsonOpt = False, quiet: QuietOpt = False, verbose: VerboseOpt = False,
                cache_dir: CacheOpt = None) -> None:
    """Remove cache entries (all, or one kind's)."""
    def go(level: int):
        removed = _cache(cache_dir).clear(kind)
        emit(json_, {"removed": removed}, f"removed {removed} entries")

    _command(go, json_, quiet, verbose)


@cache_app.command("gc")
def cache_gc(
    max_size: Annotated[str | None, typer.Option(
        "--max-size", metavar="SIZE", help="Keep at most this much, e.g. 20GiB or 500MB: the "
        "least recently used entries go first.")] = None,
    max_age: Annotated[str | None, typer.Option(
        "--max-age", metavar="AGE", help="Remove the entries unused for longer, e.g. 30d, 12h, "
        "2w (s, m, h, d, w).")] = None,
    json_: JsonOpt = False, quiet: QuietOpt = False, verbose: VerboseOpt = False,
    cache_dir: CacheOpt = None,
) -> None:
    """Trim the cache by age and size, least recently used first; entries in use are kept."""
    def go(level: int):
        if max_size is None and max_age is None:
            raise ConfigError("cache gc needs --max-size SIZE, --max-age AGE or both")
        removed = _cache(cache_dir).gc(_size_option(max_size), _age_option(max_age))
        rows = _entry_rows(removed)
        freed = sum(row["bytes"] for row in rows)
        emit(json_, {"removed": len(rows), "bytes_freed": freed, "entries": rows},
             "\n".join(filter(None, [_entry_table(rows),
                                     f"removed {len(rows)} entries, {freed:,d} bytes"])))

    _command(go, json_, quiet, verbose)


def _size_option(text: str | None) -> int | None:
    """--max-size in bytes (memory.parse_size's forms); ConfigError naming the option."""
    from wanda_export.memory import parse_size

    if text is None:
        return None
    try:
        return parse_size(text.strip())
    except ValueError as error:
        raise ConfigError(f"--max-size: {error}") from None


def _age_option(text: str | None) -> float | None:
    """--max-age in seconds: a number and a unit (s, m, h, d, w); ConfigError otherwise."""
    if text is None:
        return None
    value, unit = text.strip()[:-1], text.strip()[-1:].lower()
    try:
        seconds = float(value) * _AGE_UNITS[unit]
    except (KeyError, ValueError):
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise ConfigError(f"--max-age: {text!r} is not an age such as 30d, 12h, 90m or 2w "
                          f"(units: {', '.join(_AGE_UNITS)})")
    return seconds


@app.command()
def version(json_: JsonOpt = False) -> None:
    """Print the version."""
    emit(json_, {"version": __version__}, f"wanda-export {__version__}")
