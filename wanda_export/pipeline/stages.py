"""The pipeline stages and their registry. Each stage reads and fills the run context, writes
what it measured into the run record's typed fields (the gates are all evaluated afterwards, in
`report/gates.py`) and returns its StageRecord (status, cache hit/miss, detail); the runner
times it.

Scores are computed inside the mask stage (scoring every weight is only worth it to mask it);
the score stage records the method. In sequential mode a calibration miss prunes layer by layer
while it calibrates (the paper's algorithm) and the mask stage leaves the weights alone; on a
hit the mask stage prunes each layer from its cached statistics, which gives the same weights
(each layer's result depends only on its own dense weight and statistics).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from wanda_export.calibrate.stats import stats_from_tensors, stats_to_tensors
from wanda_export.config.stages import ONNX_FORMATS
from wanda_export.evaluate.perplexity import perplexity
from wanda_export.evaluate.streaming import stream_perplexity
from wanda_export.export.safetensors import export_checkpoint
from wanda_export.pipeline.allocation import cached_dense_statistics, ensure_allocation
from wanda_export.pipeline.benchmark import run_benchmark
from wanda_export.pipeline.context import RunContext
from wanda_export.pipeline.onnx_stage import CHECKPOINT_DIR, ONNX_DIR, export_onnx_formats
from wanda_export.pipeline.run_plan import CALIBRATE, DENSE_PERPLEXITY
from wanda_export.prune import prune_model, prune_targets, verify_targets
from wanda_export.report.metrics import (
    ArtifactSizes,
    FileSize,
    PerplexityMetrics,
    SparsityRecord,
)
from wanda_export.report.record import StageRecord

StageFn = Callable[[RunContext], StageRecord]


def run_calibrate(ctx: RunContext) -> StageRecord:
    """Activation statistics of every target: from the cache, or by forward passes. In
    sequential mode a miss also prunes each layer before calibrating the next (the paper's
    algorithm), and the record says so (`detail.pruned`)."""
    spec, plan = ctx.spec, ctx.run_plan
    if plan.calibration is None:
        return StageRecord("calibrate", status="skipped",
                           detail={"reason": "the scoring method needs no activations"})
    windows, use = ctx.calibration_windows, plan.use(CALIBRATE)
    served_by = None
    if not plan.prunes_during_calibration:
        ctx.stats, entry = cached_dense_statistics(ctx, use, spec.needs_hessian)
        hit, served_by = entry is not None, entry if entry != use.key else None
    else:
        def compute():
            allocation = ensure_allocation(ctx)
            layers = len({t.layer_index for t in ctx.targets})
            with ctx.progress.task("calibrate (sequential)", layers) as advance:
                result = prune_model(ctx.loaded.model, spec, windows, allocation=allocation,
                                     on_progress=lambda _index: advance(1))
            ctx.permuted = result.permuted
            ctx.pruned_in_calibration = True
            ctx.importance_kept = result.importance_kept
            return stats_to_tensors(result.stats)

        tensors, hit = ctx.cache.get_or_compute(
            use.kind, use.key, compute, use.record,
            metadata={"mode": spec.mode, "targets": len(ctx.targets)})
        ctx.stats = stats_from_tensors(tensors)
    return StageRecord("calibrate", cache="hit" if hit else "miss",
                       detail={"key": use.key, "mode": plan.calibration,
                               "tokens": int(windows.numel()),
                               "pruned": ctx.pruned_in_calibration,
                               **({"served_by": served_by} if served_by else {})})


def run_score(ctx: RunContext) -> StageRecord:
    """Record the scoring method; the scores themselves are computed by the mask stage."""
    spec = ctx.spec
    if spec is None:
        return StageRecord("score", status="skipped", detail={"reason": "no mask stage"})
    detail = {"method": spec.method, "group": spec.comparison_group}
    if spec.method == "sparsegpt":
        detail |= {"dampening": spec.dampening, "block_size": spec.block_size}
    return StageRecord("score", detail=detail | spec.score_settings)


def _record_sparsity(ctx: RunContext) -> SparsityRecord:
    """Verify every target's weight as it now is and put the result in the run record."""
    ctx.record.sparsity = SparsityRecord(
        pattern=str(ctx.pattern), target=ctx.spec.sparsity if ctx.spec else None,
        report=verify_targets(ctx.targets, ctx.pattern), allocation=ctx.allocation,
        permuted=ctx.permuted, importance_kept={  # in model order, whatever finished first
            t.name: ctx.importance_kept[t.name] for t in ctx.targets
            if t.name in ctx.importance_kept} or None)
    return ctx.record.sparsity


def run_mask(ctx: RunContext) -> StageRecord:
    """Score, mask and zero every target in place (at its allocated ratio), unless a
    sequential calibration already did (`detail.pruned_during` says which stage pruned), then
    record the sparsity reached."""
    spec = ctx.spec
    allocation = ensure_allocation(ctx)
    if not ctx.pruned_in_calibration:
        ctx.permuted = prune_targets(ctx.targets, spec, ctx.stats, allocation.ratios,
                                     ctx.loaded.model, ctx.importance_kept)
    report = _record_sparsity(ctx).report
    pruned_during = "calibrate" if ctx.pruned_in_calibration else "mask"
    return StageRecord("mask", detail={"layers": len(ctx.targets), "overall": report.overall,
                                       "allocation": allocation.method,
                                       **mask_settings(spec),
                                       "pruned_during": pruned_during,
                                       **({"cache": ctx.allocation_inputs}
                                          if ctx.allocation_inputs else {})})


def mask_settings(spec) -> dict:
    """The mask stage's channel permutation, refinement and weight update, as the report and
    the exported plan name them: `permute`, and `refine` and `update` with their settings (None
    without)."""
    return {"permute": spec.permute, "refine": spec.refinement, "update": spec.weight_update}


def run_verify(ctx: RunContext) -> StageRecord:
    """Re-read every target's weight and check sparsity and the N:M pattern along K (the
    `verify` gate reads the result)."""
    sparsity = _record_sparsity(ctx)
    sparsity.verified = True
    invalid = sparsity.report.invalid_layers
    return StageRecord("verify", status="ok" if not invalid else "failed",
                       detail={"overall": sparsity.report.overall, "invalid_layers": invalid})


def run_dense_baseline(ctx: RunContext) -> StageRecord:
    """Perplexity of the unpruned model (before any mask), cached per model and evaluation set;
    a streamed run measures its checkpoint one layer at a time, to the same value."""
    data = ctx.config.data.evaluation
    windows, use = ctx.evaluation_windows, ctx.run_plan.use(DENSE_PERPLEXITY)

    def compute():
        if ctx.checkpoint is not None:
            value = stream_perplexity(ctx.checkpoint, windows, data.batch_size,
                                      device=ctx.loaded.device)
        else:
            with ctx.progress.task("evaluate (dense)", windows.shape[0]) as advance:
                value = perplexity(ctx.loaded.model, windows, data.batch_size, advance)
        return {"perplexity": torch.tensor([value], dtype=torch.float64)}

    tensors, hit = ctx.cache.get_or_compute(use.kind, use.key, compute, use.record)
    dense = float(tensors["perplexity"][0])
    metrics = ctx.record.metrics
    metrics.perplexity = metrics.perplexity or PerplexityMetrics()
    metrics.perplexity.dense = dense
    return StageRecord("evaluate-dense", cache="hit" if hit else "miss",
                       detail={"perplexity": dense, "windows": int(windows.shape[0])})


def run_evaluate(ctx: RunContext) -> StageRecord:
    """Perplexity of the pruned model on the evaluation windows, and its lm-eval scores
    against the dense model's."""
    from wanda_export.pipeline.accuracy import evaluate_pruned_lm_eval

    stage, data = ctx.config.stage("evaluate"), ctx.config.data.evaluation
    detail: dict = {}
    if stage.perplexity:
        windows = ctx.evaluation_windows
        with ctx.progress.task("evaluate (pruned)", windows.shape[0]) as advance:
            value = perplexity(ctx.loaded.model, windows, data.batch_size, advance)
        record_pruned_perplexity(ctx, value, windows)
        detail["perplexity"] = value
    if stage.lm_eval is not None:
        detail["lm_eval"] = evaluate_pruned_lm_eval(ctx)
    return StageRecord("evaluate", detail=detail)


def record_pruned_perplexity(ctx: RunContext, value: float, windows: torch.Tensor) -> None:
    """Put the pruned model's perplexity (and its ratio to dense) into the run record."""
    metrics = ctx.record.metrics
    measured = metrics.perplexity = metrics.perplexity or PerplexityMetrics()
    measured.pruned = value
    if measured.dense is not None:
        measured.ratio_to_dense = value / measured.dense
    measured.windows = int(windows.shape[0])
    measured.seqlen = int(windows.shape[1])


def pruning_plan(ctx: RunContext) -> dict:
    """The deterministic description of what was pruned, stamped into exported artifacts."""
    spec = ctx.spec
    calibration = ctx.config.data.calibration
    sparsity = ctx.record.sparsity
    layers = {} if sparsity is None else sparsity.report.layers
    return {
        "tool": "wanda-export",
        "tool_version": ctx.record.tool_version,
        "config_digest": ctx.record.config_digest,
        "model_fingerprint": ctx.loaded.fingerprint,
        "method": spec.method if spec else None,
        "sparsity": spec.sparsity if spec else None,
        "pattern": spec.pattern if spec else None,
        "group": spec.comparison_group if spec else None,
        "mode": spec.mode if spec else None,
        "allocation": None if ctx.allocation is None else {
            key: value for key, value in ctx.allocation.to_dict().items() if key != "layers"},
        "sparsegpt": None if spec is None or spec.method != "sparsegpt" else {
            "dampening": spec.dampening, "block_size": spec.block_size},
        "score_settings": spec.score_settings if spec else None,
        **(mask_settings(spec) if spec else {}),
        "calibration": None if calibration is None else {
            "source": calibration.source, "nsamples": calibration.nsamples,
            "seqlen": calibration.seqlen, "seed": calibration.seed},
        "layers": {name: layer.sparsity for name, layer in layers.items()},
    }


def artifact_sizes(ctx: RunContext) -> ArtifactSizes:
    """Bytes of each exported weight file against a dense export of the same model and dtype.

    The formats store pruned weights densely (zeros included), so a ratio near 1.0 is the honest
    answer: 2:4 saves compute on hardware that uses it, not bytes on disk.
    """
    dense = sum(p.numel() * p.element_size() for p in ctx.loaded.model.parameters()
                if p is not None)
    files = sorted(ctx.staging.glob(f"{CHECKPOINT_DIR}/*.safetensors")) + sorted(
        ctx.staging.glob(f"{ONNX_DIR}/model*.onnx*"))
    return ArtifactSizes(dense_parameter_bytes=dense, files={
        str(path.relative_to(ctx.staging)): FileSize(bytes=path.stat().st_size,
                                                     ratio_to_dense=path.stat().st_size / dense)
        for path in files})


def run_export(ctx: RunContext) -> StageRecord:
    """Write each requested artifact format into the staging folder."""
    stage = ctx.config.stage("export")
    formats = list(stage.formats)
    detail: dict = {"formats": formats}
    valid = True
    if "safetensors" in formats:
        export_checkpoint(ctx.loaded.model, ctx.loaded.tokenizer, ctx.staging / CHECKPOINT_DIR,
                          pruning_plan(ctx))
    if ONNX_FORMATS & set(formats):
        onnx_detail, valid = export_onnx_formats(ctx, formats, stage, pruning_plan(ctx),
                                                 ctx.targets)
        detail.update(onnx_detail)
    ctx.record.metrics.sizes = artifact_sizes(ctx)
    return StageRecord("export", status="ok" if valid else "failed", detail=detail)


STAGES: dict[str, StageFn] = {
    "calibrate": run_calibrate,
    "score": run_score,
    "mask": run_mask,
    "verify": run_verify,
    "evaluate": run_evaluate,
    "export": run_export,
    "benchmark": run_benchmark,
}
"""The registry: what each stage of `config.stages.STAGE_ORDER` runs (a test keeps them equal)."""
