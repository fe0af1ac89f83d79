"""Output parity between the PyTorch model and its ONNX export under onnxruntime.

Checks on fixed prompts: the logits of one prefill (max absolute and relative difference),
greedy generation of `new_tokens` tokens through the KV-cache path, token for token, and, for
an onnxruntime-genai folder, the same greedy generation through `onnxruntime_genai`'s generator.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wanda_export.errors import missing_dependency
from wanda_export.export.onnx import CacheLayout, output_names

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
    # onnxruntime-genai's generator on the exported folder (None: not an onnxruntime-genai one)
    genai_generation_match: bool | None = None
    genai_mismatched_prompts: list[int] | None = None

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


_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def session_io(session) -> tuple[bool, type]:
    """Whether the graph takes `position_ids` (torch.onnx exports do; onnxruntime-genai's
    attention derives positions from the mask), and the KV cache's numpy dtype."""
    inputs = {node.name: node.type for node in session.get_inputs()}
    cache = _NUMPY_TYPES.get(inputs.get("past_key_values.0.key", ""), np.float32)
    return "position_ids" in inputs, cache


def onnx_step(session, layout: CacheLayout, ids: np.ndarray, past: list[np.ndarray] | None,
              past_length: int, io: tuple[bool, type] | None = None
              ) -> tuple[np.ndarray, list[np.ndarray]]:
    """One forward of the exported decoder: logits and the updated cache (`io`: the session's
    `session_io`, read off the session when not given)."""
    positions, cache_dtype = io or session_io(session)
    batch, seq = ids.shape
    if past is None:
        past = [np.zeros((batch, layout.kv_heads, 0, layout.head_dim), cache_dtype)
                for _ in range(2 * layout.layers)]
    feed = {"input_ids": ids.astype(np.int64),
            "attention_mask": np.ones((batch, past_length + seq), np.int64)}
    if positions:
        feed["position_ids"] = np.arange(past_length, past_length + seq, dtype=np.int64)[
            None].repeat(batch, 0)
    for i in range(layout.layers):
        feed[f"past_key_values.{i}.key"] = past[2 * i].astype(cache_dtype, copy=False)
        feed[f"past_key_values.{i}.value"] = past[2 * i + 1].astype(cache_dtype, copy=False)
    logits, *present = session.run(output_names(layout.layers), feed)
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
    io = session_io(session)
    logits, past = onnx_step(session, layout, ids, None, 0, io)
    length = ids.shape[1]
    tokens = []
    for _ in range(new_tokens):
        token = logits[:, -1].argmax(-1)[:, None]
        tokens.append(int(token[0, 0]))
        logits, past = onnx_step(session, layout, token, past, length, io)
        length += 1
    return tokens


def genai_greedy(model, ids: np.ndarray, new_tokens: int) -> list[int]:
    """Greedy decoding with onnxruntime-genai's generator (an `og.Model` of the folder), the way
    its users generate; exactly `new_tokens` tokens (min_length keeps EOS from ending it)."""
    import onnxruntime_genai as og

    length = ids.shape[1] + new_tokens
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=length, min_length=length, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids.astype(np.int32))
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens


def _genai_model(folder: Path | None):
    """An `og.Model` of an exported folder holding genai_config.json, else None."""
    if folder is None or not (folder / "genai_config.json").is_file():
        return None
    try:
        import onnxruntime_genai as og
    except ImportError as error:
        raise missing_dependency("onnxruntime_genai", "onnx") from error
    return og.Model(str(folder))


@torch.no_grad()
def measure_parity(model: nn.Module, tokenizer, onnx_path: Path, layout: CacheLayout,
                   new_tokens: int, prompts: tuple[str, ...] = DEFAULT_PROMPTS,
                   threads: int | None = None, genai_folder: Path | None = None
                   ) -> ParityResult:
    """Compare logits and greedy generations of `model` and the ONNX file on `prompts`; with
    `genai_folder` (an onnxruntime-genai folder), also onnxruntime-genai's greedy generation."""
    session = onnx_session(onnx_path, threads=threads)
    genai = _genai_model(genai_folder)
    max_abs = max_rel = 0.0
    mismatched, genai_mismatched = [], []
    device = next(model.parameters()).device  # the model may sit on a GPU
    for index, prompt in enumerate(prompts):
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        reference = model(input_ids=ids.to(device), use_cache=False).logits.float().cpu().numpy()
        exported, _ = onnx_step(session, layout, ids.numpy(), None, 0)
        diff = np.abs(exported.astype(np.float64) - reference)
        max_abs = max(max_abs, float(diff.max()))
        max_rel = max(max_rel, float(diff.max() / max(np.abs(reference).max(), 1e-12)))
        expected = torch_greedy(model, ids.to(device), new_tokens)
        if expected != onnx_greedy(session, layout, ids.numpy(), new_tokens):
            mismatched.append(index)
        if genai is not None and expected != genai_greedy(genai, ids.numpy(), new_tokens):
            genai_mismatched.append(index)
    return ParityResult(max_abs, max_rel, not mismatched, new_tokens, len(prompts), mismatched,
                        None if genai is None else not genai_mismatched,
                        None if genai is None else genai_mismatched)
