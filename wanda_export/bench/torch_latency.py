"""Latency in PyTorch: a Hugging Face causal LM forward per Shape, and 2:4 semi-structured
sparse linears (torch.sparse.to_sparse_semi_structured, CUDA compute capability >= 8.0 only).

Nothing here touches CUDA at import time; every CUDA-only entry point first checks the
`torch-sparse24` runtime and raises EnvironmentProblem with the reason when it is unavailable.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wanda_export.bench.runtimes import runtime_availability
from wanda_export.bench.shapes import Shape
from wanda_export.bench.timing import LatencyStats, per_call, time_callable
from wanda_export.errors import ConfigError, EnvironmentProblem
from wanda_export.sparsity.mask import apply_mask_, nm_mask
from wanda_export.sparsity.score import magnitude_scores
from wanda_export.sparsity.verify import nm_violations

SPARSE24_DTYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class TorchLatency:
    """Latency of one model forward for one shape."""

    shape: Shape
    device: str
    dtype: str
    stats: LatencyStats

    def to_dict(self) -> dict:
        """JSON-able: the shape as its string form, the stats flattened in."""
        return {"shape": str(self.shape), "device": self.device, "dtype": self.dtype,
                **self.stats.to_dict()}


@dataclass(frozen=True)
class LinearSparse24:
    """Dense vs 2:4 semi-structured `F.linear` for one GEMM: [tokens, in] x [out, in]^T."""

    out_features: int
    in_features: int
    tokens: int
    dtype: str
    backend: str
    dense: LatencyStats
    sparse: LatencyStats
    speedup: float
    max_abs_diff: float

    def to_dict(self) -> dict:
        """JSON-able, with both stats as nested dicts."""
        return {**{k: v for k, v in vars(self).items() if k not in ("dense", "sparse")},
                "dense": self.dense.to_dict(), "sparse": self.sparse.to_dict()}


def _sync(device: torch.device) -> Callable[[], None] | None:
    """The clock-read barrier for `device`: CUDA work is asynchronous, CPU work is not."""
    return torch.cuda.synchronize if device.type == "cuda" else None


def _accepts(model: nn.Module, argument: str) -> bool:
    return argument in inspect.signature(model.forward).parameters


@torch.inference_mode()
def measure_torch_model(model: nn.Module, shape: Shape, warmup: int,
                        iterations: int) -> TorchLatency:
    """Time one forward of `model` for `shape` on the model's device and dtype.

    Prefill: `batch x seqlen` seeded token ids, no cache, logits of the last position only.
    Decode: a cache of `past` tokens is built once, then each call crops off the token the
    previous call appended (views, no copy) and runs one token on it, so every call sees the
    same cache length.
    """
    param = next(model.parameters())
    vocab = model.config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (shape.batch, shape.past + shape.seqlen),
                        generator=generator).to(param.device)
    if shape.kind == "prefill":
        keep = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}

        def step() -> None:
            model(input_ids=ids, use_cache=False, **keep)
    else:
        cache = model(input_ids=ids[:, : shape.past], use_cache=True).past_key_values
        if not hasattr(cache, "crop"):
            raise ConfigError(f"{type(cache).__name__} cannot be cropped; decode timing needs "
                              "a transformers DynamicCache")
        token = ids[:, shape.past :]

        def step() -> None:
            extra = cache.get_seq_length() - shape.past
            if extra > 0:
                cache.crop(-extra)  # negative: drop that many tokens (old and new transformers)
            model(input_ids=token, past_key_values=cache, use_cache=True)

    stats = time_callable(step, warmup, iterations, _sync(param.device))
    return TorchLatency(shape, param.device.type, str(param.dtype).removeprefix("torch."), stats)


def require_sparse24() -> None:
    """Raise EnvironmentProblem with the reason when torch's 2:4 kernels cannot run here."""
    availability = runtime_availability("torch-sparse24")
    if not availability.available:
        raise EnvironmentProblem(
            f"torch semi-structured 2:4 sparsity is unavailable: {availability.reason}",
            hint="run on an NVIDIA GPU with compute capability >= 8.0 and a CUDA build of torch")


def _check_sparse24_linear(name: str, module: nn.Module) -> None:
    """Raise ConfigError unless `module` is a CUDA fp16/bf16 nn.Linear whose weight is 2:4."""
    if not isinstance(module, nn.Linear):
        raise ConfigError(f"{name} is a {type(module).__name__}, not an nn.Linear")
    weight = module.weight
    if weight.device.type != "cuda" or weight.dtype not in SPARSE24_DTYPES:
        raise ConfigError(f"{name} is {weight.dtype} on {weight.device}; semi-structured 2:4 "
                          "needs float16 or bfloat16 weights on CUDA",
                          hint="model.to('cuda', torch.float16) first")
    violations = nm_violations(weight.detach(), 2, 4)
    if violations:
        found = ("in_features not divisible by 4" if violations < 0
                 else f"{violations} groups of 4 with more than 2 non-zeros")
        raise ConfigError(f"{name} is not 2:4 sparse along its inputs ({found})",
                          hint="prune with pattern 2:4 first")


@torch.no_grad()
def to_sparse24_(model: nn.Module, target_names: Iterable[str]) -> int:
    """Replace the weights of the named nn.Linear modules by semi-structured 2:4 tensors, in
    place; returns how many were converted. Every module is checked before any is changed."""
    require_sparse24()
    from torch.sparse import to_sparse_semi_structured

    modules = []
    for name in target_names:
        try:
            module = model.get_submodule(name)
        except AttributeError as error:
            raise ConfigError(f"the model has no module {name!r}") from error
        _check_sparse24_linear(name, module)
        modules.append(module)
    compressed = [to_sparse_semi_structured(module.weight) for module in modules]
    for module, weight in zip(modules, compressed, strict=True):
        module.weight = nn.Parameter(weight, requires_grad=False)
    return len(modules)


def random_24_weight(out_features: int, in_features: int, dtype: torch.dtype,
                     device: str | torch.device) -> torch.Tensor:
    """A random [out, in] weight (seed 0) with the 2 smallest |w| of every 4 inputs zeroed."""
    generator = torch.Generator(device=device).manual_seed(0)
    weight = torch.randn(out_features, in_features, generator=generator, device=device,
                         dtype=dtype)
    apply_mask_(weight, nm_mask(magnitude_scores(weight), 2, 4))
    return weight


@torch.inference_mode()
def measure_linear_sparse24(out_features: int, in_features: int, tokens: int,
                            dtype: torch.dtype, warmup: int, iterations: int,
                            calls: int) -> LinearSparse24:
    """Time dense vs semi-structured `F.linear(x, W)` on CUDA for x [tokens, in_features] and a
    random 2:4 W [out_features, in_features]; each timed iteration makes `calls` calls and the
    stats are per call. speedup = dense p50 / sparse p50."""
    require_sparse24()
    if dtype not in SPARSE24_DTYPES:
        raise ConfigError(f"semi-structured 2:4 needs float16 or bfloat16, not {dtype}")
    from torch.sparse import to_sparse_semi_structured

    weight = random_24_weight(out_features, in_features, dtype, "cuda")
    generator = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(tokens, in_features, generator=generator, device="cuda", dtype=dtype)
    sparse_weight = to_sparse_semi_structured(weight)

    def timed(matrix: torch.Tensor) -> LatencyStats:
        def run() -> None:
            for _ in range(calls):
                F.linear(x, matrix)

        return per_call(time_callable(run, warmup, iterations, torch.cuda.synchronize), calls)

    dense, sparse = timed(weight), timed(sparse_weight)
    diff = (F.linear(x, weight).float() - F.linear(x, sparse_weight).float()).abs().max()
    return LinearSparse24(out_features, in_features, tokens, str(dtype).removeprefix("torch."),
                          type(sparse_weight).__name__, dense, sparse,
                          dense.p50_ms / sparse.p50_ms, float(diff))
