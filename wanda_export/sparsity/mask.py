"""Masks from scores: unstructured at an exact ratio per comparison group, or N:M along K.

A mask is a bool tensor shaped like the [out, in] weight; True marks a weight to prune (zero).
Ties are broken deterministically: among equal scores the lowest input index is pruned first.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from wanda_export.sparsity.pattern import Pattern


def _kth_smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Per-row k-th smallest value (1-based), shape (rows, 1).

    On CPU numpy's introselect is about twice as fast as torch.kthvalue, which matters: this
    runs over every weight of the model.
    """
    if scores.device.type != "cpu":
        return torch.kthvalue(scores, k, dim=1, keepdim=True).values
    partitioned = np.partition(scores.numpy(), k - 1, axis=1)
    return torch.from_numpy(np.ascontiguousarray(partitioned[:, k - 1 : k]))


def _prune_lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mark the k lowest scores of each row of a 2-D tensor, ties to the lowest column index.

    Exact count per row in O(n): a per-row k-th value threshold, everything at or below it, and
    only where ties at the threshold overshoot k, the first ties until the row holds exactly k.
    """
    _rows, cols = scores.shape
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= cols:
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = _kth_smallest(scores, k)  # (rows, 1)
    mask = scores <= threshold
    if bool((mask.sum(dim=1) > k).any()):
        below = scores < threshold
        at = scores == threshold
        room = k - below.sum(dim=1, keepdim=True)  # ties still to prune in each row
        mask = below | (at & (torch.cumsum(at, dim=1) <= room))
    return mask


def pruned_count(group_size: int, sparsity: float) -> int:
    """How many weights a group of `group_size` loses: ceil(sparsity * size), so every group
    reaches at least the requested ratio (the reference code floors; the two agree whenever the
    product is whole, e.g. 50% of an even width). The epsilon absorbs float noise such as
    0.7 * 1000 = 700.0000000000001."""
    return min(group_size, math.ceil(group_size * sparsity - 1e-9))


def unstructured_mask(scores: torch.Tensor, sparsity: float, group: str) -> torch.Tensor:
    """Prune pruned_count(group size, sparsity) weights per group.

    group "row": each output row compared on its own (Wanda's per-output comparison);
    group "layer": the whole matrix compared at once (the paper's ablation; magnitude's usual).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if group == "row":
        return _prune_lowest(scores, pruned_count(scores.shape[1], sparsity))
    if group == "layer":
        flat = scores.reshape(1, -1)
        return _prune_lowest(flat, pruned_count(flat.shape[1], sparsity)).reshape(scores.shape)
    raise ValueError(f"unknown comparison group {group!r}; choose row or layer")


# Above this M the O(M^2) rank comparison costs more than a stable sort of each group.
_MAX_M_FOR_RANKS = 8


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M along the input (reduction) dimension: in every M consecutive inputs keep the N best."""
    out_features, in_features = scores.shape
    if not Pattern(n, m).fits(in_features):
        raise ValueError(Pattern(n, m).misfit_message(f"a layer of {in_features} inputs"))
    groups = scores.reshape(-1, m)  # (out * in / m, m)
    if m > _MAX_M_FOR_RANKS:
        order = torch.argsort(groups, dim=1, stable=True)[:, : m - n]  # ties -> low index
        mask = torch.zeros_like(groups, dtype=torch.bool)
        mask.scatter_(1, order, True)
        return mask.reshape(out_features, in_features)
    # rank of element i in its group = #lower scores + #equal scores at a lower index;
    # the M - N lowest ranks are pruned. Column-wise comparisons beat sorting 4-element rows.
    columns = groups.unbind(dim=1)
    ranks = []
    for i, column in enumerate(columns):
        rank = torch.zeros(groups.shape[0], dtype=torch.uint8, device=groups.device)
        for j, other in enumerate(columns):
            if j < i:
                rank += other <= column
            elif j > i:
                rank += other < column
        ranks.append(rank)
    return (torch.stack(ranks, dim=1) < m - n).reshape(out_features, in_features)


def build_mask(scores: torch.Tensor, sparsity: float, pattern: Pattern, group: str
               ) -> torch.Tensor:
    """Mask for one layer: N:M when the pattern is structured, else unstructured at `sparsity`."""
    if pattern.structured:
        return nm_mask(scores, pattern.n, pattern.m)
    return unstructured_mask(scores, sparsity, group)


@torch.no_grad()
def apply_mask_(weight: torch.Tensor, mask: torch.Tensor) -> None:
    """Zero the masked entries in place, writing +0.0 (a stored -0.0 breaks some 2:4 compressors).

    Existing -0.0 entries are normalised to +0.0 as well, so the zero bit pattern is uniform.
    """
    weight.mul_(mask.to(weight.device).logical_not())  # 4x faster than masked_fill_ on CPU
    weight.add_(0.0)  # -0.0 + 0.0 == +0.0; every other value is unchanged
