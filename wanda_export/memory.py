"""How much memory a run may use and how much it needs, in memory or streaming its layers.

The budget is the `memory_budget` setting, else the smaller of the machine's available memory
and the limit of the memory cgroup the process runs in (CI runners and containers limit memory
that way: cgroup v2 `memory.max`, v1 `memory.limit_in_bytes`). The needs are estimated from the
model's shapes on the meta device, so the choice is made before any weight is read.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from wanda_export.errors import EnvironmentProblem

if TYPE_CHECKING:
    from torch import nn

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*", re.IGNORECASE)
# Python, torch and transformers themselves, measured at about 0.4-0.5 GiB on this project's CPU
# machine (benchmarks/streaming.py); counted once in every estimate.
RUNTIME_BYTES = 600 * 2**20
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
PROC_MEMINFO = Path("/proc/meminfo")
UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a huge number


# glibc mallopt parameters (malloc.h); see `return_freed_memory`.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_FIXED_MMAP_THRESHOLD = 128 * 2**10


def return_freed_memory() -> bool:
    """Make glibc give freed tensor memory back to the system at once (True when it could).

    By default glibc raises its mmap threshold each time a large block is freed, so later
    large tensors come from the heap, whose freed pages are kept: streaming one layer after
    another then grows the process by a layer per layer. Measured on the 5.6 GiB checkpoint
    (BENCHMARKS.md): peak RSS 1.97 GiB (killed at a 1.8 GiB limit) without, 1.24 GiB with.
    A fixed threshold, trim threshold and two arenas keep freed layers out of the process.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return False
    if mallopt is None:
        return False
    return all(mallopt(option, value) == 1 for option, value in (
        (_M_MMAP_THRESHOLD, _FIXED_MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, _FIXED_MMAP_THRESHOLD),
        (_M_ARENA_MAX, 2)))


def parse_size(text: str) -> int:
    """Bytes of a size such as "6GiB", "512MiB", "8GB" or "1000000"; ValueError otherwise."""
    match = _SIZE.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not a size such as 6GiB, 512MiB or 8GB")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])


def format_size(size: int) -> str:
    """A size in GiB with two decimals, for messages."""
    return f"{size / 2**30:.2f} GiB"


@dataclass(frozen=True)
class MemoryBudget:
    """How many bytes the run may use, and where that number came from."""

    bytes: int
    source: str


def _cgroup_limit() -> tuple[int, str] | None:
    """The memory limit of this process's cgroup (v2, else v1), or None without one."""
    try:
        lines = PROC_CGROUP.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        candidates = []
        if controllers == "":  # cgroup v2: one unified hierarchy
            candidates.append((CGROUP_ROOT / path.lstrip("/") / "memory.max",
                               "cgroup v2 memory.max"))
        elif "memory" in controllers.split(","):
            candidates.append((CGROUP_ROOT / "memory" / path.lstrip("/") / "memory.limit_in_bytes",
                               "cgroup v1 memory.limit_in_bytes"))
        for file, source in candidates:
            try:
                text = file.read_text().strip()
            except OSError:
                continue
            if text.isdigit() and int(text) < UNLIMITED:
                return int(text), f"{source} ({file})"
    return None


def _available_memory() -> int:
    """MemAvailable of /proc/meminfo, in bytes."""
    for line in PROC_MEMINFO.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise EnvironmentProblem("cannot read the available memory from /proc/meminfo",
                             hint="set model: {memory_budget: ...} in the pipeline file")


def detect_budget(configured: str | None) -> MemoryBudget:
    """The run's budget: `configured` if set, else min(available memory, cgroup limit)."""
    if configured is not None:
        return MemoryBudget(parse_size(configured), "model.memory_budget")
    budget = MemoryBudget(_available_memory(), "available memory (/proc/meminfo MemAvailable)")
    limit = _cgroup_limit()
    if limit is not None and limit[0] < budget.bytes:
        budget = MemoryBudget(*limit)
    return budget


@dataclass(frozen=True)
class WindowPass:
    """One pass of token windows through the model: calibration (statistics, no logits) or
    evaluation (the full-vocabulary logits of each batch)."""

    windows: int
    seqlen: int
    batch_size: int
    logits: bool


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run needs, from the model's shapes: all weights, the largest decoder layer, the
    modules outside the decoder stack, and the working set of each way of running; on a GPU,
    the `*_on_device` part of it sits in the GPU's memory (the rest stays in host memory)."""

    weights: int
    largest_layer: int
    outside_layers: int
    in_memory: int
    streaming: int
    in_memory_on_device: int
    streaming_on_device: int

    def to_dict(self) -> dict:
        """JSON-ready, in bytes."""
        return asdict(self)


# Inside a decoder layer a batch's activations (attention scores, MLP intermediates, their
# float32 copies) stay under this many hidden-size float32 vectors per token.
_ACTIVATION_VECTORS_PER_TOKEN = 16


def _batch_bytes(model: nn.Module, window_pass: WindowPass) -> int:
    """One batch's working set: the layer activations, plus the logits and their float32
    log-probabilities when the pass computes a loss."""
    config = model.config.get_text_config()
    tokens = min(window_pass.batch_size, window_pass.windows) * window_pass.seqlen
    activations = tokens * int(config.hidden_size) * _ACTIVATION_VECTORS_PER_TOKEN * 4
    logits = 2 * tokens * int(config.vocab_size) * 4 if window_pass.logits else 0
    return activations + logits


def estimate_memory(model: nn.Module, layers: nn.ModuleList, element_size: int, *,
                    passes: list[WindowPass], hessian: bool, keep_dense_copy: bool,
                    shard_bytes: int) -> MemoryEstimate:
    """Estimate a run's needs from `model` on the meta device (its parameters' shapes).

    The passes (calibration, evaluation) run one after the other, so a run needs the largest
    pass's working set, not their sum. In memory: the runtime, every weight (twice the
    decoder's when the benchmark keeps a dense copy), one batch and every layer's statistics
    (X^T X with `hessian`). Streaming: the runtime, the modules outside the decoder stack (the
    input embeddings and the output head are never resident together), one layer (twice: the
    layer and its pruned tensors on their way to the writer), the shard being filled
    (`shard_bytes`), one layer's statistics, and per pass one batch plus the hidden states of
    all its windows in and out of a layer. On a GPU only the weights being computed, one
    batch and the statistics are on the device; the hidden states and the shard stay on the
    CPU.
    """
    from wanda_export.model.layers import is_linear, weight_out_in

    def size(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters()) * element_size

    weights = size(model)
    per_layer = [size(layer) for layer in layers]
    largest = max(per_layer)
    outside = weights - sum(per_layer)
    embeddings, output = model.get_input_embeddings(), model.get_output_embeddings()
    untied_head = output is not None and output.weight is not embeddings.weight
    outside_peak = outside - min(size(embeddings), size(output) if untied_head else 0)
    hidden = int(model.config.get_text_config().hidden_size)
    inputs_per_layer = [
        sorted({weight_out_in(m).shape[1] for m in layer.modules() if is_linear(m)})
        for layer in layers]
    stats = [sum((n * n if hessian else n) * 4 for n in widths) for widths in inputs_per_layer]
    batches = [_batch_bytes(model, window_pass) for window_pass in passes] or [0]
    states = [2 * p.windows * p.seqlen * hidden * element_size for p in passes] or [0]
    in_memory_on_device = weights + max(batches) + sum(stats)
    streaming_on_device = outside_peak + 2 * largest + max(stats) + max(batches)
    in_memory = (RUNTIME_BYTES + in_memory_on_device
                 + (sum(per_layer) if keep_dense_copy else 0))
    streaming = (RUNTIME_BYTES + outside_peak + 2 * largest + min(shard_bytes, weights)
                 + max(stats) + max(b + s for b, s in zip(batches, states, strict=True)))
    return MemoryEstimate(weights, largest, outside, in_memory, streaming, in_memory_on_device,
                          streaming_on_device)


def choose_streaming(setting: bool | str, estimate: MemoryEstimate,
                     budget: MemoryBudget) -> bool:
    """Whether to stream: as set, or under "auto" when the in-memory run would not fit the
    budget. A run that cannot fit even streaming raises EnvironmentProblem (exit 4) with the
    numbers."""
    streaming = estimate.in_memory > budget.bytes if setting == "auto" else bool(setting)
    need = estimate.streaming if streaming else estimate.in_memory
    if need > budget.bytes:
        how = "streaming one layer at a time" if streaming else "in memory"
        raise EnvironmentProblem(
            f"the run needs about {format_size(need)} {how} (largest decoder layer "
            f"{format_size(estimate.largest_layer)}, outside the layers "
            f"{format_size(estimate.outside_layers)}, all weights {format_size(estimate.weights)})"
            f" but the memory budget is {format_size(budget.bytes)} ({budget.source})",
            hint="raise model: {memory_budget: ...}, run on a machine with more memory, use "
            "fewer calibration windows" + ("" if streaming else ", or set streaming: auto"))
    return streaming
