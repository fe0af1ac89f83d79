"""The files a run publishes: report.json, the artifact manifest and JUnit XML (summary.md is
`summary.py`'s).

Every writer is deterministic (same record, same bytes: the only time is the record's own
`created`, and the ordering is stable) so outputs can be diffed and cached, and atomic (write
a sibling `.tmp`, then `os.replace`) so a reader never sees a half-written file, even when the
run is interrupted.
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
from wanda_export.report.record import ArtifactRecord, RunRecord, StageRecord

MANIFEST_SCHEMA_VERSION = 1
JUNIT_SUITE = "wanda-export gates"

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


def stage_failure_message(stage: StageRecord) -> str:
    """What a failed stage says went wrong (its detail's error, message or reason)."""
    detail = stage.detail or {}
    for key in ("error", "message", "reason"):
        if detail.get(key):
            return str(detail[key])
    return f"stage {stage.name} failed"


def write_junit(record: RunRecord, path: PathLike) -> Path:
    """Write JUnit XML: one test case per gate (classname "gates"), failed with its message,
    and one per benchmark runtime ("runtimes"), skipped with the reason when it could not run
    here. Stages are not tests: their times are the suite's properties and total time.

    CI systems render JUnit natively, so each failed gate shows up as a failed test.
    """
    latency = record.metrics.latency
    runtimes = {} if latency is None else latency.runtimes
    failures = sum(1 for g in record.gates if not g.passed)
    skipped = sum(1 for runtime in runtimes.values() if not runtime.available)
    total_seconds = sum(s.seconds for s in record.stages if math.isfinite(s.seconds))
    suite = ET.Element("testsuite", {
        "name": JUNIT_SUITE, "tests": str(len(record.gates) + len(runtimes)),
        "failures": str(failures), "errors": "0", "skipped": str(skipped),
        "time": f"{total_seconds:.3f}"})
    properties = ET.SubElement(suite, "properties") if record.stages else None
    for stage in record.stages:
        seconds = stage.seconds if math.isfinite(stage.seconds) else 0.0
        ET.SubElement(properties, "property", {"name": f"stage.{stage.name}",
                                               "value": f"{stage.status} {seconds:.3f}s"})
    for gate in record.gates:
        case = ET.SubElement(
            suite, "testcase", {"classname": "gates", "name": gate.name, "time": "0"}
        )
        if not gate.passed:
            failure = ET.SubElement(case, "failure", {"message": gate.message or "gate failed"})
            failure.text = f"value={_exact(gate.value)}, threshold={_exact(gate.threshold)}"
    for name, runtime in runtimes.items():
        case = ET.SubElement(suite, "testcase", {"classname": "runtimes", "name": name,
                                                 "time": "0"})
        if not runtime.available:
            ET.SubElement(case, "skipped", {"message": f"unavailable: {runtime.reason}"})
    ET.indent(suite, space="  ")
    data = ET.tostring(suite, encoding="utf-8", xml_declaration=True) + b"\n"
    return atomic_write_bytes(path, data)
