"""`plan_pipeline`: one row per stage and per cached step in run order, with the keys the run
itself uses, `miss` until the entries exist and `hit` after, and no weights loaded."""

from __future__ import annotations

import pytest
import torch

from wanda_export.cache.store import CacheStore
from wanda_export.pipeline.plan import plan_pipeline

OWL_SEQUENTIAL = {"mode": "sequential", "stages": {"mask": {"allocation": "owl"}}}
ALPHAPRUNING = {"stages": {"mask": {"allocation": "alphapruning"}}}


@pytest.fixture
def plan_rows(tiny_model_dir, isolated_cache):
    """`plan_rows(config)`: the plan of `config` over the tiny llama, against the test's cache."""
    return lambda config: plan_pipeline(config, CacheStore(isolated_cache),
                                        str(tiny_model_dir("llama")))


@pytest.mark.parametrize(("settings", "expected"), [
    (OWL_SEQUENTIAL, ["evaluate-dense", "allocate-owl-statistics", "calibrate", "score", "mask",
                      "verify", "evaluate", "export"]),
    (ALPHAPRUNING, ["evaluate-dense", "calibrate", "score", "allocate-alphas", "mask", "verify",
                    "evaluate", "export"]),
], ids=["owl-sequential", "alphapruning"])
def test_rows_follow_the_run_order(pipeline_config, plan_rows, settings, expected):
    rows = plan_rows(pipeline_config(**settings))
    assert [row["stage"] for row in rows] == expected
    cached = {"evaluate-dense", "allocate-owl-statistics", "calibrate", "allocate-alphas"}
    for row in rows:
        if row["stage"] in cached:
            assert row["cache"] == "miss" and len(row["key"]) == 64, row
        else:
            assert row == {"stage": row["stage"], "cache": "n/a", "key": None}


def test_the_keys_are_the_runs_and_each_turns_hit_once_stored(pipeline_config, plan_rows,
                                                             run_context, isolated_cache):
    config = pipeline_config(**OWL_SEQUENTIAL)
    uses = run_context(config).run_plan.uses  # what a run of this config reads and writes
    keyed = [row for row in plan_rows(config) if row["key"] is not None]
    assert [(row["stage"], row["key"]) for row in keyed] == [(use.step, use.key) for use in uses]
    cache = CacheStore(isolated_cache)
    for stored, use in enumerate(uses, start=1):
        cache.put(use.kind, use.key, {"value": torch.zeros(1)}, use.record)
        states = [row["cache"] for row in plan_rows(config) if row["key"] is not None]
        assert states == ["hit"] * stored + ["miss"] * (len(uses) - stored)


def test_plan_loads_no_weights(pipeline_config, plan_rows, monkeypatch):
    from transformers import PreTrainedModel

    def no_weights(*args, **kwargs):
        raise AssertionError("plan loaded weights")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(no_weights))
    monkeypatch.setattr("safetensors.torch.load_file", no_weights)
    monkeypatch.setattr("wanda_export.model.loading.load_model", no_weights)
    rows = plan_rows(pipeline_config(**ALPHAPRUNING))
    assert {row["stage"]: row["cache"] for row in rows}["allocate-alphas"] == "miss"
