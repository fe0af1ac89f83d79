"""The library entry point: prune a model in place with Wanda, magnitude or SparseGPT, at uniform
or layer-wise (AlphaPruning, OWL) ratios, and verify it.

Orchestration only; the math lives in `sparsity/` and the forward passes in `calibrate/`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import nn

from wanda_export.allocation import GRANULARITIES, Allocation, allocate
from wanda_export.calibrate.dense import collect_dense
from wanda_export.calibrate.sequential import calibrate_sequential
from wanda_export.calibrate.stats import ChannelStats
from wanda_export.model.layers import Target, find_targets, weight_out_in
from wanda_export.sparsity.allocate import ALLOCATIONS, XMIN_METHODS
from wanda_export.sparsity.mask import GROUPS, apply_mask_, build_mask
from wanda_export.sparsity.pattern import Pattern, parse_pattern
from wanda_export.sparsity.score import METHODS_NEEDING_ACTIVATIONS, SCORERS, compute_scores
from wanda_export.sparsity.sparsegpt import DEFAULT_BLOCK_SIZE, DEFAULT_DAMPENING, sparsegpt_prune
from wanda_export.sparsity.verify import SparsityReport, verify_layer

MODES = ("sequential", "dense")
METHODS = (*SCORERS, "sparsegpt")
# SparseGPT chooses its unstructured mask per block of columns, across all rows of the block.
DEFAULT_GROUP = {"wanda": "row", "magnitude": "layer", "sparsegpt": "column-block"}


@dataclass(frozen=True)
class PruneSpec:
    """What to prune and how. `pattern` is "unstructured" or "N:M" (N kept in every M along K).

    `group` is the comparison group of unstructured masks; None takes the papers' choice per
    method: per output row for Wanda, the whole layer for magnitude (SparseGPT has its own, the
    column block). `allocation` spreads the sparsity over layers: "uniform", "alphapruning"
    (`epsilon`, `alpha_xmin`) or "owl" (`owl_m`, `owl_lambda`), one ratio per decoder block or
    per matrix (`allocation_granularity`); the parameter-weighted mean stays `sparsity`.
    `dampening` and `block_size` are SparseGPT's.
    """

    method: str = "wanda"
    sparsity: float = 0.5
    pattern: str = "unstructured"
    group: str | None = None
    mode: str = "sequential"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    batch_size: int = 8
    allocation: str = "uniform"
    epsilon: float = 0.3
    alpha_xmin: str = "ks"
    owl_m: float = 5.0
    owl_lambda: float = 0.08
    allocation_granularity: str = "block"
    dampening: float = DEFAULT_DAMPENING
    block_size: int = DEFAULT_BLOCK_SIZE

    def __post_init__(self) -> None:
        choices = {"method": (self.method, METHODS), "mode": (self.mode, MODES),
                   "allocation": (self.allocation, ALLOCATIONS),
                   "alpha_xmin": (self.alpha_xmin, XMIN_METHODS),
                   "allocation_granularity": (self.allocation_granularity, GRANULARITIES)}
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{key} {value!r} is not one of {list(allowed)}")
        if self.group is not None and (self.group not in GROUPS or self.method == "sparsegpt"):
            allowed = "none for sparsegpt" if self.method == "sparsegpt" else list(GROUPS)
            raise ValueError(f"group {self.group!r} is not allowed ({allowed})")
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if parse_pattern(self.pattern).structured and self.allocation != "uniform":
            raise ValueError(f"allocation {self.allocation!r} gives layers different ratios; "
                             f"pattern {self.pattern} needs the same N:M in every layer")
        if not 0.0 < self.epsilon < 1.0 or not 0.0 < self.owl_lambda < 1.0:
            raise ValueError("epsilon and owl_lambda must be in (0, 1)")
        if self.owl_m <= 0 or self.dampening <= 0 or self.block_size < 1:
            raise ValueError("owl_m and dampening must be > 0 and block_size >= 1")

    @property
    def parsed_pattern(self) -> Pattern:
        return parse_pattern(self.pattern)

    @property
    def comparison_group(self) -> str:
        return self.group or DEFAULT_GROUP[self.method]

    @property
    def needs_calibration(self) -> bool:
        """Whether activations are needed: for the scores, SparseGPT's Hessian, or OWL."""
        return self.method in METHODS_NEEDING_ACTIVATIONS or self.needs_hessian or (
            self.allocation == "owl")

    @property
    def calibrates_sequentially(self) -> bool:
        """Layer-by-layer calibration on pruned inputs: only in sequential mode, and only when
        the layers' own scores or reconstruction use statistics (magnitude with OWL needs the
        dense model's statistics alone)."""
        return self.mode == "sequential" and self.prunes_from_statistics

    @property
    def prunes_from_statistics(self) -> bool:
        """Whether the layers' own scores or reconstruction use activation statistics (Wanda,
        SparseGPT); magnitude needs none (OWL's ratios are measured beforehand)."""
        return self.method in METHODS_NEEDING_ACTIVATIONS or self.needs_hessian

    @property
    def needs_hessian(self) -> bool:
        """SparseGPT reconstructs from X^T X, collected in the same calibration pass."""
        return self.method == "sparsegpt"


@dataclass
class PruneResult:
    """The verification of the pruned model, the statistics used, and where the time went."""

    report: SparsityReport
    stats: dict[str, ChannelStats] | None
    seconds: dict[str, float] = field(default_factory=dict)
    allocation: Allocation | None = None


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
    targets: list[Target], spec: PruneSpec, stats: dict[str, ChannelStats] | None,
    ratios: dict[str, float] | None = None,
) -> None:
    """Score, mask and zero each target in place (no forward passes); SparseGPT also updates
    the weights it keeps. `ratios` (layer-wise allocation) overrides `spec.sparsity` per target.

    Targets are independent, so they run on a small thread pool (torch and numpy release the
    GIL); each result depends only on its own weight and statistics, so the outcome is the same
    whatever the scheduling.
    """
    pattern = spec.parsed_pattern

    def prune_one(target: Target) -> None:
        weight = weight_out_in(target.module)
        sparsity = ratios[target.name] if ratios is not None else spec.sparsity
        if spec.method == "sparsegpt":
            xtx = stats[target.name].xtx if stats is not None else None
            if xtx is None:
                raise ValueError(f"sparsegpt needs the input Hessian of {target.name}")
            weight.copy_(sparsegpt_prune(weight, xtx, sparsity, pattern, spec.block_size,
                                         spec.dampening))
            return
        uses_stats = stats is not None and spec.method in METHODS_NEEDING_ACTIVATIONS
        scores = compute_scores(spec.method, weight, stats[target.name].sumsq if uses_stats else None)
        apply_mask_(weight, build_mask(scores, sparsity, pattern, spec.comparison_group))

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
    allocation: Allocation | None = None,
) -> PruneResult:
    """Prune `model` in place following `spec`, then verify it.

    `windows` [nsamples, seqlen] are the calibration tokens (not needed for magnitude). In dense
    mode, precomputed `stats` (e.g. from the cache) skip the calibration forward pass entirely.
    `allocation` gives precomputed layer-wise ratios; otherwise they are measured here on the
    still-dense weights (OWL in sequential mode then costs one extra dense calibration pass).
    """
    targets = find_targets(model, list(spec.include) or None, list(spec.exclude) or None)
    pattern = spec.parsed_pattern
    check_pattern_fits(targets, pattern)
    seconds: dict[str, float] = {}
    if spec.needs_calibration and stats is None and windows is None:
        raise ValueError(f"method {spec.method!r} needs calibration windows or statistics")
    dense_first = not spec.calibrates_sequentially or stats is not None

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

    if dense_first:
        timed("score_mask", lambda: prune_targets(targets, spec, stats, ratios))
    else:
        by_layer: dict[int, list[Target]] = {}
        for target in targets:
            by_layer.setdefault(target.layer_index, []).append(target)

        def prune_layer(index: int, layer_stats: dict[str, ChannelStats]) -> None:
            timed("score_mask", lambda: prune_targets(by_layer[index], spec, layer_stats, ratios))

        stats = timed("calibrate", lambda: calibrate_sequential(
            model, windows, targets, prune_layer, spec.batch_size, on_progress,
            spec.needs_hessian))
        seconds["calibrate"] -= seconds["score_mask"]

    return PruneResult(verify_targets(targets, pattern), stats, seconds, allocation)
