"""Whether TensorRT really ran the 2:4 layers on sparse tensor cores, read from its build log.

With sparsity enabled, TensorRT's builder logs two lines at INFO/VERBOSE level:
"(Sparsity) Layers eligible for sparse math: a, b, ..." and "(Sparsity) TRT inference plan
picked sparse implementation for layers: a, ...". The second is the truth users need ("I
exported 2:4 and got no speedup"). onnxruntime's TensorRT provider writes the builder log to
the process's native stderr, so it is captured at the file-descriptor level.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

_ELIGIBLE = re.compile(r"Layers eligible for sparse math:\s*(?P<layers>.*)$")
_PICKED = re.compile(r"picked sparse implementation for layers:\s*(?P<layers>.*)$")


@dataclass(frozen=True)
class SparseTactics:
    """Layers TensorRT found eligible for 2:4 sparse math, and those it ran sparse."""

    eligible_layers: int
    sparse_tactics: int
    picked: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """JSON-able fields."""
        return asdict(self)


def _layers(line_rest: str) -> list[str]:
    return [name.strip() for name in line_rest.split(",") if name.strip()]


def parse_sparse_tactics(log: str) -> SparseTactics:
    """Count eligible and picked layers over every builder log line (several engines may be
    built, one per TensorRT subgraph)."""
    eligible: list[str] = []
    picked: list[str] = []
    for line in log.splitlines():
        if match := _ELIGIBLE.search(line):
            eligible += _layers(match["layers"])
        elif match := _PICKED.search(line):
            picked += _layers(match["layers"])
    return SparseTactics(len(eligible), len(picked), tuple(picked))


@contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Capture everything written to file descriptor 2 (native code included) while active;
    the yielded list holds the text once the block exits."""
    captured: list[str] = []
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode("utf-8", errors="replace"))
