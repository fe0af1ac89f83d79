"""The pipeline stages on the tiny llama through a real `RunContext`: where pruning happens
(a sequential calibration miss prunes, a hit leaves it to the mask stage, to the same weights),
what each stage records, and the cache hits of a second run."""

from __future__ import annotations

import pytest
import torch

from wanda_export.model.layers import weight_out_in
from wanda_export.pipeline import stages
from wanda_export.pipeline.context import RunContext
from wanda_export.pipeline.run_plan import CALIBRATE, DENSE_PERPLEXITY
from wanda_export.pipeline.stages import (
    run_calibrate,
    run_dense_baseline,
    run_mask,
    run_score,
    run_verify,
)

TOKENS = 4 * 32  # the test pipeline's nsamples x seqlen


def weights(ctx: RunContext) -> dict[str, torch.Tensor]:
    """A copy of every target's [out, in] weight as it is now."""
    return {t.name: weight_out_in(t.module).detach().clone() for t in ctx.targets}


def assert_same(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def sparsity(ctx: RunContext) -> float:
    values = weights(ctx).values()
    return sum(int((w == 0).sum()) for w in values) / sum(w.numel() for w in values)


def test_dense_calibration_misses_then_hits_and_prunes_nothing(pipeline_config, run_context):
    config = pipeline_config(mode="dense")
    first = run_context(config)
    dense = weights(first)
    miss = run_calibrate(first)
    key = first.run_plan.use(CALIBRATE).key
    assert (miss.name, miss.status, miss.cache) == ("calibrate", "ok", "miss")
    assert miss.detail == {"key": key, "mode": "dense", "tokens": TOKENS, "pruned": False}
    assert_same(weights(first), dense)
    assert set(first.stats) == {t.name for t in first.targets}

    second = run_context(config)
    hit = run_calibrate(second)
    assert hit.cache == "hit" and hit.detail == miss.detail
    assert all(torch.equal(second.stats[name].sumsq, stats.sumsq)
               for name, stats in first.stats.items())


def test_a_sequential_miss_prunes_while_calibrating_and_a_hit_leaves_it_to_the_mask(
        pipeline_config, run_context, monkeypatch):
    config = pipeline_config(mode="sequential")
    miss_ctx = run_context(config)
    miss = run_calibrate(miss_ctx)
    assert miss.cache == "miss" and miss.detail["mode"] == "sequential"
    assert miss.detail["pruned"] is True and miss_ctx.pruned_in_calibration
    assert sparsity(miss_ctx) == pytest.approx(0.5)
    pruned = weights(miss_ctx)
    with monkeypatch.context() as patch:
        patch.setattr(stages, "prune_targets", lambda *a, **k: pytest.fail("pruned twice"))
        mask = run_mask(miss_ctx)
    assert mask.detail["pruned_during"] == "calibrate"
    assert mask.detail["overall"] == pytest.approx(0.5)
    assert_same(weights(miss_ctx), pruned)

    hit_ctx = run_context(config)
    dense = weights(hit_ctx)
    hit = run_calibrate(hit_ctx)
    assert hit.cache == "hit" and hit.detail["pruned"] is False
    assert not hit_ctx.pruned_in_calibration
    assert_same(weights(hit_ctx), dense)
    assert run_mask(hit_ctx).detail["pruned_during"] == "mask"
    assert_same(weights(hit_ctx), pruned)


def test_score_records_the_method_and_its_settings(pipeline_config, run_context):
    wanda = run_score(run_context(pipeline_config()))
    assert (wanda.status, wanda.detail) == ("ok", {"method": "wanda", "group": "row"})
    sparsegpt = run_score(run_context(pipeline_config(
        "sparsegpt.yaml", stages={"score": {"method": "sparsegpt", "dampening": 0.02,
                                            "block_size": 32}})))
    assert sparsegpt.detail == {"method": "sparsegpt", "group": "column-block",
                                "dampening": 0.02, "block_size": 32}


def test_verify_records_the_weights_as_they_are(pipeline_config, run_context):
    ctx = run_context(pipeline_config(pattern="2:4"))
    dense = run_verify(ctx)  # before any mask: every layer breaks 2:4
    assert dense.status == "failed"
    assert set(dense.detail["invalid_layers"]) == {t.name for t in ctx.targets}
    run_calibrate(ctx)
    run_mask(ctx)
    verified = run_verify(ctx)
    assert (verified.name, verified.status) == ("verify", "ok")
    assert verified.detail == {"overall": pytest.approx(0.5), "invalid_layers": []}
    assert ctx.record.sparsity.verified and ctx.record.sparsity.pattern == "2:4"


def test_the_dense_baseline_is_cached(pipeline_config, run_context):
    config = pipeline_config()
    first = run_context(config)
    miss = run_dense_baseline(first)
    assert (miss.name, miss.cache) == ("evaluate-dense", "miss")
    assert first.cache.contains("perplexity", first.run_plan.use(DENSE_PERPLEXITY).key)
    second = run_context(config)
    hit = run_dense_baseline(second)
    assert hit.cache == "hit" and hit.detail == miss.detail
    assert hit.detail["windows"] == 4 and hit.detail["perplexity"] > 1.0
    assert second.record.metrics.perplexity.dense == miss.detail["perplexity"]
