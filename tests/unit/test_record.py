"""The typed run record: stages write measurements by attribute (a misspelt one fails where it
is written), every gate is evaluated in one place from them, and `to_dict()` gives report.json's
shape with each measurement in its place."""

from __future__ import annotations

import pytest

from wanda_export.bench.compare import compare
from wanda_export.bench.runtimes import Availability
from wanda_export.bench.timing import LatencyStats
from wanda_export.config.gates import GatesConfig
from wanda_export.evaluate.parity import ParityResult
from wanda_export.export.onnx_verify import OnnxLayerCheck, OnnxVerification
from wanda_export.report import RunRecord, evaluate_gates
from wanda_export.report.metrics import (
    ArtifactSizes,
    FileSize,
    LatencyMetrics,
    LatencyRow,
    Metrics,
    OnnxFileCheck,
    PerplexityMetrics,
    SparsityRecord,
)
from wanda_export.sparsity.verify import LayerSparsity, SparsityReport

GOOD = LayerSparsity(zeros=8, numel=16, pattern="2:4", valid=True)
BAD = LayerSparsity(zeros=8, numel=16, pattern="2:4", valid=False, violating_groups=1)


def onnx_check(*, failing: bool) -> OnnxFileCheck:
    layers = {"a.q_proj": OnnxLayerCheck(None if failing else "w0", None if failing else
                                         "[in, out]", 0.5, not failing, 0, not failing),
              "a.k_proj": OnnxLayerCheck("w1", "[out, in]", 0.5, True, 0, True)}
    return OnnxFileCheck("onnx/model.onnx", "2:4", OnnxVerification(layers))


def verified_record(*layers: LayerSparsity) -> RunRecord:
    record = RunRecord(tool_version="test", config_digest="0")
    report = SparsityReport({f"a.{i}_proj": layer for i, layer in enumerate(layers)})
    record.sparsity = SparsityRecord("2:4", 0.5, report, verified=True)
    return record


def test_the_checks_then_the_configured_gates_come_from_one_place_in_order():
    record = verified_record(GOOD, BAD)
    record.metrics.onnx["onnx"] = onnx_check(failing=False)
    record.metrics.onnx["onnx-fp16"] = onnx_check(failing=True)
    gates = GatesConfig.model_validate({"sparsity": {"min": 0.5}})
    results = evaluate_gates(gates, record)
    assert [r.name for r in results] == ["verify", "onnx.sparsity", "onnx-fp16.sparsity",
                                         "sparsity.min"]
    verify, onnx, fp16, minimum = results
    assert (verify.passed, verify.value, verify.threshold) == (False, 1, 0)
    assert verify.message == "pattern 2:4 violated in: a.1_proj"
    assert (onnx.passed, onnx.value) == (True, 0)
    assert onnx.message == ("all 2 pruned weights found in onnx/model.onnx, 2:4 along K "
                            "(0 failures allowed)")
    assert not fp16.passed and fp16.value == 1
    assert fp16.message == "pruned weights missing or not 2:4 along K in: a.q_proj (no initializer)"
    assert minimum.passed and minimum.value == 0.5
    assert evaluate_gates(gates, record, configured=False) == results[:3]


def test_the_verify_gate_needs_the_verify_stage_and_an_empty_onnx_check_fails():
    record = verified_record(GOOD)
    assert [r.passed for r in evaluate_gates(GatesConfig(), record)] == [True]
    record.sparsity.verified = False  # only the mask stage measured it
    assert evaluate_gates(GatesConfig(), record) == []
    record.metrics.onnx["onnx"] = OnnxFileCheck("onnx/model.onnx", "2:4", OnnxVerification())
    (empty,) = evaluate_gates(GatesConfig(), record)
    assert not empty.passed and empty.value == 0  # no pruned linear found in the file


def test_a_misspelt_measurement_fails_where_it_is_written():
    record = RunRecord(tool_version="test", config_digest="0")
    with pytest.raises(AttributeError):
        record.metrics.perplexty = PerplexityMetrics(pruned=12.0)
    with pytest.raises(AttributeError):
        record.metrcs = Metrics()
    with pytest.raises(TypeError):
        record.metrics["perplexity"] = {"pruned": 12.0}
    with pytest.raises(TypeError):
        PerplexityMetrics(prunned=12.0)
    perplexity = record.metrics.perplexity = PerplexityMetrics()
    with pytest.raises(AttributeError):
        perplexity.prunned = 12.0
    gates = GatesConfig.model_validate({"perplexity": {"max": 20.0}})
    (missing,) = evaluate_gates(gates, record)
    assert not missing.passed and "missing" in missing.message
    perplexity.pruned = 12.0  # the gate reads the attribute the stage wrote
    (result,) = evaluate_gates(gates, record)
    assert result.passed and result.value == 12.0


def test_parity_gates_read_the_parity_result():
    record = RunRecord(tool_version="test", config_digest="0")
    gates = GatesConfig.model_validate({"parity": {"max_abs_diff": 0.01, "generation": True}})
    assert [r.passed for r in evaluate_gates(gates, record)] == [False, False]
    record.metrics.parity = ParityResult(0.001, 0.01, False, 4, 3, [2])
    diff, generation = evaluate_gates(gates, record)
    assert diff.passed and diff.value == 0.001
    assert not generation.passed and generation.value == "different"
    assert generation.message == "greedy generation differs on prompts [2]"


def stats(p50: float) -> LatencyStats:
    return LatencyStats(p50_ms=p50, p95_ms=p50 * 2, mean_ms=p50, min_ms=p50, iterations=2,
                        warmup=0)


def latency() -> LatencyMetrics:
    rows = [LatencyRow("onnxruntime-cpu", "dense", "decode:1x1@8", stats(2.0),
                       provider="CPUExecutionProvider"),
            LatencyRow("onnxruntime-cpu", "sparse", "decode:1x1@8", stats(1.0),
                       provider="CPUExecutionProvider"),
            LatencyRow("torch", "dense", "decode:1x1@8", stats(4.0), device="cpu",
                       dtype="float32")]
    comparison = compare({(r.runtime, r.shape): r.stats for r in rows if r.variant == "dense"},
                         {(r.runtime, r.shape): r.stats for r in rows if r.variant == "sparse"})
    runtime = Availability("torch", True, "available", "cpu", None, {"torch": "2"})
    return LatencyMetrics(threads=1, warmup=0, iterations=2, runtimes={"torch": runtime},
                          results=rows, comparison=comparison)


def test_to_dict_puts_each_measurement_in_its_report_json_place():
    record = RunRecord(tool_version="test", config_digest="0")
    assert record.to_dict()["metrics"] == {} and record.to_dict()["sparsity"] is None
    record.metrics.latency = latency()  # written out of stage order on purpose
    record.metrics.sizes = ArtifactSizes(64, {"model/model.safetensors": FileSize(64, 1.0)})
    record.metrics.perplexity = PerplexityMetrics(pruned=12.0, windows=4)
    record.sparsity = verified_record(GOOD).sparsity
    data = record.to_dict()
    assert list(data) == ["schema_version", "tool_version", "created", "config_digest", "config",
                          "versions", "host", "model", "plan",
                          "stages", "sparsity", "metrics", "latency", "gates", "artifacts",
                          "status", "exit_code"]
    assert list(data["sparsity"]) == ["pattern", "target", "overall", "valid", "layers"]
    assert list(data["metrics"]) == ["perplexity", "sizes", "latency"]
    assert data["metrics"]["perplexity"] == {"pruned": 12.0, "windows": 4}
    assert data["metrics"]["sizes"]["files"]["model/model.safetensors"] == {
        "bytes": 64, "ratio_to_dense": 1.0}
    measured = data["metrics"]["latency"]
    assert list(measured) == ["threads", "warmup", "iterations", "runtimes", "results",
                              "comparison"]
    onnx_row, _, torch_row = measured["results"]
    assert list(onnx_row) == ["runtime", "variant", "shape", "provider", "tokens_per_second",
                              "p50_ms", "p95_ms", "mean_ms", "min_ms", "iterations", "warmup",
                              "p25_ms", "p75_ms"]
    assert onnx_row["tokens_per_second"] == 500.0  # one token per decode step, 2 ms
    assert list(torch_row)[3:5] == ["device", "dtype"]
    assert measured["comparison"]["speedup"] == {"onnxruntime-cpu decode:1x1@8": 2.0,
                                                 "torch decode:1x1@8": None}
    assert measured["runtimes"]["torch"]["provider"] is None
    assert data["latency"] == measured["results"]  # the same rows, at the top level too
    assert data["latency"] is not measured["results"]
    record.metrics.latency = None
    assert "latency" not in record.to_dict()  # only when benchmarked
