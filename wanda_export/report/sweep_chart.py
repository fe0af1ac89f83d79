"""The sweep's chart: perplexity (and lm-eval accuracy, when the variants measured it) against
sparsity, one line per method (and per value of any other grid key). Optional like every
chart: without matplotlib it returns None; drawn on an explicit Agg canvas, byte-identical for
the same rows.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wanda_export.atomic import atomic_write_bytes
from wanda_export.report.charts import DPI, FIGSIZE, LOG_SCALE_SPREAD

SPARSITY_KEYS = ("mask.sparsity", "stages.mask.sparsity")


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def line_label(row: dict[str, Any]) -> str:
    """A line's name: the method, then every grid value but the sparsity (`wanda, 2:4`)."""
    others = [str(value) for key, value in row["values"].items()
              if key not in SPARSITY_KEYS and str(value) != row.get("method")]
    return ", ".join([row.get("method") or "?", *others])


def series(rows: Sequence[dict[str, Any]], measure) -> dict[str, list[tuple[float, float]]]:
    """{line label: [(sparsity, value), ...] sorted by sparsity} of the finished rows for which
    `measure(row)` is a number."""
    lines: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        x = _number(row.get("overall_sparsity", row.get("sparsity")))
        y = _number(measure(row))
        if not (math.isnan(x) or math.isnan(y)):
            lines.setdefault(line_label(row), []).append((x, y))
    return {label: sorted(points) for label, points in lines.items()}


def _plot(axes: Any, lines: dict[str, list[tuple[float, float]]], ylabel: str) -> None:
    from matplotlib.ticker import PercentFormatter

    for label, points in lines.items():
        axes.plot([x for x, _ in points], [y for _, y in points], marker="o", label=label)
    values = [y for points in lines.values() for _, y in points if y > 0]
    if values and max(values) / min(values) > LOG_SCALE_SPREAD:
        axes.set_yscale("log")
    axes.xaxis.set_major_formatter(PercentFormatter(1.0))
    axes.set_xlabel("sparsity (measured)")
    axes.set_ylabel(ylabel)
    axes.grid(linewidth=0.5, alpha=0.5)
    axes.legend(fontsize="small", frameon=False)


def sweep_chart(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path | None:
    """Draw the sweep's rows (`sweep/compare.variant_row`) to a PNG: pruned perplexity against
    sparsity with the dense perplexity as a dashed line, and beside it each lm-eval task's
    accuracy when measured. None without matplotlib or without a finished row."""
    perplexity = series(rows, lambda row: (row.get("perplexity") or {}).get("pruned"))
    tasks = sorted({task for row in rows for task in row.get("accuracy") or {}})
    accuracy: dict[str, list[tuple[float, float]]] = {}
    for task in tasks:
        found = series(rows, lambda row, task=task: (row.get("accuracy") or {}).get(task))
        accuracy |= {f"{label} · {task}": points for label, points in found.items()}
    if not perplexity and not accuracy:
        return None
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None

    figure = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(figure)
    panels = [(perplexity, "perplexity (pruned)")] if perplexity else []
    panels += [(accuracy, "accuracy (lm-eval)")] if accuracy else []
    for index, (lines, ylabel) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, len(panels), index)
        _plot(axes, lines, ylabel)
        dense = {_number((row.get("perplexity") or {}).get("dense")) for row in rows}
        dense = {value for value in dense if not math.isnan(value)}
        if ylabel.startswith("perplexity") and len(dense) == 1:
            value = dense.pop()
            axes.axhline(value, color="black", linestyle="--", linewidth=1.0,
                         label=f"dense {value:.4g}")
            axes.legend(fontsize="small", frameon=False)
    figure.suptitle("Sweep: quality against sparsity, one line per method")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return atomic_write_bytes(path, buffer.getvalue())
