"""Benchmark stage parts without a run: the dense twin of an ONNX export, the TensorRT build-log
parser and native stderr capture, and the latency / TensorRT gate verdicts on records."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from wanda_export.bench.compare import ComparisonRow
from wanda_export.bench.dense_twin import write_dense_twin
from wanda_export.bench.tensorrt_log import SparseTactics, captured_stderr, parse_sparse_tactics
from wanda_export.config.gates import GatesConfig
from wanda_export.evaluate.parity import onnx_session, onnx_step
from wanda_export.export.onnx import export_onnx
from wanda_export.export.onnx_verify import verify_onnx
from wanda_export.model.layers import find_targets, weight_out_in
from wanda_export.prune import PruneSpec, prune_model
from wanda_export.report.gates import evaluate_gates
from wanda_export.report.metrics import LatencyMetrics
from wanda_export.report.record import RunRecord
from wanda_export.sparsity.pattern import parse_pattern

TRT_LOG = """\
[11/22/2026-10:00:01] [TRT] [I] (Sparsity) Layers eligible for sparse math: /q_proj/MatMul, /k_proj/MatMul, /up_proj/MatMul
[11/22/2026-10:00:09] [TRT] [I] (Sparsity) TRT inference plan picked sparse implementation for layers: /up_proj/MatMul
[11/22/2026-10:00:12] [TRT] [I] (Sparsity) Layers eligible for sparse math: /down_proj/MatMul
[11/22/2026-10:00:13] [TRT] [I] (Sparsity) TRT inference plan picked sparse implementation for layers: /down_proj/MatMul
"""


def test_sparse_tactics_are_counted_over_every_engine():
    found = parse_sparse_tactics(TRT_LOG)
    assert (found.eligible_layers, found.sparse_tactics) == (4, 2)
    assert found.picked == ("/up_proj/MatMul", "/down_proj/MatMul")
    assert parse_sparse_tactics("no sparsity lines").sparse_tactics == 0


def test_native_stderr_is_captured_and_restored():
    before = os.fstat(2)
    with captured_stderr() as log:
        assert (os.fstat(2).st_dev, os.fstat(2).st_ino) != (before.st_dev, before.st_ino)
        os.write(2, b"written by native code\n")
    assert log == ["written by native code\n"]
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)


def test_dense_twin_restores_the_dense_weights_in_the_same_graph(tiny_model, tmp_path):
    model = tiny_model("llama")
    targets = find_targets(model)
    dense = {t.name: weight_out_in(t.module).detach().clone() for t in targets}
    ids = np.arange(4, 20, dtype=np.int64)[None]
    with torch.no_grad():
        dense_logits = model(input_ids=torch.from_numpy(ids)).logits.numpy()
    prune_model(model, PruneSpec(method="magnitude", pattern="2:4"))
    exported = export_onnx(model, tmp_path / "sparse" / "model.onnx")
    verification = verify_onnx(exported.path, targets, parse_pattern("2:4"))
    twin = write_dense_twin(exported.path, verification, dense, tmp_path / "dense" / "model.onnx")
    twin_check = verify_onnx(twin, targets, parse_pattern("2:4"))
    assert not twin_check.valid and all(layer.sparsity < 0.01 for layer in twin_check.layers.values())
    assert [c.initializer for c in twin_check.layers.values()] == [
        c.initializer for c in verification.layers.values()]
    twin_logits, _ = onnx_step(onnx_session(twin), exported.layout, ids, None, 0)
    np.testing.assert_allclose(twin_logits, dense_logits, atol=1e-4)
    sparse_logits, _ = onnx_step(onnx_session(exported.path), exported.layout, ids, None, 0)
    assert np.abs(sparse_logits - dense_logits).max() > 1e-3


def record_with(rows: list[ComparisonRow] | None = None,
                tensorrt: SparseTactics | None = None) -> RunRecord:
    """A record whose benchmark compared `rows` and parsed `tensorrt` from the build log."""
    record = RunRecord(tool_version="test", config_digest="0")
    record.metrics.latency = LatencyMetrics(threads=1, warmup=0, iterations=1, runtimes={},
                                            comparison=rows or [], tensorrt=tensorrt)
    return record


ROWS = [ComparisonRow("torch", "prefill:1x16", 4.0, 2.0, None, None, 2.0),
        ComparisonRow("torch", "decode:1x1@8", 1.0, 1.0, None, None, 1.0)]


@pytest.mark.parametrize(("gate", "passed", "value"), [
    ({"runtime": "torch", "max_p50_ms": 2.0}, [True], 2.0),
    ({"runtime": "torch", "max_p50_ms": 1.5}, [False], 2.0),
    ({"runtime": "torch", "min_speedup": 1.0}, [True], 1.0),
    ({"runtime": "torch", "shape": "prefill:1x16", "min_speedup": 1.5}, [True], 2.0),
    ({"runtime": "torch", "min_speedup": 1.5, "max_p50_ms": 9.0}, [True, False], 2.0),
])
def test_latency_gate_verdicts(gate, passed, value):
    results = evaluate_gates(GatesConfig.model_validate({"latency": gate}), record_with(ROWS))
    assert [r.passed for r in results] == passed
    assert results[0].value == value


def test_latency_gate_without_measurements_fails_naming_what_is_missing():
    gates = GatesConfig.model_validate({"latency": {"runtime": "onnxruntime-cuda",
                                                    "min_speedup": 1.1}})
    (result,) = evaluate_gates(gates, record_with(ROWS))
    assert not result.passed and "no latency measured for onnxruntime-cuda" in result.message


@pytest.mark.parametrize(("tactics", "passed"), [(3, True), (0, False)])
def test_tensorrt_gate_counts_sparse_tactics(tactics, passed):
    gates = GatesConfig.model_validate({"tensorrt": {"min_sparse_tactics": 1}})
    record = record_with(tensorrt=SparseTactics(eligible_layers=5, sparse_tactics=tactics))
    (result,) = evaluate_gates(gates, record)
    assert result.passed is passed and result.value == tactics
    assert isinstance(result.value, float) and "eligible: 5" in result.message
    (missing,) = evaluate_gates(gates, record_with())
    assert not missing.passed and "no TensorRT build log" in missing.message
    (unbenchmarked,) = evaluate_gates(gates, RunRecord(tool_version="test", config_digest="0"))
    assert not unbenchmarked.passed and "no TensorRT build log" in unbenchmarked.message
