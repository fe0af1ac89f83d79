"""Per-input-channel activation statistics and the hooks that accumulate them.

For each targeted linear we keep sum over tokens of x_j^2 and of x_j (float32) and the token
count: enough for Wanda's and RIA's ||X_j||_2, DSnoT's mean and variance, and reusable for any
sparsity or pattern. SparseGPT also needs the full
second moment X^T X ([in, in], float32), collected only when asked for: it is in_features times
larger.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from wanda_export.errors import ConfigError
from wanda_export.model.checkpoint import NON_FINITE_HINT
from wanda_export.model.layers import Target

# Sums of squares over tens of thousands of tokens: float32 even for fp16/bf16 models.
STATS_DTYPE = torch.float32


@dataclass
class ChannelStats:
    """Sum of squares per input channel, shape [in], how many tokens went into it, optionally
    the sum of outer products X^T X, shape [in, in] (whose diagonal is `sumsq`), and the plain
    sum per channel, shape [in] (None in entries cached before it was collected)."""

    sumsq: torch.Tensor
    tokens: int = 0
    xtx: torch.Tensor | None = None
    total: torch.Tensor | None = None

    def add(self, inputs: torch.Tensor, products: SharedProducts | None = None) -> None:
        """Accumulate a batch of layer inputs of shape (..., in); `products` shares X^T X
        between layers fed the very same input tensor."""
        flat = inputs.detach().reshape(-1, inputs.shape[-1]).to(STATS_DTYPE)
        self.sumsq += flat.square().sum(dim=0)
        if self.total is None:
            self.total = torch.zeros_like(self.sumsq)
        self.total += flat.sum(dim=0)
        if self.xtx is not None:
            self.xtx += (products or SharedProducts()).product(inputs, flat)
        self.tokens += flat.shape[0]

    @property
    def norms(self) -> torch.Tensor:
        """||X_j||_2 per input channel."""
        return self.sumsq.sqrt()

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """E[x_j] and Var(x_j) per input channel over the calibration tokens (population
        variance, clamped at 0 against rounding)."""
        if self.total is None or self.tokens == 0:
            raise ValueError("these statistics hold no per-channel sums (collected before means "
                             "were) or no tokens")
        mean = self.total / self.tokens
        return mean, (self.sumsq / self.tokens - mean.square()).clamp_min(0.0)


class SharedProducts:
    """X^T X of the most recent input tensor. q/k/v (and gate/up) projections receive the very
    same tensor object, so its [in, in] product, the costly part of SparseGPT's calibration, is
    computed once for all of them. The reference held here keeps the identity check sound."""

    def __init__(self) -> None:
        self._input: torch.Tensor | None = None
        self._product: torch.Tensor | None = None

    def product(self, inputs: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        """X^T X of `flat` (the float32 [tokens, in] view of `inputs`), reused when repeated."""
        if inputs is not self._input:
            self._input, self._product = inputs, flat.T @ flat
        return self._product


def check_finite_stats(stats: dict[str, ChannelStats]) -> None:
    """Refuse statistics holding NaN or Inf (the activations overflowed), naming the layer:
    scores computed from them would prune at random."""
    for name, entry in stats.items():
        parts = [entry.sumsq] if entry.xtx is None else [entry.sumsq, entry.xtx]
        if not all(bool(torch.isfinite(part).all()) for part in parts):
            raise ConfigError(f"the calibration activations entering {name} are NaN or Inf",
                              hint=NON_FINITE_HINT)


def empty_stats(targets: list[Target], hessian: bool = False) -> dict[str, ChannelStats]:
    """Zeroed statistics for every target, on the device of its weight; with `hessian`, X^T X
    is accumulated too."""
    stats = {}
    for target in targets:
        device, size = target.module.weight.device, target.in_features
        stats[target.name] = ChannelStats(
            torch.zeros(size, dtype=STATS_DTYPE, device=device),
            xtx=torch.zeros(size, size, dtype=STATS_DTYPE, device=device) if hessian else None,
        )
    return stats


@contextmanager
def collecting(targets: list[Target], stats: dict[str, ChannelStats]) -> Iterator[None]:
    """While active, every forward call of a target adds its input to `stats[target.name]`."""
    handles = []
    products = SharedProducts()
    for target in targets:
        entry = stats[target.name]

        def hook(_module, args, entry=entry):
            entry.add(args[0], products)

        handles.append(target.module.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def stats_to_tensors(stats: dict[str, ChannelStats]) -> dict[str, torch.Tensor]:
    """Flatten to a name -> tensor dict for safetensors: `<name>.sumsq`, `<name>.tokens` and,
    when collected, `<name>.sum` and `<name>.xtx`."""
    tensors: dict[str, torch.Tensor] = {}
    for name, entry in stats.items():
        tensors[f"{name}.sumsq"] = entry.sumsq.detach().to("cpu", STATS_DTYPE).contiguous()
        tensors[f"{name}.tokens"] = torch.tensor([entry.tokens], dtype=torch.int64)
        if entry.total is not None:
            tensors[f"{name}.sum"] = entry.total.detach().to("cpu", STATS_DTYPE).contiguous()
        if entry.xtx is not None:
            tensors[f"{name}.xtx"] = entry.xtx.detach().to("cpu", STATS_DTYPE).contiguous()
    return tensors


def stats_from_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, ChannelStats]:
    """Inverse of `stats_to_tensors`."""
    stats: dict[str, ChannelStats] = {}
    for key, value in tensors.items():
        if key.endswith(".sumsq"):
            name = key[: -len(".sumsq")]
            xtx, total = tensors.get(f"{name}.xtx"), tensors.get(f"{name}.sum")
            stats[name] = ChannelStats(value.to(STATS_DTYPE), int(tensors[f"{name}.tokens"][0]),
                                       None if xtx is None else xtx.to(STATS_DTYPE),
                                       None if total is None else total.to(STATS_DTYPE))
    return stats
