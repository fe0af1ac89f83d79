"""The pruning engine end to end on tiny random models of every supported family."""

from __future__ import annotations

import copy

import pytest
import torch

from wanda_export.calibrate.dense import collect_dense
from wanda_export.calibrate.sequential import calibrate_sequential
from wanda_export.evaluate.perplexity import perplexity
from wanda_export.model.layers import find_decoder_layers, find_targets, weight_out_in
from wanda_export.prune import PruneSpec, prune_model

WINDOWS = torch.randint(4, 256, (6, 32), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def family_model(tiny_model, tiny_family):
    return tiny_model(tiny_family)


def test_targets_are_the_decoder_linears(family_model, tiny_family):
    _, layers = find_decoder_layers(family_model)
    targets = find_targets(family_model)
    assert len(layers) == 2
    assert {t.layer_index for t in targets} == {0, 1}
    assert not any("lm_head" in t.name or "embed" in t.name for t in targets)
    # every target's [out, in] view agrees with the input width its forward actually sees
    stats = collect_dense(family_model, WINDOWS, targets, batch_size=8)
    for target in targets:
        assert stats[target.name].sumsq.shape == (weight_out_in(target.module).shape[1],)
        assert stats[target.name].tokens == WINDOWS.numel()


def test_sequential_at_zero_sparsity_sees_exactly_the_dense_inputs(family_model):
    """With nothing pruned, layer-by-layer replay must reproduce the full forward pass; this
    fails if any keyword the model passes its layers (mask, positions, rotary) is dropped."""
    targets = find_targets(family_model)
    dense = collect_dense(family_model, WINDOWS, targets, batch_size=4)
    seq = calibrate_sequential(family_model, WINDOWS, targets, lambda i, s: None, batch_size=4)
    for name in dense:
        torch.testing.assert_close(seq[name].sumsq, dense[name].sumsq, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["sequential", "dense"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_prune_every_family(family_model, mode, pattern):
    dense_ppl = perplexity(family_model, WINDOWS, batch_size=4)
    result = prune_model(family_model, PruneSpec(mode=mode, pattern=pattern, sparsity=0.5), WINDOWS)
    assert result.report.overall == pytest.approx(0.5)
    assert result.report.valid
    for name, layer in result.report.layers.items():
        assert layer.sparsity == pytest.approx(0.5), name
    # the report reflects the model itself
    for target in find_targets(family_model):
        weight = weight_out_in(target.module)
        assert (weight == 0).float().mean().item() == pytest.approx(0.5)
        assert not torch.signbit(weight[weight == 0]).any()
    assert dense_ppl != perplexity(family_model, WINDOWS, batch_size=4)


def test_sequential_sees_pruned_upstream_layers(tiny_model):
    model = tiny_model("llama")
    dense_stats = collect_dense(model, WINDOWS, find_targets(model), batch_size=8)
    result = prune_model(model, PruneSpec(mode="sequential", sparsity=0.5), WINDOWS)
    first = "model.layers.0.self_attn.q_proj"
    later = "model.layers.1.self_attn.q_proj"
    torch.testing.assert_close(result.stats[first].sumsq, dense_stats[first].sumsq)
    assert not torch.allclose(result.stats[later].sumsq, dense_stats[later].sumsq)


def test_dense_stats_are_reusable_for_another_sparsity(tiny_model):
    base = tiny_model("qwen2")
    first = copy.deepcopy(base)
    stats = prune_model(first, PruneSpec(mode="dense", sparsity=0.5), WINDOWS).stats
    reused, fresh = copy.deepcopy(base), copy.deepcopy(base)
    prune_model(reused, PruneSpec(mode="dense", pattern="2:4"), stats=stats)
    prune_model(fresh, PruneSpec(mode="dense", pattern="2:4"), WINDOWS)
    for a, b in zip(reused.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_magnitude_needs_no_calibration(tiny_model):
    model = tiny_model("gpt2")
    result = prune_model(model, PruneSpec(method="magnitude", sparsity=0.25, group="layer"))
    assert result.stats is None and result.report.overall == pytest.approx(0.25)


def test_include_and_exclude_globs(tiny_model):
    model = tiny_model("llama")
    mlp_only = find_targets(model, include=["*.mlp.*"], exclude=["*.down_proj"])
    assert {t.name.rsplit(".", 1)[1] for t in mlp_only} == {"gate_proj", "up_proj"}
    with_head = find_targets(model, include=["*.mlp.*", "lm_head"])
    assert with_head[-1].name == "lm_head" and with_head[-1].layer_index is None
    with pytest.raises(ValueError, match="no linear layer matched"):
        find_targets(model, include=["*.nothing"])


def test_lm_head_needs_dense_mode(tiny_model):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="need mode 'dense'"):
        prune_model(model, PruneSpec(mode="sequential", include=("lm_head",)), WINDOWS)
    result = prune_model(model, PruneSpec(mode="dense", include=("lm_head",)), WINDOWS)
    assert result.report.layers["lm_head"].sparsity == pytest.approx(0.5)


def test_nm_pattern_refused_before_any_work(tiny_model):
    model = tiny_model("llama")
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="divisible by 48"):
        prune_model(model, PruneSpec(pattern="2:48"), WINDOWS)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_spec_rejects_bad_values():
    for bad in ({"method": "sparse"}, {"sparsity": 1.0}, {"pattern": "5:4"},
                {"mode": "lazy"}, {"group": "column"}):
        with pytest.raises(ValueError):
            PruneSpec(**bad)


def test_perplexity_is_batch_size_invariant(tiny_model):
    model = tiny_model("opt")
    assert perplexity(model, WINDOWS, batch_size=1) == pytest.approx(
        perplexity(model, WINDOWS, batch_size=4), rel=1e-5)


def test_uniform_logits_give_perplexity_equal_to_the_vocabulary(tiny_model):
    model = tiny_model("llama")
    assert not model.config.tie_word_embeddings
    with torch.no_grad():
        model.lm_head.weight.zero_()
    assert perplexity(model, WINDOWS, batch_size=4) == pytest.approx(model.config.vocab_size, rel=1e-6)
