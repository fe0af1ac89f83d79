"""summary.md, the step summary a CI job shows: status, the model by its public name, the plan,
every gate with its message, perplexity, latency with its spread (a speedup whose interquartile
interval contains 1.0 is marked "within noise"), sparsity per layer, stages, artifacts, charts.

Deterministic (same record, same text) and written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from wanda_export.atomic import atomic_write_bytes
from wanda_export.report.charts import model_label
from wanda_export.report.gates import gate_summary
from wanda_export.report.markdown import number as _number
from wanda_export.report.markdown import percent as _percent
from wanda_export.report.markdown import table as _table
from wanda_export.report.metrics import (
    LatencyMetrics,
    PerplexityMetrics,
    SparsityRecord,
    TaskAccuracy,
)
from wanda_export.report.record import ArtifactRecord, GateResult, RunRecord, StageRecord
from wanda_export.report.writers import PathLike, stage_failure_message

COLLAPSE_LAYERS_OVER = 20
SHA_SHOWN = 12


def human_bytes(size: int) -> str:
    """`1536` -> `1.5 KiB`: sizes in binary units with one decimal."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _title(record: RunRecord) -> list[str]:
    icon = "✅" if record.status == "passed" else "❌"
    return [f"# {icon} wanda-export {record.status} (exit code {record.exit_code})", ""]


def _overview(record: RunRecord) -> list[str]:
    model = record.model or {}
    parts = [f"**Model:** `{model_label(record)}`"]
    if model.get("kind"):
        parts.append(f"{model['kind']}")
    if model.get("fingerprint"):
        parts.append(f"fingerprint `{str(model['fingerprint'])[:SHA_SHOWN]}`")
    lines = [" · ".join(parts) + "  "]
    plan = record.plan or {}
    if plan:
        sparsity = plan.get("sparsity")
        shown = f"{sparsity * 100:g}%" if isinstance(sparsity, float) else _number(sparsity)
        lines.append(
            f"**Plan:** {plan.get('method', '—')} · sparsity {shown} · "
            f"pattern {plan.get('pattern', '—')} · mode {plan.get('mode', '—')}  "
        )
    lines.append(
        f"**Config digest:** `{record.config_digest[:SHA_SHOWN]}` · "
        f"wanda-export {record.tool_version}" + ("  " if record.created else "")
    )
    if record.created:
        lines.append(f"**Made:** {record.created} · {_provenance(record)}")
    return [*lines, ""]


def _provenance(record: RunRecord) -> str:
    """`Python 3.11.7, torch 2.13.0, transformers 5.24.0 · AMD EPYC, 2 cores, no GPU`."""
    versions = record.versions or {}
    shown = [f"{'Python' if name == 'python' else name} {versions[name]}"
             for name in ("python", "torch", "transformers", "onnxruntime") if versions.get(name)]
    host = record.host or {}
    machine = [str(host.get("cpu") or "unknown CPU"), f"{host.get('cores', '?')} cores",
               str(host.get("gpu") or "no GPU")]
    return ", ".join(shown) + " · " + ", ".join(machine)


def _gates_section(gates: list[GateResult]) -> list[str]:
    if not gates:
        return ["## Gates", "", "_No gates configured._", ""]
    passed, failed = gate_summary(gates)
    rows = [
        [
            f"`{g.name}`",
            "✅ pass" if g.passed else "❌ fail",
            _number(g.value),
            _number(g.threshold),
            g.message or ("passed" if g.passed else "failed"),
        ]
        for g in gates
    ]
    table = _table(["Gate", "Result", "Value", "Threshold", "Message"], rows)
    return [f"## Gates ({passed} passed, {failed} failed)", "", *table, ""]


def _metrics_section(perplexity: PerplexityMetrics | None) -> list[str]:
    if perplexity is None:
        return []
    dense, pruned = perplexity.dense, perplexity.pruned
    ratio = None
    if dense is not None and pruned is not None and dense:
        ratio = pruned / dense
    rows = [["evaluation", _number(dense), _number(pruned), _number(ratio)]]
    if perplexity.onnx is not None:
        rows.append(["evaluation, exported ONNX (onnxruntime)", "—", _number(perplexity.onnx),
                     f"{_number(perplexity.onnx_ratio_to_torch)} of PyTorch"])
    table = _table(["Perplexity", "Dense", "Pruned", "Ratio"], rows)
    return ["## Metrics", "", *table, ""]


def _with_stderr(value: float, stderr: float | None) -> str:
    return f"{value:.4f}" + ("" if stderr is None else f" ± {stderr:.4f}")


def _accuracy_section(scores: dict[str, TaskAccuracy]) -> list[str]:
    """Dense vs pruned per lm-eval task, with standard errors and recovery."""
    if not scores:
        return []
    rows = [[f"`{task}`", s.metric, _with_stderr(s.dense, s.dense_stderr),
             _with_stderr(s.pruned, s.pruned_stderr), _number(s.recovery), s.n]
            for task, s in scores.items()]
    table = _table(["Task", "Metric", "Dense", "Pruned", "Recovery", "n"], rows)
    note = "Recovery = pruned / dense; ± one standard error."
    return ["## Task accuracy (lm-eval)", "", note, "", *table, ""]


def _with_quartiles(stats: Any) -> str:
    """`12.3 (11.9–12.8)`: p50 and, when measured, the interquartile range, in ms."""
    if stats is None:
        return "—"
    if stats.p25_ms is None or stats.p75_ms is None:
        return _number(stats.p50_ms)
    return f"{stats.p50_ms:.4g} ({stats.p25_ms:.4g}–{stats.p75_ms:.4g})"


def _speedup(row: Any) -> str:
    """`1.29× (0.95–1.41×) ≈ within noise`: the speedup, its interval, and whether it is one."""
    if row.speedup is None:
        return "—"
    text = f"{row.speedup:.2f}×"
    if row.speedup_low is not None and row.speedup_high is not None:
        text += f" ({row.speedup_low:.2f}–{row.speedup_high:.2f}×)"
    return text + (" ≈ within noise" if row.within_noise else "")


def _latency_section(latency: LatencyMetrics | None) -> list[str]:
    """Dense vs sparse p50 (interquartile range) and p95 per runtime and shape, the speedup
    with its interval and a "within noise" mark, and the runtimes that could not run here."""
    if latency is None:
        return []
    stats = {(row.runtime, row.variant, row.shape): row.stats for row in latency.results}
    rows = [
        [row.runtime, f"`{row.shape}`",
         _with_quartiles(stats.get((row.runtime, "dense", row.shape))),
         _with_quartiles(stats.get((row.runtime, "sparse", row.shape))),
         _number(row.dense_p95_ms), _number(row.sparse_p95_ms), _speedup(row)]
        for row in latency.comparison
    ]
    setup = (f"{latency.iterations} timed iterations after {latency.warmup} "
             f"warm-up, {latency.threads} threads; p50 (p25–p75) in ms; speedup = dense p50 / "
             "sparse p50, in brackets the speedups the quartiles allow (dense p25 / sparse p75 "
             "to dense p75 / sparse p25): one that contains 1.0 is within noise, not a speedup.")
    lines = ["## Latency", "", setup, ""]
    if rows:
        lines += [*_table(["Runtime", "Shape", "Dense p50 ms", "Sparse p50 ms", "Dense p95 ms",
                           "Sparse p95 ms", "Speedup"], rows), ""]
    tensorrt = latency.tensorrt
    if tensorrt is not None:
        picked = (f"TensorRT picked sparse tactics for **{tensorrt.sparse_tactics}** of "
                  f"{tensorrt.eligible_layers} eligible layers.")
        lines += [picked, ""]
    unavailable = [f"- `{name}`: unavailable ({runtime.reason})"
                   for name, runtime in latency.runtimes.items() if not runtime.available]
    return [*lines, *unavailable, ""] if unavailable else lines


def _layers_section(sparsity: SparsityRecord | None) -> list[str]:
    if sparsity is None:
        return []
    layers = sparsity.report.layers
    heading = "## Sparsity"
    intro = f"Overall: **{_percent(sparsity.report.overall)}** over {len(layers)} layers"
    intro += " · pattern " + ("valid ✅" if sparsity.report.valid else "violated ❌")
    rows = [
        [f"`{name}`", _percent(layer.sparsity), layer.pattern, "✅" if layer.valid else "❌"]
        for name, layer in layers.items()
    ]
    table = _table(["Layer", "Sparsity", "Pattern", "Valid"], rows) if rows else []
    if len(rows) > COLLAPSE_LAYERS_OVER:
        summary = f"<summary>Per-layer sparsity ({len(rows)} layers)</summary>"
        table = ["<details>", summary, "", *table, "", "</details>"]
    return [heading, "", intro, "", *table, ""] if table else [heading, "", intro, ""]


def _stages_section(stages: list[StageRecord]) -> list[str]:
    if not stages:
        return []
    icons = {"ok": "✅ ok", "failed": "❌ failed", "skipped": "⏭️ skipped"}
    rows = [[s.name, icons.get(s.status, s.status), s.cache, f"{s.seconds:.2f}"] for s in stages]
    total = sum(s.seconds for s in stages if math.isfinite(s.seconds))
    rows.append(["**total**", "", "", f"**{total:.2f}**"])
    lines = ["## Stages", "", *_table(["Stage", "Status", "Cache", "Seconds"], rows), ""]
    for stage in stages:
        if stage.status == "failed":
            lines.extend([f"> **{stage.name}** failed: {stage_failure_message(stage)}", ""])
    return lines


def _artifacts_section(artifacts: list[ArtifactRecord]) -> list[str]:
    if not artifacts:
        return []
    rows = [
        [f"`{a.path}`", a.format, human_bytes(a.bytes), f"`{a.sha256[:SHA_SHOWN]}`"]
        for a in sorted(artifacts, key=lambda a: a.path)
    ]
    total = human_bytes(sum(a.bytes for a in artifacts))
    table = _table(["Path", "Format", "Size", "sha256"], rows)
    return [f"## Artifacts ({len(artifacts)} files, {total})", "", *table, ""]


def _charts_section(charts: dict[str, str] | None) -> list[str]:
    if not charts:
        return []
    images = [
        f"![{name}]({Path(rel).as_posix().replace(' ', '%20')})" for name, rel in charts.items()
    ]
    return ["## Charts", "", *images, ""]


def render_summary_md(record: RunRecord, charts: dict[str, str] | None = None) -> str:
    """The step summary as Markdown text (see `write_summary_md`)."""
    lines = [
        *_title(record),
        *_overview(record),
        *_gates_section(record.gates),
        *_metrics_section(record.metrics.perplexity),
        *_accuracy_section(record.metrics.lm_eval),
        *_latency_section(record.metrics.latency),
        *_layers_section(record.sparsity),
        *_stages_section(record.stages),
        *_artifacts_section(record.artifacts),
        *_charts_section(charts),
    ]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_summary_md(
    record: RunRecord, path: PathLike, charts: dict[str, str] | None = None
) -> Path:
    """Write a GitHub Actions step summary: status, model, plan, gates, metrics, layers, stages.

    `charts` maps an image's alt text to its path relative to the summary, e.g.
    `{"per-layer sparsity": "charts/sparsity.png"}`. Tables with many layers are collapsed in a
    `<details>` block so the summary stays readable for real models.
    """
    return atomic_write_bytes(path, render_summary_md(record, charts).encode("utf-8"))
