"""Channel permutation for N:M, folded into the weights: which linears can take a permutation
of their input channels exactly, and applying it to the weights and the statistics.

A permutation P of a linear's inputs (W -> W P^T) is exact only if the producer of that input
emits P x instead of x. That holds, with no runtime gather, in two places of a Llama-style
block: down_proj, whose input act(gate_proj x) * up_proj x follows any reordering of the gate
and up rows; and o_proj, whose input is each head's softmax(QK^T) V, which follows a reordering
of v_proj's rows within each key/value head (one permutation per kv head, shared by the query
heads that read it). q/k/v and gate/up read the normalised residual stream, which every layer
shares: they are left in their order. Pure with respect to the scores; the search is
`sparsity/permute.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from wanda_export.calibrate.stats import ChannelStats
from wanda_export.model.layers import Target, weight_out_in
from wanda_export.sparsity.pattern import Pattern
from wanda_export.sparsity.permute import Permuted, channel_permutation, kept_mass

# consumer suffix -> the sibling producers whose output rows feed it, elementwise.
_MLP_PRODUCERS = {"down_proj": ("gate_proj", "up_proj")}
_ATTENTION_CONSUMER, _ATTENTION_PRODUCER = "o_proj", "v_proj"


@dataclass(frozen=True)
class Fold:
    """A consumer linear whose inputs may be permuted, and the producers that follow.

    The consumer's inputs are `heads` blocks of `block` channels; blocks `g * shared` to
    `(g + 1) * shared - 1` share permutation g, which also reorders rows block g of each
    producer (the MLP: one block, one permutation; attention: one per kv head)."""

    consumer: Target
    producers: tuple[nn.Module, ...]
    block: int
    shared: int


def _sibling(root: nn.Module, name: str) -> nn.Module | None:
    """The module called `name` under `root`, or None."""
    try:
        return root.get_submodule(name)
    except AttributeError:
        return None


def find_fold(root: nn.Module, target: Target, pattern: Pattern) -> Fold | None:
    """The fold of `target` (a down_proj or o_proj of a Llama-style block under `root`, the model
    that names it), or None where no exact fold exists."""
    parent_name, _, leaf = target.name.rpartition(".")
    parent = _sibling(root, parent_name)
    in_features = target.in_features
    if parent is None:
        return None
    if leaf in _MLP_PRODUCERS:
        producers = [_sibling(parent, name) for name in _MLP_PRODUCERS[leaf]]
        if any(p is None or weight_out_in(p).shape[0] != in_features for p in producers):
            return None
        return Fold(target, tuple(producers), in_features, 1)
    if leaf == _ATTENTION_CONSUMER:
        value = _sibling(parent, _ATTENTION_PRODUCER)
        head_dim = getattr(parent, "head_dim", None)
        kv_heads = getattr(getattr(parent, "config", None), "num_key_value_heads", None)
        if value is None or not head_dim or not kv_heads or head_dim % pattern.m:
            return None
        heads = in_features // head_dim
        if (heads * head_dim != in_features or heads % kv_heads
                or weight_out_in(value).shape[0] != kv_heads * head_dim):
            return None
        return Fold(target, (value,), head_dim, heads // kv_heads)
    return None


def fold_permutations(fold: Fold, scores: torch.Tensor, pattern: Pattern) -> list[torch.Tensor]:
    """One permutation of `fold.block` channels per producer block, each chosen on the scores
    of every consumer block that shares it (stacked as rows)."""
    blocks = scores.shape[1] // fold.block
    permutations = []
    for group in range(blocks // fold.shared):
        stacked = torch.cat([scores[:, b * fold.block:(b + 1) * fold.block]
                             for b in range(group * fold.shared, (group + 1) * fold.shared)])
        permutations.append(channel_permutation(stacked, pattern.n, pattern.m))
    return permutations


def consumer_index(fold: Fold, permutations: list[torch.Tensor]) -> torch.Tensor:
    """The consumer's new input order: block b takes permutation b // shared."""
    return torch.cat([b * fold.block + permutations[b // fold.shared].to("cpu")
                      for b in range(len(permutations) * fold.shared)])


def producer_index(fold: Fold, permutations: list[torch.Tensor]) -> torch.Tensor:
    """The producers' new output order: row block g takes permutation g."""
    return torch.cat([g * fold.block + p.to("cpu") for g, p in enumerate(permutations)])


@torch.no_grad()
def apply_fold(fold: Fold, columns: torch.Tensor, rows: torch.Tensor,
               stats: ChannelStats | None) -> ChannelStats | None:
    """Reorder the consumer's input columns by `columns` and its producers' output rows (and
    biases) by `rows`, in place; return the consumer's statistics in the new order. The model
    computes the same function afterwards."""
    weight = weight_out_in(fold.consumer.module)
    weight.copy_(weight[:, columns.to(weight.device)])
    for producer in fold.producers:
        produced = weight_out_in(producer)
        produced.copy_(produced[rows.to(produced.device)])
        bias = getattr(producer, "bias", None)
        if bias is not None:
            bias.data.copy_(bias.data[rows.to(bias.device)])
    if stats is None:
        return None
    index = columns.to(stats.sumsq.device)
    return ChannelStats(
        stats.sumsq[index], stats.tokens,
        None if stats.xtx is None else stats.xtx[index][:, index],
        None if stats.total is None else stats.total[index])


def permute_for_nm(fold: Fold, scores: torch.Tensor, pattern: Pattern,
                   stats: ChannelStats | None) -> tuple[ChannelStats | None, Permuted]:
    """Choose and fold the permutation of one consumer from its [out, in] `scores`; return its
    statistics in the new order and what was applied."""
    permutations = fold_permutations(fold, scores, pattern)
    columns, rows = consumer_index(fold, permutations), producer_index(fold, permutations)
    permuted = Permuted(columns, rows, kept_mass(scores, pattern.n, pattern.m),
                        kept_mass(scores[:, columns.to(scores.device)], pattern.n, pattern.m))
    return apply_fold(fold, columns, rows, stats), permuted
