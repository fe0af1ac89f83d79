"""The wanda-export CLI: one test per exit code, outputs, cache reuse, determinism."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from helpers import invoke
from pipelines import REMOVE

from wanda_export.cache.store import PIPELINE_KINDS


def test_run_passes_and_writes_every_output(write_pipeline, workdir):
    out = workdir / "out"
    result = invoke("run", str(write_pipeline(pattern="2:4")), "--out", str(out), "--json", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "passed" and report["exit_code"] == 0
    assert report["schema_version"] == 1 and report["config_digest"]
    assert [s["name"] for s in report["stages"]] == [
        "load", "evaluate-dense", "calibrate", "score", "mask", "verify", "evaluate", "export"]
    assert report["sparsity"]["overall"] == pytest.approx(0.5)
    assert all(layer["valid"] and layer["pattern"] == "2:4"
               for layer in report["sparsity"]["layers"].values())
    assert set(report["metrics"]["perplexity"]) >= {"dense", "pruned"}
    assert {g["name"] for g in report["gates"]} >= {"sparsity.min", "sparsity.pattern",
                                                     "perplexity.max_ratio_to_dense", "verify"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert any(a["path"] == "model/model.safetensors" for a in manifest["artifacts"])
    assert ET.parse(out / "junit.xml").getroot().find(".//testcase") is not None
    assert "sparsity.min" in (out / "summary.md").read_text()
    assert (out / "model" / "pruning.json").exists()
    assert not list(workdir.glob(".out.partial-*"))


def test_gate_failure_exits_3_with_junit_failure(write_pipeline, workdir):
    out = workdir / "out"
    result = invoke("run", str(write_pipeline(ppl_max=1.0)), "--out", str(out), "--quiet",
                    "--json")
    assert result.exit_code == 3
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and report["exit_code"] == 3
    printed = json.loads(result.stdout)  # the report, with the error object added
    assert printed.pop("error") == {"exit_code": 3, "kind": "gate", "hint": None, "locations": [],
                                    "message": "1 gate(s) failed: perplexity.max"}
    assert printed == report
    failures = ET.parse(out / "junit.xml").getroot().findall(".//failure")
    assert len(failures) == 1


def test_bad_config_exits_2_naming_the_key(write_pipeline, workdir):
    path = write_pipeline(sparsity=1.2)
    result = invoke("validate", str(path))
    assert result.exit_code == 2
    assert "stages -> mask -> sparsity" in result.output


def test_validate_accepts_a_good_file(write_pipeline):
    result = invoke("validate", str(write_pipeline()), "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["valid"] is True


def test_missing_gpu_exits_4(write_pipeline, workdir):
    path = write_pipeline(model={"device": "cuda"})
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = invoke("run", str(path), "--out", str(workdir / "out"), "--quiet")
    assert result.exit_code == 4
    assert not (workdir / "out").exists()


def test_internal_error_exits_1_and_leaves_nothing(write_pipeline, workdir, monkeypatch):
    from wanda_export.pipeline import stages

    def broken(ctx):
        raise RuntimeError("a bug")

    monkeypatch.setitem(stages.STAGES, "verify", broken)
    result = invoke("run", str(write_pipeline()), "--out", str(workdir / "out"), "--quiet",
                    "--json")
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "internal" and error["message"] == "internal error: RuntimeError: a bug"
    assert not (workdir / "out").exists() and not list(workdir.glob(".out.partial-*"))


def test_interrupt_exits_130_and_keeps_the_previous_release(write_pipeline, workdir, monkeypatch):
    out = workdir / "out"
    assert invoke("run", str(write_pipeline()), "--out", str(out), "--quiet").exit_code == 0
    before = (out / "manifest.json").read_text()
    from wanda_export.pipeline import stages

    def interrupted(ctx):
        raise KeyboardInterrupt

    monkeypatch.setitem(stages.STAGES, "export", interrupted)
    result = invoke("run", str(write_pipeline(sparsity=0.6, gate_min=0.6)), "--out", str(out),
                    "--quiet")
    assert result.exit_code == 130
    assert (out / "manifest.json").read_text() == before
    assert not list(workdir.glob(".out.partial-*"))


def test_dense_rerun_with_new_sparsity_hits_the_cache(write_pipeline, workdir, monkeypatch):
    first = invoke("run", str(write_pipeline()), "--out", str(workdir / "a"), "--json", "--quiet")
    assert first.exit_code == 0
    from wanda_export.calibrate import dense

    def no_forward(*args, **kwargs):
        raise AssertionError("calibration forward pass on a cache hit")

    monkeypatch.setattr(dense, "collect_dense", no_forward)
    monkeypatch.setattr("wanda_export.pipeline.allocation.collect_dense", no_forward)
    second = invoke("run", str(write_pipeline(sparsity=0.75, gate_min=0.75)), "--out",
                    str(workdir / "b"), "--json", "--quiet")
    assert second.exit_code == 0, second.output
    stages = {s["name"]: s for s in json.loads(second.stdout)["stages"]}
    assert stages["calibrate"]["cache"] == "hit"
    assert stages["evaluate-dense"]["cache"] == "hit"
    assert json.loads(second.stdout)["sparsity"]["overall"] == pytest.approx(0.75)


def test_sequential_hit_gives_the_same_weights_as_the_miss(write_pipeline, workdir):
    path = write_pipeline(mode="sequential")
    assert invoke("run", str(path), "--out", str(workdir / "a"), "--quiet").exit_code == 0
    assert invoke("run", str(path), "--out", str(workdir / "b"), "--json", "--quiet").exit_code == 0
    report = json.loads((workdir / "b" / "report.json").read_text())
    assert {s["name"]: s["cache"] for s in report["stages"]}["calibrate"] == "hit"
    assert (workdir / "a" / "manifest.json").read_text() == (workdir / "b" / "manifest.json").read_text()


def test_same_inputs_give_byte_identical_artifacts(write_pipeline, workdir, monkeypatch, tmp_path):
    path = write_pipeline(pattern="2:4")
    assert invoke("run", str(path), "--out", str(workdir / "a"), "--quiet").exit_code == 0
    monkeypatch.setenv("WANDA_EXPORT_CACHE", str(tmp_path / "other-cache"))  # recompute all
    assert invoke("run", str(path), "--out", str(workdir / "b"), "--quiet").exit_code == 0
    first = json.loads((workdir / "a" / "manifest.json").read_text())
    second = json.loads((workdir / "b" / "manifest.json").read_text())
    assert first == second and len(first["artifacts"]) > 3


def test_plan_reports_cache_state(write_pipeline, workdir):
    path = write_pipeline()
    planned = json.loads(invoke("plan", str(path), "--json").stdout)
    rows = planned["stages"]
    assert {r["stage"]: r["cache"] for r in rows}["calibrate"] == "miss"
    assert planned["memory"]["mode"] == "in-memory" and planned["memory"]["budget_bytes"] > 0
    assert invoke("calibrate", str(path), "--out", str(workdir / "c"), "--quiet").exit_code == 0
    rows = json.loads(invoke("plan", str(path), "--json").stdout)["stages"]
    assert {r["stage"]: r["cache"] for r in rows}["calibrate"] == "hit"


def test_stage_command_needs_that_stage(write_pipeline, workdir):
    path = write_pipeline(stages={"export": REMOVE})
    result = invoke("export", str(path), "--out", str(workdir / "x"))
    assert result.exit_code == 2 and "no 'export' stage" in result.output


def test_cache_ls_and_clear(write_pipeline, workdir):
    assert invoke("calibrate", str(write_pipeline()), "--out", str(workdir / "c"), "--quiet").exit_code == 0
    rows = json.loads(invoke("cache", "ls", "--json").stdout)
    assert {row["kind"] for row in rows} >= {"calibration"}
    assert {row["kind"] for row in rows} <= set(PIPELINE_KINDS)  # what `clear --kind` knows
    calibration = [row for row in rows if row["kind"] == "calibration"]
    cleared = json.loads(invoke("cache", "clear", "--kind", "calibration", "--json").stdout)
    assert cleared["removed"] == len(calibration)
    rows = json.loads(invoke("cache", "ls", "--json").stdout)
    assert json.loads(invoke("cache", "clear", "--json").stdout)["removed"] == len(rows)
    assert json.loads(invoke("cache", "ls", "--json").stdout) == []


def test_exported_checkpoint_loads_with_transformers(write_pipeline, workdir):
    import torch
    from transformers import AutoModelForCausalLM

    from wanda_export.export.safetensors import read_plan

    out = workdir / "out"
    assert invoke("run", str(write_pipeline(pattern="2:4")), "--out", str(out), "--quiet").exit_code == 0
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    weight = model.model.layers[0].mlp.down_proj.weight
    assert (weight == 0).float().mean().item() == pytest.approx(0.5)
    assert ((weight.reshape(-1, 4) != 0).sum(1) <= 2).all()
    plan = read_plan(out / "model")
    assert plan["pattern"] == "2:4" and plan["method"] == "wanda"
    assert "sparsity_config" not in json.loads((out / "model" / "config.json").read_text())
    assert torch.isfinite(model(torch.tensor([[5, 6, 7]])).logits).all()


def _passing_release(path, out):
    """Run the pipeline at `path` into `out` (exit 0 asserted): its report and gates by name."""
    result = invoke("run", str(path), "--out", str(out), "--json", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    return report, {g["name"]: g for g in report["gates"]}


def test_onnx_release_is_verified_in_the_file_and_parity_gated(write_pipeline, workdir):
    path = write_pipeline(
        pattern="2:4",
        stages={"export": {"formats": ["safetensors", "onnx", "onnx-fp16", "tensorrt"],
                           "parity_tokens": 8}},
        gates={"parity": {"max_abs_diff": 0.001, "generation": True}})
    out = workdir / "out"
    report, gates = _passing_release(path, out)
    assert gates["onnx.sparsity"]["passed"] and gates["onnx-fp16.sparsity"]["passed"]
    assert gates["parity.max_abs_diff"]["passed"] and gates["parity.generation"]["passed"]
    assert report["metrics"]["parity"]["generation_match"] is True
    assert report["metrics"]["onnx"]["onnx"]["layouts"] == ["[in, out]"]
    paths = {a["path"] for a in report["artifacts"]}
    assert {"onnx/model.onnx", "onnx/model.fp16.onnx", "onnx/tensorrt.json"} <= paths
    sizes = report["metrics"]["sizes"]["files"]
    assert sizes["model/model.safetensors"]["ratio_to_dense"] == pytest.approx(1.0, abs=0.05)
    assert sizes["onnx/model.fp16.onnx"]["bytes"] < sizes["onnx/model.onnx"]["bytes"]
    recipe = json.loads((out / "onnx" / "tensorrt.json").read_text())
    assert "--sparsity=enable" in recipe["trtexec"] and len(recipe["eligible_layers"]) == 14
    assert recipe["onnx"] == "model.fp16.onnx" and "--fp16" not in recipe["trtexec"]


def test_ria_with_permutation_dsnot_and_admm_exports_verified_2_4_with_parity(write_pipeline,
                                                                                workdir):
    path = write_pipeline(
        pattern="2:4",
        stages={"score": {"method": "ria", "exponent": 1.0},
                "mask": {"permute": True, "refine": "dsnot", "refine_exclude": [],
                         "update": "admm", "update_iterations": 10},
                "export": {"formats": ["safetensors", "onnx"], "parity_tokens": 8}},
        gates={"parity": {"max_abs_diff": 0.001, "generation": True}})
    out = workdir / "out"
    report, gates = _passing_release(path, out)
    assert gates["onnx.sparsity"]["passed"] and gates["parity.generation"]["passed"]
    assert report["sparsity"]["valid"] and report["sparsity"]["permutation"]["linears"] == 4
    stages = {s["name"]: s["detail"] for s in report["stages"]}
    assert stages["score"] == {"method": "ria", "group": "layer", "exponent": 1.0}
    assert stages["mask"]["permute"] is True and stages["mask"]["refine"]["method"] == "dsnot"
    plan = json.loads((out / "model" / "pruning.json").read_text())
    assert (plan["method"], plan["score_settings"], plan["permute"]) == (
        "ria", {"exponent": 1.0}, True)
    assert plan["refine"]["refine_exclude"] == []
    assert plan["update"] == stages["mask"]["update"] == report["plan"]["update"] == {
        "method": "admm", "update_iterations": 10}
    card = (out / "model" / "README.md").read_text()
    assert "| mask refinement | dsnot |" in card and "| weight update | admm |" in card
    assert "| N:M channel permutation | folded into the weights |" in card


def test_a_parity_gate_that_fails_exits_3(write_pipeline, workdir):
    path = write_pipeline(pattern="2:4",
                          stages={"export": {"formats": ["onnx"], "parity_tokens": 4}},
                          gates={"parity": {"max_abs_diff": 1.0e-12}})
    result = invoke("run", str(path), "--out", str(workdir / "out"), "--json", "--quiet")
    assert result.exit_code == 3
    gate = next(g for g in json.loads(result.stdout)["gates"] if g["name"] == "parity.max_abs_diff")
    assert not gate["passed"] and gate["threshold"] == 1e-12


def test_a_verify_only_pipeline_checks_a_checkpoint_it_does_not_prune(workdir):
    path = workdir / "verify.yaml"
    path.write_text("version: 1\nmodel: {path: model, device: cpu}\n"
                    "data: {calibration: null, evaluation: null}\n"
                    "stages:\n  - score: {method: magnitude}\n  - verify: {}\n"
                    "gates:\n  sparsity: {min: 0.5}\n")
    result = invoke("run", str(path), "--out", str(workdir / "out"), "--json", "--quiet")
    assert result.exit_code == 3, result.output  # a dense checkpoint: the gate fails, no crash
    report = json.loads(result.stdout)
    assert report["sparsity"]["pattern"] == "unstructured" and report["sparsity"]["target"] is None
    assert {s["name"]: s["status"] for s in report["stages"]}["score"] == "skipped"
    assert not next(g for g in report["gates"] if g["name"] == "sparsity.min")["passed"]


def test_onnx_release_through_the_genai_exporter(write_pipeline, workdir):
    """Without safetensors and tensorrt, auto picks onnxruntime-genai's builder (fed a
    temporary checkpoint, removed afterwards); the report says which exporter ran and why."""
    path = write_pipeline(
        pattern="2:4",
        stages={"export": {"formats": ["onnx", "onnx-fp16"], "parity_tokens": 8}},
        gates={"parity": {"max_abs_diff": 0.001, "generation": True}})
    out = workdir / "out"
    result = invoke("run", str(path), "--out", str(out), "--json", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    export = next(stage for stage in report["stages"] if stage["name"] == "export")
    assert export["detail"]["onnx_exporter"] == "genai"
    onnx_checks = report["metrics"]["onnx"]
    assert onnx_checks["onnx"]["exporter"] == onnx_checks["onnx-fp16"]["exporter"] == "genai"
    assert onnx_checks["onnx"]["valid"] and onnx_checks["onnx"]["packed_layers"] > 0
    assert report["metrics"]["parity"]["genai_generation_match"] is True
    assert {"genai_config.json", "model.onnx", "model.onnx.data", "model.fp16.onnx"} <= {
        p.name for p in (out / "onnx").iterdir()}
    assert not (out / "model").exists() and not (out / ".onnx-source").exists()
