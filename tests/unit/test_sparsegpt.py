"""SparseGPT: the optimised transposed implementation against a literal transcription of the
paper's algorithm, its reconstruction advantage over Wanda, and the Hessian collection."""

from __future__ import annotations

import math

import pytest
import torch

from wanda_export.calibrate.stats import (
    ChannelStats,
    SharedProducts,
    collecting,
    empty_stats,
    stats_from_tensors,
    stats_to_tensors,
)
from wanda_export.model.layers import find_targets, weight_out_in
from wanda_export.prune import PruneSpec, prune_model
from wanda_export.sparsity.mask import build_mask
from wanda_export.sparsity.pattern import parse_pattern
from wanda_export.sparsity.score import wanda_scores
from wanda_export.sparsity.sparsegpt import sparsegpt_prune

WINDOWS = torch.randint(4, 256, (6, 32), generator=torch.Generator().manual_seed(0))


def correlated_inputs(tokens: int, features: int, seed: int = 0) -> torch.Tensor:
    """Inputs with correlated channels and a few loud ones, like real activations."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=generator) / math.sqrt(features)
    scale = torch.ones(features)
    scale[:3] = 8.0
    return (torch.randn(tokens, features, generator=generator) @ mixing + 0.3) * scale


def reference_sparsegpt(weight, xtx, sparsity, prune_n, prune_m, block=128, damp=0.01):
    """The paper's Algorithm 1, column by column on the [out, in] weight, as the authors wrote it
    (with the ceil count of this tool and its tie-breaking irrelevant on random floats)."""
    w = weight.clone().float()
    h = xtx.clone().float()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h[range(len(h)), range(len(h))] += damp * torch.mean(torch.diag(h))
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    columns = w.shape[1]
    for i1 in range(0, columns, block):
        i2 = min(i1 + block, columns)
        w1, q1, err1 = w[:, i1:i2].clone(), torch.zeros_like(w[:, i1:i2]), torch.zeros_like(w[:, i1:i2])
        hinv1 = hinv[i1:i2, i1:i2]
        if prune_n == 0:
            tmp = w1**2 / torch.diag(hinv1).reshape(1, -1) ** 2
            count = math.ceil(tmp.numel() * sparsity - 1e-9)
            mask1 = torch.zeros(tmp.numel(), dtype=torch.bool)
            mask1[torch.argsort(tmp.flatten())[:count]] = True
            mask1 = mask1.reshape(tmp.shape)
        else:
            mask1 = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(i2 - i1):
            if prune_n and i % prune_m == 0:
                tmp = w1[:, i:i + prune_m] ** 2 / torch.diag(hinv1)[i:i + prune_m].reshape(1, -1) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, prune_m - prune_n, dim=1, largest=False)[1], True)
            q = w1[:, i].clone()
            q[mask1[:, i]] = 0
            q1[:, i] = q
            err = (w1[:, i] - q) / hinv1[i, i]
            w1[:, i:] -= err.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)
            err1[:, i] = err
        w[:, i1:i2] = q1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w


@pytest.mark.parametrize(("pattern", "n"), [("unstructured", 0), ("2:4", 2), ("4:8", 4)])
def test_matches_the_papers_algorithm(pattern, n):
    weight = torch.randn(24, 160, generator=torch.Generator().manual_seed(1))
    x = correlated_inputs(512, 160)
    ours = sparsegpt_prune(weight, x.T @ x, 0.5, parse_pattern(pattern), block_size=64, dampening=0.01)
    expected = reference_sparsegpt(weight, x.T @ x, 0.5, n, 8 if n == 4 else 4, block=64)
    assert torch.equal(ours == 0, expected == 0)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_reconstruction_error_below_wanda_at_the_same_ratio(pattern):
    weight = torch.randn(32, 64, generator=torch.Generator().manual_seed(2))
    x = correlated_inputs(1024, 64)
    parsed = parse_pattern(pattern)
    pruned = sparsegpt_prune(weight, x.T @ x, 0.5, parsed, block_size=32, dampening=0.01)
    wanda = weight.clone()
    wanda[build_mask(wanda_scores(weight, x.square().sum(0)), 0.5, parsed, "row")] = 0
    assert (pruned == 0).float().mean() == (wanda == 0).float().mean() == 0.5
    error = lambda w: float(torch.linalg.norm(x @ weight.T - x @ w.T))
    assert error(pruned) < 0.8 * error(wanda)


def test_every_block_reaches_the_ratio_and_zeros_are_positive():
    weight = torch.randn(10, 96, generator=torch.Generator().manual_seed(3))
    x = correlated_inputs(256, 96)
    pruned = sparsegpt_prune(weight, x.T @ x, 0.7, parse_pattern("unstructured"), block_size=32,
                             dampening=0.01)
    for start in range(0, 96, 32):
        block = pruned[:, start:start + 32]
        assert int((block == 0).sum()) == math.ceil(0.7 * block.numel())
    assert not torch.signbit(pruned[pruned == 0]).any()
    assert pruned.dtype == weight.dtype


def test_dead_inputs_are_pruned_without_nans():
    weight = torch.randn(8, 32, generator=torch.Generator().manual_seed(4))
    x = correlated_inputs(128, 32)
    x[:, 5] = 0.0
    pruned = sparsegpt_prune(weight, x.T @ x, 0.5, parse_pattern("2:4"), block_size=16, dampening=0.01)
    assert torch.isfinite(pruned).all() and (pruned[:, 5] == 0).all()


def test_rejects_a_hessian_of_the_wrong_shape_and_a_block_not_multiple_of_m():
    with pytest.raises(ValueError, match="Hessian shape"):
        sparsegpt_prune(torch.ones(4, 8), torch.eye(4), 0.5, parse_pattern("unstructured"), 128, 0.01)
    with pytest.raises(ValueError, match="multiple of M"):
        sparsegpt_prune(torch.ones(4, 8), torch.eye(8), 0.5, parse_pattern("4:8"), block_size=4, dampening=0.01)


def test_hessian_collected_once_per_shared_input(tiny_model):
    model = tiny_model("llama")
    targets = [t for t in find_targets(model) if t.layer_index == 0]
    stats = empty_stats(targets, hessian=True)
    inputs: dict[str, torch.Tensor] = {}
    hooks = [t.module.register_forward_pre_hook(
        lambda _m, args, name=t.name: inputs.__setitem__(name, args[0].reshape(-1, args[0].shape[-1])))
        for t in targets]
    calls = []
    original = SharedProducts.product

    def counting(self, tensor, flat):
        calls.append(tensor is not self._input)  # True: a new product is computed
        return original(self, tensor, flat)

    with torch.no_grad(), collecting(targets, stats), pytest.MonkeyPatch.context() as patch:
        patch.setattr(SharedProducts, "product", counting)
        model(input_ids=WINDOWS[:2], use_cache=False)
    for hook in hooks:
        hook.remove()
    for target in targets:
        x = inputs[target.name].float()
        torch.testing.assert_close(stats[target.name].xtx, x.T @ x)
        torch.testing.assert_close(stats[target.name].xtx.diagonal(), stats[target.name].sumsq)
    assert len(calls) == len(targets) and sum(calls) == 4  # qkv, o, gate/up, down
    restored = stats_from_tensors(stats_to_tensors(stats))
    assert all(torch.equal(restored[n].xtx, s.xtx) for n, s in stats.items())


def test_channel_stats_without_hessian_keep_no_matrix():
    entry = ChannelStats(torch.zeros(3))
    entry.add(torch.ones(2, 3))
    assert entry.xtx is None and "a.xtx" not in stats_to_tensors({"a": entry})


@pytest.mark.parametrize("mode", ["sequential", "dense"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_prune_model_with_sparsegpt(tiny_model, mode, pattern):
    model = tiny_model("qwen2")
    dense = {t.name: weight_out_in(t.module).clone() for t in find_targets(model)}
    result = prune_model(model, PruneSpec(method="sparsegpt", mode=mode, pattern=pattern,
                                          block_size=32), WINDOWS)
    assert result.report.valid and result.report.overall == pytest.approx(0.5)
    assert all(s.xtx is not None for s in result.stats.values())
    for target in find_targets(model):
        kept = weight_out_in(target.module) != 0
        changed = ~torch.isclose(weight_out_in(target.module), dense[target.name])
        assert (changed & kept).any()  # kept weights were updated, not only masked


def test_sparsegpt_dense_statistics_reproduce_the_same_weights(tiny_model):
    first = tiny_model("llama")
    spec = PruneSpec(method="sparsegpt", mode="dense", block_size=32)
    stats = prune_model(first, spec, WINDOWS).stats
    second = tiny_model("llama")
    prune_model(second, spec, stats=stats_from_tensors(stats_to_tensors(stats)))
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)


def test_sparsegpt_takes_no_comparison_group():
    with pytest.raises(ValueError, match="group"):
        PruneSpec(method="sparsegpt", group="row")
