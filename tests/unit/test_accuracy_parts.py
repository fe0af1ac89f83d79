"""Accuracy gates over hand-built records, the dense-scores cache key, the builtin task's items,
lm-eval's results parsed into scores, and the settings' rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wanda_export.cache.keys import lm_eval_key
from wanda_export.config.gates import AccuracyGate, GatesConfig
from wanda_export.evaluate.builtin_task import (
    BUILTIN_TASK,
    CHOICES,
    task_items,
    write_builtin_task,
)
from wanda_export.evaluate.harness import (
    TaskScores,
    _scores,
    scores_from_tensors,
    scores_to_tensors,
)
from wanda_export.pipeline.accuracy import task_accuracy
from wanda_export.report import RunRecord, evaluate_gates, render_summary_md
from wanda_export.report.metrics import TaskAccuracy
from wanda_export.sparsity.verify import SparsityReport


def record_with(**tasks: TaskAccuracy) -> RunRecord:
    record = RunRecord(tool_version="0", config_digest="0" * 64)
    record.metrics.lm_eval.update(tasks)
    return record


def scores(dense: float, pruned: float, stderr: float | None = 0.02) -> TaskAccuracy:
    return TaskAccuracy("acc_norm", dense, pruned, pruned / dense, stderr, stderr, 100)


def gates(**accuracy) -> GatesConfig:
    return GatesConfig(accuracy=AccuracyGate.model_validate(accuracy))


@pytest.mark.parametrize(("pruned", "passed"), [(0.57, True), (0.56, False)])
def test_min_recovery_threshold_sides(pruned: float, passed: bool):
    (result,) = evaluate_gates(gates(min_recovery=0.95), record_with(arc=scores(0.6, pruned)))
    assert (result.name, result.passed, result.threshold) == ("accuracy.arc.min_recovery",
                                                              passed, 0.95)
    assert result.value == pytest.approx(pruned / 0.6)


def test_a_task_threshold_replaces_the_shared_one_and_the_other_still_applies():
    gate = gates(min_recovery=0.95, tasks={"boolq": {"max_drop": 0.02},
                                           "arc": {"min_recovery": 0.99}})
    record = record_with(arc=scores(0.6, 0.58), boolq=scores(0.7, 0.675))
    results = {r.name: r for r in evaluate_gates(gate, record)}
    assert set(results) == {"accuracy.arc.min_recovery", "accuracy.boolq.min_recovery",
                            "accuracy.boolq.max_drop"}
    assert results["accuracy.arc.min_recovery"].threshold == 0.99
    assert not results["accuracy.arc.min_recovery"].passed  # 0.967 < 0.99, passes 0.95
    assert results["accuracy.boolq.min_recovery"].passed
    assert not results["accuracy.boolq.max_drop"].passed
    assert results["accuracy.boolq.max_drop"].value == pytest.approx(0.025)


def test_a_failure_inside_one_stderr_says_within_noise_and_still_fails():
    (noisy,) = evaluate_gates(gates(max_drop=0.01), record_with(arc=scores(0.6, 0.58, 0.05)))
    (clear,) = evaluate_gates(gates(max_drop=0.01), record_with(arc=scores(0.6, 0.4, 0.05)))
    assert not noisy.passed and not clear.passed
    assert "within noise" in noisy.message and "within noise" not in clear.message
    for result in (noisy, clear):
        assert "arc acc_norm" in result.message and "0.0100" in result.message
        assert "stderr of the drop 0.0707" in result.message


def test_a_gated_task_without_a_score_fails_as_missing():
    results = evaluate_gates(gates(tasks={"arc": {"min_recovery": 0.9}}), record_with())
    assert [(r.name, r.passed, r.value) for r in results] == [
        ("accuracy.arc.min_recovery", False, None)]
    assert "missing measurement" in results[0].message


def test_recovery_is_undefined_when_dense_scores_zero():
    dense = TaskScores({"acc": 0.0}, {"acc": 0.0}, 4)
    pruned = TaskScores({"acc": 0.25}, {"acc": 0.25}, 4)
    measured = task_accuracy("acc", dense, pruned)
    assert measured.recovery is None
    (result,) = evaluate_gates(gates(min_recovery=0.5), record_with(t=measured))
    assert not result.passed and "undefined" in result.message


def test_the_reported_metric_is_acc_norm_else_acc_else_the_first():
    assert TaskScores({"acc": 0.5, "acc_norm": 0.6}, {}, 1).metric("t", None) == "acc_norm"
    assert TaskScores({"f1": 0.1, "acc": 0.5}, {}, 1).metric("t", None) == "acc"
    assert TaskScores({"f1": 0.1, "em": 0.2}, {}, 1).metric("t", None) == "f1"
    assert TaskScores({"f1": 0.1, "acc": 0.5}, {}, 1).metric("t", "f1") == "f1"
    with pytest.raises(Exception, match="reports no metric 'mcc'; it reports f1, acc"):
        TaskScores({"f1": 0.1, "acc": 0.5}, {}, 1).metric("t", "mcc")


def test_lm_eval_results_parse_and_round_trip_through_the_cache_entry():
    results = {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.75,
               "acc_norm_stderr,none": "N/A", "sample_len": 4}
    parsed = _scores(results, "t", 4)
    assert parsed == TaskScores({"acc": 0.5, "acc_norm": 0.75}, {"acc": 0.1, "acc_norm": None},
                                4)
    assert scores_from_tensors(scores_to_tensors({"t": parsed})) == {"t": parsed}


def test_summary_has_the_accuracy_table():
    text = render_summary_md(record_with(arc=scores(0.6, 0.45)))
    assert "## Task accuracy (lm-eval)" in text
    assert "| `arc` | acc_norm | 0.6000 ± 0.0200 | 0.4500 ± 0.0200 | 0.75 | 100 |" in text


KEY_FIELDS = {"model_fingerprint": "b" * 64, "dtype": "bfloat16",
              "tasks": [{"name": "t", "kind": "local", "version": 2, "digest": "d"}],
              "num_fewshot": 5, "limit": 10, "lm_eval_version": "0.4.14"}


@pytest.mark.parametrize("field", sorted(KEY_FIELDS))
def test_every_field_of_the_dense_scores_key_changes_it(field: str):
    base = {"model_fingerprint": "a" * 64, "dtype": "float32",
            "tasks": [{"name": "t", "kind": "local", "version": 1, "digest": "c"}],
            "num_fewshot": 0, "limit": None, "lm_eval_version": "0.4.13"}
    assert lm_eval_key(**base) != lm_eval_key(**{**base, field: KEY_FIELDS[field]})
    assert lm_eval_key(**base) == lm_eval_key(**json.loads(json.dumps(base)))


def test_the_task_digest_changes_the_key_and_task_order_does_not():
    one = {"name": "a", "kind": "builtin", "version": 1, "digest": "x"}
    two = {"name": "b", "kind": "hub", "version": 1, "digest": "y"}
    key = lm_eval_key("f", "float32", [one, two], 0, None, "v")
    assert key == lm_eval_key("f", "float32", [two, one], 0, None, "v")
    assert key != lm_eval_key("f", "float32", [{**one, "digest": "z"}, two], 0, None, "v")


def test_builtin_items_are_deterministic_per_seed_and_well_formed():
    items = task_items(0)
    assert items == task_items(0) and items != task_items(1)
    assert len(items) > 200
    for item in items:
        assert len(item["choices"]) == CHOICES == len(set(item["choices"]))
        assert 0 <= item["label"] < CHOICES
    contexts = [item["context"] for item in items]
    assert len(set(contexts)) == len(contexts)


def test_builtin_task_folder_is_content_addressed(tmp_path: Path):
    first = write_builtin_task(tmp_path, 0)
    again = write_builtin_task(tmp_path, 0)
    assert first == again and first.folder.name == first.digest
    config = json.loads((first.folder / f"{BUILTIN_TASK}.yaml").read_text())
    assert config["task"] == BUILTIN_TASK and config["output_type"] == "multiple_choice"
    data = config["dataset_kwargs"]["data_files"]["test"]
    assert len(Path(data).read_text().splitlines()) == first.items
    assert write_builtin_task(tmp_path, 1).digest != first.digest


def test_the_settings_refuse_what_they_cannot_do():
    from pydantic import ValidationError

    from wanda_export.config.nested import LmEvalSettings

    with pytest.raises(ValidationError, match="task 'boolq' is not in tasks"):
        LmEvalSettings(tasks=["arc_easy"], metric={"boolq": "acc"})
    with pytest.raises(ValidationError, match="listed twice"):
        LmEvalSettings(tasks=["arc_easy", "arc_easy"])
    with pytest.raises(ValidationError):
        LmEvalSettings(tasks=[])
    with pytest.raises(ValidationError, match="at least one of min_recovery, max_drop, tasks"):
        AccuracyGate()
    assert SparsityReport  # the gates module's other inputs stay importable beside these


def test_the_cross_section_rules_point_at_their_keys(tmp_path: Path):
    import textwrap

    from wanda_export.config import load_config
    from wanda_export.errors import ConfigError

    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent("""\
        version: 1
        stages:
          - evaluate: {onnx_perplexity: true, lm_eval: {tasks: [arc_easy]}}
        gates:
          accuracy: {min_recovery: 0.9, tasks: {boolq: {max_drop: 0.02}}}
          perplexity: {max_onnx_ratio_to_torch: 1.01}
    """))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = {p["path"]: p["message"] for p in caught.value.problems}
    assert "export stage with format 'onnx'" in problems["stages -> evaluate -> onnx_perplexity"]
    assert "task 'boolq' is not evaluated" in problems["gates -> accuracy -> tasks -> boolq"]
    path.write_text("version: 1\nstages:\n  - evaluate: {}\ngates:\n  accuracy: "
                    "{min_recovery: 0.9}\n  perplexity: {max_onnx_ratio_to_torch: 1.01}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = {p["path"]: p["message"] for p in caught.value.problems}
    assert "needs an evaluate stage with lm_eval" in problems["gates -> accuracy"]
    assert "set onnx_perplexity: true" in problems[
        "gates -> perplexity -> max_onnx_ratio_to_torch"]
