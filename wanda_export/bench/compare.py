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
    # dense p25 / sparse p75 .. dense p75 / sparse p25: the speedups the quartiles allow
    speedup_low: float | None = None
    speedup_high: float | None = None

    @property
    def within_noise(self) -> bool | None:
        """Whether the speedup's interval contains 1.0 (no measurable difference); None
        without quartiles."""
        if self.speedup_low is None or self.speedup_high is None:
            return None
        return self.speedup_low <= 1.0 <= self.speedup_high

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
        low = high = None
        if d is not None and s is not None:
            low, high = speedup(d.p25_ms, s.p75_ms), speedup(d.p75_ms, s.p25_ms)
        rows.append(ComparisonRow(runtime, str(shape), d50, s50, d.p95_ms if d else None,
                                  s.p95_ms if s else None, speedup(d50, s50), low, high))
    return rows


def comparison_dict(rows: Sequence[ComparisonRow]) -> dict:
    """JSON-able summary: the rows, and the speedups keyed "runtime shape" for quick reading."""
    return {"rows": [{**row.to_dict(), "within_noise": row.within_noise} for row in rows],
            "speedup": {f"{row.runtime} {row.shape}": row.speedup for row in rows}}
