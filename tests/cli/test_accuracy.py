"""lm-eval accuracy through the CLI on the tiny model and a tiny local task (tests/data/lm_eval,
4 items): the report fields, the table and chart, the accuracy gates (pass, fail with exit 3 and
a junit failure naming the task), the dense scores' cache (a second run hits), and the exit-4
paths (a hub task offline, lm-eval missing)."""

from __future__ import annotations

import builtins
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from helpers import invoke

TASKS_DIR = Path(__file__).parents[1] / "data" / "lm_eval"
TASK = "wanda_facts"
FIELDS = {"metric", "dense", "pruned", "recovery", "dense_stderr", "pruned_stderr", "n"}


def accuracy_pipeline(write_pipeline, workdir: Path, gates: dict | None = None,
                      tasks: list[str] | None = None, **lm_eval) -> Path:
    """The test pipeline with lm-eval on the local task (4 items) and an accuracy gate."""
    shutil.copytree(TASKS_DIR, workdir / "tasks", dirs_exist_ok=True)
    settings = {"tasks": tasks or [TASK], "limit": 4, "batch_size": 4, "include_path": "tasks",
                **lm_eval}
    return write_pipeline(stages={"evaluate": {"perplexity": True, "lm_eval": settings}},
                          gates={"accuracy": gates or {"max_drop": 1.0}})


def run(path: Path, out: Path, *extra: str):
    return invoke("run", str(path), "--out", str(out), "--quiet", *extra)


def test_report_fields_table_chart_and_the_dense_cache(write_pipeline, workdir):
    path = accuracy_pipeline(write_pipeline, workdir, gates={"max_drop": 1.0},
                             metric={TASK: "acc"})
    first = run(path, workdir / "out")
    assert first.exit_code == 0, first.output
    assert "loglikelihood" not in first.stderr and "num_fewshot" not in first.stderr  # --quiet
    report = json.loads((workdir / "out" / "report.json").read_text())
    scores = report["metrics"]["lm_eval"][TASK]
    assert set(scores) == FIELDS
    assert scores["metric"] == "acc" and scores["n"] == 4
    assert 0.0 <= scores["dense"] <= 1.0 and 0.0 <= scores["pruned"] <= 1.0
    if scores["dense"] > 0:
        assert scores["recovery"] == pytest.approx(scores["pruned"] / scores["dense"])
    assert scores["dense_stderr"] is not None and scores["dense_stderr"] >= 0.0
    stages = {stage["name"]: stage for stage in report["stages"]}
    assert stages["evaluate-dense-lm-eval"]["cache"] == "miss"
    assert {g["name"] for g in report["gates"]} >= {f"accuracy.{TASK}.max_drop"}
    summary = (workdir / "out" / "summary.md").read_text()
    assert "## Task accuracy (lm-eval)" in summary and f"`{TASK}`" in summary
    assert (workdir / "out" / "charts" / "accuracy.png").stat().st_size > 1000

    second = run(path, workdir / "out2")
    assert second.exit_code == 0, second.output
    again = json.loads((workdir / "out2" / "report.json").read_text())
    stages = {stage["name"]: stage for stage in again["stages"]}
    assert stages["evaluate-dense-lm-eval"]["cache"] == "hit"
    assert again["metrics"]["lm_eval"][TASK]["dense"] == scores["dense"]


def test_a_gate_the_pruned_model_cannot_meet_fails_naming_the_task(write_pipeline, workdir):
    gates = {"min_recovery": 0.01, "tasks": {TASK: {"min_recovery": 1000.0}}}
    path = accuracy_pipeline(write_pipeline, workdir, gates=gates)
    result = run(path, workdir / "out")
    assert result.exit_code == 3, result.output
    junit = ET.parse(workdir / "out" / "junit.xml").getroot()
    failed = {case.get("name"): case.find("failure").get("message")
              for case in junit.iter("testcase") if case.find("failure") is not None}
    name = f"accuracy.{TASK}.min_recovery"
    assert set(failed) == {name}
    assert TASK in failed[name] and "1000" in failed[name] and "stderr" in failed[name]


def test_a_hub_task_offline_and_not_cached_exits_4_naming_it(write_pipeline, workdir,
                                                               monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-datasets-cache"))
    path = accuracy_pipeline(write_pipeline, workdir, tasks=[TASK, "arc_easy"])
    result = run(path, workdir / "out")
    assert result.exit_code == 4, result.output
    assert "arc_easy" in result.output and "allenai/ai2_arc" in result.output
    assert "HF_HUB_OFFLINE" in result.output
    assert not (workdir / "out").exists()


def test_lm_eval_missing_exits_4_with_the_install_command(write_pipeline, workdir,
                                                          monkeypatch):
    real_import = builtins.__import__

    def no_lm_eval(name, *args, **kwargs):
        if name == "lm_eval" or name.startswith("lm_eval."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lm_eval)
    result = run(accuracy_pipeline(write_pipeline, workdir), workdir / "out")
    assert result.exit_code == 4, result.output
    assert "pip install 'wanda-export[eval]'" in result.output


def test_onnx_perplexity_is_reported_beside_pytorch_and_gated(write_pipeline, workdir):
    path = write_pipeline(
        stages={"evaluate": {"perplexity": True, "onnx_perplexity": True},
                "export": {"formats": ["safetensors", "onnx"], "parity": False}},
        gates={"perplexity": {"max_onnx_ratio_to_torch": 1.001}})
    result = run(path, workdir / "out")
    assert result.exit_code == 0, result.output
    report = json.loads((workdir / "out" / "report.json").read_text())
    perplexity = report["metrics"]["perplexity"]
    assert perplexity["onnx"] == pytest.approx(perplexity["pruned"], rel=1e-4)
    assert perplexity["onnx_ratio_to_torch"] == pytest.approx(
        perplexity["onnx"] / perplexity["pruned"])
    gate = next(g for g in report["gates"] if g["name"] == "perplexity.max_onnx_ratio_to_torch")
    assert gate["passed"] and gate["value"] == perplexity["onnx_ratio_to_torch"]
    assert "exported ONNX" in (workdir / "out" / "summary.md").read_text()


def test_plan_shows_the_dense_scores_entry_and_whether_it_is_cached(write_pipeline, workdir):
    path = accuracy_pipeline(write_pipeline, workdir)

    def dense_row() -> dict:
        result = invoke("plan", str(path), "--json")
        assert result.exit_code == 0, result.output
        return next(row for row in json.loads(result.stdout)["stages"]
                    if row["stage"] == "evaluate-dense-lm-eval")

    before = dense_row()
    assert before["cache"] == "miss"
    assert run(path, workdir / "out").exit_code == 0
    report = json.loads((workdir / "out" / "report.json").read_text())
    ran = next(s for s in report["stages"] if s["name"] == "evaluate-dense-lm-eval")
    assert dense_row() == {**before, "cache": "hit"} and ran["detail"]["key"] == before["key"]


def test_an_unknown_task_exits_2_before_any_work_suggesting_the_name(write_pipeline, workdir):
    result = run(accuracy_pipeline(write_pipeline, workdir, tasks=["wanda_fact"]),
                 workdir / "out")
    assert result.exit_code == 2, result.output
    assert "unknown lm-eval task 'wanda_fact'" in result.output
    assert "wanda_facts" in result.output and not (workdir / "out").exists()
