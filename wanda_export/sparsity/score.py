"""Pruning scores as pure tensor functions: higher score = more important = kept.

Every function takes the weight in the [out, in] layout (rows are outputs, columns the input /
reduction dimension K) and returns a float32 score tensor of the same shape.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Scores are computed and compared in float32 whatever the model's dtype: fp16 |W|·‖X‖ products
# overflow for large activations and lose the ordering between near-equal scores.
SCORE_DTYPE = torch.float32


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """|W|: the classic magnitude-pruning baseline."""
    return weight.detach().to(SCORE_DTYPE).abs()


def _check_stats(weight: torch.Tensor, input_sumsq: torch.Tensor) -> None:
    """Refuse per-channel statistics that do not match the weight's input dimension."""
    if input_sumsq.ndim != 1 or input_sumsq.shape[0] != weight.shape[1]:
        raise ValueError(
            f"activation statistics have shape {tuple(input_sumsq.shape)}, "
            f"expected [{weight.shape[1]}] for a weight of shape {tuple(weight.shape)}"
        )


def wanda_scores(weight: torch.Tensor, input_sumsq: torch.Tensor) -> torch.Tensor:
    """Wanda: |W_ij| * ||X_j||_2, where ||X_j||_2 = sqrt(sum over tokens of x_j^2).

    `input_sumsq` is the per-input-channel sum of squares of the layer's input, shape [in].
    """
    _check_stats(weight, input_sumsq)
    norms = input_sumsq.to(device=weight.device, dtype=SCORE_DTYPE).clamp_min(0).sqrt()
    return magnitude_scores(weight).mul_(norms.unsqueeze(0))  # (out, in) * (1, in)


def ria_scores(weight: torch.Tensor, input_sumsq: torch.Tensor, exponent: float) -> torch.Tensor:
    """RIA (Zhang et al., ICLR 2024): relative importance times activations,
    (|W_ij| / sum_k |W_ik| + |W_ij| / sum_k |W_kj|) * ||X_j||_2 ** exponent.

    The row and column sums make a weight compete with its whole output row and its whole input
    column, so no input channel (column) loses all its weights; the exponent (the paper's a,
    0.5) tempers the activation norms. An all-zero row or column contributes 0, not NaN.
    """
    _check_stats(weight, input_sumsq)
    magnitude = magnitude_scores(weight)
    row_sums = magnitude.sum(dim=1, keepdim=True)  # (out, 1)
    column_sums = magnitude.sum(dim=0, keepdim=True)  # (1, in)
    relative = magnitude / row_sums.where(row_sums > 0, 1.0)
    relative += magnitude / column_sums.where(column_sums > 0, 1.0)
    norms = input_sumsq.to(device=weight.device, dtype=SCORE_DTYPE).clamp_min(0).sqrt()
    return relative.mul_(norms.pow(exponent).unsqueeze(0))  # (out, in) * (1, in)


SCORERS: dict[str, Callable[..., torch.Tensor]] = {
    "wanda": wanda_scores,
    "magnitude": magnitude_scores,
    "ria": ria_scores,
}
METHODS_NEEDING_ACTIVATIONS = frozenset({"wanda", "ria"})


def compute_scores(method: str, weight: torch.Tensor, input_sumsq: torch.Tensor | None,
                   **settings: float) -> torch.Tensor:
    """Dispatch to the scorer named `method`; `settings` are its own (RIA's `exponent`)."""
    if method not in SCORERS:
        raise ValueError(f"unknown scoring method {method!r}; choose one of {sorted(SCORERS)}")
    if method in METHODS_NEEDING_ACTIVATIONS:
        if input_sumsq is None:
            raise ValueError(f"method {method!r} needs activation statistics")
        return SCORERS[method](weight, input_sumsq, **settings)
    return SCORERS[method](weight, **settings)


def importance_kept(scores: torch.Tensor, pruned: torch.Tensor) -> float:
    """The share of a layer's total score that the weights not `pruned` hold (1.0 for an
    all-zero score): how much of what the method values a mask keeps, so layers pruned to the
    same sparsity can still be told apart."""
    total = scores.to(SCORE_DTYPE).sum()
    if total <= 0:
        return 1.0
    return float(scores.to(SCORE_DTYPE).masked_fill(pruned, 0.0).sum() / total)
