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
    WindowPass,
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
                              in_memory=30 * GIB, streaming=5 * GIB,
                              in_memory_on_device=29 * GIB, streaming_on_device=3 * GIB)
    assert choose_streaming("auto", estimate, MemoryBudget(24 * GIB, "test")) is True
    assert choose_streaming("auto", estimate, MemoryBudget(64 * GIB, "test")) is False
    assert choose_streaming(True, estimate, MemoryBudget(64 * GIB, "test")) is True
    with pytest.raises(EnvironmentProblem, match="needs about 30.00 GiB in memory"):
        choose_streaming(False, estimate, MemoryBudget(24 * GIB, "test"))
    with pytest.raises(EnvironmentProblem, match=r"largest decoder layer 1\.00 GiB.*budget is "
                                                 r"4\.00 GiB \(test\)"):
        choose_streaming("auto", estimate, MemoryBudget(4 * GIB, "test"))


def _meta_llama(tiny_model_dir):
    """The tiny llama's skeleton on the meta device and its decoder layers."""
    config = AutoConfig.from_pretrained(tiny_model_dir("llama"))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return model, find_decoder_layers(model)[1]


def test_the_estimate_counts_layers_weights_and_hidden_states(tiny_model_dir):
    model, layers = _meta_llama(tiny_model_dir)
    calibration = WindowPass(windows=8, seqlen=32, batch_size=4, logits=False)

    def estimate(*passes, hessian=False, keep_dense_copy=False):
        return estimate_memory(model, layers, 4, passes=list(passes), hessian=hessian,
                               keep_dense_copy=keep_dense_copy, shard_bytes=GIB)

    base = estimate(calibration)
    per_layer = sum(p.numel() for p in layers[0].parameters()) * 4
    assert base.weights == sum(p.numel() for p in model.parameters()) * 4
    assert base.largest_layer == per_layer
    assert base.outside_layers == base.weights - len(layers) * per_layer
    with_copy = estimate(calibration, keep_dense_copy=True)
    assert with_copy.in_memory - base.in_memory == len(layers) * per_layer
    assert with_copy.streaming == base.streaming  # streaming keeps no dense copy
    more_windows = estimate(WindowPass(windows=16, seqlen=32, batch_size=4, logits=False))
    hidden = model.config.hidden_size
    assert more_windows.streaming - base.streaming == 2 * 8 * 32 * hidden * 4
    assert more_windows.in_memory == base.in_memory  # in memory: one batch at a time
    with_hessian = estimate(calibration, hessian=True)
    assert with_hessian.in_memory > base.in_memory
    assert with_hessian.streaming > base.streaming


def test_only_evaluation_pays_for_logits_and_passes_do_not_add_up(tiny_model_dir):
    model, layers = _meta_llama(tiny_model_dir)
    config = model.config
    calibration = WindowPass(windows=8, seqlen=32, batch_size=4, logits=False)
    evaluation = WindowPass(windows=2, seqlen=64, batch_size=4, logits=True)

    def estimate(*passes):
        return estimate_memory(model, layers, 4, passes=list(passes), hessian=False,
                               keep_dense_copy=False, shard_bytes=GIB)

    alone, both = estimate(calibration), estimate(calibration, evaluation)
    # two evaluation windows of 64 make one batch of 128 tokens, as many as calibration's:
    # the difference is the logits and their float32 log-probabilities
    assert both.in_memory - alone.in_memory == 2 * (2 * 64) * config.vocab_size * 4
    assert both.in_memory == estimate(evaluation).in_memory  # the larger pass, not the sum


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
