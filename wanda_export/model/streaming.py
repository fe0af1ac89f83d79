"""A checkpoint streamed module by module: the model skeleton without weights, and each module's
tensors read from the safetensors files on demand onto the compute device, then released.

This module owns where a streamed checkpoint comes from (a local folder, a hub snapshot, the
converted default model), the tensor index over its safetensors files, and the mapping from the
model's parameter names to checkpoint tensors (tied weights included). The work itself is done
by the ecosystem: accelerate builds the skeleton and places tensors, safetensors reads them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from wanda_export.errors import ConfigError
from wanda_export.model.default import default_model_dir
from wanda_export.model.fingerprint import model_fingerprint
from wanda_export.model.hub import load_error, unreachable_reason
from wanda_export.model.layers import find_decoder_layers
from wanda_export.model.loading import (
    PICKLE_SUFFIXES,
    LoadedModel,
    classify_path,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)

if TYPE_CHECKING:
    from transformers import GenerationConfig, PretrainedConfig, PreTrainedModel

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_FILE = "model.safetensors"
# What a hub snapshot for streaming needs: config, tokenizer files and safetensors weights.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]
META = torch.device("meta")


def streamable_directory(path: str | None, revision: str | None = None) -> Path:
    """The local folder a model argument streams from: the converted default model, a checkpoint
    folder, or a hub snapshot (safetensors and config only; from the local cache when offline).

    A .gguf file cannot be streamed: its tensors are quantized blocks, not safetensors.
    """
    kind, source = classify_path(path)
    if kind == "default":
        return default_model_dir()
    if kind == "dir":
        return Path(source)
    if kind == "gguf":
        raise ConfigError(f"{source} is a GGUF file, which cannot be streamed layer by layer",
                          hint="load it in memory, or convert it to a safetensors checkpoint")
    from huggingface_hub import snapshot_download

    reason = unreachable_reason(source, revision)
    try:
        return Path(snapshot_download(source, revision=revision, allow_patterns=HUB_PATTERNS,
                                      local_files_only=reason is not None))
    except (OSError, ValueError) as error:
        raise load_error(source, revision, reason, error) from error


def tensor_index(directory: Path) -> dict[str, Path]:
    """Checkpoint tensor name -> the safetensors file holding it, from the shard index
    (`model.safetensors.index.json`) or the single `model.safetensors`. Pickle weights are
    refused: loading them can run arbitrary code."""
    index_path = directory / SAFETENSORS_INDEX
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
            index = {str(name): directory / str(file) for name, file in weight_map.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ConfigError(f"{index_path} is not a safetensors index with a weight_map: "
                              f"{error}") from error
        missing = sorted({path.name for path in index.values() if not path.is_file()})
        if missing:
            raise ConfigError(f"{index_path} names shard files that are missing: {missing}")
        return index
    single = directory / SAFETENSORS_FILE
    if single.is_file():
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(single, framework="pt") as handle:
                return dict.fromkeys(handle.keys(), single)
        except SafetensorError as error:
            raise ConfigError(f"{single} is not a readable safetensors file: {error}") from error
    if any(path.suffix in PICKLE_SUFFIXES for path in directory.iterdir()):
        raise ConfigError(f"{directory} only holds pickle weights (*.bin / *.pt); streaming reads "
                          "safetensors only", hint="convert the checkpoint to safetensors")
    raise ConfigError(f"{directory} holds no {SAFETENSORS_FILE} and no {SAFETENSORS_INDEX}")


def module_nbytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers once materialized (meta tensors count too)."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


class StreamedCheckpoint:
    """A causal LM whose weights stay in its safetensors files until a module is materialized.

    The skeleton is built from the folder's config in `dtype` with every parameter on the meta
    device; buffers computed at construction (rotary frequencies) are real CPU tensors.
    `materialize` reads exactly one module's tensors onto a device (cast to the skeleton's
    dtype); `release` puts them back on the meta device so their memory is freed.
    """

    def __init__(self, directory: Path, dtype: torch.dtype = torch.float32,
                 trust_remote_code: bool = False) -> None:
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        self.directory = Path(directory)
        if not (self.directory / "config.json").is_file():
            raise ConfigError(f"{self.directory} has no config.json; it is not a transformers "
                              "checkpoint")
        self.index = tensor_index(self.directory)
        self.dtype = dtype
        try:
            config = AutoConfig.from_pretrained(self.directory, trust_remote_code=trust_remote_code)
            with init_empty_weights(include_buffers=False):
                model = AutoModelForCausalLM.from_config(
                    config, dtype=dtype, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as error:
            raise ConfigError(f"could not build the model of {self.directory}: {error}") from error
        self.model: PreTrainedModel = model.eval().requires_grad_(False)
        self.stack_name, self.layers = find_decoder_layers(self.model)
        self._names = {id(module): name for name, module in self.model.named_modules()}
        self._tied = dict(getattr(self.model, "all_tied_weights_keys", None) or {})
        self._prefix = getattr(self.model, "base_model_prefix", "")
        self._buffers = {name for name, _ in self.model.named_buffers()}

    @property
    def config(self) -> PretrainedConfig:
        return self.model.config

    @property
    def generation_config(self) -> GenerationConfig | None:
        """The folder's generation_config.json, else the one derived from the model config."""
        from transformers import GenerationConfig

        if (self.directory / "generation_config.json").is_file():
            return GenerationConfig.from_pretrained(self.directory)
        return getattr(self.model, "generation_config", None)

    def _stored_name(self, name: str) -> str | None:
        """The checkpoint tensor stored under the model's name `name`, or under that name without
        the base-model prefix (older hub checkpoints)."""
        candidates = [name]
        if self._prefix and name.startswith(f"{self._prefix}."):
            candidates.append(name[len(self._prefix) + 1:])
        return next((candidate for candidate in candidates if candidate in self.index), None)

    def source_name(self, name: str) -> str | None:
        """The checkpoint tensor holding the model's parameter or buffer `name`: its own, or for
        a tied weight the one it is tied to (lm_head and embed_tokens: checkpoints keep one)."""
        partners = [self._tied.get(name), *(t for t, s in self._tied.items() if s == name)]
        for candidate in (name, *(partner for partner in partners if partner)):
            stored = self._stored_name(candidate)
            if stored is not None:
                return stored
        return None

    def read(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """The checkpoint tensors `names`, on the CPU in their stored dtype, each file opened
        once."""
        from safetensors import SafetensorError, safe_open

        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.index[name], []).append(name)
        tensors = {}
        for path, group in by_file.items():
            try:
                with safe_open(path, framework="pt", device="cpu") as handle:
                    for name in group:
                        tensors[name] = handle.get_tensor(name)
            except SafetensorError as error:
                raise ConfigError(f"could not read {group} from {path}: {error}") from error
        return tensors

    def name_of(self, module: nn.Module | str) -> str:
        """The full module name of `module` (a module of this checkpoint's model, or its name)."""
        if isinstance(module, str):
            return module
        try:
            return self._names[id(module)]
        except KeyError:
            name = type(module).__name__
            raise ValueError(f"{name} is not a module of this checkpoint") from None

    def _entries(self, module: nn.Module | str, recurse: bool = True) -> list[str]:
        """Full names of the parameters and buffers of a module (by module or name)."""
        name = self.name_of(module)
        owner = self.model.get_submodule(name)
        prefix = f"{name}." if name else ""
        items = [*owner.named_parameters(recurse=recurse), *owner.named_buffers(recurse=recurse)]
        return [prefix + local for local, _ in items]

    def _resolve(self, names: list[str]) -> dict[str, str]:
        """Model name -> checkpoint tensor name for every parameter and checkpoint-held buffer
        among `names`; a parameter the checkpoint lacks is an error naming it."""
        resolved = {}
        for name in names:
            source = self.source_name(name)
            if source is not None:
                resolved[name] = source
            elif name not in self._buffers:
                raise ConfigError(f"{self.directory} has no tensor for parameter {name!r}")
        return resolved

    @torch.inference_mode(False)
    def materialize(self, module: nn.Module | str, device: torch.device | str,
                    recurse: bool = True) -> None:
        """Read a module's parameters (and checkpoint-held buffers) onto `device`, cast to the
        skeleton's dtype; computed buffers are moved there. Tensors are ordinary ones (not
        inference tensors), so pruning may change them in place."""
        from accelerate.utils import set_module_tensor_to_device

        names = self._entries(module, recurse)
        sources = self._resolve(names)
        tensors = self.read(sorted(set(sources.values())))
        with torch.no_grad():
            for name in names:
                value = tensors[sources[name]] if name in sources else None
                expected = self.model.get_parameter(name) if name not in self._buffers else None
                if value is not None and expected is not None and value.shape != expected.shape:
                    self.release(module, recurse)
                    raise ConfigError(
                        f"{self.directory}: tensor {sources[name]!r} has shape "
                        f"{list(value.shape)}, the model's {name!r} expects {list(expected.shape)}")
                set_module_tensor_to_device(self.model, name, device, value=value,
                                            clear_cache=False)

    @torch.inference_mode(False)
    def release(self, module: nn.Module | str, recurse: bool = True) -> None:
        """Put a module's checkpoint-held tensors back on the meta device (their memory is
        freed once nothing else holds them); computed buffers go back to the CPU."""
        from accelerate.utils import set_module_tensor_to_device

        for name in self._entries(module, recurse):
            held = name not in self._buffers or self.source_name(name) is not None
            set_module_tensor_to_device(self.model, name, META if held else "cpu",
                                        clear_cache=False)

    @contextmanager
    def materialized(self, modules: Sequence[nn.Module | str], device: torch.device | str,
                     recurse: bool = True) -> Iterator[None]:
        """Materialize `modules` for the duration of the block, then release them."""
        done: list[nn.Module | str] = []
        try:
            for module in modules:
                self.materialize(module, device, recurse)
                done.append(module)
            yield
        finally:
            for module in done:
                self.release(module, recurse)

    def outside_modules(self, skip: Sequence[nn.Module | None] = ()) -> list[str]:
        """Names of the modules outside the decoder stack that hold tensors of their own
        (embeddings, positions, rotary, final norm, lm_head), minus `skip` and its children."""
        skipped = [self.name_of(module) for module in skip if module is not None]
        stack = f"{self.stack_name}."
        names = []
        for name, module in self.model.named_modules():
            if name == self.stack_name or name.startswith(stack):
                continue
            if any(name == other or name.startswith(f"{other}.") for other in skipped):
                continue
            if next(module.parameters(recurse=False), None) is not None or next(
                    module.buffers(recurse=False), None) is not None:
                names.append(name)
        return names

    def outside_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The model's persistent tensors outside the decoder stack, read one at a time from the
        checkpoint in the skeleton's dtype, under the model's own names; a tied weight that the
        checkpoint does not hold under its own name is left out, as save_pretrained does."""
        stack = f"{self.stack_name}."
        for name, meta in self.model.state_dict(keep_vars=True).items():
            if name.startswith(stack) or (name in self._tied and self._stored_name(name) is None):
                continue
            source = self._resolve([name]).get(name)
            if source is not None:
                yield name, self.read([source])[source].to(meta.dtype)
            elif meta.device != META:  # a persistent buffer computed at construction
                yield name, meta.detach().clone()


def load_streamed(path: str | None, *, dtype: str, device: str, trust_remote_code: bool,
                  revision: str | None) -> tuple[LoadedModel, StreamedCheckpoint]:
    """`load_model` for a model streamed layer by layer: the same `LoadedModel` record (same
    source and fingerprint, so cache entries are shared) whose `model` is the weightless
    skeleton, and the streamed checkpoint that materializes its modules one at a time."""
    directory = streamable_directory(path, revision)
    checkpoint = StreamedCheckpoint(directory, resolve_dtype(dtype), trust_remote_code)
    kind, source = classify_path(path)
    source = str(directory) if kind == "default" else source
    loaded = LoadedModel(
        model=checkpoint.model,
        tokenizer=load_tokenizer(str(directory), trust_remote_code=trust_remote_code),
        source=source, kind=kind, fingerprint=model_fingerprint(source, revision),
        device=resolve_device(device), dtype=checkpoint.dtype)
    return loaded, checkpoint
