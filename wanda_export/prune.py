"""The library entry point: prune a model in place with Wanda, RIA, magnitude or SparseGPT, at
uniform or layer-wise (AlphaPruning, OWL) ratios, optionally with N:M channel permutation and
DSnoT refinement, and verify it.

Orchestration only; the math lives in `sparsity/` and the forward passes in `calibrate/`.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import nn

from wanda_export.allocation import Allocation, allocate
from wanda_export.calibrate.dense import collect_dense
from wanda_export.calibrate.sequential import calibrate_sequential
from wanda_export.calibrate.stats import ChannelStats
from wanda_export.config.prune_spec import PruneSpec
from wanda_export.model.layers import Target, weight_out_in
from wanda_export.permutation import find_fold, permute_for_nm
from wanda_export.sparsity.admm import admm_update
from wanda_export.sparsity.dsnot import dsnot_refine
from wanda_export.sparsity.mask import apply_mask_, build_mask
from wanda_export.sparsity.pattern import Pattern
from wanda_export.sparsity.permute import Permuted
from wanda_export.sparsity.score import (
    METHODS_NEEDING_ACTIVATIONS,
    compute_scores,
    importance_kept,
    wanda_scores,
)
from wanda_export.sparsity.sparsegpt import sparsegpt_prune
from wanda_export.sparsity.verify import SparsityReport, verify_layer


@dataclass
class PruneResult:
    """The verification of the pruned model, the statistics used, where the time went, and
    the channel permutation folded into each permuted linear."""

    report: SparsityReport
    stats: dict[str, ChannelStats] | None
    seconds: dict[str, float] = field(default_factory=dict)
    allocation: Allocation | None = None
    permuted: dict[str, Permuted] = field(default_factory=dict)
    importance_kept: dict[str, float] = field(default_factory=dict)  # see `prune_targets`


def check_pattern_fits(targets: list[Target], pattern: Pattern) -> None:
    """Refuse an N:M pattern before any work if some target's in_features is not divisible by M."""
    bad = [f"{t.name} (in_features={t.in_features})" for t in targets
           if not pattern.fits(t.in_features)]
    if bad:
        raise ValueError(pattern.misfit_message(", ".join(bad)))


def _scores(spec: PruneSpec, weight: torch.Tensor, entry: ChannelStats | None) -> torch.Tensor:
    """The method's scores of one weight; SparseGPT's mask is chosen during its update, so its
    channel permutation ranks by Wanda's |W| * ||X|| instead."""
    method = "wanda" if spec.method == "sparsegpt" else spec.method
    uses_stats = entry is not None and method in METHODS_NEEDING_ACTIVATIONS
    return compute_scores(method, weight, entry.sumsq if uses_stats else None,
                          **spec.score_settings)


def permute_targets(targets: list[Target], spec: PruneSpec, stats: dict[str, ChannelStats] | None,
                    root: nn.Module) -> tuple[dict[str, ChannelStats], dict[str, Permuted]]:
    """Fold an N:M channel permutation into every target that admits one exactly (see
    `permutation.py`), before any of them is pruned; return the permuted targets' statistics in
    their new order and what was folded into each."""
    permuted_stats: dict[str, ChannelStats] = {}
    gains: dict[str, Permuted] = {}
    for target in targets:
        fold = find_fold(root, target, spec.parsed_pattern)
        if fold is None:
            continue
        entry = stats.get(target.name) if stats else None
        scores = _scores(spec, weight_out_in(target.module), entry)
        new_entry, gains[target.name] = permute_for_nm(fold, scores, spec.parsed_pattern, entry)
        if new_entry is not None:
            permuted_stats[target.name] = new_entry
    return permuted_stats, gains


def _refines(spec: PruneSpec, name: str) -> bool:
    """Whether DSnoT refines the mask of the linear called `name`."""
    return spec.refine == "dsnot" and not any(
        fnmatch.fnmatchcase(name, pattern) for pattern in spec.refine_exclude)


@torch.no_grad()
def prune_targets(
    targets: list[Target], spec: PruneSpec, stats: dict[str, ChannelStats] | None,
    ratios: dict[str, float] | None = None, root: nn.Module | None = None,
    kept: dict[str, float] | None = None,
) -> dict[str, Permuted]:
    """Score, mask and zero each target in place (no forward passes); SparseGPT and `update:
    admm` also update the weights it keeps. `ratios` (layer-wise allocation) overrides `spec.sparsity` per target.
    With `spec.permute`, `root` (the module the target names are relative to) is searched for
    the producers a permutation is folded into; returns what was folded into each permuted
    target. `kept`, when given, receives each target's share of importance the mask keeps
    (`importance_kept`): it tells layers apart even when every layer is pruned alike.

    Targets are independent once permuted, so they run on a small thread pool (torch and numpy
    release the GIL); each result depends only on its own weight and statistics, so the outcome
    is the same whatever the scheduling.
    """
    pattern = spec.parsed_pattern
    gains: dict[str, Permuted] = {}
    if spec.permute:
        if root is None:
            raise ValueError("permute needs the model the targets belong to (root)")
        permuted, gains = permute_targets(targets, spec, stats, root)
        stats = {**(stats or {}), **permuted}

    def prune_one(target: Target) -> float | None:
        weight = weight_out_in(target.module)
        sparsity = ratios[target.name] if ratios is not None else spec.sparsity
        entry = stats.get(target.name) if stats else None
        if spec.needs_hessian and (entry is None or entry.xtx is None):
            needs = "sparsegpt" if spec.method == "sparsegpt" else "update 'admm'"
            raise ValueError(f"{needs} needs the input Hessian of {target.name}")
        dense = weight.clone() if spec.update is not None else None
        if spec.method == "sparsegpt":
            scores = (wanda_scores(weight, torch.diagonal(entry.xtx)) if kept is not None
                      else None)
            weight.copy_(sparsegpt_prune(weight, entry.xtx, sparsity, pattern, spec.block_size,
                                         spec.dampening))
            mask = weight == 0
        else:
            scores = _scores(spec, weight, entry)
            mask = build_mask(scores, sparsity, pattern, spec.comparison_group)
            if _refines(spec, target.name):
                if entry is None:
                    raise ValueError(
                        f"refine 'dsnot' needs the activation statistics of {target.name}")
                mean, variance = entry.moments()
                mask = dsnot_refine(weight, mask, scores, mean, variance, pattern=pattern,
                                    iterations=spec.refine_iterations,
                                    threshold=spec.refine_threshold,
                                    variance_power=spec.refine_variance_power)
            apply_mask_(weight, mask)
        if dense is not None:
            weight.copy_(admm_update(dense, entry.xtx, mask, spec.update_iterations))
        return importance_kept(scores, mask) if kept is not None else None

    workers = max(1, min(len(targets), torch.get_num_threads()))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        shares = list(pool.map(prune_one, targets))
    if kept is not None:  # in target order, whatever the threads' order
        kept.update((target.name, share) for target, share in zip(targets, shares))
    return gains


def verify_targets(targets: list[Target], pattern: Pattern) -> SparsityReport:
    """Verify every target's weight as it now is in the model."""
    report = SparsityReport()
    for target in targets:
        report.layers[target.name] = verify_layer(weight_out_in(target.module), pattern)
    return report


def prune_model(
    model: nn.Module,
    spec: PruneSpec,
    windows: torch.Tensor | None = None,
    stats: dict[str, ChannelStats] | None = None,
    on_progress: Callable[[int], None] | None = None,
    allocation: Allocation | None = None,
) -> PruneResult:
    """Prune `model` in place following `spec`, then verify it.

    `windows` [nsamples, seqlen] are the calibration tokens (not needed for magnitude). In dense
    mode, precomputed `stats` (e.g. from the cache) skip the calibration forward pass entirely.
    `allocation` gives precomputed layer-wise ratios; otherwise they are measured here on the
    still-dense weights (OWL in sequential mode then costs one extra dense calibration pass).
    """
    targets = spec.targets_of(model)
    names = [target.name for target in targets]
    pattern = spec.parsed_pattern
    check_pattern_fits(targets, pattern)
    seconds: dict[str, float] = {}
    if spec.needs_calibration and stats is None and windows is None:
        raise ValueError(f"method {spec.method!r} needs calibration windows or statistics")
    dense_first = not spec.calibrates_sequentially or stats is not None
    kept: dict[str, float] = {}

    def timed(label: str, work: Callable[[], object]):
        start = time.perf_counter()
        result = work()
        seconds[label] = seconds.get(label, 0.0) + time.perf_counter() - start
        return result

    if spec.needs_calibration and dense_first and stats is None:
        stats = timed("calibrate", lambda: collect_dense(
            model, windows, targets, spec.batch_size, on_progress, spec.needs_hessian))
    if allocation is None:
        dense_stats = stats if not spec.calibrates_sequentially else None
        if spec.allocation == "owl" and dense_stats is None:
            dense_stats = timed("calibrate", lambda: collect_dense(
                model, windows, targets, spec.batch_size))
        allocation = timed("allocate", lambda: allocate(targets, spec, dense_stats))
    ratios = allocation.ratios

    permuted: dict[str, Permuted] = {}
    if dense_first:
        permuted = timed("score_mask", lambda: prune_targets(targets, spec, stats, ratios, model,
                                                             kept))
    else:
        by_layer: dict[int, list[Target]] = {}
        for target in targets:
            by_layer.setdefault(target.layer_index, []).append(target)

        def prune_layer(index: int, layer_stats: dict[str, ChannelStats]) -> None:
            permuted.update(timed("score_mask", lambda: prune_targets(
                by_layer[index], spec, layer_stats, ratios, model, kept)))

        stats = timed("calibrate", lambda: calibrate_sequential(
            model, windows, targets, prune_layer, spec.batch_size, on_progress,
            spec.needs_hessian))
        seconds["calibrate"] -= seconds["score_mask"]

    return PruneResult(verify_targets(targets, pattern), stats, seconds, allocation, permuted,
                       {name: kept[name] for name in names if name in kept})
