"""Loading a causal LM and its tokenizer from the default model, a directory, a GGUF file or the hub.

This module owns the rules for what a model path means, which weight formats are accepted
(safetensors always, pickle only when allowed), dtype and device resolution, and the mapping of
loader failures onto ConfigError / EnvironmentProblem.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from wanda_export.errors import ConfigError, EnvironmentProblem
from wanda_export.model.fingerprint import model_fingerprint

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ModelKind = Literal["default", "dir", "gguf", "hub"]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
PICKLE_SUFFIXES = (".bin", ".pt")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_DEVICE = re.compile(r"(cpu|cuda|mps)(:\d+)?")


@dataclass
class LoadedModel:
    """A model ready for inference, with where it came from and what it runs on."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str
    kind: ModelKind
    fingerprint: str
    device: torch.device
    dtype: torch.dtype


def resolve_dtype(dtype: str) -> torch.dtype:
    """Map a dtype name to torch, refusing anything but float32 / float16 / bfloat16."""
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ConfigError(f"unsupported dtype {dtype!r}; allowed: {', '.join(DTYPES)}") from None


def resolve_device(device: str) -> torch.device:
    """Resolve "auto" to cuda when available else cpu; refuse a GPU device the machine lacks."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not _DEVICE.fullmatch(device):
        raise ConfigError(f"unsupported device {device!r}; allowed: auto, cpu, cuda, cuda:N, mps")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise EnvironmentProblem(
                f"device {device!r} was requested but no CUDA GPU is available",
                hint="use --device cpu (or auto), or install a CUDA build of torch",
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise EnvironmentProblem(
                f"device {device!r} was requested but only {torch.cuda.device_count()} GPU(s) exist"
            )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise EnvironmentProblem(f"device {device!r} was requested but MPS is not available")
    return resolved


def classify_path(path: str | None) -> tuple[ModelKind, str]:
    """Decide what a model argument names; return its kind and the resolved source string."""
    if path is None:
        return "default", ""
    if not path.strip():
        raise ConfigError("the model path is empty", hint="omit it to use the default model")
    local = Path(path).expanduser()
    if local.is_dir():
        return "dir", str(local.resolve())
    if local.is_file():
        if local.suffix.lower() == ".gguf":
            return "gguf", str(local.resolve())
        raise ConfigError(
            f"model path {path!r} is a file but not a .gguf file",
            hint="pass a checkpoint directory, a .gguf file or a hub id (org/name)",
        )
    if _HUB_ID.fullmatch(path) and not path.lower().endswith(".gguf"):
        return "hub", path
    raise ConfigError(
        f"model path {path!r} does not exist",
        hint="pass an existing checkpoint directory, a .gguf file or a hub id (org/name)",
    )


def strip_quantizer(model: PreTrainedModel) -> None:
    """Drop the GGUF quantizer marker from a dequantized model so that it can be saved.

    The weights of a dequantized GGUF load are plain tensors, but transformers refuses to
    save_pretrained while the model still carries its quantizer or quantization_config.
    """
    if "hf_quantizer" in vars(model):
        del model.hf_quantizer
    if "quantization_method" in vars(model):
        del model.quantization_method
    if "is_quantized" in vars(model):
        model.is_quantized = False
    configs = {id(model.config): model.config}
    text_config = model.config.get_text_config(decoder=True)
    configs[id(text_config)] = text_config
    for config in configs.values():
        if hasattr(config, "quantization_config"):
            del config.quantization_config


def load_gguf(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a .gguf file with transformers, dequantized to plain ``dtype`` weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    try:
        model = AutoModelForCausalLM.from_pretrained(
            path.parent,
            gguf_file=path.name,
            dtype=dtype,
            quantization_config=GgufConfig(dequantize=True),
        )
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"could not load GGUF file {path}: {error}") from error
    strip_quantizer(model)
    return model, tokenizer


def _load_dir(
    directory: Path, dtype: torch.dtype, trust_remote_code: bool, allow_pickle: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a local checkpoint directory, refusing pickle-only weights unless allowed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    names = [p.name for p in directory.iterdir() if p.is_file()]
    if "config.json" not in names:
        raise ConfigError(f"{directory} has no config.json; it is not a transformers checkpoint")
    has_safetensors = any(n.endswith(".safetensors") for n in names)
    has_pickle = any(n.endswith(PICKLE_SUFFIXES) for n in names)
    if not has_safetensors and not has_pickle:
        raise ConfigError(f"{directory} holds no weight files (*.safetensors, *.bin, *.pt)")
    if not has_safetensors and not allow_pickle:
        raise ConfigError(
            f"{directory} only holds pickle weights (*.bin / *.pt), which can run arbitrary code",
            hint="convert them to safetensors, or pass --allow-pickle if you trust the files",
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            directory,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            use_safetensors=has_safetensors,
        )
        tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise ConfigError(f"could not load the model in {directory}: {error}") from error
    return model, tokenizer


def hub_error(repo_id: str, error: Exception) -> Exception:
    """Map a hub failure to ConfigError (no such repo/revision) or EnvironmentProblem."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, (RepositoryNotFoundError, RevisionNotFoundError)):
            return ConfigError(f"hub model {repo_id!r} (or its revision) does not exist: {cause}")
        cause = cause.__cause__ or cause.__context__
    return EnvironmentProblem(
        f"could not load {repo_id!r} from the Hugging Face hub or its local cache: {error}",
        hint="check the network (HF_HUB_OFFLINE must be unset to download), or pass a local "
        "directory / .gguf file",
    )


def _load_hub(
    repo_id: str,
    dtype: torch.dtype,
    trust_remote_code: bool,
    allow_pickle: bool,
    revision: str | None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a hub model; only safetensors unless pickle is allowed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    common: dict[str, Any] = {
        "revision": revision,
        "trust_remote_code": trust_remote_code,
        "local_files_only": hub_offline(),
    }
    try:
        model = AutoModelForCausalLM.from_pretrained(
            repo_id, dtype=dtype, use_safetensors=None if allow_pickle else True, **common
        )
        tokenizer = AutoTokenizer.from_pretrained(repo_id, **common)
    except OSError as error:
        raise hub_error(repo_id, error) from error
    return model, tokenizer


def hub_offline() -> bool:
    """Whether the user asked for offline mode, read at call time rather than import time."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def load_model(
    path: str | None,
    *,
    dtype: str = "float32",
    device: str = "auto",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    revision: str | None = None,
) -> LoadedModel:
    """Load a causal LM and tokenizer in eval mode on the resolved device.

    ``path`` is None (the embedded default model), a checkpoint directory, a ``.gguf`` file or a
    hub id ``org/name``. Bad input raises ConfigError; a missing GPU or an unreachable hub raises
    EnvironmentProblem.
    """
    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    kind, source = classify_path(path)
    if kind == "default":
        from wanda_export.model.default import default_model_dir

        source = str(default_model_dir())
        model, tokenizer = _load_dir(Path(source), torch_dtype, False, False)
    elif kind == "dir":
        model, tokenizer = _load_dir(Path(source), torch_dtype, trust_remote_code, allow_pickle)
    elif kind == "gguf":
        model, tokenizer = load_gguf(Path(source), torch_dtype)
    else:
        model, tokenizer = _load_hub(source, torch_dtype, trust_remote_code, allow_pickle, revision)
    model.to(torch_device)
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        source=source,
        kind=kind,
        fingerprint=model_fingerprint(source, revision),
        device=torch_device,
        dtype=torch_dtype,
    )
