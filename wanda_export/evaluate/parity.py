"""Output parity between the PyTorch model and its ONNX export under onnxruntime.

Two checks on fixed prompts: the logits of one prefill (max absolute and relative difference),
and greedy generation of `new_tokens` tokens through the KV-cache path, token for token.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wanda_export.errors import missing_dependency
from wanda_export.export.onnx import CacheLayout

DEFAULT_PROMPTS = (
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.",
    "The capital of France is",
    "Sparse neural networks are",
)


@dataclass
class ParityResult:
    """How closely onnxruntime reproduces PyTorch."""

    max_abs_diff: float
    max_rel_diff: float
    generation_match: bool
    new_tokens: int
    prompts: int
    mismatched_prompts: list[int]

    def to_dict(self) -> dict:
        return asdict(self)


def onnx_session(path: Path, providers: list[str] | None = None, threads: int | None = None):
    """An onnxruntime session with a fixed thread count (benchmarks need it)."""
    try:
        import onnxruntime as ort
    except ImportError as error:
        raise missing_dependency("onnxruntime", "onnx") from error
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options,
                                providers=providers or ["CPUExecutionProvider"])


def onnx_step(session, layout: CacheLayout, ids: np.ndarray, past: list[np.ndarray] | None,
              past_length: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """One forward of the exported decoder: logits and the updated cache."""
    batch, seq = ids.shape
    if past is None:
        past = [np.zeros((batch, layout.kv_heads, 0, layout.head_dim), np.float32)
                for _ in range(2 * layout.layers)]
    feed = {"input_ids": ids.astype(np.int64),
            "attention_mask": np.ones((batch, past_length + seq), np.int64),
            "position_ids": np.arange(past_length, past_length + seq, dtype=np.int64)[None]
            .repeat(batch, 0)}
    for i in range(layout.layers):
        feed[f"past_key_values.{i}.key"] = past[2 * i]
        feed[f"past_key_values.{i}.value"] = past[2 * i + 1]
    logits, *present = session.run(None, feed)
    return logits, present


@torch.no_grad()
def torch_greedy(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> list[int]:
    """Greedy decoding with the model's own KV cache, never stopping at EOS."""
    out = model(input_ids=ids, use_cache=True)
    tokens = []
    for _ in range(new_tokens):
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(int(token))
        out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
    return tokens


def onnx_greedy(session, layout: CacheLayout, ids: np.ndarray, new_tokens: int) -> list[int]:
    """Greedy decoding through the exported KV-cache inputs and outputs."""
    logits, past = onnx_step(session, layout, ids, None, 0)
    length = ids.shape[1]
    tokens = []
    for _ in range(new_tokens):
        token = logits[:, -1].argmax(-1)[:, None]
        tokens.append(int(token[0, 0]))
        logits, past = onnx_step(session, layout, token, past, length)
        length += 1
    return tokens


@torch.no_grad()
def measure_parity(model: nn.Module, tokenizer, onnx_path: Path, layout: CacheLayout,
                   new_tokens: int, prompts: tuple[str, ...] = DEFAULT_PROMPTS,
                   threads: int | None = None) -> ParityResult:
    """Compare logits and greedy generations of `model` and the ONNX file on `prompts`."""
    session = onnx_session(onnx_path, threads=threads)
    max_abs = max_rel = 0.0
    mismatched = []
    for index, prompt in enumerate(prompts):
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        on_device = ids.to(next(model.parameters()).device)  # the model may sit on a GPU
        reference = model(input_ids=on_device, use_cache=False).logits.float().cpu().numpy()
        exported, _ = onnx_step(session, layout, ids.numpy(), None, 0)
        diff = np.abs(exported.astype(np.float64) - reference)
        max_abs = max(max_abs, float(diff.max()))
        max_rel = max(max_rel, float(diff.max() / max(np.abs(reference).max(), 1e-12)))
        if torch_greedy(model, on_device, new_tokens) != onnx_greedy(session, layout, ids.numpy(),
                                                               new_tokens):
            mismatched.append(index)
    return ParityResult(max_abs, max_rel, not mismatched, new_tokens, len(prompts), mismatched)
