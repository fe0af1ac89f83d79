"""Verification of sparsity as data: per-layer and overall ratios, and N:M validity along K."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from wanda_export.sparsity.pattern import Pattern


@dataclass(frozen=True)
class LayerSparsity:
    """What one weight matrix holds: its zero count and whether it meets the pattern."""

    zeros: int
    numel: int
    pattern: str
    valid: bool
    violating_groups: int = 0

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0


@dataclass
class SparsityReport:
    """Per-layer results plus the parameter-weighted overall sparsity."""

    layers: dict[str, LayerSparsity] = field(default_factory=dict)

    @property
    def overall(self) -> float:
        numel = sum(layer.numel for layer in self.layers.values())
        return sum(layer.zeros for layer in self.layers.values()) / numel if numel else 0.0

    @property
    def valid(self) -> bool:
        return all(layer.valid for layer in self.layers.values())

    @property
    def invalid_layers(self) -> list[str]:
        """The layers that miss the pattern or the minimum ratio, in model order."""
        return [name for name, layer in self.layers.items() if not layer.valid]

    def to_dict(self) -> dict:
        """JSON-ready form: {overall, valid, layers: {name: {sparsity, pattern, valid, ...}}}."""
        return {
            "overall": self.overall,
            "valid": self.valid,
            "layers": {
                name: {**asdict(layer), "sparsity": layer.sparsity}
                for name, layer in self.layers.items()
            },
        }


def nm_violations(weight_out_in: torch.Tensor, n: int, m: int) -> int:
    """Count groups of M consecutive inputs (along K) that hold more than N non-zeros.

    Returns -1 when in_features is not divisible by M (the pattern cannot hold at all).
    """
    if weight_out_in.shape[-1] % m:
        return -1
    nonzero = (weight_out_in.reshape(-1, m) != 0).sum(dim=1)
    return int((nonzero > n).sum())


def verify_layer(weight_out_in: torch.Tensor, pattern: Pattern) -> LayerSparsity:
    """Check one [out, in] weight: its zero count, and N:M along K if the pattern is N:M."""
    zeros = int((weight_out_in == 0).sum())
    numel = weight_out_in.numel()
    violating = 0
    valid = numel > 0
    if pattern.structured:
        violating = nm_violations(weight_out_in, pattern.n, pattern.m)
        valid = valid and violating == 0
    return LayerSparsity(zeros=zeros, numel=numel, pattern=str(pattern), valid=valid,
                         violating_groups=violating)
