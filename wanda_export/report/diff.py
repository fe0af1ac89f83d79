"""Two runs side by side (`wanda-export diff OLD NEW`): their metrics, gates and plan with the
change of each, like `dvc metrics diff`. `diff_reports` is pure (two report.json dicts in, a
JSON-ready dict out); `render_diff_md` renders it for a PR comment and `diff_tables` as rich
tables for a terminal; `load_report` reads a release folder or a report.json file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from wanda_export.errors import ConfigError
from wanda_export.report.markdown import number, table

DIFF_SCHEMA_VERSION = 1
MAX_REPORT_BYTES = 64 << 20  # a report.json is kilobytes; per-layer sparsity of a 70B is < 10 MiB
# Which way is better, by the end of a metric's name (lower first: perplexity.pruned is lower).
LOWER_IS_BETTER = ("perplexity.dense", "perplexity.pruned", "ratio_to_dense", "_ms", "bytes",
                   "max_abs_diff", "max_rel_diff")
HIGHER_IS_BETTER = (".pruned",)  # lm-eval scores of the pruned model
HIGHER_ANYWHERE = ("speedup", "recovery")


def load_report(path: str | Path) -> dict[str, Any]:
    """The report.json of a release folder, or a report.json file; ConfigError (exit 2) naming
    the path when it is missing, unreadable, not JSON or not a run's report."""
    path = Path(path).expanduser()
    file = path / "report.json" if path.is_dir() else path
    try:
        if file.stat().st_size > MAX_REPORT_BYTES:
            raise ConfigError(f"{file} is over {MAX_REPORT_BYTES >> 20} MiB; not a report.json")
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        what = "holds no report.json" if path.is_dir() else "does not exist"
        raise ConfigError(f"{path} {what}; give a release folder or its report.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"cannot read {file} as a report: {error}") from None
    if not isinstance(data, dict) or "schema_version" not in data or "metrics" not in data:
        kind = data.get("kind") if isinstance(data, dict) else None
        why = "a sweep's comparison; diff two of its variants" if kind == "sweep" else (
            "not a wanda-export report (no schema_version or metrics)")
        raise ConfigError(f"{file} is {why}")
    return data


def _leaves(value: Any, prefix: str) -> dict[str, Any]:
    """Numeric and true/false leaves of a metrics tree by dotted name; a list of rows naming a
    runtime and a shape (latency comparisons) is keyed by them; other lists and text are left
    out (they are measured facts, not quantities to compare)."""
    if isinstance(value, (bool, int, float)):
        return {prefix: value}
    found: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            found |= _leaves(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        for row in value:
            if isinstance(row, dict) and "runtime" in row and "shape" in row:
                name = f"{prefix}.{row['runtime']} {row['shape']}"
                if "variant" in row:
                    name += f" {row['variant']}"
                found |= _leaves({k: v for k, v in row.items()
                                  if k not in ("runtime", "shape", "variant")}, name)
    return found


def metric_leaves(report: dict[str, Any]) -> dict[str, Any]:
    """The quantities a diff compares: every numeric leaf of `metrics`, and the overall
    sparsity."""
    leaves = _leaves(report.get("metrics") or {}, "")
    overall = (report.get("sparsity") or {}).get("overall")
    if overall is not None:
        leaves = {"sparsity.overall": overall, **leaves}
    return leaves


def direction(name: str) -> str | None:
    """"lower" or "higher" when that way is better for metric `name`, else None."""
    if any(part in name for part in HIGHER_ANYWHERE):
        return "higher"
    if name.endswith(LOWER_IS_BETTER):
        return "lower"
    return "higher" if name.endswith(HIGHER_IS_BETTER) else None


def _change(old: Any, new: Any, better: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {"old": old, "new": new, "delta": None, "relative": None,
                           "verdict": "same" if old == new else "changed"}
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (old, new))
    if numbers and all(math.isfinite(v) for v in (old, new)):
        row["delta"] = new - old
        row["relative"] = (new - old) / abs(old) if old else None
        if new != old and better is not None:
            row["verdict"] = "better" if (new < old) == (better == "lower") else "worse"
    elif old is None or new is None:
        row["verdict"] = "added" if old is None else "removed"
    return row


def _gate_row(name: str, old: dict | None, new: dict | None) -> dict[str, Any]:
    def side(gate: dict | None) -> dict | None:
        return None if gate is None else {key: gate.get(key)
                                          for key in ("passed", "value", "threshold")}

    if old is None or new is None:
        verdict = "added" if old is None else "removed"
    elif old["passed"] != new["passed"]:
        verdict = "fixed" if new["passed"] else "broken"
    else:
        verdict = "same" if old.get("value") == new.get("value") else "changed"
    return {"name": name, "old": side(old), "new": side(new), "verdict": verdict,
            "message": (new or old or {}).get("message", "")}


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    model = report.get("model") or {}
    return {"status": report.get("status"), "exit_code": report.get("exit_code"),
            "tool_version": report.get("tool_version"), "config_digest":
            report.get("config_digest"), "model": model.get("source"),
            "fingerprint": model.get("fingerprint")}


def diff_reports(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The diff of two run reports: each side's status, and rows for every metric (old, new,
    delta, relative change, better/worse where the direction is known), gate (passed, value,
    fixed/broken) and plan setting, in the old report's order with the new ones after."""
    old_metrics, new_metrics = metric_leaves(old), metric_leaves(new)
    metrics = [{"name": name, **_change(old_metrics.get(name), new_metrics.get(name),
                                        direction(name))}
               for name in dict.fromkeys([*old_metrics, *new_metrics])]
    old_gates = {gate["name"]: gate for gate in old.get("gates") or []}
    new_gates = {gate["name"]: gate for gate in new.get("gates") or []}
    gates = [_gate_row(name, old_gates.get(name), new_gates.get(name))
             for name in dict.fromkeys([*old_gates, *new_gates])]
    old_plan, new_plan = old.get("plan") or {}, new.get("plan") or {}
    plan = [{"name": key, **_change(old_plan.get(key), new_plan.get(key), None)}
            for key in dict.fromkeys([*old_plan, *new_plan])]
    return {"schema_version": DIFF_SCHEMA_VERSION, "old": _summary(old), "new": _summary(new),
            "metrics": metrics, "gates": gates, "plan": plan,
            "regressions": [row["name"] for row in metrics if row["verdict"] == "worse"]
            + [row["name"] for row in gates if row["verdict"] == "broken"]}


def _delta_text(row: dict[str, Any]) -> str:
    if row["delta"] is None:
        return row["verdict"] if row["verdict"] != "same" else ""
    relative = "" if row["relative"] is None else f" ({row['relative'] * 100:+.1f}%)"
    mark = {"better": " ✅", "worse": " ⚠️"}.get(row["verdict"], "")
    return f"{row['delta']:+.6g}{relative}{mark}" if row["delta"] else "0"


def _gate_cell(side: dict | None) -> str:
    if side is None:
        return "—"
    return f"{'pass' if side['passed'] else 'FAIL'} ({number(side['value'])})"


def diff_rows(diff: dict[str, Any]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """The diff as {section: (header, rows of text)}: metrics, gates, plan."""
    return {
        "Metrics": (["metric", "old", "new", "change"],
                    [[r["name"], number(r["old"]), number(r["new"]), _delta_text(r)]
                     for r in diff["metrics"]]),
        "Gates": (["gate", "old", "new", "change"],
                  [[r["name"], _gate_cell(r["old"]), _gate_cell(r["new"]), r["verdict"]]
                   for r in diff["gates"]]),
        "Plan": (["setting", "old", "new", "change"],
                 [[r["name"], number(r["old"]), number(r["new"]),
                   "" if r["verdict"] == "same" else r["verdict"]] for r in diff["plan"]]),
    }


def _headline(diff: dict[str, Any]) -> str:
    old, new = diff["old"], diff["new"]
    regressions = diff["regressions"]
    worse = f"{len(regressions)} regression(s): {', '.join(regressions)}" if regressions else (
        "no regression")
    return (f"{old['status']} (exit {old['exit_code']}) → {new['status']} "
            f"(exit {new['exit_code']}); {worse}")


def render_diff_md(diff: dict[str, Any]) -> str:
    """The diff as Markdown for a pull-request comment: a headline, then metrics, gates and
    plan tables."""
    lines = ["## wanda-export diff", "", _headline(diff), ""]
    for title, (header, rows) in diff_rows(diff).items():
        if rows:
            lines += [f"### {title}", "", *table(header, rows), ""]
    return "\n".join(lines)


def diff_tables(diff: dict[str, Any]) -> list[Any]:
    """The diff as rich renderables for a terminal: the headline and one table per section."""
    from rich.table import Table
    from rich.text import Text

    shown: list[Any] = [Text(_headline(diff))]
    for title, (header, rows) in diff_rows(diff).items():
        if rows:
            grid = Table(title=title, title_justify="left")
            for index, name in enumerate(header):
                grid.add_column(name, justify="left" if index == 0 else "right")
            for row in rows:
                grid.add_row(*row)
            shown.append(grid)
    return shown
