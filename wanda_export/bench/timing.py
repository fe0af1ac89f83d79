"""Wall-clock latency of a callable: warm-up calls, timed calls, and their summary statistics."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Summary of the timed calls, in milliseconds; warm-up calls are counted, not included."""

    p50_ms: float
    p95_ms: float
    mean_ms: float
    min_ms: float
    iterations: int
    warmup: int
    p25_ms: float | None = None  # the quartiles: the spread a speedup's interval comes from
    p75_ms: float | None = None

    def to_dict(self) -> dict:
        """The fields as a JSON-able dict."""
        return asdict(self)


def latency_stats(seconds: Sequence[float], warmup: int) -> LatencyStats:
    """Summarise timed calls given in seconds; percentiles interpolate linearly (numpy's default),
    so ten calls of 1..10 ms have p50 5.5 ms and p95 9.55 ms."""
    if not seconds:
        raise ValueError("latency_stats needs at least one timed call")
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    p25, p50, p75, p95 = np.percentile(ms, [25, 50, 75, 95], method="linear")
    return LatencyStats(p50_ms=float(p50), p95_ms=float(p95), mean_ms=float(ms.mean()),
                        min_ms=float(ms.min()), iterations=len(ms), warmup=warmup,
                        p25_ms=float(p25), p75_ms=float(p75))


def time_callable(fn: Callable[[], object], warmup: int, iterations: int,
                  sync: Callable[[], object] | None = None,
                  setup: Callable[[], object] | None = None) -> LatencyStats:
    """Call `fn` `warmup` times untimed, then `iterations` times each timed with perf_counter.

    `sync` (e.g. torch.cuda.synchronize) runs before each clock read, so asynchronous device
    work is inside the interval it belongs to rather than leaking into the next one. `setup`
    runs untimed before every call, warm-up ones too (e.g. a fresh generator with its prompt).
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    wait = sync or (lambda: None)
    prepare = setup or (lambda: None)
    for _ in range(warmup):
        prepare()
        fn()
    seconds = []
    for _ in range(iterations):
        prepare()
        wait()
        start = time.perf_counter()
        fn()
        wait()
        seconds.append(time.perf_counter() - start)
    return latency_stats(seconds, warmup)


def per_call(stats: LatencyStats, calls: int) -> LatencyStats:
    """`stats` of timed iterations that each made `calls` calls, as per-call times.

    Batching short GPU kernels into one timed iteration keeps the clock and sync overhead
    (tens of microseconds) from swamping kernels of similar length.
    """
    if calls < 1:
        raise ValueError(f"calls must be >= 1, got {calls}")
    def scaled(value: float | None) -> float | None:
        return None if value is None else value / calls

    return replace(stats, p50_ms=stats.p50_ms / calls, p95_ms=stats.p95_ms / calls,
                   mean_ms=stats.mean_ms / calls, min_ms=stats.min_ms / calls,
                   p25_ms=scaled(stats.p25_ms), p75_ms=scaled(stats.p75_ms))
