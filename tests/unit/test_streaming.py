"""Streaming decoder layers from safetensors: the same masks, weights, statistics, allocations
and perplexities as the in-memory path, bit for bit, on tiny models of every family; the sharded
export; resumption; and at most one decoder layer in memory."""

from __future__ import annotations

import gc
import json
import shutil
import weakref
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from wanda_export.allocation import esd_alphas
from wanda_export.calibrate.dense import collect_dense
from wanda_export.errors import ConfigError
from wanda_export.evaluate.perplexity import perplexity
from wanda_export.evaluate.streaming import stream_perplexity
from wanda_export.export.safetensors import PLAN_METADATA_KEY, canonical_plan, export_checkpoint
from wanda_export.export.sharded import ShardWriter
from wanda_export.model.layers import find_targets
from wanda_export.model.streaming import (
    SAFETENSORS_INDEX,
    StreamedCheckpoint,
    module_nbytes,
    streamable_directory,
)
from wanda_export.prune import PruneSpec, prune_model
from wanda_export.stream.allocation import stream_allocation, stream_esd_alphas
from wanda_export.stream.forward import stream_dense_statistics
from wanda_export.stream.prune import LayerOutput, stream_prune, stream_verify

WINDOWS = torch.randint(4, 256, (6, 32), generator=torch.Generator().manual_seed(0))
BATCH = 4  # two batches, the second one partial
CPU = torch.device("cpu")
PLAN = {"tool": "wanda-export", "method": "wanda"}


class DictWriter:
    """Collects the streamed checkpoint's tensors."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def add(self, name: str, tensor: torch.Tensor) -> None:
        assert name not in self.tensors, name
        self.tensors[name] = tensor


def in_memory(directory: Path, spec: PruneSpec, dtype: torch.dtype = torch.float32):
    """The in-memory reference: the model pruned by prune_model, and its result."""
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).eval()
    return model, prune_model(model, spec, WINDOWS)


def assert_same_weights(model, tensors: dict[str, torch.Tensor]) -> None:
    """Every tensor the streamed run wrote equals the in-memory model's, bit for bit, and every
    stored tensor of the model was written (tied lm_head aside)."""
    state = model.state_dict()
    for name, tensor in tensors.items():
        assert tensor.dtype == state[name].dtype, name
        assert torch.equal(tensor, state[name]), name
    tied = set(getattr(model, "all_tied_weights_keys", {}))
    assert set(state) - tied <= set(tensors)


@pytest.mark.parametrize("mode", ["sequential", "dense"])
def test_wanda_streams_identically_in_every_family(tiny_model_dir, tiny_family, mode):
    directory = tiny_model_dir(tiny_family)
    spec = PruneSpec(method="wanda", mode=mode, sparsity=0.5, batch_size=BATCH)
    model, expected = in_memory(directory, spec)
    writer = DictWriter()
    result = stream_prune(StreamedCheckpoint(directory), spec, WINDOWS, writer, device=CPU)
    assert_same_weights(model, writer.tensors)
    assert result.report.layers == expected.report.layers
    assert result.report.overall == pytest.approx(0.5)
    assert result.stats.keys() == expected.stats.keys()
    for name, entry in result.stats.items():
        assert torch.equal(entry.sumsq, expected.stats[name].sumsq), name
        assert entry.tokens == expected.stats[name].tokens == WINDOWS.numel()


def test_perplexity_streams_identically_in_every_family(tiny_model_dir, tiny_family):
    directory = tiny_model_dir(tiny_family)
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    checkpoint = StreamedCheckpoint(directory)
    layers_done: list[int] = []
    streamed = stream_perplexity(checkpoint, WINDOWS, BATCH, device=CPU,
                                 on_layer=layers_done.append)
    assert streamed == perplexity(model, WINDOWS, BATCH)
    assert layers_done == [0, 1]
    assert all(p.device.type == "meta" for p in checkpoint.model.parameters())


SPECS = {
    "sparsegpt-sequential": PruneSpec(method="sparsegpt", mode="sequential", block_size=16),
    "sparsegpt-dense-2:4": PruneSpec(method="sparsegpt", mode="dense", pattern="2:4"),
    "magnitude": PruneSpec(method="magnitude"),
    "wanda-2:4": PruneSpec(method="wanda", pattern="2:4"),
    "wanda-4:8-dense": PruneSpec(method="wanda", pattern="4:8", mode="dense"),
    "alphapruning": PruneSpec(method="wanda", sparsity=0.6, allocation="alphapruning",
                              alpha_xmin="median"),
    "alphapruning-matrix": PruneSpec(method="magnitude", sparsity=0.6, allocation="alphapruning",
                                     granularity="matrix"),
    "owl": PruneSpec(method="wanda", sparsity=0.6, allocation="owl", owl_m=2.0),
    "owl-sparsegpt-dense": PruneSpec(method="sparsegpt", mode="dense", sparsity=0.6,
                                     allocation="owl", owl_m=2.0),
    "ria-owl": PruneSpec(method="ria", sparsity=0.6, allocation="owl", owl_m=2.0),
    "ria-2:4-permute-dsnot": PruneSpec(method="ria", pattern="2:4", permute=True,
                                       refine="dsnot", refine_exclude=[], refine_threshold=0.0),
    "magnitude-dsnot-dense": PruneSpec(method="magnitude", mode="dense", refine="dsnot"),
    "sparsegpt-2:4-permute": PruneSpec(method="sparsegpt", pattern="2:4", permute=True),
    "wanda-2:4-dsnot-admm": PruneSpec(method="wanda", pattern="2:4", refine="dsnot",
                                      update="admm", update_iterations=5),
}


@pytest.mark.parametrize("name", list(SPECS))
def test_methods_patterns_and_allocations_stream_identically(tiny_model_dir, name):
    directory = tiny_model_dir("llama")
    spec = PruneSpec(**{**SPECS[name].__dict__, "batch_size": BATCH})
    model, expected = in_memory(directory, spec)
    checkpoint = StreamedCheckpoint(directory)
    targets = find_targets(checkpoint.model)
    dense = None
    if spec.allocation == "owl":
        dense = stream_dense_statistics(checkpoint, WINDOWS, targets, device=CPU,
                                        batch_size=BATCH)
    allocation = stream_allocation(checkpoint, targets, spec, dense, device=CPU)
    assert allocation.to_dict() == expected.allocation.to_dict()
    writer = DictWriter()
    stream_prune(checkpoint, spec, WINDOWS, writer, device=CPU, ratios=allocation.ratios)
    assert_same_weights(model, writer.tensors)
    if spec.allocation != "uniform":  # the layers really got different ratios
        assert len(set(allocation.ratios.values())) > 1


def test_dense_statistics_and_alphas_stream_identically(tiny_model_dir):
    directory = tiny_model_dir("gpt2")  # Conv1D: the [out, in] view matters for the spectra
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    checkpoint = StreamedCheckpoint(directory)
    targets, streamed_targets = find_targets(model), find_targets(checkpoint.model)
    expected = collect_dense(model, WINDOWS, targets, BATCH, hessian=True)
    streamed = stream_dense_statistics(checkpoint, WINDOWS, streamed_targets, device=CPU,
                                       batch_size=BATCH, hessian=True)
    assert streamed.keys() == expected.keys()
    for name, entry in streamed.items():
        assert torch.equal(entry.sumsq, expected[name].sumsq), name
        assert torch.equal(entry.xtx, expected[name].xtx), name
    assert stream_esd_alphas(checkpoint, streamed_targets, "ks", device=CPU) == esd_alphas(
        targets, "ks")


def test_dense_stats_given_skip_every_forward_pass(tiny_model_dir, monkeypatch):
    directory = tiny_model_dir("qwen2")
    spec = PruneSpec(method="sparsegpt", mode="dense", batch_size=BATCH)
    model, _ = in_memory(directory, spec)
    checkpoint = StreamedCheckpoint(directory)
    stats = stream_dense_statistics(checkpoint, WINDOWS, find_targets(checkpoint.model),
                                    device=CPU, batch_size=BATCH, hessian=True)
    monkeypatch.setattr("wanda_export.stream.prune.capture_inputs", None)  # would raise if called
    writer = DictWriter()
    result = stream_prune(checkpoint, spec, None, writer, device=CPU, stats=stats)
    assert_same_weights(model, writer.tensors)
    assert result.stats is stats
    assert all(entry.xtx is not None for entry in stats.values())  # the caller's are untouched


def test_sharded_checkpoint_loads_and_equals_in_memory(tiny_model_dir, tmp_path):
    directory = tiny_model_dir("llama")
    spec = PruneSpec(method="wanda", pattern="2:4", batch_size=BATCH)
    model, expected = in_memory(directory, spec)
    checkpoint = StreamedCheckpoint(directory)
    writer = ShardWriter(tmp_path / "out", max_shard_bytes=40_000)
    stream_prune(checkpoint, spec, WINDOWS, writer, device=CPU)
    files = writer.finish(PLAN, checkpoint.config, AutoTokenizer.from_pretrained(directory),
                          checkpoint.generation_config)
    out = tmp_path / "out"
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) > 3
    assert [p.name for p in shards] == [
        f"model-{n:05d}-of-{len(shards):05d}.safetensors" for n in range(1, len(shards) + 1)]
    assert not list(out.glob(".*")) and files == sorted(p for p in out.rglob("*") if p.is_file())
    index = json.loads((out / SAFETENSORS_INDEX).read_text())
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for name, t in model.state_dict().items()
        if name in index["weight_map"])
    for shard in shards:
        with safe_open(shard, framework="pt") as handle:
            assert handle.metadata()[PLAN_METADATA_KEY] == canonical_plan(PLAN)
            names = list(handle.keys())
            sizes = [handle.get_slice(name).get_shape() for name in names]
        assert all(index["weight_map"][name] == shard.name for name in names)
        # a shard stays under the limit unless it holds one larger tensor alone (the embedding)
        assert sum(4 * torch.Size(shape).numel() for shape in sizes) <= 40_000 or len(names) == 1
    assert json.loads((out / "pruning.json").read_text()) == PLAN
    assert "sparsity_config" not in json.loads((out / "config.json").read_text())
    loaded = AutoModelForCausalLM.from_pretrained(out)
    state, reference = loaded.state_dict(), model.state_dict()
    assert state.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(state[name], tensor), name
    # what was written verifies, and evaluates like the in-memory pruned model
    written = StreamedCheckpoint(out)
    report = stream_verify(written, find_targets(written.model), spec.parsed_pattern)
    assert report.layers == expected.report.layers and report.valid
    assert stream_perplexity(written, WINDOWS, BATCH, device=CPU) == perplexity(
        model, WINDOWS, BATCH)


def test_one_shard_export_is_byte_identical_to_export_checkpoint(tiny_model_dir, tmp_path):
    directory = tiny_model_dir("gpt2")  # tied lm_head, Conv1D
    spec = PruneSpec(method="wanda", batch_size=BATCH)
    model, _ = in_memory(directory, spec)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    export_checkpoint(model, tokenizer, tmp_path / "memory", PLAN)
    checkpoint = StreamedCheckpoint(directory)
    writer = ShardWriter(tmp_path / "stream")
    stream_prune(checkpoint, spec, WINDOWS, writer, device=CPU)
    files = writer.finish(PLAN, checkpoint.config, tokenizer, checkpoint.generation_config)
    assert [p.name for p in files] == sorted(p.name for p in (tmp_path / "memory").iterdir())
    for path in files:
        assert path.read_bytes() == (tmp_path / "memory" / path.name).read_bytes(), path.name


def test_bfloat16_checkpoint_streams_in_its_dtype_with_float32_stats(tiny_model_dir, tmp_path):
    source = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir("qwen3"), dtype=torch.bfloat16
                                         ).save_pretrained(source)
    spec = PruneSpec(method="wanda", batch_size=BATCH)
    model, _ = in_memory(source, spec, torch.bfloat16)
    checkpoint = StreamedCheckpoint(source, torch.bfloat16)
    outputs: list[LayerOutput] = []
    writer = DictWriter()
    stream_prune(checkpoint, spec, WINDOWS, writer, device=CPU, on_layer=outputs.append)
    assert_same_weights(model, writer.tensors)
    assert {t.dtype for t in writer.tensors.values()} == {torch.bfloat16}
    assert {e.sumsq.dtype for o in outputs for e in o.stats.values()} == {torch.float32}
    assert outputs[0].hidden[0].dtype == torch.bfloat16


def test_at_most_one_decoder_layer_is_materialized(tiny_model_dir, monkeypatch):
    checkpoint = StreamedCheckpoint(tiny_model_dir("phi3"))
    seen: list[tuple[int, list[int], bool]] = []
    done: list[weakref.ref] = []  # the tensors of the layers already pruned
    freed: list[bool] = []
    materialize = checkpoint.materialize

    def materialize_when_freed(module, device, recurse=True):
        gc.collect()
        freed.extend(ref() is None for ref in done)
        materialize(module, device, recurse)

    def on_layer(output: LayerOutput) -> None:
        resident = [index for index, layer in enumerate(checkpoint.layers)
                    if any(p.device.type != "meta" for p in layer.parameters())]
        outside = any(p.device.type != "meta" for name, p in checkpoint.model.named_parameters()
                      if not name.startswith(f"{checkpoint.stack_name}."))
        seen.append((output.index, resident, outside))
        done.extend(weakref.ref(tensor) for tensor in output.tensors.values())

    monkeypatch.setattr(checkpoint, "materialize", materialize_when_freed)
    spec = PruneSpec(method="sparsegpt", batch_size=BATCH)
    stream_prune(checkpoint, spec, WINDOWS, None, device=CPU, on_layer=on_layer)
    assert seen == [(0, [0], False), (1, [1], False)]
    assert freed and all(freed)  # layer 0's tensors are gone before layer 1 is read
    assert all(p.device.type == "meta" for p in checkpoint.model.parameters())
    assert module_nbytes(checkpoint.layers[0]) == sum(
        p.numel() * 4 for p in checkpoint.layers[0].parameters())


@pytest.mark.parametrize("mode", ["sequential", "dense"])
def test_resuming_at_a_layer_gives_the_same_weights(tiny_model_dir, mode):
    directory = tiny_model_dir("mistral")
    spec = PruneSpec(method="sparsegpt", mode=mode, batch_size=BATCH)
    outputs: list[LayerOutput] = []
    full = DictWriter()
    stream_prune(StreamedCheckpoint(directory), spec, WINDOWS, full, device=CPU,
                 on_layer=outputs.append)
    assert outputs[-1].hidden is None
    # a run killed after layer 0: its cached tensors and output hidden states resume it
    resumed = DictWriter()
    for name, tensor in outputs[0].tensors.items():
        resumed.add(name, tensor)
    rest: list[LayerOutput] = []
    result = stream_prune(StreamedCheckpoint(directory), spec, WINDOWS, resumed, device=CPU,
                          on_layer=rest.append, start_layer=1, hidden=outputs[0].hidden)
    assert [o.index for o in rest] == [1]
    assert set(result.report.layers) == set(outputs[1].report.layers)
    assert resumed.tensors.keys() == full.tensors.keys()
    for name, tensor in full.tensors.items():
        assert torch.equal(resumed.tensors[name], tensor), name


def test_streaming_refuses_what_it_cannot_do(tiny_model_dir):
    checkpoint = StreamedCheckpoint(tiny_model_dir("llama"))
    with pytest.raises(ValueError, match="needs its ratios"):
        stream_prune(checkpoint, PruneSpec(allocation="owl"), WINDOWS, None, device=CPU)
    with pytest.raises(ValueError, match="lm_head"):
        stream_prune(checkpoint, PruneSpec(include=("*proj", "lm_head"), mode="dense"), WINDOWS,
                     None, device=CPU)
    with pytest.raises(ValueError, match="needs calibration windows"):
        stream_prune(checkpoint, PruneSpec(), None, None, device=CPU)
    with pytest.raises(ValueError, match="needs the hidden states"):
        stream_prune(checkpoint, PruneSpec(batch_size=BATCH), WINDOWS, None, device=CPU,
                     start_layer=1)
    with pytest.raises(ValueError, match="do not match"):
        stream_prune(checkpoint, PruneSpec(batch_size=BATCH), WINDOWS, None, device=CPU,
                     start_layer=1, hidden=[torch.zeros(4, 32, 64)])
    with pytest.raises(ValueError, match="not a layer index"):
        stream_prune(checkpoint, PruneSpec(method="magnitude"), None, None, device=CPU,
                     start_layer=2)
    assert all(p.device.type == "meta" for p in checkpoint.model.parameters())


def test_bad_checkpoint_folders_are_config_errors(tiny_model_dir, tmp_path):
    source = tiny_model_dir("llama")
    pickle_only = tmp_path / "pickle"
    pickle_only.mkdir()
    shutil.copy(source / "config.json", pickle_only)
    (pickle_only / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ConfigError, match="only holds pickle weights"):
        StreamedCheckpoint(pickle_only)
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        StreamedCheckpoint(no_config)
    broken_index = tmp_path / "broken-index"
    shutil.copytree(source, broken_index)
    (broken_index / SAFETENSORS_INDEX).write_text(json.dumps({"weight_map": {"x": "gone.st"}}))
    with pytest.raises(ConfigError, match=r"missing: \['gone.st'\]"):
        StreamedCheckpoint(broken_index)
    (broken_index / SAFETENSORS_INDEX).write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a safetensors index"):
        StreamedCheckpoint(broken_index)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(source, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="not a readable safetensors file"):
        StreamedCheckpoint(corrupt)
    resized = tmp_path / "resized"
    shutil.copytree(source, resized)
    config = json.loads((resized / "config.json").read_text())
    (resized / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    checkpoint = StreamedCheckpoint(resized)
    shapes = r"gate_proj.weight' has shape \[128, 64\].*expects \[96, 64\]"
    with pytest.raises(ConfigError, match=shapes):
        stream_prune(checkpoint, PruneSpec(method="magnitude"), None, DictWriter(), device=CPU)
    assert all(p.device.type == "meta" for p in checkpoint.model.parameters())
    # a checkpoint lacking a layer's tensor: named when that layer is read, nothing half-loaded
    partial = tmp_path / "partial"
    shutil.copytree(source, partial)
    from safetensors.torch import load_file, save_file

    tensors = load_file(partial / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, partial / "model.safetensors", metadata={"format": "pt"})
    checkpoint = StreamedCheckpoint(partial)
    with pytest.raises(ConfigError, match="no tensor for parameter 'model.layers.1.mlp.up_proj"):
        stream_prune(checkpoint, PruneSpec(method="magnitude"), None, DictWriter(), device=CPU)
    assert all(p.device.type == "meta" for p in checkpoint.model.parameters())


def test_streamable_directory_resolves_folders_hub_snapshots_and_refuses_gguf(
        tiny_model_dir, tiny_llama_gguf, tmp_path, monkeypatch):
    import huggingface_hub.constants

    directory = tiny_model_dir("llama")
    assert streamable_directory(str(directory)) == directory.resolve()
    with pytest.raises(ConfigError, match="cannot be streamed"):
        streamable_directory(str(tiny_llama_gguf))
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--tiny"
    shutil.copytree(directory, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = streamable_directory("org/tiny")
    assert snapshot == repo / "snapshots" / commit
    assert len(StreamedCheckpoint(snapshot).layers) == 2
    from wanda_export.errors import EnvironmentProblem

    with pytest.raises(EnvironmentProblem, match="org/missing"):
        streamable_directory("org/missing")
