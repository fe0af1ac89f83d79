"""Perplexity with the papers' protocol: non-overlapping windows of one tokenized text,
mean negative log-likelihood over every predicted token, exponentiated. The per-batch NLL and
the final exponent are shared with the streamed path (`streaming.py`), so both agree exactly.
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


def batch_nll(logits: torch.Tensor, batch: torch.Tensor, first_window: int) -> torch.Tensor:
    """Summed negative log-likelihood (float64, on the CPU) of a batch of windows (B, T) given
    its logits (B, T, V): each window predicts its T - 1 next tokens. Log-probabilities are
    taken in float32, the sum in float64. NaN or Inf logits raise ConfigError naming the
    windows (`first_window` is the batch's first index): such weights are corrupt."""
    logits = logits[:, :-1]  # (B, T-1, V)
    labels = batch[:, 1:].to(logits.device)  # (B, T-1)
    nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), reduction="none"
    )
    if not bool(torch.isfinite(nll).all()):
        raise ConfigError(f"the model's logits are NaN or Inf on evaluation windows "
                          f"{first_window}..{first_window + batch.shape[0] - 1}",
                          hint=NON_FINITE_HINT)
    return nll.double().sum().cpu()


def nll_to_perplexity(total_nll: torch.Tensor, tokens: int) -> float:
    """exp(mean NLL); a mean whose exp overflows raises ConfigError (absurd logits)."""
    mean = float(total_nll) / tokens
    if mean > MAX_MEAN_NLL:
        raise ConfigError(f"the model's mean negative log-likelihood is {mean:.4g} nats, so its "
                          "perplexity overflows; its logits are absurdly large",
                          hint=NON_FINITE_HINT)
    return math.exp(mean)


@torch.inference_mode()
def perplexity(
    model: nn.Module,
    windows: torch.Tensor,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> float:
    """exp(mean NLL) over `windows` [W, seqlen]; each window predicts its seqlen - 1 next tokens.

    Log-probabilities are taken in float32 and summed in float64, so the result does not depend
    on the batch size beyond float32 rounding.
    """
    device = next(model.parameters()).device
    total_nll = torch.zeros((), dtype=torch.float64)
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start : start + batch_size].to(device)  # (B, T)
        total_nll += batch_nll(model(input_ids=batch, use_cache=False).logits, batch, start)
        if on_batch:
            on_batch(batch.shape[0])
    return nll_to_perplexity(total_nll, windows.shape[0] * (windows.shape[1] - 1))
