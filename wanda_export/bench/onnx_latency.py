"""Latency of an exported decoder (wanda_export.export.onnx layout) under onnxruntime.

The session is built by the parity check's `onnx_session` (fixed intra-op threads, one
inter-op thread, onnxruntime's default ORT_ENABLE_ALL graph optimizations) and each timed call
is one `onnx_step`: the feed for one Shape, then `session.run`. Inputs come from a fixed seed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wanda_export.bench.shapes import Shape
from wanda_export.bench.timing import LatencyStats, time_callable
from wanda_export.evaluate.parity import onnx_session, onnx_step, session_io
from wanda_export.export.onnx import CacheLayout
from wanda_export.export.tensorrt import provider_options

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
_PAST_KEY = re.compile(r"^past_key_values\.(\d+)\.key$")
MAX_TOKEN_ID = 1000


@dataclass(frozen=True)
class OnnxLatency:
    """Latency of one shape, with the provider onnxruntime actually put first."""

    shape: Shape
    provider: str
    threads: int
    stats: LatencyStats

    def to_dict(self) -> dict:
        """JSON-able: the shape as its string form, the stats flattened in."""
        return {"shape": str(self.shape), "provider": self.provider, "threads": self.threads,
                **self.stats.to_dict()}


def execution_providers(provider: str, trt_cache_dir: Path | None = None) -> list:
    """onnxruntime's providers argument for `provider`, falling back to CUDA and then CPU.

    TensorRT builds fp16 engines that may use 2:4 sparse tactics, cached in `trt_cache_dir`
    (required: an engine build takes minutes and must not be repeated per session), with the
    recipe's options for an onnxruntime linked against TensorRT 10 (the fp16 flag on the fp32
    graph: TensorRT 11 has no such flag and would need the fp16 file instead).
    """
    if provider == CPU:
        return [CPU]
    if provider == CUDA:
        return [CUDA, CPU]
    if provider == TENSORRT:
        if trt_cache_dir is None:
            raise ValueError("the TensorRT provider needs trt_cache_dir for its engine cache")
        options = {**provider_options(10), "trt_engine_cache_path": str(trt_cache_dir),
                   "trt_dump_subgraphs": False}
        return [(TENSORRT, options), CUDA, CPU]
    raise ValueError(f"unknown execution provider {provider!r}; choose one of "
                     f"{[CPU, CUDA, TENSORRT]}")


def session_layout(session) -> CacheLayout:
    """The cache layout read off the session's inputs: the number of past_key_values.{i}.key
    inputs, and the static kv_heads and head_dim dims of past_key_values.0.key."""
    inputs = {node.name: node.shape for node in session.get_inputs()}
    layers = sum(1 for name in inputs if _PAST_KEY.match(name))
    shape = inputs.get("past_key_values.0.key")
    if not layers or shape is None or len(shape) != 4:
        raise ValueError("the ONNX model has no past_key_values.0.key input [batch, kv_heads, "
                         "past, head_dim]; was it exported with wanda_export.export.onnx?")
    static = all(isinstance(dim, int) for dim in (shape[1], shape[3]))
    if not static:
        raise ValueError(f"past_key_values.0.key has symbolic dims {shape}; pass the layout")
    return CacheLayout(layers=layers, kv_heads=shape[1], head_dim=shape[3])


def _vocab_bound(session) -> int:
    """An exclusive upper bound for token ids: the static vocab dim of `logits` when known."""
    logits = next((node.shape for node in session.get_outputs() if node.name == "logits"), None)
    vocab = logits[-1] if logits else None
    return min(vocab, MAX_TOKEN_ID) if isinstance(vocab, int) else 2


def shape_inputs(shape: Shape, layout: CacheLayout, vocab_bound: int
                 ) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """Token ids and (for a decode) a random float32 KV cache of `shape.past` tokens, seeded."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab_bound, (shape.batch, shape.seqlen), dtype=np.int64)
    if shape.kind == "prefill":
        return ids, None
    dims = (shape.batch, layout.kv_heads, shape.past, layout.head_dim)
    past = [rng.standard_normal(dims, dtype=np.float32) for _ in range(2 * layout.layers)]
    return ids, past


def open_session(path: Path, *, threads: int, provider: str = CPU,
                 trt_cache_dir: Path | None = None):
    """An onnxruntime session on `provider` with `threads` intra-op threads; open it once and
    time every shape on it (for TensorRT, opening and the first run build the engines)."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return onnx_session(Path(path), execution_providers(provider, trt_cache_dir), threads)


def time_session(session, shape: Shape, *, threads: int, warmup: int,
                 iterations: int, layout: CacheLayout | None = None) -> OnnxLatency:
    """Time one forward of an open session for `shape`; the layout is read off the session
    when not given."""
    layout = layout or session_layout(session)
    ids, past = shape_inputs(shape, layout, _vocab_bound(session))
    io = session_io(session)
    stats = time_callable(lambda: onnx_step(session, layout, ids, past, shape.past, io),
                          warmup, iterations)
    return OnnxLatency(shape, session.get_providers()[0], threads, stats)
