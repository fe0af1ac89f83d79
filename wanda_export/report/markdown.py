"""Markdown for people: table cells, compact numbers and percentages, and tables, shared by
summary.md, the sweep comparison, `diff --md` and the model card."""

from __future__ import annotations

import math
from typing import Any


def cell(value: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", "<br>")


def number(value: Any) -> str:
    """A compact number for humans: 6 significant digits, an em dash for nothing."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def percent(value: Any) -> str:
    """A fraction as a percentage with two decimals, an em dash for nothing."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "—"
    return "NaN" if math.isnan(value) else f"{value * 100:.2f}%"


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """The lines of a Markdown table; every cell escaped."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines.extend("| " + " | ".join(cell(value) for value in row) + " |" for row in rows)
    return lines
