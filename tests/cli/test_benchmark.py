"""The benchmark stage and every release gate through the CLI on the tiny model: one run where
each gate passes, one where each fails (exit 3, every failure listed in junit.xml), and a gate
on a runtime this machine cannot run (exit 4 before any work)."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET

import pytest
import torch
from helpers import invoke
from pipelines import merged

from wanda_export.bench.runtimes import runtime_availability

STAGES = {
    "export": {"formats": ["safetensors", "onnx"], "parity_tokens": 4},
    "benchmark": {"runtimes": ["onnxruntime-cpu", "torch", "torch-sparse24", "onnxruntime-cuda"],
                  "shapes": ["prefill:1x16", "decode:1x1@8"], "warmup": 1, "iterations": 3,
                  "threads": 1},
}
PASSING = {
    "parity": {"max_abs_diff": 0.01, "generation": True},
    "latency": {"runtime": "onnxruntime-cpu", "max_p50_ms": 60000, "min_speedup": 0.001},
}
FAILING = {
    "parity": {"max_abs_diff": 1.0e-12},
    "latency": {"runtime": "torch", "shape": "prefill:1x16", "max_p50_ms": 1.0e-6,
                "min_speedup": 1000},
}


def pipeline(write_pipeline, gates: dict, benchmark: dict | None = None, **settings):
    """The 2:4 pipeline with an ONNX export and the benchmark stage (`benchmark` overrides its
    settings), plus `gates`."""
    return write_pipeline(pattern="2:4", gates=gates,
                          stages=merged(STAGES, {"benchmark": benchmark or {}}), **settings)


@pytest.mark.skipif(runtime_availability("torch-sparse24").available,
                    reason="checks the report of a machine without 2:4 kernels")
def test_every_gate_passes_and_the_latency_is_reported(write_pipeline, workdir):
    out = workdir / "out"
    result = invoke("run", str(pipeline(write_pipeline, PASSING)), "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    gates = {g["name"]: g["passed"] for g in report["gates"]}
    assert gates == {name: True for name in (
        "sparsity.min", "sparsity.pattern", "perplexity.max_ratio_to_dense", "perplexity.max",
        "parity.max_abs_diff", "parity.generation", "latency.max_p50_ms", "latency.min_speedup",
        "verify", "onnx.sparsity")}
    latency = report["metrics"]["latency"]
    assert (latency["iterations"], latency["warmup"], latency["threads"]) == (3, 1, 1)
    measured = {(r["runtime"], r["variant"], r["shape"]) for r in latency["results"]}
    assert measured == {(runtime, variant, shape) for runtime in ("onnxruntime-cpu", "torch")
                        for variant in ("dense", "sparse")
                        for shape in ("prefill:1x16", "decode:1x1@8")}
    for row in latency["results"]:
        assert 0 < row["p50_ms"] <= row["p95_ms"] and row["iterations"] == 3
        if row["runtime"] == "onnxruntime-cpu":
            assert row["provider"] == "CPUExecutionProvider"
    speedups = latency["comparison"]["speedup"]
    assert set(speedups) == {f"{r} {s}" for r in ("onnxruntime-cpu", "torch")
                             for s in ("prefill:1x16", "decode:1x1@8")}
    assert all(value > 0 for value in speedups.values())
    runtimes = latency["runtimes"]
    assert not runtimes["torch-sparse24"]["available"] and runtimes["torch-sparse24"]["reason"]
    assert not runtimes["onnxruntime-cuda"]["available"]
    assert "CUDAExecutionProvider" in runtimes["onnxruntime-cuda"]["reason"]
    assert runtimes["onnxruntime-cpu"]["versions"]["onnxruntime"]
    summary = (out / "summary.md").read_text()
    assert "## Latency" in summary and "`torch-sparse24`: unavailable" in summary
    assert "charts/latency.png" in summary
    assert (out / "charts" / "latency.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "onnx" / "dense").exists()  # the dense twin is not an artifact


def test_every_gate_fails_at_once_with_exit_3(write_pipeline, workdir):
    path = pipeline(write_pipeline, FAILING, {"runtimes": ["torch"], "shapes": ["prefill:1x16"]},
                    gate_min=0.9, ppl_max=1.0, max_ratio=1.0)
    out = workdir / "out"
    result = invoke("run", str(path), "--out", str(out), "--quiet")
    assert result.exit_code == 3, result.output
    report = json.loads((out / "report.json").read_text())
    failed = {g["name"] for g in report["gates"] if not g["passed"]}
    assert failed == {"sparsity.min", "perplexity.max_ratio_to_dense", "perplexity.max",
                      "parity.max_abs_diff", "latency.max_p50_ms", "latency.min_speedup"}
    junit = ET.parse(out / "junit.xml").getroot()
    failing_cases = {case.get("name") for case in junit.iter("testcase")
                     if case.find("failure") is not None}
    assert failed <= failing_cases
    latency = next(g for g in report["gates"] if g["name"] == "latency.max_p50_ms")
    assert "torch prefill:1x16" in latency["message"]


@pytest.mark.parametrize("gate", [
    {"latency": {"runtime": "onnxruntime-cuda", "max_p50_ms": 10}},
    {"tensorrt": {"min_sparse_tactics": 1}},
], ids=["latency", "tensorrt"])
def test_a_gate_on_a_runtime_this_machine_lacks_exits_4(write_pipeline, workdir, gate):
    runtime = "onnxruntime-cuda" if "latency" in gate else "onnxruntime-tensorrt"
    if runtime_availability(runtime).available:
        pytest.skip(f"this machine has {runtime}")
    path = pipeline(write_pipeline, gate, {"runtimes": [runtime]})
    result = invoke("run", str(path), "--out", str(workdir / "out"), "--quiet")
    assert result.exit_code == 4
    assert runtime in result.output and "cannot run" in result.output
    assert not (workdir / "out").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_runtimes_measure_for_real(write_pipeline, workdir):  # pragma: no cover - GPU only
    path = pipeline(write_pipeline, {})
    result = invoke("run", str(path), "--out", str(workdir / "out"), "--quiet")
    assert result.exit_code == 0, result.output
    latency = json.loads((workdir / "out" / "report.json").read_text())["metrics"]["latency"]
    assert any(r["runtime"] == "torch-sparse24" for r in latency["results"])


def test_a_genai_runtime_on_an_export_without_genai_config_is_skipped_with_the_reason(
        write_pipeline, workdir, tiny_model_dir):
    shutil.copytree(tiny_model_dir("gpt2"), workdir / "gpt2")  # a family the builder lacks
    path = write_pipeline(
        pattern="2:4", model={"path": "gpt2"},
        stages={"export": {"formats": ["onnx"], "parity": False},
                "benchmark": {"runtimes": ["onnxruntime-genai"], "shapes": ["prefill:1x8"],
                              "warmup": 0, "iterations": 1, "threads": 1}})
    out = workdir / "out"
    result = invoke("run", str(path), "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    latency = json.loads((out / "report.json").read_text())["metrics"]["latency"]
    genai = latency["runtimes"]["onnxruntime-genai"]
    assert not genai["available"] and "has no genai_config.json" in genai["reason"]
    assert latency["results"] == []
    assert "`onnxruntime-genai`: unavailable (onnx/ has no genai_config.json" in (
        out / "summary.md").read_text()
