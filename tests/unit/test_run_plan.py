"""`plan_run`, the one place a run's decisions are made: dense or sequential calibration per
method and mode, OWL's extra dense pass, the cache entries (with the keys `pipeline/inputs.py`
builds) in the order the run uses them, and only the data a run needs read."""

from __future__ import annotations

import pytest
import torch
from pipelines import REMOVE

from wanda_export.cache.keys import esd_alphas_key
from wanda_export.cache.store import ALPHAS, CALIBRATION, PERPLEXITY
from wanda_export.pipeline.inputs import calibration_key_for, dense_perplexity_key_for
from wanda_export.pipeline.run_plan import (
    CALIBRATE,
    DENSE_PERPLEXITY,
    ESD_ALPHAS,
    OWL_STATISTICS,
    RunPlan,
    plan_run,
)

FINGERPRINT = "f" * 64
TARGETS = ["model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj"]
CALIBRATION_WINDOWS = torch.arange(4 * 32).reshape(4, 32)
EVALUATION_WINDOWS = torch.arange(4 * 32, 8 * 32).reshape(4, 32)


def calibration() -> torch.Tensor:
    return CALIBRATION_WINDOWS


def evaluation() -> torch.Tensor:
    return EVALUATION_WINDOWS


def never() -> torch.Tensor:
    raise AssertionError("a run that does not need these windows read them")


def plan(config, names=None, calibration_windows=calibration, evaluation_windows=evaluation
         ) -> RunPlan:
    """The run plan of `config` for the stages `names` (default: all of them)."""
    return plan_run(config, config.stage_names() if names is None else names, FINGERPRINT,
                    TARGETS, calibration_windows, evaluation_windows)


def steps(run_plan: RunPlan) -> list[str]:
    return [use.step for use in run_plan.uses]


@pytest.mark.parametrize(("method", "mode", "expected"), [
    ("wanda", "dense", "dense"), ("wanda", "sequential", "sequential"),
    ("sparsegpt", "dense", "dense"), ("sparsegpt", "sequential", "sequential"),
    ("magnitude", "dense", None), ("magnitude", "sequential", None),
    ("ria", "dense", "dense"), ("ria", "sequential", "sequential")])
def test_how_each_method_calibrates(pipeline_config, method, mode, expected):
    config = pipeline_config(mode=mode, stages={"score": {"method": method}})
    run_plan = plan(config, calibration_windows=calibration if expected else never)
    assert run_plan.calibration == expected
    assert run_plan.prunes_during_calibration == (expected == "sequential")
    assert not run_plan.owl_dense_pass
    assert steps(run_plan) == (["evaluate-dense", "calibrate"] if expected else ["evaluate-dense"])
    if expected:
        use = run_plan.use(CALIBRATE)
        key = calibration_key_for(config, FINGERPRINT, CALIBRATION_WINDOWS, TARGETS, expected)
        assert (use.kind, use.key, use.record) == (CALIBRATION, key.digest(), key.record())
        assert use.record["mode"] == expected
        assert use.record.get("hessian", False) == (method == "sparsegpt")


def test_dsnot_calibrates_even_after_magnitude_and_its_statistics_carry_means(pipeline_config):
    config = pipeline_config(mode="dense", stages={"score": {"method": "magnitude"},
                                                   "mask": {"refine": "dsnot"}})
    run_plan = plan(config)
    assert run_plan.calibration == "dense"
    assert run_plan.use(CALIBRATE).record["means"] is True
    plain = plan(pipeline_config("plain.yaml", mode="dense"))
    assert "means" not in plain.use(CALIBRATE).record


@pytest.mark.parametrize(("pattern", "stages"), [
    ("unstructured", {"score": {"method": "ria"}}),
    ("unstructured", {"score": {"method": "ria", "exponent": 1.0}}),
    ("2:4", {"mask": {"permute": True}}), ("unstructured", {"mask": {"refine": "dsnot"}}),
    ("unstructured", {"mask": {"refine": "dsnot", "refine_threshold": 0.0}})])
def test_each_new_setting_keys_sequential_statistics_of_its_own(pipeline_config, pattern,
                                                                stages):
    def key(name: str, **settings) -> str:
        config = pipeline_config(name, mode="sequential", pattern=pattern, **settings)
        return plan(config).use(CALIBRATE).key

    assert key("other.yaml", stages=stages) != key("base.yaml")


def test_the_dense_baseline_is_keyed_on_the_evaluation_windows(pipeline_config):
    config = pipeline_config()
    use = plan(config).use(DENSE_PERPLEXITY)
    key = dense_perplexity_key_for(config, FINGERPRINT, EVALUATION_WINDOWS)
    assert (use.kind, use.key) == (PERPLEXITY, key)
    assert use.record == {"schema": "dense-perplexity", "key": key}
    other = plan(config, evaluation_windows=lambda: EVALUATION_WINDOWS.flip(1))
    assert other.use(DENSE_PERPLEXITY).key != key


def test_dense_statistics_serve_any_sparsity_sequential_ones_only_their_own(pipeline_config):
    def key(mode: str, sparsity: float) -> str:
        config = pipeline_config(f"{mode}-{sparsity}.yaml", mode=mode, sparsity=sparsity)
        return plan(config).use(CALIBRATE).key

    assert key("dense", 0.5) == key("dense", 0.7)
    assert key("sequential", 0.5) != key("sequential", 0.7)
    assert key("dense", 0.5) != key("sequential", 0.5)


def test_magnitude_with_owl_takes_one_dense_pass_even_in_sequential_mode(pipeline_config):
    config = pipeline_config(mode="sequential", stages={"score": {"method": "magnitude"},
                                                        "mask": {"allocation": "owl"}})
    run_plan = plan(config)
    assert run_plan.calibration == "dense" and not run_plan.prunes_during_calibration
    assert not run_plan.owl_dense_pass and not run_plan.has(OWL_STATISTICS)
    assert steps(run_plan) == ["evaluate-dense", "calibrate"]
    assert run_plan.use(CALIBRATE).record["mode"] == "dense"


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_owl_with_sequential_calibration_adds_a_dense_pass_shared_with_dense_runs(
        pipeline_config, method):
    config = pipeline_config(mode="sequential", stages={"score": {"method": method},
                                                        "mask": {"allocation": "owl"}})
    reads = []
    run_plan = plan(config, calibration_windows=lambda: reads.append(1) or CALIBRATION_WINDOWS)
    assert reads == [1]  # one read for both entries
    assert run_plan.calibration == "sequential" and run_plan.owl_dense_pass
    assert steps(run_plan) == ["evaluate-dense", "allocate-owl-statistics", "calibrate"]
    owl = run_plan.use(OWL_STATISTICS)
    key = calibration_key_for(config, FINGERPRINT, CALIBRATION_WINDOWS, TARGETS, "dense",
                              hessian=False)
    assert (owl.kind, owl.key, owl.record) == (CALIBRATION, key.digest(), key.record())
    assert owl.record["mode"] == "dense" and "hessian" not in owl.record
    assert run_plan.use(CALIBRATE).record["mode"] == "sequential"
    dense_run = plan(pipeline_config("dense.yaml", mode="dense"))  # wanda, uniform
    assert owl.key == dense_run.use(CALIBRATE).key


def test_owl_with_dense_calibration_uses_the_runs_own_statistics(pipeline_config):
    run_plan = plan(pipeline_config(mode="dense", stages={"mask": {"allocation": "owl"}}))
    assert run_plan.calibration == "dense" and not run_plan.owl_dense_pass
    assert steps(run_plan) == ["evaluate-dense", "calibrate"]


@pytest.mark.parametrize(("method", "expected"), [
    ("wanda", ["evaluate-dense", "calibrate", "allocate-alphas"]),
    ("magnitude", ["evaluate-dense", "allocate-alphas"])])
def test_alphapruning_uses_the_cached_alphas(pipeline_config, method, expected):
    config = pipeline_config(stages={"score": {"method": method},
                                     "mask": {"allocation": "alphapruning"}})
    run_plan = plan(config, calibration_windows=calibration if method == "wanda" else never)
    assert steps(run_plan) == expected
    use = run_plan.use(ESD_ALPHAS)
    key = esd_alphas_key(FINGERPRINT, TARGETS, config.prune_spec().alpha_xmin)
    assert (use.kind, use.key, use.record) == (ALPHAS, key, {"schema": "esd-alphas", "key": key})


@pytest.mark.parametrize("evaluate", [REMOVE, {"dense_baseline": False}, {"perplexity": False}],
                         ids=["no-evaluate-stage", "no-dense-baseline", "no-perplexity"])
def test_no_dense_baseline_unless_perplexity_and_the_baseline_are_asked(pipeline_config,
                                                                        evaluate):
    config = pipeline_config(stages={"evaluate": evaluate}, gates={"perplexity": REMOVE})
    run_plan = plan(config, evaluation_windows=never)
    assert not run_plan.has(DENSE_PERPLEXITY)
    assert steps(run_plan) == ["calibrate"]


@pytest.mark.parametrize(("until", "expected"), [
    ("calibrate", ["calibrate"]),
    ("mask", ["calibrate", "allocate-alphas"]),
    ("evaluate", ["evaluate-dense", "calibrate", "allocate-alphas"])])
def test_a_stage_command_plans_only_the_stages_it_runs(pipeline_config, until, expected):
    config = pipeline_config(stages={"mask": {"allocation": "alphapruning"}})
    names = config.stage_names()
    run_plan = plan(config, names[: names.index(until) + 1],
                    evaluation_windows=evaluation if until == "evaluate" else never)
    assert steps(run_plan) == expected


def test_nothing_is_calibrated_or_read_without_a_mask_stage(pipeline_config):
    config = pipeline_config(stages={"calibrate": REMOVE, "score": {"method": "magnitude"},
                                     "mask": REMOVE, "evaluate": REMOVE},
                             gates={"perplexity": REMOVE})
    run_plan = plan(config, calibration_windows=never, evaluation_windows=never)
    assert run_plan.calibration is None and run_plan.uses == ()
    assert not run_plan.prunes_during_calibration
