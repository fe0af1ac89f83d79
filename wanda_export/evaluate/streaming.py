"""Perplexity of a streamed checkpoint (the dense input, or a pruned output folder): the same
protocol as `perplexity.py`, with all evaluation windows carried through the decoder layers one
layer at a time and the head applied per batch, so neither the model nor all logits are ever in
memory at once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from wanda_export.calibrate.sequential import hidden_of
from wanda_export.evaluate.perplexity import batch_nll, nll_to_perplexity
from wanda_export.model.streaming import StreamedCheckpoint
from wanda_export.stream.forward import capture_inputs, head, run_layer


@torch.inference_mode()
def stream_perplexity(
    checkpoint: StreamedCheckpoint,
    windows: torch.Tensor,
    batch_size: int,
    *,
    device: torch.device | str,
    on_layer: Callable[[int], None] | None = None,
) -> float:
    """exp(mean NLL) over `windows` [W, seqlen], equal to `perplexity` of the loaded model with
    the same batch size: the same batches go through the same layer computations and the same
    head, and each batch's NLL is summed in float64 in the same order."""
    batches = capture_inputs(checkpoint, windows, batch_size, device)
    for index, layer in enumerate(checkpoint.layers):
        with checkpoint.materialized([layer], device):
            batches = run_layer(layer, batches, device)
        if on_layer:
            on_layer(index)
    total_nll = torch.zeros((), dtype=torch.float64)
    with head(checkpoint, device) as logits_of:
        for start, batch in zip(range(0, windows.shape[0], batch_size), batches, strict=True):
            tokens = windows[start : start + batch_size]  # (B, T)
            total_nll += batch_nll(logits_of(hidden_of(*batch)), tokens, start)
    return nll_to_perplexity(total_nll, windows.shape[0] * (windows.shape[1] - 1))
