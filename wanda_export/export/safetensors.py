"""Export a pruned model as a Hugging Face checkpoint directory of safetensors files.

The directory loads with `AutoModelForCausalLM.from_pretrained`. The pruning plan is recorded in
the safetensors header metadata (key `wanda_export.plan`) and in `pruning.json` beside it. No
`sparsity_config` is written into config.json: vLLM refuses such checkpoints since 2026.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any

from safetensors import safe_open

from wanda_export.atomic import atomic_file

PLAN_METADATA_KEY = "wanda_export.plan"
PLAN_FILE = "pruning.json"


def canonical_plan(plan: dict[str, Any]) -> str:
    """The plan as canonical JSON (sorted keys, no spaces): the same plan, the same bytes."""
    return json.dumps(plan, sort_keys=True, separators=(",", ":"))


def stamp_plan(weights: Path, plan_json: str, target: Path | None = None) -> Path:
    """Write a safetensors file with the plan added to its header metadata, atomically and
    deterministically, to `target` (default: in place); returns the path written.

    The header is rewritten as canonical JSON (sorted keys, padded to 8 bytes as the format
    requires) and the tensor bytes are copied unchanged: safetensors' own writer orders metadata
    keys by a hash map, which would make two identical exports differ byte-wise.
    """
    target = target or weights
    with open(weights, "rb") as source, atomic_file(target) as sink:
        (length,) = struct.unpack("<Q", source.read(8))
        header = json.loads(source.read(length))
        header["__metadata__"] = {**header.get("__metadata__", {}), PLAN_METADATA_KEY: plan_json}
        blob = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
        blob += b" " * (-len(blob) % 8)
        sink.write(struct.pack("<Q", len(blob)) + blob)
        shutil.copyfileobj(source, sink, 1 << 20)
    return target


def strip_sparsity_config(directory: Path) -> None:
    """Remove `sparsity_config` from a checkpoint's config.json, if present."""
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    if config.pop("sparsity_config", None) is not None:
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_plan_json(directory: Path, plan: dict[str, Any]) -> None:
    """The plan beside the weights, as `pruning.json`."""
    (directory / PLAN_FILE).write_text(json.dumps(plan, indent=2, sort_keys=True) + "\n")


def export_checkpoint(model, tokenizer, directory: Path, plan: dict[str, Any]) -> list[Path]:
    """Write model, tokenizer, generation config and pruning.json into `directory`.

    Returns the written files, sorted. The caller owns atomicity of the directory as a whole
    (the pipeline writes into a temporary output folder renamed into place at the end).
    """
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    strip_sparsity_config(directory)
    plan_json = canonical_plan(plan)
    for weights in sorted(directory.glob("*.safetensors")):
        stamp_plan(weights, plan_json)
    write_plan_json(directory, plan)
    return sorted(path for path in directory.rglob("*") if path.is_file())


def read_plan(directory: Path) -> dict[str, Any] | None:
    """The pruning plan stamped into the first safetensors file of a checkpoint, if any."""
    for weights in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(weights, framework="pt") as handle:
            value = (handle.metadata() or {}).get(PLAN_METADATA_KEY)
        if value is not None:
            return json.loads(value)
    return None
