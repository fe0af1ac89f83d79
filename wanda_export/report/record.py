"""The run record: everything a pipeline run produced; `RunRecord.to_dict()` is report.json.

report.json is a versioned contract other tools read. Field names here are stable: add fields,
never rename them. Bump SCHEMA_VERSION only for an incompatible change. The measurements are
typed (see `metrics.py`), so stages write them and gates read them by attribute.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from wanda_export.report.metrics import Metrics, SparsityRecord

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


@dataclass(slots=True)
class RunRecord:
    """The whole run. `to_dict()` is exactly the content of report.json."""

    tool_version: str
    config_digest: str
    created: str | None = None  # UTC, ISO 8601 (report/provenance.py)
    config: dict[str, Any] | None = None  # the resolved config the digest is of
    versions: dict[str, str | None] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] | None = None
    stages: list[StageRecord] = field(default_factory=list)
    sparsity: SparsityRecord | None = None  # None until the mask or verify stage ran
    metrics: Metrics = field(default_factory=Metrics)
    gates: list[GateResult] = field(default_factory=list)
    artifacts: list[ArtifactRecord] = field(default_factory=list)
    status: Literal["passed", "failed"] = "passed"
    exit_code: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with `schema_version` first; the one place report.json is shaped.

        When the run was benchmarked, the top-level `latency` array holds one row per runtime x
        variant x shape, the same rows as `metrics.latency.results`.
        """
        data = {
            "schema_version": SCHEMA_VERSION,
            "tool_version": self.tool_version,
            "created": self.created,
            "config_digest": self.config_digest,
            "config": copy.deepcopy(self.config),
            "versions": dict(self.versions),
            "host": copy.deepcopy(self.host),
            "model": copy.deepcopy(self.model),
            "plan": copy.deepcopy(self.plan),
            "stages": [asdict(stage) for stage in self.stages],
            "sparsity": None if self.sparsity is None else self.sparsity.to_dict(),
            "metrics": self.metrics.to_dict(),
        }
        if self.metrics.latency is not None:
            data["latency"] = [row.to_dict() for row in self.metrics.latency.results]
        return data | {
            "gates": [asdict(gate) for gate in self.gates],
            "artifacts": [asdict(artifact) for artifact in self.artifacts],
            "status": self.status,
            "exit_code": self.exit_code,
        }
