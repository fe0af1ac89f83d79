"""Whole pipelines with the model streamed layer by layer: the same release as in memory."""

from __future__ import annotations

import glob
import json

import pytest
import torch
from helpers import invoke
from pipelines import REMOVE, pipeline_data, write_pipeline_file
from safetensors.torch import load_file


def _pipeline(workdir, name, *, streaming, score="wanda", mode="sequential", mask=None,
              formats=("safetensors",), gates=None, budget=None):
    model = {"streaming": streaming} | ({"memory_budget": budget} if budget else {})
    mask = mask or {"pattern": "2:4"}
    data = pipeline_data(mode=mode, pattern=mask.get("pattern", "unstructured"), model=model,
                         stages={"score": {"method": score}, "mask": mask,
                                 "export": {"formats": list(formats)}},
                         gates={"sparsity": REMOVE, "perplexity": REMOVE, **(gates or {})})
    return write_pipeline_file(workdir / f"{name}.yaml", data)


def _run(path, out, code=0):
    result = invoke("run", str(path), "--out", str(out), "--quiet")
    assert result.exit_code == code, result.stdout + result.stderr
    return result


def _weights(folder):
    tensors = {}
    for file in sorted(glob.glob(f"{folder}/model/*.safetensors")):
        tensors.update(load_file(file))
    return tensors


@pytest.mark.parametrize(("score", "mode", "mask"), [
    ("wanda", "sequential", {"pattern": "2:4"}),
    ("sparsegpt", "dense", {"sparsity": 0.5}),
    ("magnitude", "dense", {"sparsity": 0.6, "allocation": "owl"}),
])
def test_streamed_release_equals_the_in_memory_one(workdir, score, mode, mask):
    reports = {}
    for streaming in (False, True):
        out = workdir / f"out-{streaming}"
        _run(_pipeline(workdir, f"p-{streaming}", streaming=streaming, score=score, mode=mode,
                       mask=mask), out)
        reports[streaming] = json.loads((out / "report.json").read_text())
    memory, streamed = reports[False], reports[True]
    assert (memory["model"]["memory"]["mode"], streamed["model"]["memory"]["mode"]) == (
        "in-memory", "streaming")
    assert streamed["metrics"]["perplexity"] == memory["metrics"]["perplexity"]
    assert streamed["sparsity"]["layers"] == memory["sparsity"]["layers"]
    a, b = _weights(workdir / "out-False"), _weights(workdir / "out-True")
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    stages = {s["name"]: s["detail"] for s in streamed["stages"]}
    assert stages["verify"]["streamed"] and stages["mask"]["pruned_during"] in ("calibrate",
                                                                                "mask")


def test_streamed_onnx_is_built_from_the_shards_as_in_memory(workdir):
    """A streamed run exports ONNX through onnxruntime-genai's builder from its written
    shards and verifies it in the file: the same bytes as the in-memory run's export."""
    reports = {}
    for streaming in (False, True):
        out = workdir / f"onnx-{streaming}"
        _run(_pipeline(workdir, f"onnx-{streaming}", streaming=streaming,
                       formats=("safetensors", "onnx")), out)
        reports[streaming] = json.loads((out / "report.json").read_text())
    streamed = reports[True]
    export = next(s for s in streamed["stages"] if s["name"] == "export")["detail"]
    assert export["onnx_exporter"] == "genai" and "parity_skipped" in export
    check = streamed["metrics"]["onnx"]["onnx"]
    assert check["valid"] and check["layers"] == len(streamed["sparsity"]["layers"])
    files = [workdir / f"onnx-{streaming}" / "onnx" / "model.onnx.data" for streaming in
             (False, True)]
    assert files[0].read_bytes() == files[1].read_bytes()


def test_streaming_skips_what_needs_the_whole_model(workdir):
    out = workdir / "out"
    path = _pipeline(workdir, "onnx", streaming=True, formats=("safetensors", "onnx"))
    text = path.read_text().replace("formats:", "onnx_exporter: torch\n    formats:", 1)
    path.write_text(text)
    _run(path, out)
    report = json.loads((out / "report.json").read_text())
    export = next(s for s in report["stages"] if s["name"] == "export")
    assert "onnx" in export["detail"]["skipped"] and not (out / "onnx").exists()
    assert (out / "model" / "pruning.json").exists()


def test_a_gate_that_needs_the_whole_model_exits_4_before_any_work(workdir):
    path = _pipeline(workdir, "parity", streaming=True, formats=("safetensors", "onnx"),
                     gates={"parity": {"max_abs_diff": 0.001}})
    result = _run(path, workdir / "out", code=4)
    assert "gates parity need the ONNX export" in " ".join(result.stderr.split())
    assert not (workdir / "out").exists()


def test_a_budget_the_run_cannot_fit_exits_4_with_the_numbers(workdir):
    path = _pipeline(workdir, "small", streaming=False, budget="600MiB")
    result = _run(path, workdir / "out", code=4)
    message = " ".join(result.stderr.split())
    assert "in memory" in message and "budget is 0.59 GiB (model.memory_budget)" in message
    assert not (workdir / "out").exists()


def test_a_streamed_verify_only_pipeline_checks_the_input_checkpoint(workdir):
    data = pipeline_data(model={"streaming": True},
                         stages={"calibrate": REMOVE, "score": REMOVE, "mask": REMOVE,
                                 "export": REMOVE},
                         gates={"sparsity": REMOVE, "perplexity": REMOVE})
    out = workdir / "out"
    _run(write_pipeline_file(workdir / "verify.yaml", data), out)
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["memory"]["mode"] == "streaming"
    assert report["sparsity"]["overall"] == 0.0 and not (out / "model").exists()
    assert report["metrics"]["perplexity"]["pruned"] == report["metrics"]["perplexity"]["dense"]


@pytest.mark.parametrize(("score", "mode", "mask", "entry"), [
    ("wanda", "sequential", {"sparsity": 0.5, "allocation": "owl"}, "dense_statistics"),
    ("wanda", "dense", {"sparsity": 0.5, "allocation": "owl"}, "dense_statistics"),
    ("magnitude", "dense", {"sparsity": 0.5, "allocation": "alphapruning"}, "alphas"),
])
def test_a_streamed_allocation_shares_the_in_memory_runs_cache_entries(workdir, score, mode,
                                                                       mask, entry):
    details = {}
    for streaming in (False, True):
        out = workdir / f"out-{streaming}"
        _run(_pipeline(workdir, f"p-{streaming}", streaming=streaming, score=score, mode=mode,
                       mask=mask), out)
        report = json.loads((out / "report.json").read_text())
        details[streaming] = next(s for s in report["stages"] if s["name"] == "mask")["detail"]
    if mode == "sequential" or score == "magnitude":  # a dense-mode run reuses its own pass
        assert details[False]["cache"][entry] == "miss"
    assert details[True]["cache"][entry] == "hit"
    a, b = _weights(workdir / "out-False"), _weights(workdir / "out-True")
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_lm_eval_is_not_run_streamed_and_an_accuracy_gate_exits_4(workdir):
    tasks = {"tasks": ["wanda_facts"], "include_path": "tasks", "limit": 2}
    data = pipeline_data(model={"streaming": True}, stages={"evaluate": {"lm_eval": tasks}},
                         gates={"sparsity": REMOVE, "perplexity": REMOVE})
    result = _run(write_pipeline_file(workdir / "lm.yaml", data), workdir / "out")
    report = json.loads((workdir / "out" / "report.json").read_text())
    evaluate = next(stage for stage in report["stages"] if stage["name"] == "evaluate")
    assert evaluate["detail"]["lm_eval"].startswith("not run: lm-eval needs the whole model")
    assert "lm_eval" not in report["metrics"] and result.exit_code == 0
    gated = pipeline_data(model={"streaming": True}, stages={"evaluate": {"lm_eval": tasks}},
                          gates={"sparsity": REMOVE, "perplexity": REMOVE,
                                 "accuracy": {"min_recovery": 0.5}})
    result = _run(write_pipeline_file(workdir / "gated.yaml", gated), workdir / "out2", code=4)
    assert "gates accuracy need" in " ".join(result.stderr.split())
