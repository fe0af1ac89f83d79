"""Perplexity of the exported ONNX decoder through onnxruntime, on the same windows and with the
same protocol as the PyTorch perplexity (`perplexity.py`: the same per-batch NLL and exponent),
so the two compare directly and a gate can hold the artifact to the model.

The feed is built from the session's own inputs, as optimum's decoders name them: `input_ids`,
`attention_mask`, `position_ids` (when the graph has it) and empty `past_key_values.N.key|value`
caches; the output read is `logits`. Any exporter that keeps those names works.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from wanda_export.evaluate.parity import onnx_session
from wanda_export.evaluate.perplexity import batch_nll, nll_to_perplexity

PAST_PREFIX = "past_key_values."
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
           "tensor(double)": np.float64, "tensor(bfloat16)": np.float32}


def _empty_past(node, batch: int, fallback: tuple[int, int]) -> np.ndarray:
    """A zero-length cache for one past input: [batch, heads, 0, head_dim], its head count and
    size from the graph when static, else from `fallback` (kv heads, head dim)."""
    shape = list(node.shape)
    heads = shape[1] if len(shape) == 4 and isinstance(shape[1], int) else fallback[0]
    size = shape[3] if len(shape) == 4 and isinstance(shape[3], int) else fallback[1]
    return np.zeros((batch, heads, 0, size), _DTYPES.get(node.type, np.float32))


def onnx_feed(inputs: dict, ids: np.ndarray, fallback: tuple[int, int]) -> dict[str, np.ndarray]:
    """The feed of one prefill of `ids` [B, T] for a session with `inputs` (name -> node)."""
    batch, seq = ids.shape
    feed = {"input_ids": ids.astype(np.int64)}
    if "attention_mask" in inputs:
        feed["attention_mask"] = np.ones((batch, seq), np.int64)
    if "position_ids" in inputs:
        feed["position_ids"] = np.arange(seq, dtype=np.int64)[None].repeat(batch, 0)
    for name, node in inputs.items():
        if name.startswith(PAST_PREFIX):
            feed[name] = _empty_past(node, batch, fallback)
    return feed


def onnx_perplexity(path: Path, windows: torch.Tensor, batch_size: int, config,
                    on_batch: Callable[[int], None] | None = None) -> float:
    """exp(mean NLL) of the ONNX model at `path` over `windows` [W, seqlen], exactly as
    `perplexity.perplexity` computes it for PyTorch. `config` (the model's) gives the cache
    shapes when the graph leaves them symbolic."""
    session = onnx_session(path)
    inputs = {node.name: node for node in session.get_inputs()}
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    total_nll = torch.zeros((), dtype=torch.float64)
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start : start + batch_size].cpu()  # (B, T)
        (logits,) = session.run(["logits"], onnx_feed(inputs, batch.numpy(), (heads, head_dim)))
        total_nll += batch_nll(torch.from_numpy(logits), batch, start)
        if on_batch:
            on_batch(batch.shape[0])
    return nll_to_perplexity(total_nll, windows.shape[0] * (windows.shape[1] - 1))
