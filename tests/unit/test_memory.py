"""The memory budget and the choice to stream: sizes, cgroup limits, estimates, decisions."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from wanda_export import memory
from wanda_export.errors import EnvironmentProblem
from wanda_export.memory import (
    MemoryBudget,
    MemoryEstimate,
    choose_streaming,
    detect_budget,
    estimate_memory,
    parse_size,
)
from wanda_export.model.layers import find_decoder_layers

GIB = 2**30


@pytest.mark.parametrize(("text", "size"), [("6GiB", 6 * GIB), ("512MiB", 512 * 2**20),
                                             ("8GB", 8 * 10**9), ("1000", 1000),
                                             ("1.5 GiB", int(1.5 * GIB)), ("2gib", 2 * GIB)])
def test_sizes_parse(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "six GiB", "6 GiBs", "-1GB", "1e9"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


def _fake_proc(tmp_path, monkeypatch, cgroup: str, files: dict[str, str]):
    (tmp_path / "proc-cgroup").write_text(cgroup)
    (tmp_path / "meminfo").write_text("MemTotal: 100 kB\nMemAvailable: 8388608 kB\n")
    for name, text in files.items():
        path = tmp_path / "sys" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.setattr(memory, "PROC_CGROUP", tmp_path / "proc-cgroup")
    monkeypatch.setattr(memory, "PROC_MEMINFO", tmp_path / "meminfo")
    monkeypatch.setattr(memory, "CGROUP_ROOT", tmp_path / "sys")


def test_the_budget_is_the_smaller_of_available_memory_and_the_cgroup_limit(tmp_path,
                                                                           monkeypatch):
    _fake_proc(tmp_path, monkeypatch, "5:memory:/ci/job\n4:cpu:/ci/job\n",
               {"memory/ci/job/memory.limit_in_bytes": str(2 * GIB)})
    budget = detect_budget(None)
    assert budget.bytes == 2 * GIB and "cgroup v1 memory.limit_in_bytes" in budget.source
    _fake_proc(tmp_path, monkeypatch, "0::/ci/job\n", {"ci/job/memory.max": str(3 * GIB)})
    budget = detect_budget(None)
    assert budget.bytes == 3 * GIB and "cgroup v2 memory.max" in budget.source
    _fake_proc(tmp_path, monkeypatch, "0::/ci/job\n", {"ci/job/memory.max": "max"})
    assert detect_budget(None) == MemoryBudget(8 * GIB, "available memory "
                                               "(/proc/meminfo MemAvailable)")
    assert detect_budget("1GiB") == MemoryBudget(GIB, "model.memory_budget")


def test_streaming_is_chosen_when_the_model_does_not_fit():
    estimate = MemoryEstimate(weights=28 * GIB, largest_layer=GIB, outside_layers=2 * GIB,
                              in_memory=30 * GIB, streaming=5 * GIB)
    assert choose_streaming("auto", estimate, MemoryBudget(24 * GIB, "test")) is True
    assert choose_streaming("auto", estimate, MemoryBudget(64 * GIB, "test")) is False
    assert choose_streaming(True, estimate, MemoryBudget(64 * GIB, "test")) is True
    with pytest.raises(EnvironmentProblem, match="needs about 30.00 GiB in memory"):
        choose_streaming(False, estimate, MemoryBudget(24 * GIB, "test"))
    with pytest.raises(EnvironmentProblem, match=r"largest decoder layer 1\.00 GiB.*budget is "
                                                 r"4\.00 GiB \(test\)"):
        choose_streaming("auto", estimate, MemoryBudget(4 * GIB, "test"))


def test_the_estimate_counts_layers_weights_and_hidden_states(tiny_model_dir):
    config = AutoConfig.from_pretrained(tiny_model_dir("llama"))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    layers = find_decoder_layers(model)[1]
    estimate = estimate_memory(model, layers, 4, windows=8, seqlen=32, batch_size=4,
                               hessian=False, keep_dense_copy=False, shard_bytes=GIB)
    per_layer = sum(p.numel() for p in layers[0].parameters()) * 4
    assert estimate.weights == sum(p.numel() for p in model.parameters()) * 4
    assert estimate.largest_layer == per_layer
    assert estimate.outside_layers == estimate.weights - len(layers) * per_layer
    with_copy = estimate_memory(model, layers, 4, windows=8, seqlen=32, batch_size=4,
                                hessian=False, keep_dense_copy=True, shard_bytes=GIB)
    assert with_copy.in_memory - estimate.in_memory == len(layers) * per_layer
    assert with_copy.streaming == estimate.streaming  # streaming keeps no dense copy
    more_windows = estimate_memory(model, layers, 4, windows=16, seqlen=32, batch_size=4,
                                   hessian=False, keep_dense_copy=False, shard_bytes=GIB)
    hidden = model.config.hidden_size
    assert more_windows.streaming - estimate.streaming == 2 * 8 * 32 * hidden * 4
    assert more_windows.in_memory == estimate.in_memory  # in memory: one batch at a time
    with_hessian = estimate_memory(model, layers, 4, windows=8, seqlen=32, batch_size=4,
                                   hessian=True, keep_dense_copy=False, shard_bytes=GIB)
    assert with_hessian.in_memory > estimate.in_memory
    assert with_hessian.streaming > estimate.streaming


def test_freed_memory_is_returned_on_glibc():
    assert memory.return_freed_memory() is True  # this project's machines run glibc
    assert memory.return_freed_memory() is True  # and it can be asked again


@pytest.mark.parametrize(("text", "message"), [
    ("model: {memory_budget: six GiB}", "model -> memory_budget: 'six GiB' is not a size"),
    ("model: {memory_budget: 10MiB}", "below the 600 MiB any run needs"),
    ("model: {streaming: sometimes}", "model -> streaming"),
])
def test_bad_memory_settings_name_their_key(tmp_path, text, message):
    from wanda_export.config import parse_config
    from wanda_export.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        parse_config(f"version: 1\n{text}\nstages: [verify: {{}}]\n", base_dir=tmp_path)
    assert message in str(caught.value)
