"""What makes a checkpoint acceptable: its config.json, its weight files, what loading reported.

Each check reads as little as it can (config.json, the safetensors headers, the GGUF metadata,
transformers' loading report, one isfinite pass per tensor) and raises a ConfigError naming the
file and the reason, so a damaged or mismatched checkpoint is refused before it is pruned: a
weight that transformers had to initialise at random would make a run "pass" on garbage.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wanda_export.errors import ConfigError, EnvironmentProblem

CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")
REMOTE_CAUSAL_LM = "AutoModelForCausalLM"
FINITE_CHUNK = 1 << 24  # elements per isfinite call: bounds the temporary bool tensor to 16 MiB
GGUF_INSTALL_HINT = "pip install 'gguf>=0.10'"
NON_FINITE_HINT = ("check the model's weight files; in float16, activations can overflow: set "
                   "model: {dtype: float32} (or bfloat16) in the pipeline file")
_LISTED = 5


def listing(names: Iterable[str]) -> str:
    """At most a few names, sorted, then how many more."""
    ordered = sorted(names)
    shown = ", ".join(ordered[:_LISTED])
    return shown + (f" and {len(ordered) - _LISTED} more" if len(ordered) > _LISTED else "")


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message (library messages run to paragraphs)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def read_config_json(directory: Path) -> dict[str, Any]:
    """The checkpoint's config.json as a mapping; refuses a folder that is not a checkpoint.

    Catches what transformers reports poorly: no config.json ("Should have a `model_type`
    key"), a file that is not JSON or not an object, a missing or unknown model_type, and an
    architecture that is not a causal language model.
    """
    file = directory / "config.json"
    if not file.is_file():
        state = "is empty" if not any(directory.iterdir()) else "has no config.json"
        raise ConfigError(f"the model folder {directory} {state}; a transformers checkpoint "
                          "holds config.json and its weights (model.safetensors)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{file} is not readable JSON: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{file} holds a JSON {type(data).__name__}, not an object")
    model_type = data.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ConfigError(f"{file} has no model_type, so transformers cannot tell the "
                          "architecture")
    problem = causal_lm_problem(model_type, data.get("architectures"), data.get("auto_map"))
    if problem:
        raise ConfigError(f"{file}: {problem}")
    return data


def causal_lm_problem(model_type: str, architectures: Any, auto_map: Any) -> str | None:
    """Why a config does not describe a causal LM that transformers can build; None if it does.

    A checkpoint with its own code (auto_map naming AutoModelForCausalLM) is judged by that
    code. Otherwise the model_type must be known to transformers and have a causal-LM class,
    and the listed architectures, when present, must include a causal LM: a BertModel checkpoint
    would otherwise load as BertLMHeadModel with a randomly initialised head.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if isinstance(auto_map, Mapping) and REMOTE_CAUSAL_LM in auto_map:
        return None
    if model_type not in CONFIG_MAPPING_NAMES:
        import transformers

        custom = ("; its auto_map names no AutoModelForCausalLM" if isinstance(auto_map, Mapping)
                  else "")
        return (f"model_type {model_type!r} is not known to transformers "
                f"{transformers.__version__}{custom}; upgrade transformers, or use a checkpoint "
                "of a supported architecture")
    names = [architectures] if isinstance(architectures, str) else architectures
    if isinstance(names, list) and names:
        causal = {n for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() for n in _names(v)}
        if not any(isinstance(n, str) and (n in causal or n.endswith(CAUSAL_LM_SUFFIXES))
                   for n in names):
            return (f"architecture {listing(map(str, names))} is not a causal language model "
                    "(wanda-export prunes *ForCausalLM models)")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return (f"model_type {model_type!r} has no causal language model in transformers "
                "(encoder or encoder-decoder models cannot be pruned here)")
    return None


def _names(value: str | tuple[str, ...]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def check_safetensors_headers(directory: Path) -> None:
    """Open every *.safetensors file's header (no tensor data is read); name a broken one.

    A zero-byte, truncated or header-corrupted file is reported with its path and the parser's
    reason instead of a SafetensorError traceback from deep inside transformers.
    """
    from safetensors import SafetensorError, safe_open

    for file in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError, ValueError) as error:
            raise ConfigError(f"{file} is not a readable safetensors file (truncated or "
                              f"corrupt): {first_line(error)}") from error


def check_gguf(path: Path) -> None:
    """Parse a GGUF file's metadata and tensor table with the gguf package; name the damage.

    A file with the GGUF magic and junk after it, or one cut short, fails here with its path
    and "truncated or corrupt" rather than as "not a valid JSON file" or a numpy reshape error.
    """
    try:
        from gguf import GGUFReader
    except ImportError as error:
        raise EnvironmentProblem(f"reading {path} needs the 'gguf' package, which is not "
                                 "installed", hint=GGUF_INSTALL_HINT) from error
    try:
        GGUFReader(str(path))
    except Exception as error:  # the reader raises ValueError, IndexError, struct.error, ...
        raise ConfigError(f"{path} is not a readable GGUF file (truncated or corrupt): "
                          f"{type(error).__name__}: {first_line(error)}") from error


def check_loading_info(info: Mapping[str, Any], source: str, architecture: str) -> None:
    """Refuse a load where transformers initialised weights at random or dropped some.

    ``info`` is from ``from_pretrained(..., output_loading_info=True)``. Tied weights (an LM
    head sharing the embedding) are not reported missing, so any missing key is a real hole.
    """
    missing = set(info.get("missing_keys") or ())
    unexpected = set(info.get("unexpected_keys") or ())
    mismatched = {str(k[0] if isinstance(k, tuple) else k) for k in
                  info.get("mismatched_keys") or ()}
    if missing or mismatched:
        holes = f"lack {len(missing)} tensor(s) that {architecture} needs ({listing(missing)})" \
            if missing else f"have tensors of the wrong shape ({listing(mismatched)})"
        raise ConfigError(
            f"the weights in {source} {holes}; transformers would initialise them at random",
            hint="the checkpoint is incomplete, or its config.json names another architecture",
        )
    if unexpected:
        raise ConfigError(
            f"the weights in {source} hold {len(unexpected)} tensor(s) that {architecture} does "
            f"not use ({listing(unexpected)}); they do not match config.json",
            hint="the checkpoint's config.json names another architecture or size",
        )


def first_non_finite(tensors: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating-point tensor holding NaN or Inf, else None.

    One isfinite pass per tensor, in chunks so that the temporary mask stays small.
    """
    for name, tensor in tensors:
        if not tensor.is_floating_point():
            continue
        flat = tensor.detach().reshape(-1)
        for chunk in flat.split(FINITE_CHUNK):
            if not bool(torch.isfinite(chunk).all()):
                return name
    return None


def check_finite_weights(model: nn.Module, source: str) -> None:
    """Refuse a model whose loaded weights hold NaN or Inf, naming the tensor and its file."""
    name = first_non_finite(model.named_parameters())
    if name is not None:
        raise ConfigError(f"{weight_file_of(source, name)}: tensor {name} holds NaN or Inf "
                          "values; the weight file is corrupt")


def weight_file_of(source: str, tensor: str) -> str:
    """The safetensors file of a checkpoint folder that stores `tensor`, else `source` itself."""
    from safetensors import safe_open

    directory = Path(source)
    if not directory.is_dir():
        return source
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            names = handle.keys()
            if tensor in names:
                return str(file)
    return source
