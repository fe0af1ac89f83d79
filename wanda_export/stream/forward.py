"""Forward passes over a streamed checkpoint, one decoder layer resident at a time.

The inputs of layer 0 (hidden states and every keyword the model passes its layers) are captured
once per batch and kept on the CPU; each layer then runs over every batch on the compute device
(inputs moved there per batch, outputs brought back). The model's head runs on the last layer's
outputs through the model's own forward. The same per-layer steps as the in-memory sequential
calibration (`calibrate/sequential.py`), so the numbers are the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from wanda_export.calibrate.sequential import (
    capture_layer0_inputs,
    hidden_of,
    output_hidden,
    stats_pass,
    with_hidden,
)
from wanda_export.calibrate.stats import ChannelStats, collecting, empty_stats
from wanda_export.model.layers import Target
from wanda_export.model.streaming import StreamedCheckpoint

Batch = tuple[tuple, dict]
CPU = torch.device("cpu")


def to_device(value, device: torch.device | str):
    """Tensors inside nested tuples / lists / dicts moved to `device` (the same objects when
    already there)."""
    from accelerate.utils import send_to_device

    return send_to_device(value, device)


def targets_by_layer(targets: list[Target]) -> dict[int, list[Target]]:
    """Targets grouped by decoder layer; streaming reaches only linears inside the layers."""
    outside = [t.name for t in targets if t.layer_index is None]
    if outside:
        raise ValueError(f"streaming reaches only the decoder layers' linears; {outside} need "
                         "the model in memory")
    grouped: dict[int, list[Target]] = {}
    for target in targets:
        grouped.setdefault(target.layer_index, []).append(target)
    return grouped


def capture_inputs(checkpoint: StreamedCheckpoint, windows: torch.Tensor, batch_size: int,
                   device: torch.device | str) -> list[Batch]:
    """Layer 0's (args, kwargs) for every batch of `windows`, on the CPU. The modules outside the
    decoder stack but lm_head are materialized for the capture and released after it."""
    modules = checkpoint.outside_modules(skip=[checkpoint.model.get_output_embeddings()])
    with checkpoint.materialized(modules, device, recurse=False):
        batches = capture_layer0_inputs(checkpoint.model, checkpoint.layers[0], windows,
                                        batch_size, device)
    return to_device(batches, CPU)


def on_device(batches: Iterable[Batch], device: torch.device | str) -> Iterator[Batch]:
    """Each batch moved to `device` as it is consumed."""
    for batch in batches:
        yield to_device(batch, device)


def run_layer(layer: nn.Module, batches: list[Batch], device: torch.device | str,
              targets: list[Target] | None = None,
              stats: dict[str, ChannelStats] | None = None) -> list[Batch]:
    """Run `layer` over every batch, accumulating its `targets`' input statistics into `stats` on
    the way; returns the next layer's inputs, on the CPU."""
    following = []
    with collecting(targets or [], stats or {}):
        for (args, kwargs), (on_args, on_kwargs) in zip(batches, on_device(batches, device),
                                                        strict=True):
            hidden = output_hidden(layer(*on_args, **on_kwargs)).to(CPU)
            following.append(with_hidden(args, kwargs, hidden))
    return following


def collect_layer(layer: nn.Module, batches: list[Batch], device: torch.device | str,
                  targets: list[Target], hessian: bool, propagate: bool
                  ) -> tuple[dict[str, ChannelStats], list[Batch]]:
    """One materialized layer's statistics (float32, with X^T X when `hessian`) on `device`.

    With `propagate`, the same forward also yields the next layer's inputs; otherwise each
    forward stops as soon as every target has seen its input, and `batches` come back as given.
    """
    stats = empty_stats(targets, hessian)
    if propagate:
        return stats, run_layer(layer, batches, device, targets, stats)
    if targets:
        stats_pass(layer, on_device(batches, device), targets, stats)
    return stats, batches


def stats_to_cpu(stats: dict[str, ChannelStats]) -> dict[str, ChannelStats]:
    """The same statistics with their tensors on the CPU."""
    return {name: ChannelStats(entry.sumsq.to(CPU), entry.tokens,
                               None if entry.xtx is None else entry.xtx.to(CPU),
                               None if entry.total is None else entry.total.to(CPU))
            for name, entry in stats.items()}


@torch.inference_mode()
def stream_dense_statistics(
    checkpoint: StreamedCheckpoint, windows: torch.Tensor, targets: list[Target], *,
    device: torch.device | str, batch_size: int, hessian: bool = False,
    on_layer: Callable[[int], None] | None = None,
) -> dict[str, ChannelStats]:
    """`collect_dense` for a streamed checkpoint: the unpruned model's statistics of every
    target (on the CPU), one decoder layer resident at a time: OWL's dense pass and dense-mode
    calibration without the model in memory."""
    grouped = targets_by_layer(targets)
    batches = capture_inputs(checkpoint, windows, batch_size, device)
    last = max(grouped)
    stats: dict[str, ChannelStats] = {}
    for index, layer in enumerate(checkpoint.layers[: last + 1]):
        with checkpoint.materialized([layer], device):
            layer_stats, batches = collect_layer(layer, batches, device, grouped.get(index, []),
                                                 hessian, propagate=index < last)
        stats.update(stats_to_cpu(layer_stats))
        if on_layer:
            on_layer(index)
    return stats


class _Given(nn.Module):
    """Stands in for every decoder layer during the head pass: returns the hidden states it was
    given, and checks that the model hands each layer the previous one's output unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden: torch.Tensor | None = None
        self.calls = 0

    def forward(self, *args, **kwargs) -> torch.Tensor:
        if self.calls and hidden_of(args, kwargs) is not self.hidden:
            raise RuntimeError("the model does not pass each decoder layer's output to the next "
                               "unchanged; its head cannot be streamed")
        self.calls += 1
        return self.hidden


@contextmanager
def head(checkpoint: StreamedCheckpoint, device: torch.device | str
         ) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """The model's own forward after the decoder stack (final norm, output projection, lm_head)
    as a function from the last layer's outputs (B, T, H) to logits (B, T, V).

    Every decoder layer is swapped for a stub returning the given outputs and zero
    `inputs_embeds` stand in for the tokens, so the input embeddings are never read; the
    modules outside the stack are materialized for the block.
    """
    model, layers = checkpoint.model, checkpoint.layers
    embeddings = model.get_input_embeddings()
    modules = checkpoint.outside_modules(skip=[embeddings])
    stub, originals = _Given(), list(layers)

    def logits(hidden: torch.Tensor) -> torch.Tensor:
        stub.hidden, stub.calls = hidden.to(device), 0
        embeds = torch.zeros(*hidden.shape[:2], embeddings.weight.shape[-1],
                             dtype=embeddings.weight.dtype, device=device)
        return model(inputs_embeds=embeds, use_cache=False).logits

    with checkpoint.materialized(modules, device, recurse=False):
        for index in range(len(layers)):
            layers[index] = stub
        try:
            yield logits
        finally:
            for index, layer in enumerate(originals):
                layers[index] = layer
