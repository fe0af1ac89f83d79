"""The library entry point: prune a model in place with Wanda or magnitude, and verify it.

Orchestration only; the math lives in `sparsity/` and the forward passes in `calibrate/`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import nn

from wanda_export.calibrate.dense import collect_dense
from wanda_export.calibrate.sequential import calibrate_sequential
from wanda_export.calibrate.stats import ChannelStats
from wanda_export.model.layers import Target, find_targets, weight_out_in
from wanda_export.sparsity.mask import GROUPS, apply_mask_, build_mask
from wanda_export.sparsity.pattern import Pattern, parse_pattern
from wanda_export.sparsity.score import METHODS_NEEDING_ACTIVATIONS, SCORERS, compute_scores
from wanda_export.sparsity.verify import SparsityReport, verify_layer

MODES = ("sequential", "dense")
DEFAULT_GROUP = {"wanda": "row", "magnitude": "layer"}


@dataclass(frozen=True)
class PruneSpec:
    """What to prune and how. `pattern` is "unstructured" or "N:M" (N kept in every M along K).

    `group` is the comparison group of unstructured masks; None takes the papers' choice per
    method: per output row for Wanda, the whole layer for magnitude.
    """

    method: str = "wanda"
    sparsity: float = 0.5
    pattern: str = "unstructured"
    group: str | None = None
    mode: str = "sequential"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.method not in SCORERS:
            raise ValueError(f"method {self.method!r} is not one of {sorted(SCORERS)}")
        if self.group is not None and self.group not in GROUPS:
            raise ValueError(f"group {self.group!r} is not one of {list(GROUPS)}")
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {list(MODES)}")
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        parse_pattern(self.pattern)

    @property
    def parsed_pattern(self) -> Pattern:
        return parse_pattern(self.pattern)

    @property
    def comparison_group(self) -> str:
        return self.group or DEFAULT_GROUP[self.method]

    @property
    def needs_calibration(self) -> bool:
        return self.method in METHODS_NEEDING_ACTIVATIONS


@dataclass
class PruneResult:
    """The verification of the pruned model, the statistics used, and where the time went."""

    report: SparsityReport
    stats: dict[str, ChannelStats] | None
    seconds: dict[str, float] = field(default_factory=dict)


def check_pattern_fits(targets: list[Target], pattern: Pattern) -> None:
    """Refuse an N:M pattern before any work if some target's in_features is not divisible by M."""
    if not pattern.structured:
        return
    bad = [f"{t.name} (in_features={t.in_features})" for t in targets if t.in_features % pattern.m]
    if bad:
        raise ValueError(
            f"pattern {pattern} needs in_features divisible by {pattern.m}; not so for: "
            + ", ".join(bad)
        )


@torch.no_grad()
def prune_targets(
    targets: list[Target], spec: PruneSpec, stats: dict[str, ChannelStats] | None
) -> None:
    """Score, mask and zero each target in place (no forward passes).

    Targets are independent, so they run on a small thread pool (torch and numpy release the
    GIL); each result depends only on its own weight and statistics, so the outcome is the same
    whatever the scheduling.
    """
    pattern = spec.parsed_pattern

    def prune_one(target: Target) -> None:
        weight = weight_out_in(target.module)
        sumsq = stats[target.name].sumsq if stats is not None and spec.needs_calibration else None
        scores = compute_scores(spec.method, weight, sumsq)
        apply_mask_(weight, build_mask(scores, spec.sparsity, pattern, spec.comparison_group))

    workers = max(1, min(len(targets), torch.get_num_threads()))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(prune_one, targets))


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
) -> PruneResult:
    """Prune `model` in place following `spec`, then verify it.

    `windows` [nsamples, seqlen] are the calibration tokens (not needed for magnitude). In dense
    mode, precomputed `stats` (e.g. from the cache) skip the calibration forward pass entirely.
    """
    targets = find_targets(model, list(spec.include) or None, list(spec.exclude) or None)
    pattern = spec.parsed_pattern
    check_pattern_fits(targets, pattern)
    seconds: dict[str, float] = {}
    if spec.needs_calibration and stats is None and windows is None:
        raise ValueError(f"method {spec.method!r} needs calibration windows or statistics")

    if not spec.needs_calibration:
        start = time.perf_counter()
        prune_targets(targets, spec, None)
        seconds["score_mask"] = time.perf_counter() - start
    elif spec.mode == "dense" or stats is not None:
        if stats is None:
            start = time.perf_counter()
            stats = collect_dense(model, windows, targets, spec.batch_size, on_progress)
            seconds["calibrate"] = time.perf_counter() - start
        start = time.perf_counter()
        prune_targets(targets, spec, stats)
        seconds["score_mask"] = time.perf_counter() - start
    else:
        by_layer: dict[int, list[Target]] = {}
        for target in targets:
            by_layer.setdefault(target.layer_index, []).append(target)
        score_mask = 0.0

        def prune_layer(index: int, layer_stats: dict[str, ChannelStats]) -> None:
            nonlocal score_mask
            start = time.perf_counter()
            prune_targets(by_layer[index], spec, layer_stats)
            score_mask += time.perf_counter() - start

        start = time.perf_counter()
        stats = calibrate_sequential(
            model, windows, targets, prune_layer, spec.batch_size, on_progress
        )
        seconds["calibrate"] = time.perf_counter() - start - score_mask
        seconds["score_mask"] = score_mask

    return PruneResult(verify_targets(targets, pattern), stats, seconds)
