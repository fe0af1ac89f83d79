"""Input-channel permutations that let N:M groups keep more score mass (the channel
reallocation of RIA, Zhang et al., ICLR 2024), as pure tensor code.

An N:M mask keeps the N best of every M consecutive inputs of each row; which inputs share a
group is arbitrary up to a permutation of the input channels, so a permutation that spreads the
important channels over the groups keeps more of the score. Search: the paper's heuristic start
(channels sorted by their score mass, dealt to the group positions in a snake order), kept only
if it beats the identity, then rounds of pairwise swaps: for each position p within a group,
the gain of exchanging the channels at position p of two groups is computed for every pair of
groups of a block at once, and the best disjoint improving pairs are swapped. The kept mass
never decreases.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wanda_export.sparsity.score import SCORE_DTYPE

# Swap rounds over all positions, and groups compared at once (the pair matrix is
# rows x GROUPS_PER_BLOCK^2 floats); the groups are shuffled between rounds with a fixed seed so
# blocks mix and the result is reproducible.
SWAP_ROUNDS = 1
GROUPS_PER_BLOCK = 48
_SEED = 0


@dataclass(frozen=True)
class Permuted:
    """A permutation folded into one linear: its new input order (`columns`: new input i is old
    input columns[i]), its producers' new output order (`rows`), and the N:M kept score mass
    before and after."""

    columns: torch.Tensor
    rows: torch.Tensor
    before: float
    after: float


def kept_mass(scores: torch.Tensor, n: int, m: int) -> float:
    """Sum of the N largest scores of every M consecutive inputs of every row."""
    groups = scores.to(SCORE_DTYPE).reshape(scores.shape[0], -1, m)
    return float(groups.topk(n, dim=2).values.sum())


def snake_order(scores: torch.Tensor, m: int) -> torch.Tensor:
    """RIA's heuristic: channels sorted by score mass, the c-th fraction 1/M of them filling
    position c of every group, every other fraction in reverse, so each group mixes strong and
    weak channels."""
    columns = scores.shape[1]
    ranked = torch.argsort(scores.to(SCORE_DTYPE).sum(dim=0), stable=True)
    order = torch.empty_like(ranked)
    size = columns // m
    for position in range(m):
        chunk = ranked[position * size:(position + 1) * size]
        order[position::m] = chunk if position % 2 == 0 else chunk.flip(0)
    return order


def _swap_round(scores: torch.Tensor, order: torch.Tensor, n: int, m: int,
                generator: torch.Generator) -> bool:
    """One round of pairwise swaps over every position; True if anything moved."""
    groups = order.numel() // m
    moved = False
    for position in range(m):
        shuffled = torch.randperm(groups, generator=generator)
        for start in range(0, groups, GROUPS_PER_BLOCK):
            block = shuffled[start:start + GROUPS_PER_BLOCK].to(scores.device)
            moved |= _swap_block(scores, order, block, position, n, m)
    return moved


def _swap_block(scores: torch.Tensor, order: torch.Tensor, block: torch.Tensor, position: int,
                n: int, m: int) -> bool:
    """Swap the channels at `position` between the best disjoint improving pairs of `block`."""
    if block.numel() < 2:
        return False
    slots = block.unsqueeze(1) * m + torch.arange(m, device=block.device)  # (B, m)
    members = scores[:, order[slots]]  # (rows, B, m)
    others = torch.cat([members[:, :, :position], members[:, :, position + 1:]], dim=2)
    top = others.topk(n, dim=2).values  # (rows, B, n)
    base, nth = top.sum(dim=2), top[:, :, -1]  # top-N mass of the others, N-th largest
    moving = members[:, :, position]  # (rows, B): the channel at `position` of each group
    # value[g, h]: kept mass of group h holding g's channel at `position` (adding x to a set
    # whose N-th largest is t raises its top-N sum by max(0, x - t)).
    value = base.sum(dim=0).unsqueeze(0) + (moving.unsqueeze(2) - nth.unsqueeze(1)).clamp_min(
        0).sum(dim=0)
    current = value.diagonal()
    gain = torch.triu(value + value.T - current.unsqueeze(0) - current.unsqueeze(1), diagonal=1)
    size = block.numel()
    flat = gain.flatten()
    floor = 1e-6 * float(current.abs().max())
    best = torch.argsort(flat, descending=True)[:4 * size]  # at most size / 2 swaps happen
    best = best[flat[best] > floor].tolist()
    at = slots[:, position].tolist()
    used: set[int] = set()
    first: list[int] = []
    second: list[int] = []
    for pick in best:
        g, h = divmod(pick, size)
        if g not in used and h not in used:
            used.update((g, h))
            first.append(at[g])
            second.append(at[h])
    if not first:
        return False
    a, b = torch.tensor(first, device=order.device), torch.tensor(second, device=order.device)
    order[a], order[b] = order[b].clone(), order[a].clone()
    return True


def channel_permutation(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """A permutation `order` of the input channels of an [out, in] score matrix such that
    `scores[:, order]` keeps at least as much mass under N:M as `scores` itself."""
    scores = scores.detach().to(SCORE_DTYPE)
    columns = scores.shape[1]
    if columns % m:
        raise ValueError(f"{columns} input channels do not split into groups of {m}")
    identity = torch.arange(columns, device=scores.device)
    snake = snake_order(scores, m)
    order = snake if kept_mass(scores[:, snake], n, m) > kept_mass(scores, n, m) else identity
    order = order.clone()
    generator = torch.Generator().manual_seed(_SEED)
    for _ in range(SWAP_ROUNDS):
        if not _swap_round(scores, order, n, m, generator):
            break
    return order
