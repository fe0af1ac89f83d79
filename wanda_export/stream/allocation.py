"""Layer-wise allocation for a streamed checkpoint: the same measurements as `allocation.py`
(ESD alphas, OWL outlier ratios), taken with one weight matrix (alphas) or one decoder layer
(outlier ratios) materialized at a time, then mapped to ratios by the same `allocate`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch

from wanda_export.allocation import (
    Allocation,
    allocate,
    esd_alphas,
    owl_outlier_ratios,
    target_groups,
)
from wanda_export.calibrate.stats import ChannelStats
from wanda_export.config.prune_spec import PruneSpec
from wanda_export.model.layers import Target
from wanda_export.model.streaming import StreamedCheckpoint
from wanda_export.stream.forward import targets_by_layer


def stream_esd_alphas(checkpoint: StreamedCheckpoint, targets: list[Target], xmin: str, *,
                      device: torch.device | str,
                      on_target: Callable[[str], None] | None = None) -> dict[str, float]:
    """Each target's ESD alpha (`esd_alphas`), reading one weight matrix at a time onto
    `device` (the in-memory model's device gives the same spectra)."""
    alphas: dict[str, float] = {}
    for target in targets:
        with checkpoint.materialized([target.module], device):
            alphas.update(esd_alphas([target], xmin))
        if on_target:
            on_target(target.name)
    return alphas


def stream_owl_outlier_ratios(checkpoint: StreamedCheckpoint, targets: list[Target],
                              dense_stats: dict[str, ChannelStats],
                              groups: dict[str, Hashable], m: float, *,
                              device: torch.device | str) -> dict[Hashable, float]:
    """OWL's outlier ratio per group (`owl_outlier_ratios`), one decoder layer's weights read
    onto `device` at a time; a group (a block or a matrix) never spans two layers."""
    outliers: dict[Hashable, float] = {}
    for layer_targets in targets_by_layer(targets).values():
        with checkpoint.materialized([t.module for t in layer_targets], device):
            outliers.update(owl_outlier_ratios(layer_targets, dense_stats, groups, m))
    return outliers


def stream_allocation(checkpoint: StreamedCheckpoint, targets: list[Target], spec: PruneSpec,
                      dense_stats: dict[str, ChannelStats] | None = None,
                      alphas: dict[str, float] | None = None, *,
                      device: torch.device | str) -> Allocation:
    """`allocate` for a streamed checkpoint: the same ratios, with the weight measurements it
    needs (alphas unless given; OWL's outlier ratios from `dense_stats`, e.g. from
    `stream_dense_statistics`) taken without the model in memory."""
    if spec.allocation == "alphapruning" and alphas is None:
        alphas = stream_esd_alphas(checkpoint, targets, spec.alpha_xmin, device=device)
    outliers = None
    if spec.allocation == "owl":
        if dense_stats is None:
            raise ValueError("OWL allocation needs the dense model's activation statistics")
        groups = target_groups(targets, spec.granularity)
        outliers = stream_owl_outlier_ratios(checkpoint, targets, dense_stats, groups,
                                             spec.owl_m, device=device)
    return allocate(targets, spec, dense_stats, alphas, outliers)
