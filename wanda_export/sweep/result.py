"""The outcome of a sweep: each variant's exit code, message and report, and the sweep's exit
code, the worst of its variants' (`EXIT_SEVERITY`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wanda_export.errors import (
    EXIT_CONFIG,
    EXIT_ENVIRONMENT,
    EXIT_GATE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
)

# The sweep's exit code is its worst variant's, worst first: a bug (1) says nothing about the
# release; a machine that lacks something (4) leaves the variant unmeasured; a bad variant (2)
# is the user's to fix; a failed gate (3) is a measured result. 130: interrupted, always.
EXIT_SEVERITY = (EXIT_INTERNAL, EXIT_ENVIRONMENT, EXIT_CONFIG, EXIT_GATE, EXIT_OK)
STATUS = {EXIT_OK: "passed", EXIT_GATE: "failed"}


def worst_exit(codes: list[int]) -> int:
    """The sweep's exit code: the first of `EXIT_SEVERITY` among `codes` (0 for none)."""
    return next((code for code in EXIT_SEVERITY if code in codes), EXIT_OK)


@dataclass
class VariantResult:
    """One variant: its name, grid values, exit code, the message of a failure and its report
    (None when it did not run to the end, or has not run yet: `pending`)."""

    name: str
    values: dict[str, Any]
    exit_code: int | None = None
    message: str = ""
    report: dict[str, Any] | None = None

    @property
    def status(self) -> str:
        """passed, failed (a gate), error (exit 1, 2 or 4), or pending."""
        if self.exit_code is None:
            return "pending"
        return STATUS.get(self.exit_code, "error")


@dataclass
class SweepResult:
    """The whole sweep: the pipeline, the grid, every variant in grid order, where it went."""

    file: str
    out_dir: Path
    grid: dict[str, list[Any]]
    variants: list[VariantResult] = field(default_factory=list)
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        """130 when interrupted, else the worst variant's exit code (`EXIT_SEVERITY`)."""
        if self.interrupted:
            return EXIT_INTERRUPTED
        return worst_exit([v.exit_code for v in self.variants if v.exit_code is not None])
