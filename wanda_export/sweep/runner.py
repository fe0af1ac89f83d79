"""Run a sweep: every variant of a pipeline through the one pipeline runner, each into its own
release folder under the sweep's folder, and the comparison rewritten after each variant.

The variants share the activation cache, so in dense calibration mode the first variant that
calibrates computes the statistics and every later one reads them: variants that collect X^T X
(SparseGPT) run first, since their entry serves Wanda's and magnitude's too. Apart from that the
variants run in grid order. A failing variant (exit 1, 2, 3 or 4) does not stop the others; an
interrupt stops the sweep, keeping the finished variants and a comparison of them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from wanda_export.cache.store import CacheStore
from wanda_export.config import PipelineConfig, load_config
from wanda_export.config.overrides import parse_override
from wanda_export.errors import EXIT_CONFIG, ConfigError
from wanda_export.pipeline.outdir import (
    REPORT_FILE,
    check_out_dir,
    protected_paths,
    write_marker,
)
from wanda_export.pipeline.progress import NullProgress
from wanda_export.pipeline.runner import run_pipeline
from wanda_export.sweep.compare import write_comparison
from wanda_export.sweep.grid import Axis, Variant, expand
from wanda_export.sweep.result import SweepResult, VariantResult

log = logging.getLogger("wanda_export.sweep")

# (exception, the variant's release folder) -> (exit code, message), from the CLI
FailureMapper = Callable[[BaseException, Path], tuple[int, str]]


def _configs(file: Path, variants: list[Variant], sets: list[str],
             results: dict[str, VariantResult]) -> dict[str, PipelineConfig]:
    """Each variant's validated config; a variant whose config is refused gets exit 2 now."""
    common = [parse_override(text) for text in sets]  # a malformed --set stops the sweep
    configs = {}
    for variant in variants:
        try:
            configs[variant.name] = load_config(file, [*common, *variant.overrides])
        except ConfigError as error:
            results[variant.name].exit_code, results[variant.name].message = (
                EXIT_CONFIG, error.message)
    return configs


def _refuse_a_run_release(out_dir: Path) -> None:
    """A sweep writes into its folder (variants of an earlier sweep not in this grid stay):
    refuse a folder holding one run's release, whose files would mix with the variants."""
    try:
        kind = json.loads((out_dir / REPORT_FILE).read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return
    if kind != "sweep":
        raise ConfigError(f"--out {out_dir} holds the release of a run, not a sweep",
                          hint="choose a new or empty folder for the sweep's --out")


def _run_order(variants: list[Variant], configs: dict[str, PipelineConfig]) -> list[Variant]:
    """Grid order, with the variants whose calibration collects X^T X first (their dense
    statistics serve the others)."""
    def collects_hessian(variant: Variant) -> bool:
        spec = configs[variant.name].prune_spec()
        return spec is not None and spec.needs_hessian

    runnable = [variant for variant in variants if variant.name in configs]
    return sorted(runnable, key=lambda variant: not collects_hessian(variant))


def run_sweep(file: str | Path, axes: list[Axis], out_dir: Path, *, sets: Sequence[str] = (),
              cache: CacheStore | None = None, progress: NullProgress | None = None,
              force: bool = False, on_failure: FailureMapper | None = None) -> SweepResult:
    """Run every variant of pipeline `file` over the grid `axes` (after the `sets` overrides)
    into `out_dir/<variant>/`, writing the comparison (`sweep/compare.py`) into `out_dir`
    before the first and after each variant.

    A variant's exception becomes its exit code and message through `on_failure` (without it,
    the exception propagates). An interrupt marks the sweep interrupted, writes the comparison
    and propagates. All variants refused by the schema: the first one's ConfigError is raised.
    """
    file, cache = Path(file), cache or CacheStore()
    variants = expand(axes)
    result = SweepResult(str(file), Path(out_dir), {a.key: a.values() for a in axes})
    result.variants = [VariantResult(v.name, v.values()) for v in variants]
    by_name = {v.name: v for v in result.variants}
    configs = _configs(file, variants, list(sets), by_name)
    if not configs:
        raise ConfigError(f"every variant of the sweep is refused; the first: "
                          f"{result.variants[0].message}")
    first = next(iter(configs.values()))
    result.out_dir = check_out_dir(Path(out_dir), protected_paths(first, cache.root),
                                   force=force)
    _refuse_a_run_release(result.out_dir)
    result.out_dir.mkdir(parents=True, exist_ok=True)
    write_marker(result.out_dir)
    write_comparison(result)
    for variant in _run_order(variants, configs):
        outcome = by_name[variant.name]
        log.info("variant %s (%s)", variant.name, ", ".join(o.text for o in variant.overrides))
        release = result.out_dir / variant.name
        try:
            record = run_pipeline(configs[variant.name], release, cache=cache,
                                  progress=progress, force=force)
            outcome.exit_code, outcome.report = record.exit_code, record.to_dict()
        except KeyboardInterrupt as error:
            result.interrupted = True
            write_comparison(result)
            done = [v.name for v in result.variants if v.exit_code is not None]
            kept = (f"the sweep stopped; {len(done)} finished variant(s) and their "
                    f"comparison are kept in {result.out_dir}")
            error.kept = kept  # type: ignore[attr-defined]  # read by the CLI's message
            raise
        except Exception as error:
            if on_failure is None:
                raise
            outcome.exit_code, outcome.message = on_failure(error, release)
        log.info("variant %s: %s (exit %s)", variant.name, outcome.status, outcome.exit_code)
        write_comparison(result)
    return result

