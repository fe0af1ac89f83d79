"""The stages of a run that streams its decoder layers (a model larger than the memory budget):
the same stage names and records as `stages.py`, with the work done by `stream/` one layer at a
time and the pruned checkpoint written shard by shard into the release as it is produced.

Pruning happens in the calibrate stage when the method calibrates, otherwise in the mask stage
(the records say which). The ONNX export reads the written shards through onnxruntime-genai's
builder (families it builds); what needs the whole model in one runtime (torch.onnx, parity,
the benchmark) is skipped with the reason; a gate that needs it stops the run before any work
(`unsupported_gates`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from wanda_export.config import PipelineConfig
from wanda_export.config.stages import ONNX_FORMATS, ExportStage
from wanda_export.data.windows import token_digest
from wanda_export.errors import EnvironmentProblem
from wanda_export.evaluate.streaming import stream_perplexity
from wanda_export.export.sharded import ShardWriter
from wanda_export.memory import (
    MemoryBudget,
    MemoryEstimate,
    WindowPass,
    choose_streaming,
    detect_budget,
    estimate_memory,
    format_size,
    parse_size,
)
from wanda_export.model.layers import find_decoder_layers, find_targets
from wanda_export.model.loading import resolve_dtype
from wanda_export.model.streaming import StreamedCheckpoint
from wanda_export.pipeline.allocation import ensure_allocation
from wanda_export.pipeline.context import RunContext
from wanda_export.pipeline.onnx_stage import choose_exporter, export_onnx_formats
from wanda_export.pipeline.stages import (
    CHECKPOINT_DIR,
    STAGES,
    artifact_sizes,
    mask_settings,
    pruning_plan,
    record_pruned_perplexity,
)
from wanda_export.pipeline.stream_cache import LayerCache
from wanda_export.report.metrics import SparsityRecord
from wanda_export.report.record import StageRecord
from wanda_export.sparsity.verify import SparsityReport
from wanda_export.stream.prune import LayerOutput, stream_prune, stream_verify

WHOLE_MODEL = "the model exceeds the memory budget, and this stage needs it whole in one runtime"
LM_EVAL_NOT_RUN = ("not run: lm-eval needs the whole model in one runtime and the model "
                   "exceeds the memory budget (perplexity is measured, streamed)")


@dataclass(frozen=True)
class MemoryMode:
    """How a run holds its model: streamed or in memory, the budget and the estimate."""

    streaming: bool
    budget: MemoryBudget
    estimate: MemoryEstimate

    def to_dict(self) -> dict:
        """JSON-ready, for report.json's `model.memory`."""
        return {"mode": "streaming" if self.streaming else "in-memory",
                "budget_bytes": self.budget.bytes, "budget_source": self.budget.source,
                "estimate": self.estimate.to_dict()}

    def describe(self) -> str:
        """One line for logs and `plan`."""
        need = self.estimate.streaming if self.streaming else self.estimate.in_memory
        return (f"{'streaming' if self.streaming else 'in memory'}: needs about "
                f"{format_size(need)} of a {format_size(self.budget.bytes)} budget "
                f"({self.budget.source})")


def decide_memory_mode(config: PipelineConfig, stage_names: list[str],
                       skeleton: nn.Module) -> MemoryMode:
    """Stream or not, from the model's shapes (`skeleton`, on the meta device: no weight read),
    the run's data sizes and the memory budget; exit 4 when even streaming cannot fit."""
    model = config.model
    calibration, evaluation = config.data.calibration, config.data.evaluation
    spec = config.prune_spec()
    passes = []
    if calibration is not None and "calibrate" in stage_names:
        passes.append(WindowPass(calibration.nsamples, calibration.seqlen,
                                 calibration.batch_size, logits=False))
    if evaluation is not None and "evaluate" in stage_names:
        passes.append(WindowPass(evaluation.max_windows or 1, evaluation.seqlen,
                                 evaluation.batch_size, logits=True))
    estimate = estimate_memory(
        skeleton, find_decoder_layers(skeleton)[1], resolve_dtype(model.dtype).itemsize,
        passes=passes, hessian=spec is not None and spec.needs_hessian,
        keep_dense_copy="benchmark" in stage_names, shard_bytes=_max_shard_bytes(config))
    budget = detect_budget(model.memory_budget)
    return MemoryMode(choose_streaming(model.streaming, estimate, budget), budget, estimate)


def discard_unrequested_checkpoint(ctx: RunContext, stage_names: list[str]) -> None:
    """Remove the streamed pruned checkpoint from the release unless the export stage asked
    for safetensors (a streamed run writes it as it prunes, wherever it ends up)."""
    export = ctx.config.stage("export")
    if "export" in stage_names and export is not None and "safetensors" in export.formats:
        return
    ctx.shard_writer = None
    shutil.rmtree(ctx.staging / CHECKPOINT_DIR, ignore_errors=True)


def unsupported_gates(config: PipelineConfig) -> None:
    """Refuse (exit 4) a streamed run whose gates need the whole model in one runtime."""
    perplexity = config.gates.perplexity
    onnx_perplexity = perplexity is not None and perplexity.max_onnx_ratio_to_torch is not None
    needing = [name for name, gate in (("parity", config.gates.parity),
                                       ("latency", config.gates.latency),
                                       ("tensorrt", config.gates.tensorrt),
                                       ("accuracy", config.gates.accuracy),
                                       ("perplexity.max_onnx_ratio_to_torch",
                                        onnx_perplexity or None)) if gate is not None]
    if needing:
        raise EnvironmentProblem(
            f"the model is streamed (it exceeds the memory budget), but gates "
            f"{', '.join(needing)} need the ONNX export, the benchmark or lm-eval of the "
            "whole model",
            hint="raise model: {memory_budget: ...}, or drop those gates for this model")


def _max_shard_bytes(config: PipelineConfig) -> int:
    """The export stage's `max_shard_size` (its default without an export stage)."""
    export = config.stage("export") or ExportStage()
    return parse_size(export.max_shard_size)


def _writer(ctx: RunContext) -> ShardWriter:
    """The shard writer of the pruned checkpoint, in the release's model/ folder."""
    if ctx.shard_writer is None:
        ctx.shard_writer = ShardWriter(ctx.staging / CHECKPOINT_DIR, _max_shard_bytes(ctx.config))
    return ctx.shard_writer


def _layer_cache(ctx: RunContext, windows: torch.Tensor | None) -> LayerCache:
    """The per-layer cache of this prune, keyed on everything its layers depend on."""
    return LayerCache(ctx.cache, {
        "schema": "stream-prune", "model_fingerprint": ctx.loaded.fingerprint,
        "dtype": ctx.config.model.dtype, "spec": ctx.spec.model_dump(mode="json"),
        "pattern": str(ctx.pattern),
        "calibration": None if windows is None else token_digest(windows),
        "targets": [target.name for target in ctx.targets],
        "ratios": {name: float(ratio) for name, ratio in sorted(ctx.allocation.ratios.items())}})


def _prune(ctx: RunContext, stage: str) -> StageRecord:
    """Allocate, then stream every layer through calibration (when the method needs it),
    pruning and the shard writer, each finished layer cached; a rerun takes the cached
    leading layers and resumes after them. Record the sparsity reached."""
    spec, checkpoint, device = ctx.spec, ctx.checkpoint, ctx.loaded.device
    windows = ctx.calibration_windows if spec.needs_calibration else None
    ensure_allocation(ctx)
    forward_windows = windows if spec.prunes_from_statistics else None
    layer_cache, writer = _layer_cache(ctx, forward_windows), _writer(ctx)
    layers = len(checkpoint.layers)
    start, hidden = layer_cache.resume_point(layers, needs_hidden=forward_windows is not None)
    report, seconds = SparsityReport(), {}
    for index in range(start):
        tensors, layer_report = layer_cache.load(index)
        for name, tensor in tensors.items():
            writer.add(name, tensor)
        report.layers.update(layer_report)
    if start < layers:
        with ctx.progress.task(f"{stage} (streamed)", layers - start) as advance:
            def on_layer(output: LayerOutput) -> None:
                layer_cache.store(output)
                advance(1)

            result = stream_prune(checkpoint, spec, forward_windows, writer, device=device,
                                  ratios=ctx.allocation.ratios, on_layer=on_layer,
                                  start_layer=start, hidden=hidden)
        report.layers.update(result.report.layers)
        ctx.permuted = result.permuted
        seconds = {key: round(value, 3) for key, value in result.seconds.items()}
    else:
        for name, tensor in checkpoint.outside_tensors():
            writer.add(name, tensor)
    ctx.pruned_in_calibration = stage == "calibrate"
    ctx.record.sparsity = SparsityRecord(pattern=str(ctx.pattern), target=spec.sparsity,
                                         report=report, allocation=ctx.allocation,
                                         permuted=ctx.permuted)
    return StageRecord(stage, cache="hit" if start == layers else "miss", detail={
        "streamed": True, "layers": layers, "layers_from_cache": start, "pruned": True,
        "seconds": seconds})


def run_calibrate(ctx: RunContext) -> StageRecord:
    """Stream the layers through calibration and pruning (the statistics of one layer at a
    time, freed once it is pruned)."""
    if ctx.run_plan.calibration is None:
        return StageRecord("calibrate", status="skipped",
                           detail={"reason": "the scoring method needs no activations"})
    record = _prune(ctx, "calibrate")
    record.detail["mode"] = ctx.run_plan.calibration
    return record


def run_mask(ctx: RunContext) -> StageRecord:
    """Prune here when no calibration did (magnitude), else record what calibration pruned."""
    if not ctx.pruned_in_calibration:
        _prune(ctx, "mask")
    sparsity = ctx.record.sparsity
    return StageRecord("mask", detail={
        "layers": len(ctx.targets), "overall": sparsity.report.overall,
        "allocation": ctx.allocation.method, "streamed": True, **mask_settings(ctx.spec),
        "pruned_during": "calibrate" if ctx.pruned_in_calibration else "mask",
        **({"cache": ctx.allocation_inputs} if ctx.allocation_inputs else {})})


def _finish_checkpoint(ctx: RunContext) -> Path:
    """Close the shard writer: index, config, tokenizer and the plan beside the shards."""
    directory = ctx.staging / CHECKPOINT_DIR
    if ctx.shard_writer is not None:
        ctx.shard_writer.finish(pruning_plan(ctx), ctx.checkpoint.config, ctx.loaded.tokenizer,
                                ctx.checkpoint.generation_config)
        ctx.shard_writer = None
    return directory


def _pruned_checkpoint(ctx: RunContext) -> StreamedCheckpoint:
    """The pruned checkpoint as written, opened for streaming; the input checkpoint when the
    pipeline prunes nothing (a verify-only or evaluate-only pipeline)."""
    if ctx.spec is None:
        return ctx.checkpoint
    return StreamedCheckpoint(_finish_checkpoint(ctx), ctx.checkpoint.dtype)


def run_verify(ctx: RunContext) -> StageRecord:
    """Re-read every pruned weight from the written shards and check it."""
    written = _pruned_checkpoint(ctx)
    targets = (ctx.spec.targets_of(written.model) if ctx.spec is not None
               else find_targets(written.model))
    report = stream_verify(written, targets, ctx.pattern)
    ctx.record.sparsity = SparsityRecord(
        pattern=str(ctx.pattern), target=ctx.spec.sparsity if ctx.spec else None,
        report=report, allocation=ctx.allocation, verified=True)
    invalid = report.invalid_layers
    return StageRecord("verify", status="ok" if not invalid else "failed",
                       detail={"overall": report.overall, "invalid_layers": invalid,
                               "streamed": True})


def run_evaluate(ctx: RunContext) -> StageRecord:
    """Streamed perplexity of the pruned checkpoint as written; lm-eval tasks are not run
    (the detail says so)."""
    stage = ctx.config.stage("evaluate")
    detail: dict = {"streamed": True}
    if stage.perplexity:
        windows = ctx.evaluation_windows
        value = stream_perplexity(_pruned_checkpoint(ctx), windows,
                                  ctx.config.data.evaluation.batch_size,
                                  device=ctx.loaded.device)
        record_pruned_perplexity(ctx, value, windows)
        detail["perplexity"] = value
    if stage.lm_eval is not None:
        detail["lm_eval"] = LM_EVAL_NOT_RUN
    return StageRecord("evaluate", detail=detail)


def _export_onnx_streamed(ctx: RunContext, formats: list[str]) -> tuple[dict, bool]:
    """ONNX from the written shards through onnxruntime-genai's builder (memory-mapped, never
    the whole model), verified in the file against the shards one tensor at a time; skipped
    with the reason when this model or format needs the torch exporter (the whole model)."""
    stage = ctx.config.stage("export")
    exporter, reason = choose_exporter(stage.onnx_exporter, ctx.checkpoint.config, formats)
    if exporter != "genai":
        return {"skipped": {name: f"{WHOLE_MODEL} ({reason})"
                            for name in sorted(ONNX_FORMATS & set(formats))}}, True
    written = StreamedCheckpoint(ctx.staging / CHECKPOINT_DIR, ctx.checkpoint.dtype)
    targets = ctx.spec.targets_of(written.model) if ctx.spec is not None else find_targets(
        written.model)

    def reference(target) -> torch.Tensor:
        source = written.source_name(f"{target.name}.weight")
        return written.read([source])[source]

    return export_onnx_formats(ctx, formats, stage, pruning_plan(ctx), targets, reference)


def run_export(ctx: RunContext) -> StageRecord:
    """The safetensors checkpoint is already written, shard by shard; ONNX is exported from
    those shards by onnxruntime-genai's builder when the family has one (else skipped with the
    reason: torch.onnx needs the whole model)."""
    formats = list(ctx.config.stage("export").formats)
    _finish_checkpoint(ctx)
    detail: dict = {"formats": formats, "streamed": True,
                    "shards": len(list((ctx.staging / CHECKPOINT_DIR).glob("*.safetensors")))}
    valid = True
    if ONNX_FORMATS & set(formats):
        onnx_detail, valid = _export_onnx_streamed(ctx, formats)
        detail.update(onnx_detail)
    discard_unrequested_checkpoint(ctx, ctx.config.stage_names())
    ctx.record.metrics.sizes = artifact_sizes(ctx)
    return StageRecord("export", status="ok" if valid else "failed", detail=detail)


def run_benchmark(ctx: RunContext) -> StageRecord:
    """Latency needs the whole model in one runtime: skipped with the reason."""
    return StageRecord("benchmark", status="skipped", detail={"reason": WHOLE_MODEL})


STREAMED_STAGES = {**STAGES, "calibrate": run_calibrate, "mask": run_mask, "verify": run_verify,
                   "evaluate": run_evaluate, "export": run_export, "benchmark": run_benchmark}
"""The stage registry of a streamed run: `stages.STAGES` with the streamed stages swapped in."""
