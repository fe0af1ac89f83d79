"""DSnoT (Zhang et al., ICLR 2024, "Dynamic Sparse No Training"): refine a pruning mask by
swapping pruned and kept weights of each output row, without gradients or weight updates.

The expected reconstruction error of output row i is eps_i = sum over pruned j of
W_ij * E[x_j] (dense output minus pruned output, in expectation). Each cycle, every row whose
|eps_i| is still above the threshold grows back the pruned weight that best cancels it (the
largest W_ij E[x_j] / Var(x_j)^p of the error's sign: large effect, steady input) and prunes a
kept weight in exchange: unstructured, the least important kept weight whose removal moves eps
towards zero; N:M, the least important kept weight of the grown weight's own group, so every
group keeps exactly N (and the swap is skipped if it would flip the error's sign, as in the
reference). Two deviations from the reference code: a swap that would not shrink |eps| is
skipped (the reference makes it; on a row of thousands of weights such swaps are rare, on a
short row they undo the gain), and a skipped swap does not end the row (the reference stops
the row for good); a row ends when |eps| <= threshold, its candidates run out, or after
`iterations` cycles. The row's sparsity never changes. Pure tensor code: weights, mask, scores and statistics in,
mask out.
"""

from __future__ import annotations

import torch

from wanda_export.sparsity.pattern import Pattern
from wanda_export.sparsity.score import SCORE_DTYPE

# A channel whose calibration inputs never vary would divide by zero in the growth ranking.
_MIN_VARIANCE = 1e-12


def _pointers(rows: int, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the next position from the start and from the end of a ranked list."""
    return (torch.zeros(rows, dtype=torch.long, device=device),
            torch.full((rows,), length - 1, dtype=torch.long, device=device))


def _take(order: torch.Tensor, low: torch.Tensor, high: torch.Tensor, from_high: torch.Tensor
          ) -> torch.Tensor:
    """The column each row takes from its ranked list `order`: at `high` where `from_high`,
    else at `low`; the used pointer moves one step inwards."""
    position = torch.where(from_high, high, low).clamp(0, order.shape[1] - 1)
    high.sub_(from_high.long())
    low.add_((~from_high).long())
    return order.gather(1, position.unsqueeze(1)).squeeze(1)


def _pruning_order(contribution: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor
                   ) -> torch.Tensor:
    """Per row: the kept weights with a negative contribution, least important first, then
    everything else, then the kept weights with a positive contribution, least important last,
    so the least important candidate of either sign sits at one end of the list."""
    kept = ~mask
    category = torch.ones_like(mask, dtype=torch.uint8)
    category[kept & (contribution < 0)] = 0
    category[kept & (contribution > 0)] = 2
    by_score = torch.argsort(torch.where(category == 2, -scores, scores), dim=1, stable=True)
    by_category = torch.argsort(category.gather(1, by_score), dim=1, stable=True)
    return by_score.gather(1, by_category)


def _group_weakest(prune_scores: torch.Tensor, columns: torch.Tensor, m: int) -> torch.Tensor:
    """Per row, the column of lowest `prune_scores` within the M-group of `columns`."""
    start = (columns - columns % m).unsqueeze(1)  # (rows, 1)
    group = start + torch.arange(m, device=columns.device).unsqueeze(0)  # (rows, m)
    return (start + prune_scores.gather(1, group).argmin(dim=1, keepdim=True)).squeeze(1)


@torch.no_grad()
def dsnot_refine(
    weight: torch.Tensor, mask: torch.Tensor, scores: torch.Tensor, mean: torch.Tensor,
    variance: torch.Tensor, *, pattern: Pattern, iterations: int, threshold: float,
    variance_power: float,
) -> torch.Tensor:
    """The refined mask (True = pruned) of an [out, in] `weight` pruned by `mask`.

    `scores` rank the kept weights for pruning (the method's own: Wanda, RIA or magnitude);
    `mean` and `variance` are the input channels' E[x_j] and Var(x_j), shape [in]. At most
    `iterations` swaps per row; a row stops once |error| <= `threshold` or no candidate is left.
    For an N:M `pattern` every swap stays within one group of M inputs.
    """
    w = weight.detach().to(SCORE_DTYPE)
    rows, columns = w.shape
    device = w.device
    contribution = w * mean.to(device, SCORE_DTYPE).unsqueeze(0)  # (out, in)
    original = mask.to(device)
    refined = original.clone()
    error = (contribution * refined).sum(dim=1)  # (out,)
    initial_sign = error.sign()
    spread = variance.to(device, SCORE_DTYPE).clamp_min(_MIN_VARIANCE).pow(variance_power)
    growth_order = torch.argsort(torch.where(refined, contribution / spread, 0.0), dim=1,
                                 stable=True)
    grow_low, grow_high = _pointers(rows, columns, device)
    scores = scores.to(device, SCORE_DTYPE)
    if pattern.structured:
        prune_scores = scores.masked_fill(refined, torch.inf)
    else:
        pruning_order = _pruning_order(contribution, scores, refined)
        prune_low, prune_high = _pointers(rows, columns, device)
    index = torch.arange(rows, device=device)
    active = torch.ones(rows, dtype=torch.bool, device=device)
    for _ in range(iterations):
        active &= error.abs() > threshold
        if not bool(active.any()):
            break
        positive = error > 0
        grow = _take(growth_order, grow_low, grow_high, positive)
        grown = contribution[index, grow]
        # the ranked lists are exhausted on this side once their candidate is of the wrong kind
        active &= original[index, grow] & refined[index, grow] & (grown.sign() == error.sign())
        if pattern.structured:
            prune = _group_weakest(prune_scores, grow, pattern.m)
            pruned = contribution[index, prune]
            after = error + pruned - grown
            swap = torch.isfinite(prune_scores[index, prune]) & (after.sign() == initial_sign)
        else:
            prune = _take(pruning_order, prune_low, prune_high, ~positive)
            pruned = contribution[index, prune]
            after = error + pruned - grown
            active &= ~original[index, prune] & ~refined[index, prune] & (
                pruned.sign() == -error.sign())
            swap = torch.ones_like(active)
        swap &= active & (after.abs() < error.abs())
        rows_now = index[swap]
        refined[rows_now, grow[swap]] = False
        refined[rows_now, prune[swap]] = True
        if pattern.structured:
            prune_scores[rows_now, prune[swap]] = torch.inf
        error = torch.where(swap, after, error)
    return refined
