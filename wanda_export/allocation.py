"""Layer-wise sparsity ratios for a model's targets: measure each weight matrix (ESD alphas for
AlphaPruning, Wanda-score outlier ratios for OWL), then map the measurements to ratios with the
pure functions of `sparsity/allocation.py`.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import torch

from wanda_export.calibrate.stats import ChannelStats
from wanda_export.config.prune_spec import PruneSpec
from wanda_export.model.layers import Target, weight_out_in
from wanda_export.sparsity.allocation import (
    alphapruning_allocation,
    esd,
    group_outlier_ratio,
    hill_alpha,
    owl_allocation,
)
from wanda_export.sparsity.score import wanda_scores


@dataclass
class Allocation:
    """The sparsity ratio of every target, and the measurements it was derived from."""

    method: str
    ratios: dict[str, float]
    alphas: dict[str, float] | None = None
    outlier_ratios: dict[str, float] | None = None
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready: method, settings, and per target its ratio (and alpha / outlier ratio)."""
        layers = {}
        for name, ratio in self.ratios.items():
            entry = {"ratio": ratio}
            if self.alphas is not None:
                entry["alpha"] = self.alphas[name]
            if self.outlier_ratios is not None:
                entry["outlier_ratio"] = self.outlier_ratios[name]
            layers[name] = entry
        return {"method": self.method, **self.settings, "layers": layers}


def target_groups(targets: list[Target], granularity: str) -> dict[str, Hashable]:
    """Which targets share a ratio: those of one decoder block ("block"), or none ("matrix").
    A target outside the decoder blocks (e.g. lm_head) is always a group of its own."""
    return {
        t.name: t.layer_index if granularity == "block" and t.layer_index is not None else t.name
        for t in targets
    }


@torch.no_grad()
def esd_alphas(targets: list[Target], xmin: str) -> dict[str, float]:
    """The Hill power-law exponent of each target weight's ESD; depends on the weights only."""
    return {t.name: hill_alpha(esd(weight_out_in(t.module)), xmin) for t in targets}


@torch.no_grad()
def owl_outlier_ratios(targets: list[Target], stats: dict[str, ChannelStats],
                       groups: dict[str, Hashable], m: float) -> dict[Hashable, float]:
    """OWL's outlier ratio per group, from the Wanda scores of the dense model's weights."""
    members: dict[Hashable, list[Target]] = {}
    for target in targets:
        members.setdefault(groups[target.name], []).append(target)
    return {
        key: group_outlier_ratio(
            [wanda_scores(weight_out_in(t.module), stats[t.name].sumsq) for t in group], m)
        for key, group in members.items()
    }


def allocate(targets: list[Target], spec: PruneSpec,
             dense_stats: dict[str, ChannelStats] | None = None,
             alphas: dict[str, float] | None = None,
             outliers: dict[Hashable, float] | None = None) -> Allocation:
    """Per-target ratios for `spec.allocation`, measured on the still-dense weights.

    `alphas` (e.g. from the cache) skips the spectra; OWL needs `dense_stats`, the statistics
    of the unpruned model, or `outliers`, its outlier ratio per group already measured (from a
    streamed checkpoint, one layer at a time).
    """
    uniform = {t.name: spec.sparsity for t in targets}
    if spec.allocation == "uniform":
        return Allocation("uniform", uniform)
    params = {t.name: t.module.weight.numel() for t in targets}
    groups = target_groups(targets, spec.granularity)
    settings = {"granularity": spec.granularity}
    if spec.allocation == "alphapruning":
        alphas = alphas if alphas is not None else esd_alphas(targets, spec.alpha_xmin)
        ratios = alphapruning_allocation(alphas, params, groups, spec.sparsity, spec.epsilon)
        settings |= {"epsilon": spec.epsilon, "xmin": spec.alpha_xmin}
        return Allocation("alphapruning", ratios, alphas={t.name: alphas[t.name] for t in targets},
                          settings=settings)
    if spec.allocation == "owl":
        if outliers is None:
            if dense_stats is None:
                raise ValueError("OWL allocation needs the dense model's activation statistics")
            outliers = owl_outlier_ratios(targets, dense_stats, groups, spec.owl_m)
        ratios = owl_allocation(outliers, params, groups, spec.sparsity, spec.owl_lambda)
        settings |= {"owl_m": spec.owl_m, "owl_lambda": spec.owl_lambda}
        return Allocation("owl", ratios, settings=settings,
                          outlier_ratios={t.name: outliers[groups[t.name]] for t in targets})
    raise ValueError(f"unknown allocation {spec.allocation!r}")
