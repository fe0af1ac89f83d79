"""Gates, report writers and charts over hand-built run records."""

from __future__ import annotations

import hashlib
import json
import math
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from wanda_export.bench.runtimes import Availability
from wanda_export.config.gates import GatesConfig, PerplexityGate, SparsityGate
from wanda_export.evaluate.parity import ParityResult
from wanda_export.report import (
    ArtifactRecord,
    GateResult,
    RunRecord,
    StageRecord,
    collect_artifacts,
    evaluate_gates,
    gate_summary,
    hash_artifacts,
    plot_layer_sparsity,
    write_junit,
    write_manifest,
    write_report_json,
    write_summary_md,
)
from wanda_export.report.metrics import LatencyMetrics, PerplexityMetrics, SparsityRecord
from wanda_export.sparsity.verify import LayerSparsity, SparsityReport

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def layer(sparsity: float, pattern: str = "2:4", valid: bool = True) -> LayerSparsity:
    """One layer's verification result with `sparsity` zeros (exact for two decimals)."""
    numel = 1000
    return LayerSparsity(zeros=round(sparsity * numel), numel=numel, pattern=pattern,
                         valid=valid, violating_groups=0 if valid else 3)


def model_layers(blocks: int, sparsity: float = 0.5,
                 pattern: str = "2:4") -> dict[str, LayerSparsity]:
    """Layers of a llama-like model in model order: seven projections per block."""
    layers = {}
    for block in range(blocks):
        for proj in PROJECTIONS:
            group = "self_attn" if proj in PROJECTIONS[:4] else "mlp"
            layers[f"model.layers.{block}.{group}.{proj}"] = layer(sparsity, pattern)
    return layers


def make_record(
    layers: dict[str, LayerSparsity] | None = None,
    perplexity: dict[str, Any] | None = None,
) -> RunRecord:
    """A run record with the given sparsity and perplexity measurements (None: not measured)."""
    sparsity = None
    if layers is not None:
        sparsity = SparsityRecord(pattern="2:4", target=0.5, report=SparsityReport(layers))
    record = RunRecord(
        tool_version="0.1.0",
        config_digest="c0ffee" * 10 + "abcd",
        model={"source": "HuggingFaceTB/SmolLM2-135M", "fingerprint": "f1e2d3c4b5a69788" * 4},
        plan={"method": "wanda", "sparsity": 0.5, "pattern": "2:4", "mode": "sequential"},
        stages=[
            StageRecord("calibrate", "ok", "miss", 1.25),
            StageRecord("mask", "ok", "hit", 0.5),
        ],
        sparsity=sparsity,
    )
    if perplexity is not None:
        record.metrics.perplexity = PerplexityMetrics(**perplexity)
    return record


def gates(**kwargs: Any) -> GatesConfig:
    sparsity = {k: v for k, v in kwargs.items() if k in ("min", "per_layer_min", "pattern")}
    perplexity = {k: v for k, v in kwargs.items() if k in ("max", "max_ratio_to_dense")}
    return GatesConfig(
        sparsity=SparsityGate(**sparsity) if sparsity else None,
        perplexity=PerplexityGate(**perplexity) if perplexity else None,
    )


def only(results: list[GateResult]) -> GateResult:
    assert len(results) == 1
    return results[0]


# gates


@pytest.mark.parametrize(
    ("zeros", "numel", "passed"),
    [(1, 2, True), (5 * 10**11 - 1, 10**12, True), (3, 5, True), (4999, 10**4, False),
     (0, 4, False)],
)
def test_sparsity_min_threshold_sides(zeros: int, numel: int, passed: bool):
    layers = {"a.q_proj": LayerSparsity(zeros, numel, "2:4", True),
              "a.k_proj": LayerSparsity(zeros, numel, "2:4", True)}
    result = only(evaluate_gates(gates(min=0.5), make_record(layers)))
    assert result.name == "sparsity.min"
    assert result.passed is passed
    assert result.value == zeros / numel and result.threshold == 0.5


@pytest.mark.parametrize(
    ("threshold", "passed"), [(0.5, True), (0.45, True), (0.55, False), (0.5000001, False)]
)
def test_sparsity_per_layer_min_uses_the_lowest_layer(threshold: float, passed: bool):
    layers = {"a.q_proj": layer(0.6), "a.k_proj": layer(0.5), "a.v_proj": layer(0.7)}
    result = only(evaluate_gates(gates(per_layer_min=threshold), make_record(layers)))
    assert result.name == "sparsity.per_layer_min"
    assert result.passed is passed
    assert result.value == 0.5
    if not passed:
        assert "a.k_proj" in result.message
        assert "a.q_proj" not in result.message


def test_sparsity_per_layer_min_names_ten_layers_then_counts_the_rest():
    layers = {f"l{i:02d}.q_proj": layer(0.3) for i in range(15)}
    layers["ok.q_proj"] = layer(0.9)
    result = only(evaluate_gates(gates(per_layer_min=0.5), make_record(layers)))
    assert not result.passed and result.value == 0.3
    assert "l00.q_proj" in result.message and "l09.q_proj" in result.message
    assert "l10.q_proj" not in result.message and "and 5 more" in result.message
    assert "ok.q_proj" not in result.message


def test_sparsity_pattern_passes_when_every_layer_is_valid():
    result = only(evaluate_gates(gates(pattern="2:4"), make_record(model_layers(2))))
    assert result.name == "sparsity.pattern"
    assert result.passed and result.value == 0 and result.threshold == "2:4"


def test_sparsity_pattern_fails_on_invalid_or_other_pattern_layers():
    layers = model_layers(1)
    layers["model.layers.0.self_attn.q_proj"] = layer(0.5, "2:4", valid=False)
    layers["model.layers.0.mlp.up_proj"] = layer(0.5, "unstructured", valid=True)
    result = only(evaluate_gates(gates(pattern=" 2 : 4 "), make_record(layers)))
    assert not result.passed and result.value == 2 and result.threshold == "2:4"
    assert "model.layers.0.self_attn.q_proj" in result.message
    assert "model.layers.0.mlp.up_proj" in result.message
    assert "k_proj" not in result.message


@pytest.mark.parametrize(("pruned", "passed"), [(20.0, True), (19.5, True), (20.001, False)])
def test_perplexity_max_threshold_sides(pruned: float, passed: bool):
    record = make_record(perplexity={"dense": 15.0, "pruned": pruned})
    result = only(evaluate_gates(gates(max=20.0), record))
    assert result.name == "perplexity.max"
    assert result.passed is passed and result.value == pruned and result.threshold == 20.0


@pytest.mark.parametrize(
    ("dense", "pruned", "passed"),
    [(10.0, 11.0, True), (10.0, 10.5, True), (10.0, 11.01, False), (10.0, 30.0, False)],
)
def test_perplexity_ratio_threshold_sides(dense: float, pruned: float, passed: bool):
    record = make_record(perplexity={"dense": dense, "pruned": pruned})
    result = only(evaluate_gates(gates(max_ratio_to_dense=1.1), record))
    assert result.name == "perplexity.max_ratio_to_dense"
    assert result.passed is passed
    assert result.value == pytest.approx(pruned / dense) and result.threshold == 1.1


def test_missing_sparsity_fails_every_sparsity_gate():
    results = evaluate_gates(gates(min=0.5, per_layer_min=0.4, pattern="2:4"), make_record())
    assert [r.name for r in results] == [
        "sparsity.min",
        "sparsity.per_layer_min",
        "sparsity.pattern",
    ]
    for result in results:
        assert not result.passed and result.value is None
        assert "missing" in result.message


def test_missing_perplexity_fails_every_perplexity_gate():
    results = evaluate_gates(gates(max=20.0, max_ratio_to_dense=1.2), make_record())
    assert [r.name for r in results] == ["perplexity.max", "perplexity.max_ratio_to_dense"]
    assert all(not r.passed and "missing" in r.message for r in results)


def test_missing_dense_perplexity_fails_only_the_ratio_gate():
    record = make_record(perplexity={"pruned": 12.0})
    by_name = {r.name: r for r in evaluate_gates(gates(max=20.0, max_ratio_to_dense=1.2), record)}
    assert by_name["perplexity.max"].passed
    ratio = by_name["perplexity.max_ratio_to_dense"]
    assert not ratio.passed and "dense" in ratio.message and "missing" in ratio.message


def test_nan_measurements_fail_their_gates():
    # sparsity is counted in integers and cannot be NaN; perplexity can
    record = make_record(model_layers(1), perplexity={"dense": 10.0, "pruned": math.nan})
    results = evaluate_gates(gates(min=0.5, max=20.0, max_ratio_to_dense=1.2), record)
    assert len(results) == 3 and [r.passed for r in results] == [True, False, False]
    record.metrics.perplexity.dense = math.nan
    (ratio,) = evaluate_gates(gates(max_ratio_to_dense=1.2), record)
    assert not ratio.passed and "undefined" in ratio.message


def test_only_configured_gates_run_and_summary_counts():
    record = make_record(model_layers(1), perplexity={"dense": 10.0, "pruned": 30.0})
    assert evaluate_gates(GatesConfig(), record) == []
    results = evaluate_gates(gates(min=0.5, pattern="2:4", max_ratio_to_dense=1.5), record)
    assert [r.name for r in results] == [
        "sparsity.min",
        "sparsity.pattern",
        "perplexity.max_ratio_to_dense",
    ]
    assert gate_summary(results) == (2, 1)
    assert gate_summary([]) == (0, 0)


# writers


def finished_record(blocks: int = 2, perplexity: dict[str, Any] | None = None) -> RunRecord:
    """A failed run: gates evaluated, artifacts listed, one failed stage."""
    record = make_record(
        model_layers(blocks), perplexity=perplexity or {"dense": 10.0, "pruned": 13.0}
    )
    record.gates = evaluate_gates(gates(min=0.5, pattern="2:4", max_ratio_to_dense=1.2), record)
    record.stages.append(StageRecord("evaluate", "ok", "miss", 3.0))
    record.stages.append(StageRecord("export", "failed", "n/a", 0.25, {"error": "disk full"}))
    record.artifacts = [
        ArtifactRecord("model/model.safetensors", "safetensors-checkpoint", 3 * 1024**2, "ab" * 32),
        ArtifactRecord("model/config.json", "safetensors-checkpoint", 700, "cd" * 32),
    ]
    record.status, record.exit_code = "failed", 3
    return record


def strict_json(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_report_json_has_every_contract_field(tmp_path: Path):
    path = write_report_json(finished_record(), tmp_path / "report.json")
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n")
    data = strict_json(text)
    assert next(iter(data)) == "schema_version" and data["schema_version"] == 1
    assert data["status"] == "failed" and data["exit_code"] == 3
    assert data["model"]["source"] and data["config_digest"]
    for stage in data["stages"]:
        assert {"name", "status", "cache", "seconds"} <= set(stage)
    assert data["sparsity"]["overall"] == 0.5
    for entry in data["sparsity"]["layers"].values():
        assert {"sparsity", "pattern", "valid"} <= set(entry)
    assert set(data["metrics"]["perplexity"]) == {"dense", "pruned"}
    for gate in data["gates"]:
        assert {"name", "passed", "value", "threshold"} <= set(gate)
    for artifact in data["artifacts"]:
        assert {"path", "format", "bytes", "sha256"} <= set(artifact)
    assert not list(tmp_path.glob(".*.tmp-*"))


def test_report_json_is_deterministic(tmp_path: Path):
    record = finished_record()
    first = write_report_json(record, tmp_path / "a.json").read_bytes()
    assert write_report_json(record, tmp_path / "b.json").read_bytes() == first


def test_nan_and_inf_in_metrics_give_valid_json(tmp_path: Path):
    record = finished_record(perplexity={"dense": math.inf, "pruned": math.nan})
    record.metrics.parity = ParityResult(1.5, -math.inf, True, 4, 3, [])
    data = strict_json((write_report_json(record, tmp_path / "report.json")).read_text())
    assert data["metrics"]["perplexity"] == {"dense": None, "pruned": None}
    assert [data["metrics"]["parity"][k] for k in ("max_abs_diff", "max_rel_diff")] == [1.5, None]


def test_manifest_sha256_matches_the_files(tmp_path: Path):
    (tmp_path / "model" / "sub").mkdir(parents=True)
    (tmp_path / "model" / "model.safetensors").write_bytes(b"\x00" * (3 * 1024 * 1024 + 17))
    (tmp_path / "model" / "config.json").write_text('{"a": 1}')
    (tmp_path / "model" / "sub" / "tokenizer.json").write_text("{}")
    (tmp_path / "report.json").write_text("{}")
    artifacts = collect_artifacts(tmp_path, {"model": "safetensors-checkpoint"})
    artifacts += hash_artifacts(tmp_path, [("report.json", "report")])
    assert [a.path for a in artifacts[:3]] == [
        "model/config.json",
        "model/model.safetensors",
        "model/sub/tokenizer.json",
    ]
    manifest = strict_json(
        write_manifest(list(reversed(artifacts)), tmp_path / "manifest.json").read_text()
    )
    assert manifest["schema_version"] == 1
    paths = [entry["path"] for entry in manifest["artifacts"]]
    assert paths == sorted(paths) and len(paths) == 4
    for entry in manifest["artifacts"]:
        content = (tmp_path / entry["path"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(content).hexdigest()
        assert entry["bytes"] == len(content)
    assert {e["format"] for e in manifest["artifacts"]} == {"safetensors-checkpoint", "report"}


def test_collect_artifacts_refuses_a_missing_directory_and_escaping_paths(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        collect_artifacts(tmp_path, {"model": "safetensors-checkpoint"})
    with pytest.raises(ValueError):
        hash_artifacts(tmp_path, [("../secret", "x")])


def test_junit_counts_gates_and_runtimes_and_keeps_stages_as_properties(tmp_path: Path):
    record = finished_record(perplexity={"dense": 10.0, "pruned": 13.0})
    record.stages.append(StageRecord("benchmark", "skipped"))
    record.metrics.latency = LatencyMetrics(threads=1, warmup=1, iterations=3, runtimes={
        "torch": Availability("torch", True, "", "cpu", None, {}),
        "onnxruntime-cuda": Availability("onnxruntime-cuda", False, "no CUDA provider", "cuda",
                                         "CUDAExecutionProvider", {})})
    suite = ET.parse(write_junit(record, tmp_path / "junit.xml")).getroot()
    assert suite.tag == "testsuite" and suite.get("name") == "wanda-export gates"
    assert suite.get("tests") == str(3 + 2)
    assert (
        suite.get("failures") == "1" and suite.get("errors") == "0" and suite.get("skipped") == "1"
    )
    gate_cases = suite.findall("testcase[@classname='gates']")
    assert [c.get("name") for c in gate_cases] == [
        "sparsity.min",
        "sparsity.pattern",
        "perplexity.max_ratio_to_dense",
    ]
    assert all(c.get("time") == "0" for c in gate_cases)
    failed = [c for c in gate_cases if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == ["perplexity.max_ratio_to_dense"]
    failure = failed[0].find("failure")
    assert "1.3" in failure.get("message")
    assert failure.text == "value=1.3, threshold=1.2"
    runtimes = {c.get("name"): c for c in suite.findall("testcase[@classname='runtimes']")}
    assert runtimes["torch"].find("skipped") is None
    assert runtimes["onnxruntime-cuda"].find("skipped").get("message") == (
        "unavailable: no CUDA provider")
    assert suite.findall("testcase[@classname='stages']") == []
    properties = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert properties["stage.calibrate"] == "ok 1.250s"
    assert properties["stage.export"].startswith("failed ")
    assert properties["stage.benchmark"] == "skipped 0.000s"


def test_junit_without_gates_or_stages_is_still_valid(tmp_path: Path):
    record = RunRecord(tool_version="0.1.0", config_digest="0" * 64)
    suite = ET.parse(write_junit(record, tmp_path / "junit.xml")).getroot()
    assert suite.get("tests") == "0" and suite.get("failures") == "0"
    assert list(suite) == []


def test_junit_is_deterministic(tmp_path: Path):
    record = finished_record()
    first = write_junit(record, tmp_path / "a.xml").read_bytes()
    assert write_junit(record, tmp_path / "b.xml").read_bytes() == first


def test_summary_shows_status_gates_metrics_stages_and_artifacts(tmp_path: Path):
    record = finished_record()
    charts = {"per-layer sparsity": "charts/sparsity.png"}
    text = write_summary_md(record, tmp_path / "summary.md", charts).read_text(encoding="utf-8")
    assert text.startswith("# ❌ wanda-export failed (exit code 3)")
    assert "`HuggingFaceTB/SmolLM2-135M`" in text and "f1e2d3c4b5a6" in text
    assert "f1e2d3c4b5a69788f1e2" not in text
    assert "wanda · sparsity 50% · pattern 2:4 · mode sequential" in text
    assert "## Gates (2 passed, 1 failed)" in text
    assert "| `sparsity.min` | ✅ pass | 0.5 | 0.5 |" in text
    assert "| `perplexity.max_ratio_to_dense` | ❌ fail | 1.3 | 1.2 |" in text
    ratio_gate = next(g for g in record.gates if not g.passed)
    assert ratio_gate.message in text
    assert "| evaluation | 10 | 13 | 1.3 |" in text
    assert "| `model.layers.1.mlp.down_proj` | 50.00% | 2:4 | ✅ |" in text
    assert "<details>" not in text
    assert "| calibrate | ✅ ok | miss | 1.25 |" in text
    assert "> **export** failed: disk full" in text
    assert (
        "| `model/model.safetensors` | safetensors-checkpoint | 3.0 MiB | `abababababab` |" in text
    )
    assert "| `model/config.json` | safetensors-checkpoint | 700 B |" in text
    assert "![per-layer sparsity](charts/sparsity.png)" in text


def test_summary_collapses_big_models_and_escapes_cells(tmp_path: Path):
    record = finished_record(blocks=30)
    record.status, record.exit_code = "passed", 0
    record.gates = [GateResult("sparsity.min", True, 0.5, 0.5, "a | b")]
    text = write_summary_md(record, tmp_path / "summary.md").read_text(encoding="utf-8")
    assert text.startswith("# ✅ wanda-export passed (exit code 0)")
    assert "<details>\n<summary>Per-layer sparsity (210 layers)</summary>" in text
    assert text.count("| `model.layers.") == 210
    assert "a \\| b" in text
    assert "## Charts" not in text


def test_summary_without_measurements_says_no_gates(tmp_path: Path):
    record = RunRecord(tool_version="0.1.0", config_digest="0" * 64)
    text = write_summary_md(record, tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "_No gates configured._" in text and "## Metrics" not in text


# charts


def test_chart_is_written_and_byte_identical(tmp_path: Path):
    pytest.importorskip("matplotlib")
    record = finished_record(blocks=4)
    first = plot_layer_sparsity(record, tmp_path / "charts" / "a.png")
    second = plot_layer_sparsity(record, tmp_path / "charts" / "b.png")
    assert first is not None and second is not None
    data = first.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert data == second.read_bytes()
    assert b"Software" not in data
    assert not list((tmp_path / "charts").glob(".*.tmp-*"))


def test_chart_for_a_big_model(tmp_path: Path):
    pytest.importorskip("matplotlib")
    assert plot_layer_sparsity(finished_record(blocks=30), tmp_path / "big.png") is not None


def test_chart_is_skipped_without_layers_or_matplotlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    assert plot_layer_sparsity(make_record(), tmp_path / "none.png") is None
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert plot_layer_sparsity(finished_record(), tmp_path / "chart.png") is None
    assert not (tmp_path / "chart.png").exists()
