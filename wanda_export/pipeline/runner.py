"""Run a validated pipeline: stage order, timing, gates, and an all-or-nothing output folder.

What `--out` may replace is checked first (`pipeline/outdir.py`), before the model loads.
Outputs are written into a hidden sibling of `--out` and renamed into place only when the run
completes (gates passed or failed); a crash or an interrupt removes the partial folder and
leaves an existing `--out` untouched.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from wanda_export import __version__
from wanda_export.atomic import (
    OLD_MARK,
    owner_is_gone,
    replace_directory,
    staging_directory,
)
from wanda_export.cache.store import CacheStore
from wanda_export.config import PipelineConfig, check_against_model, meta_model
from wanda_export.errors import EXIT_GATE, EXIT_OK
from wanda_export.evaluate.harness import load_tasks, resolve_tasks
from wanda_export.memory import return_freed_memory
from wanda_export.model.loading import LoadedModel, classify_path, load_model, model_name
from wanda_export.model.streaming import StreamedCheckpoint, load_streamed
from wanda_export.pipeline.accuracy import run_dense_lm_eval
from wanda_export.pipeline.benchmark import check_runtimes
from wanda_export.pipeline.context import RunContext
from wanda_export.pipeline.outdir import check_out_dir, protected_paths, write_marker
from wanda_export.pipeline.progress import NullProgress
from wanda_export.pipeline.publish import hub_token, push_release
from wanda_export.pipeline.run_plan import DENSE_LM_EVAL, DENSE_PERPLEXITY, plan_run
from wanda_export.pipeline.stages import (
    CHECKPOINT_DIR,
    ONNX_DIR,
    STAGES,
    mask_settings,
    run_dense_baseline,
)
from wanda_export.pipeline.streamed import (
    STREAMED_STAGES,
    decide_memory_mode,
    discard_unrequested_checkpoint,
    unsupported_gates,
)
from wanda_export.report import (
    accuracy_chart,
    collect_artifacts,
    evaluate_gates,
    latency_chart,
    plot_importance_kept,
    plot_layer_sparsity,
    uniform_sparsity,
    write_junit,
    write_manifest,
    write_report_json,
    write_summary_md,
)
from wanda_export.report.model_card import write_model_card
from wanda_export.report.provenance import created_now, host, versions
from wanda_export.report.record import RunRecord, StageRecord

log = logging.getLogger("wanda_export.pipeline")

PARTIAL_MARK = ".partial-"
ARTIFACT_DIRS = {CHECKPOINT_DIR: "safetensors-checkpoint", ONNX_DIR: "onnx", "charts": "png"}


def model_source(config: PipelineConfig) -> str:
    """Where the model comes from, for rule checks and planning (the default model dir if unset)."""
    kind, source = classify_path(config.model.resolved_path(config.base_dir))
    if kind == "default":
        from wanda_export.model.default import default_model_dir

        return str(default_model_dir())
    return source


def _timed(name: str, fn, ctx: RunContext) -> StageRecord:
    log.info("stage %s", name)
    start = time.perf_counter()
    record = fn(ctx)
    record.seconds = round(time.perf_counter() - start, 3)
    ctx.record.stages.append(record)
    log.info("stage %s: %s (cache %s) in %.1f s", name, record.status, record.cache, record.seconds)
    return record


def _remove_stale_partials(out_dir: Path) -> None:
    """Delete partial folders left by killed runs (their process is gone), and put back a
    previous release that a run killed mid-publish had moved aside (else delete it)."""
    for partial in out_dir.parent.glob(f".{out_dir.name}{PARTIAL_MARK}*"):
        if owner_is_gone(partial, PARTIAL_MARK):
            shutil.rmtree(partial, ignore_errors=True)
    for old in out_dir.parent.glob(f".{out_dir.name}{OLD_MARK}*"):
        if owner_is_gone(old, OLD_MARK):
            if os.path.lexists(out_dir):
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(old, out_dir)


def _load(config: PipelineConfig, streaming: bool
          ) -> tuple[LoadedModel, StreamedCheckpoint | None]:
    """The model in memory, or its weightless skeleton and the checkpoint it streams from."""
    model = config.model
    arguments = {"dtype": model.dtype, "device": model.device,
                 "trust_remote_code": model.trust_remote_code, "revision": model.revision}
    path = model.resolved_path(config.base_dir)
    if streaming:
        return load_streamed(path, **arguments)
    return load_model(path, allow_pickle=model.allow_pickle, **arguments), None


def _write_outputs(ctx: RunContext) -> None:
    record, staging = ctx.record, ctx.staging
    charts = {}
    if record.sparsity is not None and uniform_sparsity(record) and plot_importance_kept(
            record, staging / "charts" / "importance.png") is not None:
        charts["per-layer importance kept"] = "charts/importance.png"
    elif record.sparsity is not None:
        chart = plot_layer_sparsity(record, staging / "charts" / "sparsity.png")
        if chart is not None:
            charts["per-layer sparsity"] = "charts/sparsity.png"
    rows = [] if record.metrics.latency is None else record.metrics.latency.comparison
    if rows and latency_chart(rows, staging / "charts" / "latency.png") is not None:
        charts["dense vs sparse latency"] = "charts/latency.png"
    if accuracy_chart(record.metrics.lm_eval, staging / "charts" / "accuracy.png") is not None:
        charts["dense vs pruned accuracy"] = "charts/accuracy.png"
    if (staging / CHECKPOINT_DIR).is_dir():
        write_model_card(record.to_dict(), ctx.config.model_dump(mode="json"),
                         staging / CHECKPOINT_DIR)
    record.artifacts = collect_artifacts(staging, {d: f for d, f in ARTIFACT_DIRS.items()
                                                   if (staging / d).is_dir()})
    write_manifest(record.artifacts, staging / "manifest.json")
    write_junit(record, staging / "junit.xml")
    write_summary_md(record, staging / "summary.md", charts)
    write_report_json(record, staging / "report.json")
    write_marker(staging)


def run_pipeline(
    config: PipelineConfig,
    out_dir: Path,
    *,
    cache: CacheStore | None = None,
    progress: NullProgress | None = None,
    until: str | None = None,
    force: bool = False,
) -> RunRecord:
    """Run the pipeline's stages (up to and including `until`), evaluate the gates, write outputs.

    `out_dir` must be something a release may replace (`outdir.check_out_dir`; `force` lets a
    non-empty folder that is not a release go). Returns the run record; `record.exit_code` is 0
    when every gate passed and 3 otherwise.
    """
    cache = cache or CacheStore()
    protected = protected_paths(config, cache.root)
    out_dir = check_out_dir(Path(out_dir), protected, force=force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out_dir)
    skeleton = meta_model(model_source(config), revision=config.model.revision,
                          trust_remote_code=config.model.trust_remote_code)
    check_against_model(config, skeleton)
    names = config.stage_names()
    if until is not None:
        names = names[: names.index(until) + 1]
    # a gated runtime this machine lacks: exit 4 before any work
    availability = check_runtimes(config) if "benchmark" in names else {}
    push = _push_setting(config) if until is None else None
    if push is not None:  # offline or without a token: exit 4 before any work
        hub_token()
    memory = decide_memory_mode(config, names, skeleton)
    log.info("memory: %s", memory.describe())
    if memory.streaming:
        unsupported_gates(config)
        return_freed_memory()
    task_set = None
    if "evaluate" in names and config.stage("evaluate").lm_eval is not None and (
        not memory.streaming
    ):  # lm-eval missing, an unknown task, a dataset out of reach: exit 2 or 4 before any work
        task_set = resolve_tasks(config.stage("evaluate").lm_eval, config.base_dir, cache.root)
        load_tasks(task_set)
    with staging_directory(out_dir, PARTIAL_MARK) as staging:
        record = RunRecord(tool_version=__version__, config_digest=config.digest(),
                           created=created_now(), config=config.resolved_dump(),
                           versions=versions(), host=host())
        start = time.perf_counter()
        loaded, checkpoint = _load(config, memory.streaming)
        record.stages.append(StageRecord("load", seconds=round(time.perf_counter() - start, 3)))
        record.model = {
            "name": model_name(loaded.kind, loaded.source),
            "source": loaded.source, "kind": loaded.kind, "fingerprint": loaded.fingerprint,
            "dtype": str(loaded.dtype).removeprefix("torch."), "device": str(loaded.device),
            "architecture": type(loaded.model).__name__,
            "parameters": sum(p.numel() for p in loaded.model.parameters()),
            "memory": memory.to_dict(),
        }
        ctx = RunContext(config=config, cache=cache, staging=staging, record=record,
                         loaded=loaded, progress=progress or NullProgress(), checkpoint=checkpoint)
        stages = STREAMED_STAGES if memory.streaming else STAGES
        ctx.run_plan = plan_run(config, names, loaded.fingerprint,
                                [target.name for target in ctx.targets],
                                lambda: ctx.calibration_windows, lambda: ctx.evaluation_windows,
                                None if task_set is None else lambda: task_set)
        if task_set is not None:
            ctx.lm_eval_tasks = task_set
        if "evaluate" in names:  # tokenized now: too little text fails before any forward pass
            _ = ctx.evaluation_windows
        if "benchmark" in names and not memory.streaming:
            ctx.availability = availability
            ctx.keep_dense_weights()
        spec = config.prune_spec()
        if spec is not None:
            record.plan = {"method": spec.method, "sparsity": spec.sparsity,
                           "pattern": spec.pattern, "group": spec.comparison_group,
                           "mode": spec.mode, "targets": len(ctx.targets),
                           **mask_settings(spec)}
        if ctx.run_plan.has(DENSE_PERPLEXITY):
            _timed(DENSE_PERPLEXITY, run_dense_baseline, ctx)
        if ctx.run_plan.has(DENSE_LM_EVAL):
            _timed(DENSE_LM_EVAL, run_dense_lm_eval, ctx)
        for name in names:
            if name == "evaluate" and not config.stage("evaluate").measures:
                continue
            _timed(name, stages[name], ctx)
        if memory.streaming:
            discard_unrequested_checkpoint(ctx, names)
        # a partial run (one stage command) measures too little for the configured gates
        record.gates = evaluate_gates(config.gates, record, configured=until is None)
        failed = [gate for gate in record.gates if not gate.passed]
        record.status = "failed" if failed else "passed"
        record.exit_code = EXIT_GATE if failed else EXIT_OK
        _write_outputs(ctx)
        check_out_dir(out_dir, protected, force=force)  # nothing moved in while we ran
        replace_directory(staging, out_dir)
    if push is not None and record.exit_code == EXIT_OK:
        push_release(out_dir, push.repo_id, private=push.private)
    return record


def _push_setting(config: PipelineConfig):
    """The export stage's `push_to_hub` setting (None without one or without an export)."""
    export = config.stage("export")
    return None if export is None else export.push_to_hub
