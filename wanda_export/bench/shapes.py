"""Benchmark input shapes: a prefill of `batch x seqlen` tokens, or one decoded token per
sequence on top of a KV cache of `past` tokens. Written as "prefill:8x512" or "decode:1x1@128"."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

KINDS = ("prefill", "decode")
FORMS = "'prefill:BATCHxSEQLEN' (e.g. 'prefill:1x128') or 'decode:BATCHx1@PAST' (e.g. 'decode:1x1@128')"
_SHAPE = re.compile(r"^(?P<kind>[a-z]+):(?P<batch>\d+)x(?P<seqlen>\d+)(?:@(?P<past>\d+))?$")


@dataclass(frozen=True)
class Shape:
    """One benchmark input shape; `past` is the KV-cache length (0 for a prefill)."""

    kind: str
    batch: int
    seqlen: int
    past: int = 0

    def __post_init__(self) -> None:
        problem = _problem(self.kind, self.batch, self.seqlen, self.past)
        if problem:
            raise ValueError(f"invalid shape {self}: {problem}")

    @property
    def tokens(self) -> int:
        """Tokens processed by one forward: batch x seqlen."""
        return self.batch * self.seqlen

    def __str__(self) -> str:
        suffix = f"@{self.past}" if self.kind == "decode" else ""
        return f"{self.kind}:{self.batch}x{self.seqlen}{suffix}"


def _problem(kind: str, batch: int, seqlen: int, past: int) -> str | None:
    """Why these fields do not make a valid benchmark shape, or None."""
    if kind not in KINDS:
        return f"kind must be one of {list(KINDS)}"
    if batch < 1 or seqlen < 1:
        return "batch and seqlen must be >= 1"
    if kind == "prefill" and past:
        return "a prefill has no past (drop '@PAST')"
    if kind == "decode" and (seqlen != 1 or past < 1):
        return "a decode step is one token (seqlen 1) on a past of >= 1 tokens"
    return None


def parse_shape(text: str) -> Shape:
    """Parse "prefill:BxS" or "decode:Bx1@P"; the ValueError names the string and the forms."""
    match = _SHAPE.match(text.strip().lower())
    if not match:
        raise ValueError(f"cannot parse shape {text!r}; expected {FORMS}")
    kind, past = match["kind"], match["past"]
    if kind == "prefill" and past is not None:
        raise ValueError(f"shape {text!r}: a prefill has no '@PAST'; expected {FORMS}")
    if kind == "decode" and past is None:
        raise ValueError(f"shape {text!r}: a decode needs '@PAST' (the cache length); "
                         f"expected {FORMS}")
    fields = (kind, int(match["batch"]), int(match["seqlen"]), int(past or 0))
    problem = _problem(*fields)
    if problem:
        raise ValueError(f"shape {text!r}: {problem}; expected {FORMS}")
    return Shape(*fields)


def parse_shapes(texts: Iterable[str]) -> list[Shape]:
    """Parse each string with parse_shape, in order."""
    return [parse_shape(text) for text in texts]


DEFAULT_SHAPES = (Shape("prefill", 1, 128), Shape("prefill", 8, 512), Shape("decode", 1, 1, 128))


def tokens_per_second(shape: Shape, p50_ms: float) -> float | None:
    """Tokens one call of `shape` processes (batch x seqlen: the prompt of a prefill, one per
    sequence for a decode step) per second at a median of `p50_ms`; None when it is not > 0."""
    return shape.tokens / (p50_ms / 1000.0) if p50_ms > 0 else None
