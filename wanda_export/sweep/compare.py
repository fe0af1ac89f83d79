"""The sweep's comparison: one row per variant (its values, plan, sparsity, perplexity, accuracy,
gates, exit code, and where its calibration came from), written as report.json, summary.md and
a chart into the sweep's folder. Rewritten after every variant, so an interrupted sweep keeps a
comparison of what finished.

`comparison(result)` is pure (the reports in, a JSON-ready dict out); `write_comparison` writes.
"""

from __future__ import annotations

import json
from typing import Any

from wanda_export import __version__
from wanda_export.atomic import atomic_write_bytes
from wanda_export.errors import EXIT_KINDS
from wanda_export.report.markdown import number, percent, table
from wanda_export.report.sweep_chart import sweep_chart
from wanda_export.report.writers import json_safe
from wanda_export.sweep.result import EXIT_SEVERITY, SweepResult, VariantResult

SCHEMA_VERSION = 1
CHART = "charts/sweep.png"


def _calibration(report: dict[str, Any] | None) -> dict[str, Any]:
    """Where a variant's statistics came from: the calibrate stage's cache hit or miss, key,
    mode and the entry that served it (`n/a` without a calibrate stage or report)."""
    stage = next((s for s in (report or {}).get("stages", []) if s["name"] == "calibrate"), None)
    if stage is None:
        return {"cache": "n/a"}
    detail = stage.get("detail") or {}
    cache = stage["cache"] if stage["status"] != "skipped" else "n/a"
    return {"cache": cache, "mode": detail.get("mode"), "key": detail.get("key"),
            "served_by": detail.get("served_by")}


def accuracy_of(report: dict[str, Any] | None) -> dict[str, float]:
    """{task: pruned score} of the lm-eval tasks a report measured (`metrics.lm_eval`)."""
    tasks = ((report or {}).get("metrics") or {}).get("lm_eval") or {}
    return {task: row["pruned"] for task, row in sorted(tasks.items())
            if isinstance(row, dict) and isinstance(row.get("pruned"), (int, float))}


def variant_row(variant: VariantResult) -> dict[str, Any]:
    """The comparison's row of one variant."""
    report = variant.report or {}
    plan, perplexity = report.get("plan") or {}, (report.get("metrics") or {}).get("perplexity")
    return {
        "name": variant.name, "values": variant.values, "status": variant.status,
        "exit_code": variant.exit_code, "message": variant.message,
        "release": variant.name if variant.report is not None else None,
        "method": plan.get("method"), "sparsity": plan.get("sparsity"),
        "pattern": plan.get("pattern"),
        "overall_sparsity": (report.get("sparsity") or {}).get("overall"),
        "perplexity": perplexity, "accuracy": accuracy_of(report),
        "failed_gates": [g["name"] for g in report.get("gates", []) if not g["passed"]],
        "calibration": _calibration(variant.report),
        "seconds": round(sum(s["seconds"] for s in report.get("stages", [])), 3),
    }


def calibration_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How often the sweep computed activation statistics and which variants read them from the
    cache, with one sentence saying so."""
    computed = [row["name"] for row in rows if row["calibration"]["cache"] == "miss"]
    cached = [row["name"] for row in rows if row["calibration"]["cache"] == "hit"]
    modes = {row["calibration"].get("mode") for row in rows if row["calibration"]["cache"] != "n/a"}
    if not computed and not cached:
        text = "no variant calibrated"
    elif len(computed) == 1:
        text = (f"calibration computed once (by {computed[0]}); "
                f"{len(cached)} variant(s) read it from the cache")
    else:
        text = (f"calibration computed {len(computed)} times; {len(cached)} variant(s) read it "
                "from the cache")
    if "sequential" in modes:
        text += ("; sequential statistics depend on the pruning (method, sparsity, pattern), "
                 "so each such variant calibrates: --set calibrate.mode=dense calibrates once")
    return {"computed": len(computed), "computed_by": computed, "from_cache": cached,
            "modes": sorted(mode for mode in modes if mode), "text": text}


def comparison(result: SweepResult) -> dict[str, Any]:
    """The sweep's report.json: the grid, one row per variant in grid order, the calibration
    summary, the status and the exit code (`EXIT_SEVERITY` says which failure counts most)."""
    rows = [variant_row(variant) for variant in result.variants]
    finished = [row for row in rows if row["status"] != "pending"]
    status = ("interrupted" if result.interrupted else
              "running" if len(finished) < len(rows) else
              "passed" if result.exit_code == 0 else "failed")
    return {
        "schema_version": SCHEMA_VERSION, "kind": "sweep", "tool_version": __version__,
        "pipeline": result.file, "grid": result.grid, "status": status,
        "exit_code": result.exit_code,
        "exit_code_rule": "the worst variant's, in the order "
                          + " > ".join(str(code) for code in EXIT_SEVERITY)
                          + "; 130 when interrupted",
        "calibration": calibration_summary(rows), "variants": rows,
    }


def _perplexity_cells(perplexity: dict[str, Any] | None) -> list[str]:
    perplexity = perplexity or {}
    return [number(perplexity.get(key)) for key in ("dense", "pruned", "ratio_to_dense")]


def render_comparison_md(data: dict[str, Any], chart: str | None) -> str:
    """summary.md of a sweep: the status, the calibration sentence, a table of the variants
    and the chart."""
    icon = {"passed": "✅", "failed": "❌", "interrupted": "⏹", "running": "⏳"}[data["status"]]
    lines = [f"# {icon} wanda-export sweep {data['status']} (exit code {data['exit_code']})", "",
             f"**Pipeline:** `{data['pipeline']}`  ", "**Grid:** " + "; ".join(
                 f"`{key}` = {', '.join(map(str, values))}" for key, values in data["grid"].items()),
             "", f"**Calibration:** {data['calibration']['text']}.", ""]
    tasks = sorted({task for row in data["variants"] for task in row["accuracy"]})
    header = ["variant", "method", "sparsity", "pattern", "ppl dense", "ppl pruned", "ratio",
              *tasks, "calibration", "gates", "exit"]
    rows = []
    for row in data["variants"]:
        code = row["exit_code"]
        gates = ("failed: " + ", ".join(row["failed_gates"]) if row["failed_gates"]
                 else "passed" if code == 0 else "—")
        exit_text = "pending" if code is None else f"{code} ({EXIT_KINDS.get(code, 'ok')})"
        rows.append([row["name"], row["method"] or "—", percent(row["overall_sparsity"]),
                     row["pattern"] or "—", *_perplexity_cells(row["perplexity"]),
                     *(number(row["accuracy"].get(task)) for task in tasks),
                     row["calibration"]["cache"], gates, exit_text])
    lines += table(header, rows)
    errors = [row for row in data["variants"] if row["message"]]
    if errors:
        lines += ["", "## Errors", ""]
        lines += [f"- **{row['name']}** (exit {row['exit_code']}): "
                  + row["message"].splitlines()[0] for row in errors]
    if chart:
        lines += ["", "## Chart", "", f"![perplexity against sparsity]({chart})"]
    lines.append("")
    return "\n".join(lines)


def comparison_text(data: dict[str, Any]) -> str:
    """The comparison for a terminal: the status, the calibration sentence, a line a variant."""
    lines = [f"sweep {data['status']} (exit code {data['exit_code']})",
             f"  {data['calibration']['text']}"]
    lines += [f"  {row['name']}: {row['status']} (exit {row['exit_code']})"
              + (f": {row['message'].splitlines()[0]}" if row["message"] else "")
              for row in data["variants"]]
    return "\n".join(lines)


def write_comparison(result: SweepResult) -> dict[str, Any]:
    """Write report.json, summary.md and the chart (when matplotlib is there) into the sweep's
    folder, each atomically; return the comparison."""
    data = comparison(result)
    out = result.out_dir
    chart = sweep_chart(data["variants"], out / CHART)
    atomic_write_bytes(out / "report.json",
                       (json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n").encode("utf-8"))
    atomic_write_bytes(out / "summary.md",
                       render_comparison_md(data, CHART if chart else None).encode("utf-8"))
    return data
