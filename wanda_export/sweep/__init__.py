"""Sweeps: one pipeline run per combination of `--grid` values, each into its own release
folder, and a comparison of them (report.json, summary.md, a chart). `run_sweep` runs them
through the one pipeline runner; `grid.py` expands the grid; `compare.py` writes the comparison.
"""

from wanda_export.sweep.compare import comparison, comparison_text, write_comparison
from wanda_export.sweep.grid import Axis, Variant, expand, parse_axis
from wanda_export.sweep.result import EXIT_SEVERITY, SweepResult, VariantResult, worst_exit
from wanda_export.sweep.runner import run_sweep

__all__ = [
    "EXIT_SEVERITY",
    "Axis",
    "SweepResult",
    "Variant",
    "VariantResult",
    "comparison",
    "comparison_text",
    "expand",
    "parse_axis",
    "run_sweep",
    "worst_exit",
    "write_comparison",
]
