"""Layer-wise sparsity allocation: AlphaPruning (Lu et al. 2024) and OWL (Yin et al. 2023).

Pure functions from per-layer measurements to per-layer sparsity ratios whose
parameter-weighted mean is exactly the target. Not yet wired into the pipeline (issue 6).

AlphaPruning: the empirical spectral density (ESD) of a weight matrix is the set of
eigenvalues of W^T W (its squared singular values); a heavier tail (smaller power-law exponent
alpha) marks a better-trained layer, which is pruned less. OWL: a layer with more outlier
activations (Wanda scores far above their mean) is pruned less.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

# Spectra are computed in float64: squared singular values span many orders of magnitude.
ESD_DTYPE = torch.float64
MAX_RATIO = 0.99


def esd(weight: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of W^T W, ascending: the squared singular values of W."""
    return torch.linalg.svdvals(weight.detach().to(ESD_DTYPE)).square().sort().values


def hill_alpha(eigenvalues: torch.Tensor, xmin: str = "ks") -> float:
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
        candidates = [count // 2]
    elif xmin == "ks":
        candidates = range(count - 2)
    else:
        raise ValueError(f"xmin must be 'ks' or 'median', got {xmin!r}")
    best_alpha, best_distance = math.nan, math.inf
    for i in candidates:
        n = count - i
        denominator = float(suffix_log_sums[i]) - n * float(logs[i])
        if denominator <= 0:
            continue
        alpha = 1.0 + n / denominator
        if xmin == "median":
            return alpha
        tail = eigs[i:]
        fitted = 1.0 - (tail / eigs[i]).pow(1.0 - alpha)
        empirical = torch.arange(n, dtype=ESD_DTYPE) / n
        distance = float((fitted - empirical).abs().max())
        if distance < best_distance:
            best_alpha, best_distance = alpha, distance
    return best_alpha


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
                 epsilon: float = 0.3) -> list[float]:
    """AlphaPruning: alphas mapped linearly onto [target - eps, target + eps] (higher alpha, more
    pruning), then scaled so the parameter-weighted mean is the target, clipped and rebalanced."""
    ratios = torch.tensor(_linear_map(alphas, target - epsilon, target + epsilon), dtype=ESD_DTYPE)
    weights = torch.tensor(params, dtype=ESD_DTYPE)
    mean = float((ratios * weights).sum() / weights.sum())
    scaled = (ratios * (target / mean)).tolist() if mean > 0 else ratios.tolist()
    return rebalance(scaled, params, target)


def outlier_ratio(scores: torch.Tensor, m: float = 5.0) -> float:
    """OWL's layer outlier ratio: the share of scores above m times their mean."""
    scores = scores.detach().to(torch.float32)
    return float((scores > m * scores.mean()).float().mean())


def owl_ratios(outlier_ratios: Sequence[float], params: Sequence[int], target: float,
               lam: float = 0.08) -> list[float]:
    """OWL: more outliers, less pruning; ratios in [target - lam, target + lam] around the target,
    rebalanced to the exact parameter-weighted target."""
    ratios = _linear_map([-r for r in outlier_ratios], target - lam, target + lam)
    return rebalance(ratios, params, target)
