"""Dense calibration: one forward pass of the unpruned model collects every target at once.

The statistics do not depend on the sparsity or pattern, so one pass serves any later mask.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn

from wanda_export.calibrate.stats import (
    ChannelStats,
    check_finite_stats,
    collecting,
    empty_stats,
)
from wanda_export.model.layers import Target


def _forward_kwargs(model: nn.Module, targets: list[Target]) -> dict:
    """Skip the full-vocabulary lm_head product when no target needs its input."""
    needs_all_positions = any(target.layer_index is None for target in targets)
    accepts = inspect.signature(model.forward).parameters
    if not needs_all_positions and "logits_to_keep" in accepts:
        return {"logits_to_keep": 1}
    return {}


@torch.inference_mode()
def collect_dense(
    model: nn.Module,
    windows: torch.Tensor,
    targets: list[Target],
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
    hessian: bool = False,
) -> dict[str, ChannelStats]:
    """Run `windows` [nsamples, seqlen] through the model once, returning stats per target
    (with X^T X when `hessian`, for SparseGPT)."""
    stats = empty_stats(targets, hessian)
    device = next(model.parameters()).device
    extra = _forward_kwargs(model, targets)
    with collecting(targets, stats):
        for start in range(0, windows.shape[0], batch_size):
            batch = windows[start : start + batch_size].to(device)
            model(input_ids=batch, use_cache=False, **extra)
            if on_batch:
                on_batch(batch.shape[0])
    check_finite_stats(stats)
    return stats
