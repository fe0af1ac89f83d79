"""Loading a causal LM and its tokenizer: the default model, a directory, a GGUF file or the hub.

This module owns the rules for what a model path means, which weight formats are accepted
(safetensors always, pickle only when allowed), dtype and device resolution, and the mapping of
loader failures onto ConfigError / EnvironmentProblem. What makes a checkpoint acceptable is in
checkpoint.py, reaching the hub in hub.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from wanda_export.config.inputs import DEVICE_PATTERN, ModelConfig
from wanda_export.errors import ConfigError, EnvironmentProblem
from wanda_export.model.checkpoint import (
    causal_lm_problem,
    check_finite_weights,
    check_gguf,
    check_loading_info,
    check_safetensors_headers,
    read_config_json,
)
from wanda_export.model.default import HUB_ID, default_model_dir
from wanda_export.model.fingerprint import model_fingerprint
from wanda_export.model.gguf import load_gguf
from wanda_export.model.hub import unreachable_reason
from wanda_export.model.load_errors import loading_errors

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

ModelKind = Literal["default", "dir", "gguf", "hub"]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
PICKLE_SUFFIXES = (".bin", ".pt")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_MODEL_SETTINGS = ModelConfig.model_fields  # the defaults of the pipeline file's model: keys


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
    if not DEVICE_PATTERN.fullmatch(device):
        raise ConfigError(f"unsupported device {device!r}; allowed: auto, cpu, cuda, cuda:N, mps")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise EnvironmentProblem(
                f"device {device!r} was requested but no CUDA GPU is available",
                hint="run with --device cpu (or set model: {device: cpu} or auto in the "
                "pipeline file), or install a CUDA build of torch",
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise EnvironmentProblem(
                f"device {device!r} was requested but only {torch.cuda.device_count()} GPU(s) exist"
            )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise EnvironmentProblem(f"device {device!r} was requested but MPS is not available")
    return resolved


def model_name(kind: ModelKind, source: str) -> str:
    """A model's public name for reports: the hub id (also of a folder in the Hugging Face
    cache, `models--org--name/snapshots/...`, and of the default model), else the folder or
    file name; never a local path."""
    if kind == "default":
        return HUB_ID
    if kind == "hub":
        return source
    parts = Path(source).parts
    for part in reversed(parts):
        if part.startswith("models--") and part.count("--") >= 2:
            return part.removeprefix("models--").replace("--", "/", 1)
    return Path(source).stem if kind == "gguf" else Path(source).name


def classify_path(path: str | None) -> tuple[ModelKind, str]:
    """Decide what a model argument names; return its kind and the resolved source string.

    A directory must be a causal-LM checkpoint by its config.json (read_config_json), so that
    `validate` refuses an empty folder, a broken config.json or an encoder model up front.
    """
    if path is None:
        return "default", ""
    if not path.strip():
        raise ConfigError("the model path is empty", hint="omit it to use the default model")
    local = Path(path).expanduser()
    if local.is_dir():
        directory = local.resolve()
        read_config_json(directory)
        return "dir", str(directory)
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


def load_tokenizer(source: str, *, trust_remote_code: bool = False,
                   revision: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer alone, of a checkpoint directory, a .gguf file or a hub id (for `plan`,
    which keys the cache on token windows without loading any weight)."""
    from transformers import AutoTokenizer

    kind, resolved = classify_path(source)
    with loading_errors(f"the tokenizer of {resolved}", trust_remote_code):
        if kind == "gguf":
            path = Path(resolved)
            return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        return AutoTokenizer.from_pretrained(resolved, revision=revision,
                                             trust_remote_code=trust_remote_code)


def pretrained_config(
    source: str | Path, *, trust_remote_code: bool = False, revision: str | None = None
) -> PretrainedConfig:
    """The transformers config of a checkpoint directory, a .gguf file or a hub id.

    Every failure is a ConfigError naming the source (or an EnvironmentProblem for an
    unreachable hub), and a config that is not a causal LM is refused, so rule checks on the
    meta device never die with a traceback.
    """
    from transformers import AutoConfig

    path = Path(source).expanduser()
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    hub = None
    if path.is_dir():
        read_config_json(path)
        target, where = str(path), f"the config of {path}"
    elif path.is_file() and path.suffix.lower() == ".gguf":
        check_gguf(path)
        target, where = str(path.parent), f"the GGUF file {path}"
        kwargs = {"gguf_file": path.name}
    else:
        target, where = str(source), f"the config of hub model {source!r}"
        reason = unreachable_reason(target, revision)
        hub = (target, revision, reason)
        kwargs |= {"revision": revision, "local_files_only": reason is not None}
    with loading_errors(where, trust_remote_code, hub):
        config = AutoConfig.from_pretrained(target, **kwargs)
    problem = causal_lm_problem(config.model_type, config.architectures,
                                getattr(config, "auto_map", None))
    if problem:
        raise ConfigError(f"{where}: {problem}")
    return config


def _load_dir(
    directory: Path, dtype: torch.dtype, trust_remote_code: bool, allow_pickle: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a local checkpoint directory, refusing pickle-only weights unless allowed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    read_config_json(directory)
    names = [p.name for p in directory.iterdir() if p.is_file()]
    has_safetensors = any(n.endswith(".safetensors") for n in names)
    has_pickle = any(n.endswith(PICKLE_SUFFIXES) for n in names)
    if not has_safetensors and not has_pickle:
        raise ConfigError(f"{directory} holds no weight files (*.safetensors, *.bin, *.pt)")
    if not has_safetensors and not allow_pickle:
        raise ConfigError(
            f"{directory} only holds pickle weights (*.bin / *.pt), which can run arbitrary code",
            hint="convert them to safetensors, or set model: {allow_pickle: true} in the "
            "pipeline file if you trust the files",
        )
    check_safetensors_headers(directory)
    with loading_errors(f"the model in {directory}", trust_remote_code):
        model, info = AutoModelForCausalLM.from_pretrained(
            directory,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            use_safetensors=has_safetensors,
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # reported in `info`, then refused by name
        )
        tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code)
    check_loading_info(info, str(directory), type(model).__name__)
    return model, tokenizer


def _load_hub(
    repo_id: str,
    dtype: torch.dtype,
    trust_remote_code: bool,
    allow_pickle: bool,
    revision: str | None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a hub model (only safetensors unless pickle is allowed), failing fast offline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = pretrained_config(repo_id, trust_remote_code=trust_remote_code, revision=revision)
    reason = unreachable_reason(repo_id, revision)
    common: dict[str, Any] = {
        "revision": revision,
        "trust_remote_code": trust_remote_code,
        "local_files_only": reason is not None,
    }
    with loading_errors(f"hub model {repo_id!r}", trust_remote_code, (repo_id, revision, reason)):
        model, info = AutoModelForCausalLM.from_pretrained(
            repo_id, config=config, dtype=dtype, use_safetensors=None if allow_pickle else True,
            output_loading_info=True, ignore_mismatched_sizes=True, **common
        )
        tokenizer = AutoTokenizer.from_pretrained(repo_id, **common)
    check_loading_info(info, repo_id, type(model).__name__)
    return model, tokenizer


def load_model(
    path: str | None,
    *,
    dtype: str = _MODEL_SETTINGS["dtype"].default,
    device: str = _MODEL_SETTINGS["device"].default,
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
    check_finite_weights(model, source)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        source=source,
        kind=kind,
        fingerprint=model_fingerprint(source, revision),
        device=torch_device,
        dtype=torch_dtype,
    )
