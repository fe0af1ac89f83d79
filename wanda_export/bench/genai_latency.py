"""Prefill and decode latency through onnxruntime-genai, the way users generate: `og.Model` on a
folder holding genai_config.json, `og.GeneratorParams`, `og.Generator`.

- prefill:BxS: a fresh generator (untimed), then `append_tokens` of B x S token ids (timed): one
  forward over the prompts and the logits of their last positions.
- decode:Bx1@P: a fresh generator, a P-token prompt and the first `generate_next_token` (which
  only picks from the prompt's logits) untimed; timed: the next `generate_next_token` and
  `get_next_tokens`, i.e. one forward of one token per sequence on a KV cache of P, and the
  greedy pick.

Token ids come from a fixed seed and avoid the special tokens (a pad id would be masked);
`min_length` keeps an end-of-sequence pick from ending a decode early. The decoder session runs
`threads` intra-op threads and one inter-op thread (a genai config overlay).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wanda_export.bench.runtimes import NO_GENAI
from wanda_export.bench.shapes import Shape, tokens_per_second
from wanda_export.bench.timing import LatencyStats, time_callable
from wanda_export.errors import EnvironmentProblem

GENAI_CONFIG = "genai_config.json"
MAX_TOKEN_ID = 1000  # token ids are drawn below min(vocab, this)
_SEED = 0


@dataclass(frozen=True)
class GenaiLatency:
    """Latency of one shape through onnxruntime-genai, and the tokens per second it means."""

    shape: Shape
    device: str
    threads: int
    stats: LatencyStats

    @property
    def tokens_per_second(self) -> float | None:
        """Tokens processed per second at the median: batch x seqlen / p50."""
        return tokens_per_second(self.shape, self.stats.p50_ms)

    def to_dict(self) -> dict:
        """JSON-able: the shape as its string form, tokens/s, the stats flattened in."""
        return {"shape": str(self.shape), "device": self.device, "threads": self.threads,
                "tokens_per_second": self.tokens_per_second, **self.stats.to_dict()}


@dataclass(frozen=True)
class GenaiModel:
    """An og.Model opened on a folder, with what the measurement needs from its config."""

    model: Any
    folder: Path
    device: str
    threads: int
    context_length: int
    token_ids: np.ndarray  # the ids prompts are drawn from: below the bound, no special token


def genai_model_file(config: dict) -> str:
    """The decoder's ONNX file name a genai config names (the builder's default otherwise)."""
    return config["model"].get("decoder", {}).get("filename", "model.onnx")


def read_genai_config(folder: Path) -> dict:
    """The parsed genai_config.json of `folder`; ValueError naming the file when it is not a
    JSON object."""
    path = Path(folder) / GENAI_CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None
    model = config.get("model") if isinstance(config, dict) else None
    if isinstance(model, dict):
        return config
    raise ValueError(f"{path} has no 'model' object; it is not an onnxruntime-genai config")


def genai_providers(config: dict) -> list[str]:
    """The execution providers a genai config was built for ('cpu' when it names none)."""
    options = config["model"].get("decoder", {}).get("session_options", {})
    names = [name for entry in options.get("provider_options", []) if isinstance(entry, dict)
             for name in entry]
    return names or ["cpu"]


def genai_folder_problem(folder: Path, device: str) -> str | None:
    """Why onnxruntime-genai cannot generate from `folder` on `device` ("cpu" or "cuda"), or
    None: no genai_config.json (the export did not write one: the torch.onnx path, or a family
    the genai builder lacks), an unreadable one, its model file missing, or a model built for
    the CPU asked to run on CUDA."""
    folder = Path(folder)
    if not (folder / GENAI_CONFIG).is_file():
        return (f"{folder.name}/ has no {GENAI_CONFIG}: the export wrote no onnxruntime-genai "
                "model (the torch.onnx path, or a family the genai model builder lacks)")
    try:
        config = read_genai_config(folder)
    except ValueError as error:
        return str(error)
    filename = genai_model_file(config)
    if not (folder / filename).is_file():
        return f"{folder.name}/{GENAI_CONFIG} names {filename}, which is not in {folder.name}/"
    built = genai_providers(config)
    if device == "cuda" and "cuda" not in built:
        return (f"{folder.name}/ holds a genai model built for {', '.join(built)}, not cuda "
                "(the builder's -e cuda, fp16)")
    return None


def _import_genai():
    try:
        import onnxruntime_genai
    except ImportError as error:
        raise EnvironmentProblem(f"{NO_GENAI}: {error}") from None
    return onnxruntime_genai


def open_genai_model(folder: Path, *, threads: int, device: str = "cpu") -> GenaiModel:
    """og.Model on `folder` with `threads` intra-op threads (one inter-op) on `device`; open it
    once and time every shape on it."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    problem = genai_folder_problem(folder, device)
    if problem:
        raise ValueError(problem)
    og = _import_genai()
    settings = read_genai_config(folder)["model"]
    config = og.Config(str(folder))
    sessions = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    config.overlay(json.dumps({"model": {"decoder": {"session_options": sessions}}}))
    config.clear_providers()
    if device == "cuda":
        config.append_provider("cuda")
    special = {settings.get(key) for key in ("pad_token_id", "bos_token_id", "eos_token_id")}
    bound = min(int(settings.get("vocab_size", MAX_TOKEN_ID)), MAX_TOKEN_ID)
    ids = np.array([i for i in range(bound) if i not in special], dtype=np.int32)
    return GenaiModel(og.Model(config), Path(folder), device, threads,
                      int(settings.get("context_length", 0)), ids)


def time_genai(opened: GenaiModel, shape: Shape, *, warmup: int,
               iterations: int) -> GenaiLatency:
    """Time one prefill or one decode step of `shape` through og.Generator (module docstring)."""
    og = _import_genai()
    length = shape.past + shape.seqlen + 1  # a decode: the prompt, the first pick, the step
    if opened.context_length and length > opened.context_length:
        raise ValueError(f"shape {shape} needs {length} positions; the model in "
                         f"{opened.folder} has a context of {opened.context_length}")
    rng = np.random.default_rng(_SEED)
    prompt = rng.choice(opened.token_ids, (shape.batch, shape.past or shape.seqlen))
    generator: list = []

    def fresh() -> None:
        params = og.GeneratorParams(opened.model)
        params.set_search_options(max_length=length, min_length=length, batch_size=shape.batch,
                                  do_sample=False)
        generator[:] = [og.Generator(opened.model, params)]
        if shape.kind == "decode":
            generator[0].append_tokens(prompt)
            generator[0].generate_next_token()  # picks from the prompt's logits: no forward

    def prefill() -> None:
        generator[0].append_tokens(prompt)

    def decode() -> None:
        generator[0].generate_next_token()
        generator[0].get_next_tokens()

    sync = None
    if opened.device == "cuda":
        import torch

        sync = torch.cuda.synchronize
    stats = time_callable(prefill if shape.kind == "prefill" else decode, warmup, iterations,
                          sync=sync, setup=fresh)
    return GenaiLatency(shape, opened.device, opened.threads, stats)
