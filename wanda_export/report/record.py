"""The run record: everything a pipeline run produced, in the shape report.json publishes.

report.json is a versioned contract other tools read. Field names here are stable: add fields,
never rename them. Bump SCHEMA_VERSION only for an incompatible change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

SCHEMA_VERSION = 1


@dataclass
class StageRecord:
    """One stage of the run: whether it worked, whether its output came from the cache, its time."""

    name: str
    status: Literal["ok", "failed", "skipped"] = "ok"
    cache: Literal["hit", "miss", "n/a"] = "n/a"
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class GateResult:
    """One release gate: its measured value against its threshold."""

    name: str
    passed: bool
    value: float | str | None
    threshold: float | str | None
    message: str = ""


@dataclass
class ArtifactRecord:
    """A file the run shipped, relative to the output directory."""

    path: str
    format: str
    bytes: int
    sha256: str


@dataclass
class RunRecord:
    """The whole run. `to_dict()` is exactly the content of report.json."""

    tool_version: str
    config_digest: str
    model: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] | None = None
    stages: list[StageRecord] = field(default_factory=list)
    sparsity: dict[str, Any] | None = None  # {"overall", "valid", "pattern", "layers": {...}}
    metrics: dict[str, Any] = field(default_factory=dict)  # {"perplexity": {"dense", "pruned"}}
    gates: list[GateResult] = field(default_factory=list)
    artifacts: list[ArtifactRecord] = field(default_factory=list)
    status: Literal["passed", "failed"] = "passed"
    exit_code: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with `schema_version` first."""
        return {"schema_version": SCHEMA_VERSION, **asdict(self)}
