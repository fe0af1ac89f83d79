"""The files a run publishes: report.json, the artifact manifest, JUnit XML and a Markdown summary.

Every writer is deterministic (same record, same bytes: no timestamps, stable ordering) so
outputs can be diffed and cached, and atomic (write a sibling `.tmp`, then `os.replace`) so a
reader never sees a half-written file, even when the run is interrupted.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from wanda_export.atomic import atomic_write_bytes
from wanda_export.report.gates import gate_summary
from wanda_export.report.metrics import (
    LatencyMetrics,
    PerplexityMetrics,
    SparsityRecord,
    TaskAccuracy,
)
from wanda_export.report.record import ArtifactRecord, GateResult, RunRecord, StageRecord

MANIFEST_SCHEMA_VERSION = 1
JUNIT_SUITE = "wanda-export gates"
COLLAPSE_LAYERS_OVER = 20
SHA_SHOWN = 12

PathLike = str | os.PathLike[str]


def json_safe(value: Any) -> Any:
    """`value` with NaN/inf floats as None and numpy/torch scalars as Python numbers.

    Strict JSON has no NaN or Infinity; other tools must be able to parse report.json.
    """
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if callable(getattr(value, "item", None)):
        return json_safe(value.item())
    return value


def _json_bytes(data: Any) -> bytes:
    text = json.dumps(json_safe(data), indent=2, sort_keys=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


def write_report_json(record: RunRecord, path: PathLike) -> Path:
    """Write report.json: `record.to_dict()` as indented strict JSON (NaN/inf become null).

    report.json is the versioned contract other tools read; see `record.py` for the fields.
    """
    return atomic_write_bytes(path, _json_bytes(record.to_dict()))


def write_manifest(artifacts: list[ArtifactRecord], path: PathLike) -> Path:
    """Write the artifact manifest `{"schema_version": 1, "artifacts": [...]}`, sorted by path.

    The manifest lets a consumer check every shipped file's size and sha256 before using it.
    """
    entries = [
        {"path": a.path, "format": a.format, "bytes": a.bytes, "sha256": a.sha256}
        for a in sorted(artifacts, key=lambda a: a.path)
    ]
    return atomic_write_bytes(
        path, _json_bytes({"schema_version": MANIFEST_SCHEMA_VERSION, "artifacts": entries})
    )


def size_and_sha256(path: PathLike) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a file, streamed so big shards need no memory."""
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
        return handle.tell(), digest


def _relative(relative_path: str | PurePosixPath) -> str:
    """A forward-slash path relative to the output directory; absolute paths are refused."""
    posix = PurePosixPath(Path(relative_path).as_posix())
    if posix.is_absolute() or ".." in posix.parts:
        raise ValueError(f"artifact path {relative_path!r} is not inside the output directory")
    return str(posix)


def hash_artifacts(out_dir: PathLike, entries: Iterable[tuple[str, str]]) -> list[ArtifactRecord]:
    """Describe files under `out_dir`: `(relative_path, format)` pairs to size + sha256 records.

    Records keep forward-slash relative paths so the manifest is the same on every OS.
    """
    root = Path(out_dir)
    records = []
    for relative_path, fmt in entries:
        rel = _relative(relative_path)
        size, sha = size_and_sha256(root / rel)
        records.append(ArtifactRecord(path=rel, format=fmt, bytes=size, sha256=sha))
    return records


def collect_artifacts(out_dir: PathLike, directory_formats: dict[str, str]) -> list[ArtifactRecord]:
    """Hash every file inside each relative directory, e.g. `{"model": "safetensors-checkpoint"}`.

    Files are listed recursively and sorted by path; a missing directory raises
    FileNotFoundError, since an export that produced nothing must not ship an empty manifest.
    """
    root = Path(out_dir)
    entries: list[tuple[str, str]] = []
    for directory, fmt in directory_formats.items():
        folder = root / _relative(directory)
        if not folder.is_dir():
            raise FileNotFoundError(f"artifact directory {folder} does not exist")
        entries.extend(
            (path.relative_to(root).as_posix(), fmt) for path in folder.rglob("*") if path.is_file()
        )
    return hash_artifacts(root, sorted(entries))


def _exact(value: Any) -> str:
    """A value as JUnit text: full float precision, `None` for nothing."""
    return repr(value) if isinstance(value, float) else str(value)


def _stage_failure_message(stage: StageRecord) -> str:
    detail = stage.detail or {}
    for key in ("error", "message", "reason"):
        if detail.get(key):
            return str(detail[key])
    return f"stage {stage.name} failed"


def write_junit(record: RunRecord, path: PathLike) -> Path:
    """Write JUnit XML: one test case per gate (classname "gates") and per stage ("stages").

    CI systems render JUnit natively, so each failed gate or stage shows up as a failed test
    with its message. Gate times are 0; stage times are the stage's seconds.
    """
    failures = sum(1 for g in record.gates if not g.passed)
    failures += sum(1 for s in record.stages if s.status == "failed")
    skipped = sum(1 for s in record.stages if s.status == "skipped")
    total_seconds = sum(s.seconds for s in record.stages if math.isfinite(s.seconds))
    suite = ET.Element(
        "testsuite",
        {
            "name": JUNIT_SUITE,
            "tests": str(len(record.gates) + len(record.stages)),
            "failures": str(failures),
            "errors": "0",
            "skipped": str(skipped),
            "time": f"{total_seconds:.3f}",
        },
    )
    for gate in record.gates:
        case = ET.SubElement(
            suite, "testcase", {"classname": "gates", "name": gate.name, "time": "0"}
        )
        if not gate.passed:
            failure = ET.SubElement(case, "failure", {"message": gate.message or "gate failed"})
            failure.text = f"value={_exact(gate.value)}, threshold={_exact(gate.threshold)}"
    for stage in record.stages:
        seconds = stage.seconds if math.isfinite(stage.seconds) else 0.0
        case = ET.SubElement(
            suite, "testcase", {"classname": "stages", "name": stage.name, "time": f"{seconds:.3f}"}
        )
        if stage.status == "failed":
            message = _stage_failure_message(stage)
            ET.SubElement(case, "failure", {"message": message}).text = message
        elif stage.status == "skipped":
            ET.SubElement(case, "skipped")
    ET.indent(suite, space="  ")
    data = ET.tostring(suite, encoding="utf-8", xml_declaration=True) + b"\n"
    return atomic_write_bytes(path, data)


def _cell(value: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", "<br>")


def _number(value: Any) -> str:
    """A compact number for humans: 6 significant digits, an em dash for nothing."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.6g}"
    return str(value)


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


def _percent(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "—"
    return "NaN" if math.isnan(value) else f"{value * 100:.2f}%"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines.extend("| " + " | ".join(_cell(value) for value in row) + " |" for row in rows)
    return lines


def _title(record: RunRecord) -> list[str]:
    icon = "✅" if record.status == "passed" else "❌"
    return [f"# {icon} wanda-export {record.status} (exit code {record.exit_code})", ""]


def _overview(record: RunRecord) -> list[str]:
    model = record.model or {}
    source = model.get("source") or model.get("path") or "default model"
    parts = [f"**Model:** `{source}`"]
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
        f"wanda-export {record.tool_version}"
    )
    return [*lines, ""]


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
            g.message,
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


def _latency_section(latency: LatencyMetrics | None) -> list[str]:
    """Dense vs sparse p50/p95 per runtime and shape, the speedup, and the runtimes that could
    not run here with their reasons."""
    if latency is None:
        return []
    rows = [
        [row.runtime, f"`{row.shape}`", _number(row.dense_p50_ms), _number(row.sparse_p50_ms),
         _number(row.dense_p95_ms), _number(row.sparse_p95_ms),
         "—" if row.speedup is None else f"{row.speedup:.2f}×"]
        for row in latency.comparison
    ]
    setup = (f"{latency.iterations} timed iterations after {latency.warmup} "
             f"warm-up, {latency.threads} threads; speedup = dense p50 / sparse p50.")
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
            lines.extend([f"> **{stage.name}** failed: {_stage_failure_message(stage)}", ""])
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
