"""Writing a checkpoint shard by shard as its tensors are produced (the streaming export).

The layout is Hugging Face's: `model-0000N-of-0000M.safetensors` shards of at most a maximum
size with `model.safetensors.index.json` (or one `model.safetensors` when everything fits in
one shard, as save_pretrained does), config.json without `sparsity_config`, the tokenizer and
generation config, and the pruning plan in `pruning.json` and in every shard's header, stamped
canonically as `export_checkpoint` does. It loads with `AutoModelForCausalLM.from_pretrained`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from wanda_export.export.safetensors import (
    canonical_plan,
    stamp_plan,
    strip_sparsity_config,
    write_plan_json,
)
from wanda_export.model.streaming import SAFETENSORS_FILE, SAFETENSORS_INDEX

# The writer holds up to one shard's tensors in memory before writing it: keep it well under the
# memory budget. (save_pretrained's own default, 50 GB, assumes the model is in memory anyway.)
DEFAULT_MAX_SHARD_BYTES = 2 * 2**30


def shard_name(number: int, count: int) -> str:
    """Hugging Face's name of shard `number` (from 1) of `count`."""
    return SAFETENSORS_FILE if count == 1 else f"model-{number:05d}-of-{count:05d}.safetensors"


class ShardWriter:
    """Collects tensors as they are produced and writes them into shards of at most
    `max_shard_bytes` (a tensor larger than that gets a shard of its own). Shards are written
    under temporary names; `finish` names them once their count is known and stamps the plan."""

    def __init__(self, directory: Path, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
        if max_shard_bytes < 1:
            raise ValueError(f"max_shard_bytes must be >= 1, got {max_shard_bytes}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_shard_bytes = max_shard_bytes
        self.total_bytes = 0
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self._names: set[str] = set()

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue one tensor, writing the current shard first if it would grow past the limit."""
        if name in self._names:
            raise ValueError(f"tensor {name!r} was already written")
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor.untyped_storage().nbytes() != size:  # a view into a larger tensor
            tensor = tensor.clone()
        self._pending[name] = tensor
        self._pending_bytes += size
        self.total_bytes += size
        self._names.add(name)

    def _flush(self) -> None:
        from safetensors.torch import save_file

        path = self.directory / f".shard-{len(self._shards) + 1:05d}.safetensors.partial"
        save_file(self._pending, str(path), metadata={"format": "pt"})
        self._shards.append((path, sorted(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def finish(self, plan: dict[str, Any], config, tokenizer=None,
               generation_config=None) -> list[Path]:
        """Write the last shard, name the shards, stamp the plan into each, and write the index,
        config.json (no `sparsity_config`), generation config, tokenizer and pruning.json.
        Returns the checkpoint's files, sorted."""
        if self._pending:
            self._flush()
        if not self._shards:
            raise ValueError("no tensor was added to the checkpoint")
        plan_json = canonical_plan(plan)
        weight_map: dict[str, str] = {}
        for number, (partial, names) in enumerate(self._shards, start=1):
            name = shard_name(number, len(self._shards))
            stamp_plan(partial, plan_json, self.directory / name)
            partial.unlink()
            weight_map.update(dict.fromkeys(names, name))
        if len(self._shards) > 1:
            index = {"metadata": {"total_size": self.total_bytes},
                     "weight_map": dict(sorted(weight_map.items()))}
            (self.directory / SAFETENSORS_INDEX).write_text(
                json.dumps(index, indent=2, sort_keys=True) + "\n")
        config.save_pretrained(self.directory)
        strip_sparsity_config(self.directory)
        if generation_config is not None:
            generation_config.save_pretrained(self.directory)
        if tokenizer is not None:
            tokenizer.save_pretrained(self.directory)
        write_plan_json(self.directory, plan)
        return sorted(path for path in self.directory.rglob("*") if path.is_file())
