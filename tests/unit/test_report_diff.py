"""The diff of two run reports, computed by hand on small reports."""

from __future__ import annotations

import json

import pytest

from wanda_export.errors import ConfigError
from wanda_export.report.diff import diff_reports, direction, load_report, render_diff_md


def _report(ppl: float, sparsity: float, passed: bool, speedup: float = 1.0) -> dict:
    return {
        "schema_version": 1, "status": "passed" if passed else "failed",
        "exit_code": 0 if passed else 3, "model": {"source": "m"},
        "plan": {"method": "wanda", "sparsity": sparsity, "pattern": "unstructured"},
        "sparsity": {"overall": sparsity},
        "metrics": {
            "perplexity": {"dense": 10.0, "pruned": ppl, "windows": 4},
            "parity": {"generation_match": True, "mismatched_prompts": []},
            "latency": {"comparison": {"rows": [
                {"runtime": "torch", "shape": "prefill:1x8", "dense_p50_ms": 2.0,
                 "sparse_p50_ms": 2.0 / speedup, "speedup": speedup}]}},
        },
        "gates": [{"name": "perplexity.max", "passed": passed, "value": ppl, "threshold": 15.0,
                   "message": "m"}],
    }


def test_metrics_gates_and_plan_side_by_side_with_deltas():
    diff = diff_reports(_report(12.0, 0.5, True, 1.0), _report(18.0, 0.6, False, 1.25))
    metrics = {row["name"]: row for row in diff["metrics"]}
    assert metrics["perplexity.pruned"] == {
        "name": "perplexity.pruned", "old": 12.0, "new": 18.0, "delta": 6.0, "relative": 0.5,
        "verdict": "worse"}
    assert metrics["perplexity.dense"]["verdict"] == "same"
    assert metrics["sparsity.overall"]["delta"] == pytest.approx(0.1)
    speedup = metrics["latency.comparison.rows.torch prefill:1x8.speedup"]
    assert speedup["delta"] == pytest.approx(0.25) and speedup["verdict"] == "better"
    assert metrics["latency.comparison.rows.torch prefill:1x8.sparse_p50_ms"]["verdict"] == "better"
    assert "parity.mismatched_prompts" not in metrics  # lists of facts are not quantities
    assert metrics["parity.generation_match"]["verdict"] == "same"
    assert diff["gates"] == [{"name": "perplexity.max", "verdict": "broken", "message": "m",
                              "old": {"passed": True, "value": 12.0, "threshold": 15.0},
                              "new": {"passed": False, "value": 18.0, "threshold": 15.0}}]
    plan = {row["name"]: row for row in diff["plan"]}
    assert plan["sparsity"]["old"] == 0.5 and plan["sparsity"]["new"] == 0.6
    assert plan["method"]["verdict"] == "same"
    assert diff["regressions"] == ["perplexity.pruned", "perplexity.max"]
    assert diff["old"]["status"] == "passed" and diff["new"]["exit_code"] == 3


def test_added_and_removed_rows_and_a_fixed_gate():
    old, new = _report(18.0, 0.5, False), _report(12.0, 0.5, True)
    new["metrics"]["lm_eval"] = {"arc_easy": {"pruned": 0.4, "recovery": 0.9}}
    del new["metrics"]["parity"]
    diff = diff_reports(old, new)
    metrics = {row["name"]: row for row in diff["metrics"]}
    assert metrics["lm_eval.arc_easy.pruned"]["verdict"] == "added"
    assert metrics["parity.generation_match"]["verdict"] == "removed"
    assert diff["gates"][0]["verdict"] == "fixed" and diff["regressions"] == []


@pytest.mark.parametrize(("name", "better"), [
    ("perplexity.pruned", "lower"), ("perplexity.ratio_to_dense", "lower"),
    ("latency.comparison.speedup.torch prefill:1x8", "higher"), ("lm_eval.boolq.pruned", "higher"),
    ("lm_eval.boolq.recovery", "higher"), ("parity.max_abs_diff", "lower"),
    ("perplexity.windows", None)])
def test_which_way_is_better(name, better):
    assert direction(name) == better


def test_markdown_has_a_table_per_section():
    text = render_diff_md(diff_reports(_report(12.0, 0.5, True), _report(18.0, 0.5, True)))
    assert "### Metrics" in text and "### Gates" in text and "### Plan" in text
    assert "| perplexity.pruned | 12 | 18 | +6 (+50.0%) ⚠️ |" in text


def test_load_report_refuses_what_is_not_a_report(tmp_path):
    with pytest.raises(ConfigError, match="holds no report.json"):
        load_report(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_report(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="cannot read"):
        load_report(tmp_path / "bad.json")
    (tmp_path / "sweep.json").write_text(json.dumps({"kind": "sweep", "variants": []}))
    with pytest.raises(ConfigError, match="a sweep's comparison"):
        load_report(tmp_path / "sweep.json")
    (tmp_path / "report.json").write_text(json.dumps(_report(1.0, 0.5, True)))
    assert load_report(tmp_path)["plan"]["sparsity"] == 0.5
