"""Channel permutation for N:M: the search keeps more score mass, and folding it into the
producers leaves the model's function unchanged (real tiny models of several families)."""

from __future__ import annotations

import pytest
import torch

from wanda_export.model.layers import find_targets
from wanda_export.permutation import apply_fold, find_fold
from wanda_export.prune import PruneSpec, prune_model
from wanda_export.sparsity.pattern import Pattern
from wanda_export.sparsity.permute import channel_permutation, kept_mass

TWO_FOUR = Pattern(2, 4)


def test_the_search_spreads_the_strong_channels_over_the_groups():
    # Identity: groups [10 10 10 10] [1 1 1 1] keep 20 + 2; two 10s per group keep 40.
    scores = torch.tensor([[10.0, 10, 10, 10, 1, 1, 1, 1]])
    order = channel_permutation(scores, 2, 4)
    assert sorted(order.tolist()) == list(range(8))
    assert kept_mass(scores, 2, 4) == 22
    assert kept_mass(scores[:, order], 2, 4) == 40


def test_the_search_never_loses_mass():
    scores = torch.rand(16, 64, generator=torch.Generator().manual_seed(1))
    order = channel_permutation(scores, 2, 4)
    assert sorted(order.tolist()) == list(range(64))
    assert kept_mass(scores[:, order], 2, 4) >= kept_mass(scores, 2, 4)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
def test_folded_permutations_keep_the_function(tiny_model, family):
    model = tiny_model(family)
    ids = torch.randint(4, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    before = _logits(model, ids)
    generator = torch.Generator().manual_seed(2)
    folds = [find_fold(model, t, TWO_FOUR) for t in find_targets(model)]
    folds = [fold for fold in folds if fold is not None]
    assert sorted({fold.consumer.name.rsplit(".", 1)[1] for fold in folds}) == ["down_proj",
                                                                               "o_proj"]
    for fold in folds:
        groups = fold.consumer.in_features // fold.block // fold.shared
        permutations = [torch.randperm(fold.block, generator=generator) for _ in range(groups)]
        columns = torch.cat([b * fold.block + permutations[b // fold.shared]
                             for b in range(groups * fold.shared)])
        rows = torch.cat([g * fold.block + p for g, p in enumerate(permutations)])
        apply_fold(fold, columns, rows, None)
    assert torch.allclose(_logits(model, ids), before, atol=1e-5)


def test_families_without_an_exact_fold_are_left_in_order(tiny_model):
    model = tiny_model("gpt2")
    assert all(find_fold(model, t, TWO_FOUR) is None for t in find_targets(model))
    ids = torch.randint(4, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    result = prune_model(model, PruneSpec(pattern="2:4", permute=True, mode="dense"), ids)
    assert result.report.valid and result.permuted == {}


def test_a_permuted_prune_is_valid_n_m_and_equals_the_unpermuted_pruned_model(tiny_model):
    ids = torch.randint(4, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    model = tiny_model("llama")
    result = prune_model(model, PruneSpec(method="ria", pattern="2:4", permute=True,
                                          mode="dense"), ids)
    assert result.report.valid  # N:M along K in the stored (permuted) order
    assert len(result.permuted) == 4  # down_proj and o_proj of both layers
    assert all(p.after >= p.before for p in result.permuted.values())
    assert any(p.after > p.before for p in result.permuted.values())
    pruned = _logits(model, ids)
    # Undo every fold: the weights return to the original channel order, holding the mask
    # chosen in permuted space, and the model computes exactly the same function.
    for name, permuted in result.permuted.items():
        fold = find_fold(model, next(t for t in find_targets(model) if t.name == name),
                         TWO_FOUR)
        apply_fold(fold, torch.argsort(permuted.columns), torch.argsort(permuted.rows), None)
    assert torch.allclose(_logits(model, ids), pruned, atol=1e-5)
    plain = tiny_model("llama")
    prune_model(plain, PruneSpec(method="ria", pattern="2:4", mode="dense"), ids)
    assert not torch.allclose(_logits(plain, ids), pruned, atol=1e-3)
