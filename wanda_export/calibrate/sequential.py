"""Sequential calibration (the Wanda paper's): decoder layer i sees the outputs of the already
pruned layers < i.

The embeddings run once; the inputs of layer 0 (hidden states and every keyword the model passes
its layers: attention mask, position ids, rotary embeddings, cache flags) are captured per batch;
then each layer runs on its own: collect statistics, let the caller prune it, run it again to
produce the inputs of the next layer. Only one layer's activations are alive at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import torch
from torch import nn

from wanda_export.calibrate.stats import (
    ChannelStats,
    check_finite_stats,
    collecting,
    empty_stats,
)
from wanda_export.model.layers import Target, find_decoder_layers


class _StopForward(Exception):
    """Raised by the capture hook once layer 0 has been reached."""


def capture_layer0_inputs(
    model: nn.Module, layer0: nn.Module, windows: torch.Tensor, batch_size: int,
    device: torch.device | str | None = None,
) -> list[tuple[tuple, dict]]:
    """Run the model up to layer 0 for each batch; return its (args, kwargs) per batch.

    Only the modules before the decoder stack run, so the layers may still be on the meta
    device (a streamed checkpoint); `device` defaults to that of the model's first parameter.
    """
    captured: list[tuple[tuple, dict]] = []
    device = device if device is not None else next(model.parameters()).device

    def hook(_module, args, kwargs):
        captured.append((args, kwargs))
        raise _StopForward

    handle = layer0.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for start in range(0, windows.shape[0], batch_size):
            try:
                model(input_ids=windows[start : start + batch_size].to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return captured


def with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    """A layer's (args, kwargs) with its hidden-states input replaced by `hidden`."""
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden-states input among a layer's (args, kwargs)."""
    return args[0] if args else kwargs["hidden_states"]


def stats_pass(layer: nn.Module, batches: Iterable[tuple[tuple, dict]], targets: list[Target],
               stats: dict[str, ChannelStats]) -> None:
    """Run the unpruned layer on every batch, collecting its targets' input statistics.

    Each forward stops as soon as every target has seen its input for the batch: the rest of
    the layer (typically the down projection, a quarter of an MLP block's work) is not needed.
    """
    with collecting(targets, stats):  # its hooks are registered first, so they run first
        seen: set[str] = set()

        def stop_when_all_seen(_module, _args, name):
            seen.add(name)
            if len(seen) == len(targets):
                raise _StopForward

        handles = [
            t.module.register_forward_pre_hook(partial(stop_when_all_seen, name=t.name))
            for t in targets
        ]
        try:
            for args, kwargs in batches:
                seen.clear()
                try:
                    layer(*args, **kwargs)
                except _StopForward:
                    pass
        finally:
            for handle in handles:
                handle.remove()


def output_hidden(output: Any) -> torch.Tensor:
    """The hidden states a decoder layer returned (alone, or first of a tuple)."""
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.inference_mode()
def calibrate_sequential(
    model: nn.Module,
    windows: torch.Tensor,
    targets: list[Target],
    prune_layer: Callable[[int, dict[str, ChannelStats]], None],
    batch_size: int,
    on_layer: Callable[[int], None] | None = None,
    hessian: bool = False,
) -> dict[str, ChannelStats]:
    """Calibrate layer by layer; `prune_layer(index, stats_of_that_layer)` prunes it in place.

    Returns the statistics of every target as seen by the (already pruned) upstream layers,
    with X^T X when `hessian` (for SparseGPT).
    """
    outside = [t.name for t in targets if t.layer_index is None]
    if outside:
        raise ValueError(
            f"sequential calibration only reaches decoder layers; {outside} need mode 'dense'"
        )
    _, layers = find_decoder_layers(model)
    batches = capture_layer0_inputs(model, layers[0], windows, batch_size)
    all_stats: dict[str, ChannelStats] = {}
    for index, layer in enumerate(layers):
        layer_targets = [t for t in targets if t.layer_index == index]
        stats = empty_stats(layer_targets, hessian)
        if layer_targets:
            stats_pass(layer, batches, layer_targets, stats)
            check_finite_stats(stats)
            prune_layer(index, stats)
            all_stats.update(stats)
        if index < len(layers) - 1:  # the last layer's outputs feed nothing we calibrate
            batches = [
                with_hidden(args, kwargs, output_hidden(layer(*args, **kwargs)))
                for args, kwargs in batches
            ]
        if on_layer:
            on_layer(index)
    return all_stats
