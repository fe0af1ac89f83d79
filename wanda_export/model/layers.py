"""Finding what to prune without per-model code: the decoder layers and their linear layers.

Supports nn.Linear (weight stored [out, in]) and GPT-2's Conv1D (weight stored [in, out]); the
`weight_out_in` view always presents the [out, in] layout so scoring and N:M run along K.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import nn

try:
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers always ships it today
    Conv1D = ()  # type: ignore[assignment]


@dataclass(frozen=True)
class Target:
    """One prunable linear: its full module name, the module, and its decoder layer index."""

    name: str
    module: nn.Module
    layer_index: int | None  # None for a linear outside the decoder stack (e.g. lm_head)

    @property
    def in_features(self) -> int:
        return weight_out_in(self.module).shape[1]


def is_linear(module: nn.Module) -> bool:
    """nn.Linear or transformers' Conv1D."""
    return isinstance(module, nn.Linear) or (bool(Conv1D) and isinstance(module, Conv1D))


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The weight as an [out, in] view (a transpose view for Conv1D, so writes reach the model)."""
    weight = module.weight.data
    return weight.t() if bool(Conv1D) and isinstance(module, Conv1D) else weight


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder stack: the ModuleList of identical blocks holding the most linear layers."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        linears = sum(1 for child in module for sub in child.modules() if is_linear(sub))
        if linears and (best is None or linears > best[0]):
            best = (linears, name, module)
    if best is None:
        raise ValueError("could not find the decoder layers: no ModuleList of blocks with linears")
    return best[1], best[2]


def find_targets(
    model: nn.Module,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
) -> list[Target]:
    """Linears to prune, in model order.

    Default: every linear inside the decoder layers (embeddings and lm_head are left dense).
    `include` globs (fnmatch on full module names) replace that default set and may reach
    outside the decoder stack; `exclude` globs remove names from the result.
    """
    stack_name, _ = find_decoder_layers(model)
    targets: list[Target] = []
    prefix = f"{stack_name}."
    for name, module in model.named_modules():
        if not is_linear(module):
            continue
        index = None
        if name.startswith(prefix):
            index = int(name[len(prefix):].split(".", 1)[0])
        if include:
            chosen = any(fnmatch.fnmatchcase(name, pattern) for pattern in include)
        else:
            chosen = index is not None
        if chosen and exclude and any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude):
            chosen = False
        if chosen:
            targets.append(Target(name=name, module=module, layer_index=index))
    if not targets:
        raise ValueError(
            f"no linear layer matched include={include or ['<decoder layers>']} "
            f"exclude={exclude or []}"
        )
    return targets
