"""Dense vs sparse latency per (runtime, shape): speedup = dense p50 / sparse p50 (> 1: faster)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from wanda_export.bench.timing import LatencyStats

Key = tuple[str, str]  # (runtime name, shape string such as "prefill:1x128")


@dataclass(frozen=True)
class ComparisonRow:
    """One (runtime, shape): both p50/p95 in ms (None when that side was not measured)."""

    runtime: str
    shape: str
    dense_p50_ms: float | None
    sparse_p50_ms: float | None
    dense_p95_ms: float | None
    sparse_p95_ms: float | None
    speedup: float | None

    def to_dict(self) -> dict:
        """The fields as a JSON-able dict."""
        return asdict(self)


def speedup(dense_p50_ms: float | None, sparse_p50_ms: float | None) -> float | None:
    """dense / sparse, or None when either is missing or the sparse time is not positive."""
    if dense_p50_ms is None or sparse_p50_ms is None or sparse_p50_ms <= 0:
        return None
    return dense_p50_ms / sparse_p50_ms


def compare(dense: Mapping[Key, LatencyStats],
            sparse: Mapping[Key, LatencyStats]) -> list[ComparisonRow]:
    """One row per key of either side, dense keys first in their order, then sparse-only keys."""
    keys = list(dict.fromkeys([*dense, *sparse]))
    rows = []
    for runtime, shape in keys:
        d, s = dense.get((runtime, shape)), sparse.get((runtime, shape))
        d50, s50 = (d.p50_ms if d else None), (s.p50_ms if s else None)
        rows.append(ComparisonRow(runtime, str(shape), d50, s50, d.p95_ms if d else None,
                                  s.p95_ms if s else None, speedup(d50, s50)))
    return rows


def comparison_dict(rows: Sequence[ComparisonRow]) -> dict:
    """JSON-able summary: the rows, and the speedups keyed "runtime shape" for quick reading."""
    return {"rows": [row.to_dict() for row in rows],
            "speedup": {f"{row.runtime} {row.shape}": row.speedup for row in rows}}
