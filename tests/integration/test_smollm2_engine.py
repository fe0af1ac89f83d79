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
    return perplexity(model, evaluation), result


def test_wanda_beats_magnitude_and_hits_the_exact_ratio(smollm2):
    base, _, evaluation = smollm2
    dense = perplexity(base, evaluation)
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
