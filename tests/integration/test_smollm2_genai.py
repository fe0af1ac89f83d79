"""onnxruntime-genai on the real SmolLM2-135M, 2:4-pruned: the genai model builder's folder
(packed q/k/v, fused operators) generates the pruned model, its dense twin the dense model, and
the benchmark's measurement runs on both."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers import build_genai_folder

from wanda_export.bench.dense_twin import write_dense_genai_twin
from wanda_export.bench.genai_latency import open_genai_model, time_genai
from wanda_export.bench.shapes import parse_shape
from wanda_export.model.layers import find_targets, weight_out_in
from wanda_export.model.loading import load_model
from wanda_export.prune import PruneSpec, prune_model

og = pytest.importorskip("onnxruntime_genai")
pytestmark = pytest.mark.integration


def genai_last_logits(folder, prompt: np.ndarray) -> np.ndarray:
    opened = open_genai_model(folder, threads=2)
    params = og.GeneratorParams(opened.model)
    params.set_search_options(max_length=prompt.shape[1] + 1)
    generator = og.Generator(opened.model, params)
    generator.append_tokens(prompt)
    return generator.get_logits()[0, -1]


def test_the_genai_folder_and_its_dense_twin_are_the_pruned_and_dense_smollm2(
        smollm2_dir, tmp_path):
    loaded = load_model(str(smollm2_dir), device="cpu")
    dense_model = copy.deepcopy(loaded.model)
    prune_model(loaded.model, PruneSpec(method="magnitude", pattern="2:4"))
    pruned = {t.name: weight_out_in(t.module) for t in find_targets(loaded.model)}
    dense = {t.name: weight_out_in(t.module) for t in find_targets(dense_model)}
    loaded.model.save_pretrained(tmp_path / "pruned")
    loaded.tokenizer.save_pretrained(tmp_path / "pruned")
    folder = build_genai_folder(tmp_path / "pruned", tmp_path / "sparse")
    twin = write_dense_genai_twin(folder, "model.onnx", pruned, dense, tmp_path / "dense")
    prompt = loaded.tokenizer("The capital of France is", return_tensors="np")["input_ids"]
    prompt = prompt.astype(np.int32)
    with torch.no_grad():
        ids = torch.from_numpy(prompt.astype(np.int64))
        expected = {"sparse": loaded.model(ids).logits[0, -1].numpy(),
                    "dense": dense_model(ids).logits[0, -1].numpy()}
    for variant, path in (("sparse", folder), ("dense", twin)):
        np.testing.assert_allclose(genai_last_logits(path, prompt), expected[variant],
                                   atol=1e-3)
    assert not np.allclose(expected["sparse"], expected["dense"], atol=1e-2)  # they differ
    measured = time_genai(open_genai_model(folder, threads=2), parse_shape("decode:1x1@16"),
                          warmup=1, iterations=2)
    assert measured.tokens_per_second > 0 and measured.stats.iterations == 2
