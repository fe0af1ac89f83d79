"""The layer-wise allocation of a run (the pipeline's side of `allocation.py`): measured once,
on the still-dense weights, before the first layer is pruned (by a sequential calibration or by
the mask stage), with its inputs taken from the cache entries the run plan names: the ESD
alphas (weights only) and, for OWL, the dense model's statistics. A streamed run measures the
same inputs one layer at a time and shares the same entries."""

from __future__ import annotations

import torch

from wanda_export.allocation import Allocation, allocate, esd_alphas
from wanda_export.calibrate.dense import collect_dense
from wanda_export.calibrate.stats import ChannelStats, stats_from_tensors, stats_to_tensors
from wanda_export.pipeline.context import RunContext
from wanda_export.pipeline.run_plan import CALIBRATE, ESD_ALPHAS, OWL_STATISTICS, CacheUse
from wanda_export.stream.allocation import stream_allocation, stream_esd_alphas
from wanda_export.stream.forward import stream_dense_statistics


def _dense_pass(ctx: RunContext, hessian: bool) -> dict[str, ChannelStats]:
    """One pass of the unpruned model over the calibration windows: every target's statistics
    (with X^T X when `hessian`), in memory or one streamed layer at a time."""
    windows, batch_size = ctx.calibration_windows, ctx.spec.batch_size
    if ctx.checkpoint is None:
        with ctx.progress.task("calibrate (dense)", windows.shape[0]) as advance:
            return collect_dense(ctx.loaded.model, windows, ctx.targets, batch_size, advance,
                                 hessian)
    with ctx.progress.task("calibrate (dense, streamed)", len(ctx.checkpoint.layers)) as advance:
        return stream_dense_statistics(ctx.checkpoint, windows, ctx.targets,
                                       device=ctx.loaded.device, batch_size=batch_size,
                                       hessian=hessian, on_layer=lambda _index: advance(1))


def cached_dense_statistics(ctx: RunContext, use: CacheUse, hessian: bool
                            ) -> tuple[dict[str, ChannelStats], str | None]:
    """The unpruned model's statistics (with X^T X when `hessian`) from the cache entry `use`
    (or an entry that serves it, its X^T X dropped), computed by one dense pass on a miss;
    returns them and the key of the entry they came from (None: computed, a miss)."""
    own = ctx.cache.contains(use.kind, use.key)
    for key in () if own else use.served_by:
        tensors = ctx.cache.get(use.kind, key)
        if tensors is not None:
            stats = stats_from_tensors(tensors)
            for entry in stats.values():
                entry.xtx = None
            return stats, key
    tensors, hit = ctx.cache.get_or_compute(
        use.kind, use.key, lambda: stats_to_tensors(_dense_pass(ctx, hessian)), use.record,
        metadata={"mode": "dense", "targets": len(ctx.targets)})
    return stats_from_tensors(tensors), use.key if hit else None


def dense_statistics(ctx: RunContext) -> dict[str, ChannelStats]:
    """OWL's input, the unpruned model's statistics: the run's own when it calibrates densely,
    otherwise the dense cache entry (shared with dense-mode runs). A streamed dense-mode run
    has no statistics of its own (it frees each layer's) and reads or fills the dense entry,
    except with X^T X: that entry would hold every layer's, so it makes one uncached pass."""
    if not ctx.run_plan.owl_dense_pass and ctx.stats is not None:
        return ctx.stats
    step = OWL_STATISTICS if ctx.run_plan.owl_dense_pass else CALIBRATE
    if step == CALIBRATE and ctx.spec.needs_hessian:
        ctx.allocation_inputs["dense_statistics"] = "computed"
        return _dense_pass(ctx, hessian=False)
    stats, entry = cached_dense_statistics(ctx, ctx.run_plan.use(step), hessian=False)
    ctx.allocation_inputs["dense_statistics"] = "miss" if entry is None else "hit"
    return stats


def cached_alphas(ctx: RunContext) -> dict[str, float]:
    """Each target's ESD alpha, from the cache or measured (they depend on the weights only)."""
    use, names = ctx.run_plan.use(ESD_ALPHAS), [t.name for t in ctx.targets]

    def compute():
        with ctx.progress.task("allocate (ESD alphas)", 1) as advance:
            if ctx.checkpoint is None:
                alphas = esd_alphas(ctx.targets, ctx.spec.alpha_xmin)
            else:
                alphas = stream_esd_alphas(ctx.checkpoint, ctx.targets, ctx.spec.alpha_xmin,
                                           device=ctx.loaded.device)
            advance(1)
        return {name: torch.tensor([alpha], dtype=torch.float64) for name, alpha in alphas.items()}

    tensors, hit = ctx.cache.get_or_compute(use.kind, use.key, compute, use.record)
    ctx.allocation_inputs["alphas"] = "hit" if hit else "miss"
    return {name: float(tensors[name][0]) for name in names}


def ensure_allocation(ctx: RunContext) -> Allocation:
    """The run's per-target ratios, computed on first use and kept in the context (a streamed
    run reads the weights it measures one layer at a time)."""
    if ctx.allocation is None:
        spec = ctx.spec
        alphas = cached_alphas(ctx) if spec.allocation == "alphapruning" else None
        dense = dense_statistics(ctx) if spec.allocation == "owl" else None
        if ctx.checkpoint is None:
            ctx.allocation = allocate(ctx.targets, spec, dense, alphas)
        else:
            ctx.allocation = stream_allocation(ctx.checkpoint, ctx.targets, spec, dense, alphas,
                                               device=ctx.loaded.device)
    return ctx.allocation
