"""The sparsity pattern value: unstructured, or N:M (at most N non-zeros in every M along K)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class Pattern:
    """A parsed pattern; `n`/`m` are None for unstructured sparsity."""

    n: int | None = None
    m: int | None = None

    @property
    def structured(self) -> bool:
        return self.m is not None

    @property
    def sparsity(self) -> float | None:
        """The sparsity an N:M pattern implies ((M-N)/M), None for unstructured."""
        return None if self.m is None else (self.m - self.n) / self.m

    def fits(self, in_features: int) -> bool:
        """Whether a layer of `in_features` inputs splits into whole groups of M (always true
        for unstructured): the one rule N:M puts on a layer's shape."""
        return self.m is None or in_features % self.m == 0

    def misfit_message(self, misfits: str) -> str:
        """Why the layers listed in `misfits` cannot take this pattern."""
        return f"pattern {self} needs in_features divisible by {self.m}; not so for {misfits}"

    def __str__(self) -> str:
        return "unstructured" if self.m is None else f"{self.n}:{self.m}"


def parse_pattern(text: str) -> Pattern:
    """Parse "unstructured" or "N:M" with 0 < N < M; raise ValueError with the reason otherwise."""
    if text.strip().lower() == "unstructured":
        return Pattern()
    match = _NM.match(text)
    if not match:
        raise ValueError(f"pattern {text!r} is neither 'unstructured' nor 'N:M' (e.g. '2:4')")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ValueError(f"pattern {text!r} needs 0 < N < M (N non-zeros kept in every M)")
    return Pattern(n, m)
