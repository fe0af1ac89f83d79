"""Release gates evaluated over a finished run record: the one place a run's verdict is made.

Evaluation is a pure function of the gate config and the `RunRecord`: it measures nothing
itself, so the same record always gives the same verdict. Gate names are stable because they
become JUnit test case names in CI. A gate whose measurement is missing from the record fails
with a message naming what is missing; a configured gate is never silently skipped.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from wanda_export.report.metrics import (
    OnnxFileCheck,
    PerplexityMetrics,
    SparsityRecord,
    TaskAccuracy,
)
from wanda_export.report.record import GateResult, RunRecord
from wanda_export.sparsity.pattern import parse_pattern

if TYPE_CHECKING:
    from wanda_export.bench.compare import ComparisonRow
    from wanda_export.config.gates import (
        AccuracyGate,
        GatesConfig,
        LatencyGate,
        ParityGate,
        PerplexityGate,
        SparsityGate,
        TensorRTGate,
    )
    from wanda_export.sparsity.verify import LayerSparsity

EPSILON = 1e-9
MAX_NAMED_LAYERS = 10

VERIFY = "verify"
ONNX_SPARSITY_SUFFIX = ".sparsity"  # "onnx.sparsity", "onnx-fp16.sparsity"
SPARSITY_MIN = "sparsity.min"
SPARSITY_PER_LAYER_MIN = "sparsity.per_layer_min"
SPARSITY_PATTERN = "sparsity.pattern"
PERPLEXITY_MAX = "perplexity.max"
PERPLEXITY_RATIO = "perplexity.max_ratio_to_dense"
PERPLEXITY_ONNX_RATIO = "perplexity.max_onnx_ratio_to_torch"
ACCURACY = "accuracy"  # accuracy.<task>.min_recovery, accuracy.<task>.max_drop
PARITY_MAX_ABS = "parity.max_abs_diff"
PARITY_GENERATION = "parity.generation"
LATENCY_MAX_P50 = "latency.max_p50_ms"
LATENCY_MIN_SPEEDUP = "latency.min_speedup"
TENSORRT_SPARSE_TACTICS = "tensorrt.min_sparse_tactics"


def evaluate_gates(gates: GatesConfig, record: RunRecord, *,
                   configured: bool = True) -> list[GateResult]:
    """Every gate of the run, checked against the record in one fixed order.

    First the checks every run makes: `verify` when the verify stage re-read the weights, then
    `<format>.sparsity` for each ONNX file verified. Then, when `configured` (a partial run
    measures too little for them), the gates set in `gates`, each giving one `GateResult`.
    Thresholds are compared with a 1e-9 tolerance so a value exactly at the threshold passes.
    """
    results: list[GateResult] = []
    if record.sparsity is not None and record.sparsity.verified:
        results.append(_verify_gate(record.sparsity))
    results.extend(_onnx_gate(label, check) for label, check in record.metrics.onnx.items())
    if not configured:
        return results
    if gates.sparsity is not None:
        results.extend(_sparsity_gates(gates.sparsity, record))
    if gates.perplexity is not None:
        results.extend(_perplexity_gates(gates.perplexity, record))
    if gates.accuracy is not None:
        results.extend(_accuracy_gates(gates.accuracy, record))
    if gates.parity is not None:
        results.extend(_parity_gates(gates.parity, record))
    if gates.latency is not None:
        results.extend(_latency_gates(gates.latency, record))
    if gates.tensorrt is not None:
        results.extend(_tensorrt_gates(gates.tensorrt, record))
    return results


def gate_summary(results: list[GateResult]) -> tuple[int, int]:
    """Count (passed, failed) gates, for the step summary and the exit code."""
    passed = sum(1 for result in results if result.passed)
    return passed, len(results) - passed


def _at_least(value: float, threshold: float) -> bool:
    return value >= threshold - EPSILON


def _at_most(value: float, threshold: float) -> bool:
    return value <= threshold + EPSILON


def _name_layers(names: list[str]) -> str:
    """Up to ten layer names, then "and N more"."""
    shown = ", ".join(names[:MAX_NAMED_LAYERS])
    rest = len(names) - MAX_NAMED_LAYERS
    return f"{shown} and {rest} more" if rest > 0 else shown


def _canonical_pattern(text: str) -> str:
    """The canonical spelling of a pattern ("2:4", "unstructured"), or the text unchanged."""
    try:
        return str(parse_pattern(text))
    except ValueError:
        return text


def _missing(name: str, threshold: float | str, what: str) -> GateResult:
    return GateResult(name, False, None, threshold, f"missing measurement: {what}")


def _verify_gate(sparsity: SparsityRecord) -> GateResult:
    """The verify stage found every target's weight at its pattern."""
    invalid = sparsity.report.invalid_layers
    layers = len(sparsity.report.layers)
    message = (f"pattern {sparsity.pattern} violated in: {', '.join(invalid)}" if invalid else
               f"all {layers} layers re-read from the saved weights meet pattern "
               f"{sparsity.pattern} (0 violations allowed)")
    return GateResult(VERIFY, not invalid, len(invalid), 0, message)


def _onnx_gate(label: str, check: OnnxFileCheck) -> GateResult:
    """The pruned weights are still there, at their pattern along K, in the exported file."""
    verification = check.verification
    failures = verification.failures
    message = (f"all {len(verification.layers)} pruned weights found in {check.file}, "
               f"{check.pattern} along K (0 failures allowed)") if not failures else (
        f"pruned weights missing or not {check.pattern} along K in: " + ", ".join(
            f"{name} ({verification.layers[name].initializer or 'no initializer'})"
            for name in failures))
    return GateResult(f"{label}{ONNX_SPARSITY_SUFFIX}", verification.valid, len(failures), 0,
                      message)


def _sparsity_gates(gate: SparsityGate, record: RunRecord) -> list[GateResult]:
    report = None if record.sparsity is None else record.sparsity.report
    layers = {} if report is None else report.layers
    results = []
    if gate.min is not None:
        results.append(_overall_min(gate.min, None if report is None else report.overall))
    if gate.per_layer_min is not None:
        results.append(_per_layer_min(gate.per_layer_min, layers))
    if gate.pattern is not None:
        results.append(_pattern(gate.pattern, layers))
    return results


def _overall_min(threshold: float, overall: float | None) -> GateResult:
    if overall is None:
        return _missing(SPARSITY_MIN, threshold, "no overall sparsity in the record")
    passed = _at_least(overall, threshold)
    relation = ">=" if passed else "<"
    message = f"overall sparsity {overall:.4f} {relation} {threshold:.4f}"
    return GateResult(SPARSITY_MIN, passed, overall, threshold, message)


def _per_layer_min(threshold: float, layers: dict[str, LayerSparsity]) -> GateResult:
    if not layers:
        return _missing(SPARSITY_PER_LAYER_MIN, threshold, "no per-layer sparsity in the record")
    below = [name for name, layer in layers.items() if not _at_least(layer.sparsity, threshold)]
    lowest = min(layer.sparsity for layer in layers.values())
    if below:
        message = (
            f"{len(below)} of {len(layers)} layers below {threshold:.4f}: {_name_layers(below)}"
        )
        return GateResult(SPARSITY_PER_LAYER_MIN, False, lowest, threshold, message)
    message = f"all {len(layers)} layers >= {threshold:.4f} (lowest {lowest:.4f})"
    return GateResult(SPARSITY_PER_LAYER_MIN, True, lowest, threshold, message)


def _pattern(pattern: str, layers: dict[str, LayerSparsity]) -> GateResult:
    expected = _canonical_pattern(pattern)
    if not layers:
        return _missing(SPARSITY_PATTERN, expected, "no per-layer pattern check in the record")
    invalid = [
        name
        for name, layer in layers.items()
        if _canonical_pattern(layer.pattern) != expected or not layer.valid
    ]
    if invalid:
        message = (
            f"{len(invalid)} of {len(layers)} layers do not meet pattern {expected}: "
            f"{_name_layers(invalid)}"
        )
        return GateResult(SPARSITY_PATTERN, False, len(invalid), expected, message)
    message = f"all {len(layers)} layers meet pattern {expected}"
    return GateResult(SPARSITY_PATTERN, True, 0, expected, message)


def _perplexity_gates(gate: PerplexityGate, record: RunRecord) -> list[GateResult]:
    perplexity = record.metrics.perplexity or PerplexityMetrics()
    results = []
    if gate.max is not None:
        results.append(_perplexity_max(gate.max, perplexity.pruned))
    if gate.max_ratio_to_dense is not None:
        results.append(_perplexity_ratio(gate.max_ratio_to_dense, perplexity.pruned,
                                         perplexity.dense))
    if gate.max_onnx_ratio_to_torch is not None:
        results.append(_onnx_perplexity_ratio(gate.max_onnx_ratio_to_torch, perplexity))
    return results


def _onnx_perplexity_ratio(threshold: float, perplexity: PerplexityMetrics) -> GateResult:
    """The exported ONNX model's perplexity over the PyTorch model's, on the same windows."""
    ratio = perplexity.onnx_ratio_to_torch
    if ratio is None:
        return _missing(PERPLEXITY_ONNX_RATIO, threshold, "no ONNX perplexity in the record")
    passed = math.isfinite(ratio) and _at_most(ratio, threshold)
    message = (f"ONNX/PyTorch perplexity {perplexity.onnx:.4f}/{perplexity.pruned:.4f} = "
               f"{ratio:.6f} {'<=' if passed else '>'} {threshold:.6f}")
    return GateResult(PERPLEXITY_ONNX_RATIO, passed, ratio, threshold, message)


def _accuracy_gates(gate: AccuracyGate, record: RunRecord) -> list[GateResult]:
    """Per lm-eval task, in the record's order (then gated tasks it lacks): recovery at least
    min_recovery, drop at most max_drop. A failing drop inside one standard error of the
    difference still fails; its message says it is within noise."""
    measured = record.metrics.lm_eval
    results = []
    for task in [*measured, *(name for name in gate.tasks or {} if name not in measured)]:
        thresholds = gate.thresholds(task)
        if thresholds is None:
            continue
        scores = measured.get(task)
        for name, threshold in (("min_recovery", thresholds.min_recovery),
                                ("max_drop", thresholds.max_drop)):
            if threshold is None:
                continue
            gate_name = f"{ACCURACY}.{task}.{name}"
            if scores is None:
                results.append(_missing(gate_name, threshold, f"no lm-eval score of {task}"))
            else:
                results.append(_task_gate(gate_name, task, name, threshold, scores))
    return results


def _task_gate(gate_name: str, task: str, name: str, threshold: float,
               scores: TaskAccuracy) -> GateResult:
    """One threshold on one task's dense vs pruned scores."""
    if name == "min_recovery":
        value = scores.recovery
        passed = value is not None and _at_least(value, threshold)
        shown = "undefined (dense is 0)" if value is None else f"{value:.4f}"
        verdict = f"recovery {shown} {'>=' if passed else '<'} {threshold:.4f}"
    else:
        value = scores.drop
        passed = _at_most(value, threshold)
        verdict = f"drop {value:.4f} {'<=' if passed else '>'} {threshold:.4f}"
    stderr = scores.drop_stderr
    noise = "stderr unknown" if stderr is None else f"stderr of the drop {stderr:.4f}"
    if not passed and stderr is not None and scores.drop <= stderr:
        noise += "; the drop is within noise (inside one stderr), judge before overriding"
    message = (f"{task} {scores.metric}: dense {scores.dense:.4f}, pruned {scores.pruned:.4f} "
               f"(n={scores.n}); {verdict}; {noise}")
    return GateResult(gate_name, passed, value, threshold, message)


def _perplexity_max(threshold: float, pruned: float | None) -> GateResult:
    if pruned is None:
        return _missing(PERPLEXITY_MAX, threshold, "no pruned perplexity in the record")
    if not math.isfinite(pruned):
        return GateResult(
            PERPLEXITY_MAX, False, pruned, threshold, f"pruned perplexity is {pruned}"
        )
    passed = _at_most(pruned, threshold)
    relation = "<=" if passed else ">"
    message = f"pruned perplexity {pruned:.4f} {relation} {threshold:.4f}"
    return GateResult(PERPLEXITY_MAX, passed, pruned, threshold, message)


def _perplexity_ratio(threshold: float, pruned: float | None, dense: float | None) -> GateResult:
    if pruned is None or dense is None:
        what = " and ".join(
            label for label, value in (("pruned", pruned), ("dense", dense)) if value is None
        )
        return _missing(PERPLEXITY_RATIO, threshold, f"no {what} perplexity in the record")
    if not (math.isfinite(dense) and dense > 0):
        message = f"dense perplexity is {dense}; the ratio is undefined"
        return GateResult(PERPLEXITY_RATIO, False, None, threshold, message)
    ratio = pruned / dense
    if not math.isfinite(ratio):
        message = f"pruned perplexity is {pruned}"
        return GateResult(PERPLEXITY_RATIO, False, ratio, threshold, message)
    passed = _at_most(ratio, threshold)
    relation = "<=" if passed else ">"
    message = (
        f"pruned/dense perplexity {pruned:.4f}/{dense:.4f} = {ratio:.4f} {relation} {threshold:.4f}"
    )
    return GateResult(PERPLEXITY_RATIO, passed, ratio, threshold, message)


def _parity_gates(gate: ParityGate, record: RunRecord) -> list[GateResult]:
    """ONNX-vs-PyTorch: the largest logit difference and identical greedy generation."""
    parity = record.metrics.parity
    results = []
    if gate.max_abs_diff is not None:
        value = None if parity is None else parity.max_abs_diff
        if value is None or math.isnan(value):
            results.append(_missing(PARITY_MAX_ABS, gate.max_abs_diff, "no ONNX parity measured"))
        else:
            passed = _at_most(value, gate.max_abs_diff)
            results.append(GateResult(
                PARITY_MAX_ABS, passed, value, gate.max_abs_diff,
                f"max |logit difference| {value:.3g} {'<=' if passed else '>'} "
                f"{gate.max_abs_diff:.3g}"))
    if gate.generation is not None:
        if parity is None:
            results.append(_missing(PARITY_GENERATION, "identical", "no ONNX generation measured"))
        else:
            match = parity.generation_match
            passed = match or not gate.generation
            results.append(GateResult(
                PARITY_GENERATION, passed, "identical" if match else "different", "identical",
                "greedy generation identical to PyTorch's on every prompt" if match else
                f"greedy generation differs on prompts {parity.mismatched_prompts}"))
    return results


def _latency_rows(gate: LatencyGate, record: RunRecord) -> list[ComparisonRow]:
    latency = record.metrics.latency
    rows = [] if latency is None else latency.comparison
    return [row for row in rows if row.runtime == gate.runtime
            and (gate.shape is None or row.shape == gate.shape)]


def _latency_gates(gate: LatencyGate, record: RunRecord) -> list[GateResult]:
    """Per measured shape of the gate's runtime: sparse p50 at most max_p50_ms, and speedup
    (dense p50 / sparse p50) at least min_speedup; one result per threshold, every failing
    shape named."""
    rows = _latency_rows(gate, record)
    where = f"{gate.runtime}" + (f" {gate.shape}" if gate.shape else "")
    checks = [(LATENCY_MAX_P50, gate.max_p50_ms, lambda row: row.sparse_p50_ms, _at_most, max,
               "p50", " ms"),
              (LATENCY_MIN_SPEEDUP, gate.min_speedup, lambda row: row.speedup, _at_least, min,
               "speedup", "x")]
    results = []
    for name, threshold, measure, ok, worst_of, label, unit in checks:
        if threshold is None:
            continue
        if not rows:
            results.append(_missing(name, threshold, f"no latency measured for {where}"))
            continue
        values = {row.shape: measure(row) for row in rows}
        failing = [shape for shape, value in values.items()
                   if value is None or not ok(value, threshold)]
        measured = [value for value in values.values() if value is not None]
        worst = worst_of(measured) if measured else None
        shown = ", ".join(f"{shape} {label} " + ("unmeasured" if values[shape] is None
                                                 else f"{values[shape]:.3g}{unit}")
                          for shape in (failing or values))
        relation = "within" if not failing else "outside"
        message = f"{where}: {shown} ({relation} {threshold:g}{unit})"
        results.append(GateResult(name, not failing, worst, threshold, message))
    return results


def _tensorrt_gates(gate: TensorRTGate, record: RunRecord) -> list[GateResult]:
    """TensorRT picked sparse tactics for at least `min_sparse_tactics` layers."""
    if gate.min_sparse_tactics is None:
        return []
    latency = record.metrics.latency
    tactics = None if latency is None else latency.tensorrt
    threshold = gate.min_sparse_tactics
    if tactics is None:
        return [_missing(TENSORRT_SPARSE_TACTICS, threshold, "no TensorRT build log parsed")]
    picked = float(tactics.sparse_tactics)
    passed = _at_least(picked, threshold)
    message = (f"TensorRT picked sparse tactics for {int(picked)} layer(s) "
               f"({'>=' if passed else '<'} {threshold}); eligible: "
               f"{tactics.eligible_layers}")
    return [GateResult(TENSORRT_SPARSE_TACTICS, passed, picked, threshold, message)]
