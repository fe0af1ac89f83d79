"""Pruning a checkpoint that need not fit in memory: its decoder layers streamed from the
safetensors files one at a time through calibration, pruning, verification and a tensor writer.

Per layer, the same steps as the in-memory path (`prune_model`), hence the same weights:
sequential mode collects the layer's statistics on the pruned upstream layers' outputs, prunes,
then propagates the pruned layer's outputs; dense mode collects and propagates in one forward of
the dense layer, then prunes it. Only the current layer, its activations and its statistics are
on the compute device; the hidden states of all windows wait on the CPU between layers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch

from wanda_export.calibrate.sequential import hidden_of, with_hidden
from wanda_export.calibrate.stats import ChannelStats
from wanda_export.model.layers import Target, find_targets
from wanda_export.model.streaming import StreamedCheckpoint
from wanda_export.prune import (
    PruneResult,
    PruneSpec,
    check_pattern_fits,
    prune_targets,
    verify_targets,
)
from wanda_export.sparsity.pattern import Pattern
from wanda_export.sparsity.verify import SparsityReport
from wanda_export.stream.forward import (
    CPU,
    Batch,
    capture_inputs,
    collect_layer,
    run_layer,
    stats_to_cpu,
    targets_by_layer,
)


class TensorWriter(Protocol):
    """Where the pruned checkpoint's tensors go as they are produced (e.g. `ShardWriter`)."""

    def add(self, name: str, tensor: torch.Tensor) -> None: ...


@dataclass
class LayerOutput:
    """What one streamed decoder layer produced, handed to `on_layer` while the layer is still
    materialized: enough for a caller to cache it and to resume after it.

    `stats`: its targets' statistics on the CPU (computed here, or the ones given); a computed
    X^T X is dropped once the callback returns. `tensors`: the layer's final tensors under the
    checkpoint's names, on the CPU. `hidden`: per batch, the inputs of the next layer (the
    pruned layer's outputs in sequential mode, the dense ones in dense mode); None after the
    last layer or when no forward pass runs. `report`: its targets' verification.
    """

    index: int
    stats: dict[str, ChannelStats]
    tensors: dict[str, torch.Tensor]
    hidden: list[torch.Tensor] | None
    report: SparsityReport


def _resumed(batches: list[Batch], hidden: list[torch.Tensor] | None, start_layer: int
             ) -> list[Batch]:
    """Layer 0's captured inputs with the hidden states saved at layer `start_layer`."""
    if hidden is None:
        raise ValueError(f"resuming at layer {start_layer} needs the hidden states of its inputs")
    shapes = [tuple(hidden_of(*batch).shape) for batch in batches]
    if [tuple(h.shape) for h in hidden] != shapes:
        raise ValueError(f"the hidden states given for layer {start_layer} do not match the "
                         f"calibration batches: expected shapes {shapes}")
    return [with_hidden(*batch, h) for batch, h in zip(batches, hidden, strict=True)]


@torch.inference_mode()
def stream_prune(
    checkpoint: StreamedCheckpoint,
    spec: PruneSpec,
    windows: torch.Tensor | None,
    writer: TensorWriter | None,
    *,
    device: torch.device | str,
    ratios: dict[str, float] | None = None,
    stats: dict[str, ChannelStats] | None = None,
    on_layer: Callable[[LayerOutput], None] | None = None,
    start_layer: int = 0,
    hidden: list[torch.Tensor] | None = None,
) -> PruneResult:
    """Prune `checkpoint` layer by layer following `spec`, handing each layer's final tensors
    (then the tensors outside the decoder stack, read from the checkpoint) to `writer`.

    `windows` [nsamples, seqlen] are the calibration tokens, batched by `spec.batch_size` (not
    needed for magnitude, or when `stats` are given: dense statistics, e.g. from the cache or
    `stream_dense_statistics`, skip every forward pass). `ratios` are the per-target ratios of
    a layer-wise allocation (`stream_allocation`); uniform without. `start_layer` and `hidden`
    (that layer's inputs per batch, `LayerOutput.hidden` of the layer before) resume a run; the
    layers before it are then neither pruned nor written, nor in the result.
    """
    targets = find_targets(checkpoint.model, list(spec.include) or None,
                           list(spec.exclude) or None)
    grouped = targets_by_layer(targets)
    pattern = spec.parsed_pattern
    check_pattern_fits(targets, pattern)
    if ratios is None and spec.allocation != "uniform":
        raise ValueError(f"allocation {spec.allocation!r} needs its ratios computed beforehand "
                         "(stream_allocation)")
    forward = spec.prunes_from_statistics and stats is None
    if forward and windows is None:
        raise ValueError(f"method {spec.method!r} needs calibration windows or statistics")
    if not 0 <= start_layer < len(checkpoint.layers):
        raise ValueError(f"start_layer {start_layer} is not a layer index "
                         f"(the model has {len(checkpoint.layers)})")
    seconds: dict[str, float] = {}

    @contextmanager
    def timed(label: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        seconds[label] = seconds.get(label, 0.0) + time.perf_counter() - started

    batches: list[Batch] = []
    if forward:
        with timed("calibrate"):
            batches = capture_inputs(checkpoint, windows, spec.batch_size, device)
        if start_layer:
            batches = _resumed(batches, hidden, start_layer)
    last = len(checkpoint.layers) - 1
    report, collected, permuted = SparsityReport(), {}, {}
    for index in range(start_layer, last + 1):
        layer, layer_targets = checkpoint.layers[index], grouped.get(index, [])
        with timed("load"):
            checkpoint.materialize(layer, device)
        try:
            layer_stats = {t.name: stats[t.name] for t in layer_targets} if stats else {}
            if forward:
                with timed("calibrate"):
                    propagate = not spec.calibrates_sequentially and index < last
                    layer_stats, batches = collect_layer(layer, batches, device, layer_targets,
                                                         spec.needs_hessian, propagate)
            if layer_targets:
                with timed("score_mask"):
                    permuted.update(prune_targets(layer_targets, spec, layer_stats or None,
                                                  ratios, checkpoint.model))
            if forward and spec.calibrates_sequentially and index < last:
                with timed("calibrate"):
                    batches = run_layer(layer, batches, device)
            prefix = f"{checkpoint.name_of(layer)}."
            output = LayerOutput(
                index, stats_to_cpu(layer_stats),
                {prefix + name: tensor.to(CPU) for name, tensor in layer.state_dict().items()},
                [hidden_of(*batch) for batch in batches] if forward and index < last else None,
                verify_targets(layer_targets, pattern))
            if writer is not None:
                with timed("write"):
                    for name, tensor in output.tensors.items():
                        writer.add(name, tensor)
            if on_layer:
                on_layer(output)
        finally:
            checkpoint.release(layer)
        report.layers.update(output.report.layers)
        if forward:  # keep the per-channel sums, free this layer's X^T X
            for entry in (*layer_stats.values(), *output.stats.values()):
                entry.xtx = None
            collected.update(output.stats)
        del output, layer_stats  # nothing of this layer stays resident during the next one
    if writer is not None:
        with timed("write"):
            for name, tensor in checkpoint.outside_tensors():
                writer.add(name, tensor)
    return PruneResult(report, collected if forward else stats, seconds, permuted=permuted)


def stream_verify(checkpoint: StreamedCheckpoint, targets: list[Target], pattern: Pattern
                  ) -> SparsityReport:
    """Verify the targets' weights as stored in a (pruned) checkpoint, one matrix read at a
    time: the check of what was written, not of what was computed."""
    report = SparsityReport()
    for target in targets:
        with checkpoint.materialized([target.module], CPU):
            report.layers.update(verify_targets([target], pattern).layers)
    return report
