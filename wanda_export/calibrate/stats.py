"""Per-input-channel activation statistics and the hooks that accumulate them.

For each targeted linear we keep sum over tokens of x_j^2 (float32) and the token count: enough
for Wanda's ||X_j||_2 and reusable for any sparsity or pattern.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from wanda_export.model.layers import Target

# Sums of squares over tens of thousands of tokens: float32 even for fp16/bf16 models.
STATS_DTYPE = torch.float32


@dataclass
class ChannelStats:
    """Sum of squares per input channel, shape [in], and how many tokens went into it."""

    sumsq: torch.Tensor
    tokens: int = 0

    def add(self, inputs: torch.Tensor) -> None:
        """Accumulate a batch of layer inputs of shape (..., in)."""
        flat = inputs.detach().reshape(-1, inputs.shape[-1])
        self.sumsq += flat.to(STATS_DTYPE).square().sum(dim=0)
        self.tokens += flat.shape[0]

    @property
    def norms(self) -> torch.Tensor:
        """||X_j||_2 per input channel."""
        return self.sumsq.sqrt()


def empty_stats(targets: list[Target]) -> dict[str, ChannelStats]:
    """Zeroed statistics for every target, on the device of its weight."""
    return {
        target.name: ChannelStats(
            torch.zeros(target.in_features, dtype=STATS_DTYPE, device=target.module.weight.device)
        )
        for target in targets
    }


@contextmanager
def collecting(targets: list[Target], stats: dict[str, ChannelStats]) -> Iterator[None]:
    """While active, every forward call of a target adds its input to `stats[target.name]`."""
    handles = []
    for target in targets:
        entry = stats[target.name]

        def hook(_module, args, entry=entry):
            entry.add(args[0])

        handles.append(target.module.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def stats_to_tensors(stats: dict[str, ChannelStats]) -> dict[str, torch.Tensor]:
    """Flatten to a name -> tensor dict for safetensors: `<name>.sumsq` and `<name>.tokens`."""
    tensors: dict[str, torch.Tensor] = {}
    for name, entry in stats.items():
        tensors[f"{name}.sumsq"] = entry.sumsq.detach().to("cpu", STATS_DTYPE).contiguous()
        tensors[f"{name}.tokens"] = torch.tensor([entry.tokens], dtype=torch.int64)
    return tensors


def stats_from_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, ChannelStats]:
    """Inverse of `stats_to_tensors`."""
    stats: dict[str, ChannelStats] = {}
    for key, value in tensors.items():
        if key.endswith(".sumsq"):
            name = key[: -len(".sumsq")]
            stats[name] = ChannelStats(value.to(STATS_DTYPE), int(tensors[f"{name}.tokens"][0]))
    return stats
