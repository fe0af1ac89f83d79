"""Run reporting: the run record, release gates, and the files a run publishes.

Stages fill the `RunRecord`'s typed measurements (`metrics.py`); `evaluate_gates` turns the
finished record into every gate result; the writers publish it as
report.json, manifest.json, JUnit XML and a Markdown step summary; `plot_layer_sparsity`
(`plot_importance_kept` for a uniform run), `latency_chart` and `accuracy_chart` draw the
optional charts (need matplotlib).
"""

from __future__ import annotations

from wanda_export.report.charts import (
    accuracy_chart,
    latency_chart,
    plot_importance_kept,
    plot_layer_sparsity,
    uniform_sparsity,
)
from wanda_export.report.gates import evaluate_gates, gate_summary
from wanda_export.report.metrics import (
    ArtifactSizes,
    FileSize,
    LatencyMetrics,
    LatencyRow,
    Metrics,
    OnnxFileCheck,
    PerplexityMetrics,
    SparsityRecord,
    TaskAccuracy,
)
from wanda_export.report.record import (
    SCHEMA_VERSION,
    ArtifactRecord,
    GateResult,
    RunRecord,
    StageRecord,
)
from wanda_export.report.summary import render_summary_md, write_summary_md
from wanda_export.report.writers import (
    collect_artifacts,
    hash_artifacts,
    write_junit,
    write_manifest,
    write_report_json,
)

__all__ = [
    "SCHEMA_VERSION",
    "ArtifactRecord",
    "ArtifactSizes",
    "FileSize",
    "GateResult",
    "LatencyMetrics",
    "LatencyRow",
    "Metrics",
    "OnnxFileCheck",
    "PerplexityMetrics",
    "RunRecord",
    "SparsityRecord",
    "StageRecord",
    "TaskAccuracy",
    "accuracy_chart",
    "collect_artifacts",
    "evaluate_gates",
    "gate_summary",
    "hash_artifacts",
    "latency_chart",
    "plot_importance_kept",
    "plot_layer_sparsity",
    "render_summary_md",
    "uniform_sparsity",
    "write_junit",
    "write_manifest",
    "write_report_json",
    "write_summary_md",
]
