"""The pruning engine on the real SmolLM2-135M model and the offline stdlib corpus."""

from __future__ import annotations

import copy

import pytest
import torch

from wanda_export.data.sources import TextSource, load_documents
from wanda_export.data.windows import calibration_windows, evaluation_ids, split_windows
from wanda_export.evaluate.perplexity import perplexity
from wanda_export.model.loading import load_model
from wanda_export.prune import PruneSpec, prune_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    loaded = load_model(str(smollm2_dir), device="cpu")
    source = TextSource(kind="builtin")
    calib = calibration_windows(loaded.tokenizer, load_documents(source, "calibration"), 8, 128, 0)
    evaluation = split_windows(
        evaluation_ids(loaded.tokenizer, load_documents(source, "evaluation")), 128, 16
    )
    return loaded.model, calib, evaluation


def _pruned_perplexity(smollm2, spec: PruneSpec):
    base, calib, evaluation = smollm2
    model = copy.deepcopy(base)
    result = prune_model(model, spec, calib)
    return perplexity(model, evaluation, batch_size=4), result


def test_wanda_beats_magnitude_and_hits_the_exact_ratio(smollm2):
    base, _, evaluation = smollm2
    dense = perplexity(base, evaluation, batch_size=4)
    wanda, wanda_result = _pruned_perplexity(smollm2, PruneSpec(method="wanda", sparsity=0.5))
    magnitude, _ = _pruned_perplexity(smollm2, PruneSpec(method="magnitude", sparsity=0.5))
    assert dense < wanda < magnitude, (dense, wanda, magnitude)
    assert wanda_result.report.overall == 0.5
    assert all(layer.zeros * 2 == layer.numel for layer in wanda_result.report.layers.values())
    assert len(wanda_result.report.layers) == 30 * 7


def test_wanda_2_4_is_valid_everywhere(smollm2):
    ppl, result = _pruned_perplexity(smollm2, PruneSpec(pattern="2:4", mode="dense"))
    # a few 4-groups of the dequantized Q4_1 weights already hold three exact zeros
    assert result.report.valid and 0.5 <= result.report.overall < 0.5001
    assert all(layer.violating_groups == 0 for layer in result.report.layers.values())
    assert torch.isfinite(torch.tensor(ppl))


@torch.no_grad()
def _inputs_of(model, names: list[str], windows: torch.Tensor) -> dict[str, torch.Tensor]:
    """The [tokens, in] inputs each named linear receives on `windows`."""
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    hooks = [model.get_submodule(name).register_forward_pre_hook(
        lambda _m, args, name=name: seen[name].append(args[0].reshape(-1, args[0].shape[-1])))
        for name in names]
    model(input_ids=windows, use_cache=False)
    for hook in hooks:
        hook.remove()
    return {name: torch.cat(chunks) for name, chunks in seen.items()}


def test_sparsegpt_reconstructs_real_layers_better_than_wanda(smollm2):
    """Real weights and real activations: SparseGPT leaves a smaller output error ||XW^T -
    XW'^T|| on the calibration tokens than Wanda's mask at the same 60%. (On held-out tokens
    this needs more calibration than these 1,024 tokens: with so few, the 2:4 reconstruction of
    q_proj overfits and loses to Wanda, which is why the benchmarks calibrate on 16k tokens.)"""
    from wanda_export.sparsity.mask import build_mask
    from wanda_export.sparsity.pattern import parse_pattern
    from wanda_export.sparsity.score import wanda_scores
    from wanda_export.sparsity.sparsegpt import sparsegpt_prune

    model, calib, _ = smollm2
    names = ["model.layers.5.self_attn.q_proj", "model.layers.20.mlp.gate_proj"]
    seen = _inputs_of(model, names, calib)
    for name in names:
        weight = model.get_submodule(name).weight.detach()
        x = seen[name]
        for pattern in ("unstructured", "2:4"):
            parsed = parse_pattern(pattern)
            pruned = sparsegpt_prune(weight, x.T @ x, 0.6, parsed, 128, 0.01)
            wanda = weight.clone()
            wanda[build_mask(wanda_scores(weight, x.square().sum(0)), 0.6, parsed, "row")] = 0
            errors = [float((x @ (weight - w).T).norm()) for w in (pruned, wanda)]
            assert errors[0] < errors[1], (name, pattern, errors)


def test_alphapruning_alphas_of_the_real_weights(smollm2):
    """Block-averaged Hill alphas of a trained model's ESDs are heavy-tailed exponents that
    differ between blocks, and map to ratios whose weighted mean is exactly the target."""
    from wanda_export.allocation import allocate, target_groups
    from wanda_export.model.layers import find_targets

    targets = find_targets(smollm2[0])
    allocation = allocate(targets, PruneSpec(sparsity=0.7, allocation="alphapruning"))
    groups = target_groups(targets, "block")
    blocks: dict[int, list[float]] = {}
    for name, alpha in allocation.alphas.items():
        blocks.setdefault(groups[name], []).append(alpha)
    means = [sum(values) / len(values) for values in blocks.values()]
    assert len(means) == 30 and 2.0 < min(means) and max(means) < 15.0
    assert max(means) - min(means) > 1.0
    sizes = {t.name: t.module.weight.numel() for t in targets}
    mean = sum(allocation.ratios[n] * sizes[n] for n in sizes) / sum(sizes.values())
    assert mean == pytest.approx(0.7, abs=1e-9)
    assert 0.4 - 1e-9 <= min(allocation.ratios.values()) < max(allocation.ratios.values()) <= 0.99


def test_ria_2_4_with_permutation_and_dsnot_stays_2_4_and_keeps_its_function(smollm2):
    from wanda_export.model.layers import find_targets
    from wanda_export.permutation import apply_fold, find_fold

    base, calib, evaluation = smollm2
    model = copy.deepcopy(base)
    spec = PruneSpec(method="ria", pattern="2:4", mode="dense", permute=True, refine="dsnot",
                     include=["model.layers.1[05].*"])  # two layers keep the test short
    result = prune_model(model, spec, calib)
    assert result.report.valid and len(result.report.layers) == 14
    assert all(layer.violating_groups == 0 for layer in result.report.layers.values())
    # both down_proj (gate/up rows) and o_proj (v_proj rows per kv head) were permuted
    assert len(result.permuted) == 4
    assert sum(p.after for p in result.permuted.values()) > sum(
        p.before for p in result.permuted.values())
    with torch.no_grad():
        pruned = model(evaluation[:1, :32]).logits
        targets = {t.name: t for t in find_targets(model)}
        for name, permuted in result.permuted.items():
            fold = find_fold(model, targets[name], spec.parsed_pattern)
            apply_fold(fold, torch.argsort(permuted.columns), torch.argsort(permuted.rows), None)
        assert torch.allclose(model(evaluation[:1, :32]).logits, pruned, atol=1e-4)
