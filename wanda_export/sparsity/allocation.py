"""Layer-wise sparsity allocation: AlphaPruning (Lu et al. 2024) and OWL (Yin et al. 2023).

Pure functions from per-layer measurements to per-layer sparsity ratios whose
parameter-weighted mean is exactly the target. Measurements are per weight matrix; a "group"
(by default the decoder block, or the matrix itself) shares one ratio, as in both papers.

AlphaPruning: the empirical spectral density (ESD) of a weight matrix is the set of
eigenvalues of W^T W (its squared singular values); a heavier tail (smaller power-law exponent
alpha) marks a better-trained layer, which is pruned less. OWL: a layer with more outlier
activations (Wanda scores far above their mean) is pruned less.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import torch

# Spectra are computed in float64: squared singular values span many orders of magnitude.
ESD_DTYPE = torch.float64
MAX_RATIO = 0.99


def esd(weight: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of W^T W, ascending: the squared singular values of W.

    Computed as the eigenvalues of the smaller Gram matrix (W^T W or W W^T share their non-zero
    spectrum) in float64: twice as fast as svdvals and equal to it to float64 rounding.
    """
    matrix = weight.detach().to(ESD_DTYPE)
    gram = matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else matrix @ matrix.T
    return torch.linalg.eigvalsh(gram).clamp_min(0).sort().values


def hill_alpha(eigenvalues: torch.Tensor, xmin: str) -> float:
    """Power-law exponent of the tail of an ESD by the Hill estimator (PL_Alpha_Hill).

    For a candidate xmin = lambda_i: alpha = 1 + n / sum_{j>=i} ln(lambda_j / xmin), n the tail
    size. `xmin="ks"` picks the candidate minimising the Kolmogorov-Smirnov distance between the
    tail's empirical CDF and the fitted power law (the paper's choice); `xmin="median"` takes
    the median eigenvalue (faster, the variant AlphaPruning also offers).
    """
    eigs = eigenvalues[eigenvalues > 0].to(ESD_DTYPE).sort().values
    count = eigs.numel()
    if count < 3:
        raise ValueError("need at least 3 positive eigenvalues to fit a power law")
    logs = eigs.log()
    suffix_log_sums = torch.flip(torch.cumsum(torch.flip(logs, [0]), 0), [0])  # sum_{j>=i}
    if xmin == "median":
        i = count // 2
        return 1.0 + (count - i) / (float(suffix_log_sums[i]) - (count - i) * float(logs[i]))
    if xmin == "ks":
        return _ks_best_alpha(eigs, logs, suffix_log_sums)
    raise ValueError(f"xmin must be 'ks' or 'median', got {xmin!r}")


def _ks_best_alpha(eigs: torch.Tensor, logs: torch.Tensor, suffix_log_sums: torch.Tensor,
                   chunk: int = 256) -> float:
    """The Hill alpha of the xmin candidate whose fitted power law is closest (KS distance) to
    the empirical tail; all candidates at once, `chunk` rows of the candidate x eigenvalue grid
    at a time to bound memory."""
    count = eigs.numel()
    candidates = torch.arange(count - 2)
    tail_sizes = (count - candidates).to(ESD_DTYPE)
    denominators = suffix_log_sums[: count - 2] - tail_sizes * logs[: count - 2]
    alphas = 1.0 + tail_sizes / denominators
    distances = torch.full((count - 2,), math.inf, dtype=ESD_DTYPE)
    positions = torch.arange(count)
    for start in range(0, count - 2, chunk):
        rows = candidates[start : start + chunk]
        alpha = alphas[rows].unsqueeze(1)  # (c, 1)
        in_tail = positions.unsqueeze(0) >= rows.unsqueeze(1)  # (c, count)
        ratio = (logs.unsqueeze(0) - logs[rows].unsqueeze(1)).clamp_min(0)  # ln(lambda_j/xmin)
        fitted = 1.0 - torch.exp((1.0 - alpha) * ratio)
        empirical = (positions.unsqueeze(0) - rows.unsqueeze(1)).to(ESD_DTYPE) / tail_sizes[
            rows].unsqueeze(1)
        gap = torch.where(in_tail, (fitted - empirical).abs(), 0.0).amax(dim=1)
        valid = denominators[rows] > 0
        distances[rows] = torch.where(valid, gap, math.inf)
    if not bool(torch.isfinite(distances).any()):
        return math.nan
    return float(alphas[int(torch.argmin(distances))])


def rebalance(ratios: Sequence[float], params: Sequence[int], target: float,
              low: float = 0.0, high: float = MAX_RATIO, iterations: int = 100) -> list[float]:
    """Clip ratios to [low, high] and shift the unclipped ones until the parameter-weighted mean
    equals `target` exactly (up to float rounding)."""
    weights = torch.tensor(params, dtype=ESD_DTYPE)
    values = torch.tensor(ratios, dtype=ESD_DTYPE).clamp(low, high)
    total = float(weights.sum())
    if not low <= target <= high:
        raise ValueError(f"target {target} outside [{low}, {high}]")
    for _ in range(iterations):
        gap = target * total - float((values * weights).sum())
        if abs(gap) < 1e-12 * total:
            break
        free = (values > low) if gap < 0 else (values < high)
        free_weight = float(weights[free].sum())
        if free_weight == 0:
            break
        values = torch.where(free, values + gap / free_weight, values).clamp(low, high)
    return values.tolist()


def _linear_map(scores: Sequence[float], low: float, high: float) -> list[float]:
    lo, hi = min(scores), max(scores)
    if hi == lo:
        return [(low + high) / 2] * len(scores)
    return [low + (score - lo) / (hi - lo) * (high - low) for score in scores]


def alpha_ratios(alphas: Sequence[float], params: Sequence[int], target: float,
                 epsilon: float) -> list[float]:
    """AlphaPruning: alphas mapped linearly onto [target - eps, target + eps] (higher alpha, more
    pruning), then scaled so the parameter-weighted mean is the target, clipped and rebalanced."""
    ratios = torch.tensor(_linear_map(alphas, target - epsilon, target + epsilon), dtype=ESD_DTYPE)
    weights = torch.tensor(params, dtype=ESD_DTYPE)
    mean = float((ratios * weights).sum() / weights.sum())
    scaled = (ratios * (target / mean)).tolist() if mean > 0 else ratios.tolist()
    return rebalance(scaled, params, target)


def owl_ratios(outlier_ratios: Sequence[float], params: Sequence[int], target: float,
               lam: float) -> list[float]:
    """OWL: more outliers, less pruning; ratios in [target - lam, target + lam] around the target,
    rebalanced to the exact parameter-weighted target."""
    ratios = _linear_map([-r for r in outlier_ratios], target - lam, target + lam)
    return rebalance(ratios, params, target)


def _grouped(values: Mapping[str, float], params: Mapping[str, int],
             groups: Mapping[str, Hashable]) -> tuple[list[Hashable], list[float], list[int]]:
    """Per group, in first-seen order: the plain mean of its matrices' values and their total
    parameter count."""
    keys: list[Hashable] = []
    members: dict[Hashable, list[str]] = {}
    for name in values:
        key = groups[name]
        if key not in members:
            keys.append(key)
            members[key] = []
        members[key].append(name)
    means = [sum(values[n] for n in members[k]) / len(members[k]) for k in keys]
    sizes = [sum(params[n] for n in members[k]) for k in keys]
    return keys, means, sizes


def alphapruning_allocation(alphas: Mapping[str, float], params: Mapping[str, int],
                            groups: Mapping[str, Hashable], target: float,
                            epsilon: float) -> dict[str, float]:
    """Per-matrix sparsity from per-matrix alphas: alphas averaged per group (AlphaPruning's
    block-wise default when groups are decoder blocks), mapped by `alpha_ratios`."""
    keys, means, sizes = _grouped(alphas, params, groups)
    by_group = dict(zip(keys, alpha_ratios(means, sizes, target, epsilon), strict=True))
    return {name: by_group[groups[name]] for name in alphas}


def group_outlier_ratio(scores: Sequence[torch.Tensor], m: float) -> float:
    """OWL's outlier ratio of a group of layers: the share of all their scores above m times
    the mean of all their scores (the paper pools the scores of a whole decoder block)."""
    count = sum(s.numel() for s in scores)
    mean = sum(float(s.detach().to(torch.float64).sum()) for s in scores) / count
    return sum(int((s > m * mean).sum()) for s in scores) / count


def owl_allocation(outliers: Mapping[Hashable, float], params: Mapping[str, int],
                   groups: Mapping[str, Hashable], target: float,
                   lam: float) -> dict[str, float]:
    """Per-matrix sparsity from per-group outlier ratios (`owl_ratios` over the groups)."""
    keys = list(outliers)
    group_sizes = dict.fromkeys(keys, 0)
    for name, size in params.items():
        group_sizes[groups[name]] += size
    sizes = [group_sizes[key] for key in keys]
    by_group = dict(zip(keys, owl_ratios([outliers[k] for k in keys], sizes, target, lam),
                        strict=True))
    return {name: by_group[groups[name]] for name in params}
