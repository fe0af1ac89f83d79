"""Perplexity with the papers' protocol: non-overlapping windows of one tokenized text,
mean negative log-likelihood over every predicted token, exponentiated.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from wanda_export.errors import ConfigError
from wanda_export.model.checkpoint import NON_FINITE_HINT

MAX_MEAN_NLL = math.log(sys.float_info.max)  # exp() of more overflows a float


@torch.inference_mode()
def perplexity(
    model: nn.Module,
    windows: torch.Tensor,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> float:
    """exp(mean NLL) over `windows` [W, seqlen]; each window predicts its seqlen - 1 next tokens.

    Log-probabilities are taken in float32 and summed in float64, so the result does not depend
    on the batch size beyond float32 rounding. NaN or Inf logits, or a mean NLL whose exp
    overflows, raise ConfigError: such a model's weights are corrupt, and no number is honest.
    """
    device = next(model.parameters()).device
    total_nll = torch.zeros((), dtype=torch.float64)
    total_tokens = 0
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start : start + batch_size].to(device)  # (B, T)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1]  # (B, T-1, V)
        labels = batch[:, 1:]  # (B, T-1)
        nll = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), reduction="none"
        )
        if not bool(torch.isfinite(nll).all()):
            raise ConfigError(f"the model's logits are NaN or Inf on evaluation windows "
                              f"{start}..{start + batch.shape[0] - 1}", hint=NON_FINITE_HINT)
        total_nll += nll.double().sum().cpu()
        total_tokens += labels.numel()
        if on_batch:
            on_batch(batch.shape[0])
    mean = float(total_nll) / total_tokens
    if mean > MAX_MEAN_NLL:
        raise ConfigError(f"the model's mean negative log-likelihood is {mean:.4g} nats, so its "
                          "perplexity overflows; its logits are absurdly large",
                          hint=NON_FINITE_HINT)
    return math.exp(mean)
