"""Perplexity with the papers' protocol: non-overlapping windows of one tokenized text,
mean negative log-likelihood over every predicted token, exponentiated.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_BATCH_SIZE = 4


def batch_nll(logits: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """Summed negative log-likelihood (float64, on the CPU) of a batch of windows (B, T) given
    its logits (B, T, V): each window predicts its T - 1 next tokens. Log-probabilities are
    taken in float32, the sum in float64."""
    logits = logits[:, :-1]  # (B, T-1, V)
    labels = batch[:, 1:].to(logits.device)  # (B, T-1)
    nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), reduction="none"
    )
    return nll.double().sum().cpu()


@torch.inference_mode()
def perplexity(
    model: nn.Module,
    windows: torch.Tensor,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[int], None] | None = None,
) -> float:
    """exp(mean NLL) over `windows` [W, seqlen]; each window predicts its seqlen - 1 next tokens.

    Log-probabilities are taken in float32 and summed in float64, so the result does not depend
    on the batch size beyond float32 rounding.
    """
    device = next(model.parameters()).device
    total_nll = torch.zeros((), dtype=torch.float64)
    total_tokens = 0
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start : start + batch_size].to(device)  # (B, T)
        total_nll += batch_nll(model(input_ids=batch, use_cache=False).logits, batch)
        total_tokens += batch.shape[0] * (batch.shape[1] - 1)
        if on_batch:
            on_batch(batch.shape[0])
    return math.exp(float(total_nll) / total_tokens)
