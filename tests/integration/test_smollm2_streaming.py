"""Streaming the real SmolLM2-135M checkpoint layer by layer: the same weights, allocations and
perplexities as the in-memory path, bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch

from wanda_export.data.sources import TextSource, load_documents
from wanda_export.data.windows import calibration_windows, evaluation_ids, split_windows
from wanda_export.evaluate.perplexity import perplexity
from wanda_export.evaluate.streaming import stream_perplexity
from wanda_export.export.sharded import ShardWriter
from wanda_export.model.layers import find_targets
from wanda_export.model.loading import load_model
from wanda_export.model.streaming import StreamedCheckpoint
from wanda_export.prune import PruneSpec, prune_model
from wanda_export.stream.allocation import stream_allocation
from wanda_export.stream.forward import stream_dense_statistics
from wanda_export.stream.prune import stream_prune

pytestmark = pytest.mark.integration
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    loaded = load_model(str(smollm2_dir), device="cpu")
    source = TextSource(kind="builtin")
    calib = calibration_windows(loaded.tokenizer, load_documents(source, "calibration"), 4, 64, 0)
    evaluation = split_windows(
        evaluation_ids(loaded.tokenizer, load_documents(source, "evaluation")), 64, 4)
    return smollm2_dir, loaded, calib, evaluation


class DictWriter:
    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def add(self, name: str, tensor: torch.Tensor) -> None:
        self.tensors[name] = tensor


@pytest.mark.parametrize("spec", [
    PruneSpec(method="sparsegpt", mode="dense", sparsity=0.6, allocation="owl"),
    PruneSpec(method="wanda", mode="sequential", sparsity=0.6, allocation="alphapruning",
              alpha_xmin="median"),
], ids=["sparsegpt-dense-owl", "wanda-sequential-alphapruning"])
def test_smollm2_streams_identically(smollm2, spec):
    directory, loaded, calib, _ = smollm2
    model = copy.deepcopy(loaded.model)
    expected = prune_model(model, spec, calib)
    checkpoint = StreamedCheckpoint(directory)
    targets = find_targets(checkpoint.model)
    dense = None
    if spec.allocation == "owl":
        dense = stream_dense_statistics(checkpoint, calib, targets, device=CPU,
                                        batch_size=spec.batch_size)
    allocation = stream_allocation(checkpoint, targets, spec, dense, device=CPU)
    assert allocation.to_dict() == expected.allocation.to_dict()
    writer = DictWriter()
    stream_prune(checkpoint, spec, calib, writer, device=CPU, ratios=allocation.ratios)
    state = model.state_dict()
    for name, tensor in writer.tensors.items():
        assert torch.equal(tensor, state[name]), name


def test_smollm2_wanda_2of4_checkpoint_and_perplexities(smollm2, tmp_path):
    directory, loaded, calib, evaluation = smollm2
    spec = PruneSpec(method="wanda", mode="sequential", pattern="2:4")
    dense = stream_perplexity(StreamedCheckpoint(directory), evaluation, 4, device=CPU)
    assert dense == perplexity(loaded.model, evaluation, 4)
    model = copy.deepcopy(loaded.model)
    prune_model(model, spec, calib)
    checkpoint = StreamedCheckpoint(directory)
    writer = ShardWriter(tmp_path / "model", max_shard_bytes=128 * 2**20)
    stream_prune(checkpoint, spec, calib, writer, device=CPU)
    writer.finish({"method": "wanda"}, checkpoint.config, loaded.tokenizer,
                  checkpoint.generation_config)
    assert len(list((tmp_path / "model").glob("model-*-of-*.safetensors"))) > 1
    pruned = stream_perplexity(StreamedCheckpoint(tmp_path / "model"), evaluation, 4, device=CPU)
    assert pruned == perplexity(model, evaluation, 4) > dense
