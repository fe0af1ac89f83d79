"""The onnxruntime-genai runtime on a tiny pruned llama: the folder the genai model builder
writes, its dense twin (the dense model, found by content in the packed initializers),
prefill / decode timed through og.Generator, and the benchmark stage reading the export's
folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import build_genai_folder

from wanda_export.bench.dense_twin import locate_in_genai_folder, write_dense_genai_twin
from wanda_export.bench.genai_latency import (
    GENAI_CONFIG,
    genai_folder_problem,
    open_genai_model,
    time_genai,
)
from wanda_export.bench.shapes import parse_shape
from wanda_export.errors import EnvironmentProblem
from wanda_export.export.onnx_verify import OnnxVerification
from wanda_export.model.layers import find_targets, weight_out_in
from wanda_export.pipeline.benchmark import check_runtimes, run_benchmark, with_genai_folder
from wanda_export.pipeline.stages import run_calibrate, run_mask
from wanda_export.prune import PruneSpec, prune_model

og = pytest.importorskip("onnxruntime_genai")
PROMPT = np.arange(4, 20, dtype=np.int32)[None]


@pytest.fixture(scope="module")
def pruned_llama(tiny_model, tiny_model_dir, tmp_path_factory):
    """(genai folder built from the 2:4-pruned tiny llama, the pruned model, the dense model,
    the pruned and the dense [out, in] weights)."""
    model, dense_model = tiny_model("llama"), tiny_model("llama")
    targets = find_targets(model)
    dense = {t.name: weight_out_in(t.module).detach().clone() for t in targets}
    prune_model(model, PruneSpec(method="magnitude", pattern="2:4"))
    pruned = {t.name: weight_out_in(t.module).detach().clone() for t in targets}
    work = tmp_path_factory.mktemp("genai")
    shutil.copytree(tiny_model_dir("llama"), work / "pruned")
    model.save_pretrained(work / "pruned")
    folder = build_genai_folder(work / "pruned", work / "sparse")
    return folder, model, dense_model, pruned, dense


def last_logits(folder: Path) -> np.ndarray:
    opened = open_genai_model(folder, threads=1)
    params = og.GeneratorParams(opened.model)
    params.set_search_options(max_length=PROMPT.shape[1] + 1)
    generator = og.Generator(opened.model, params)
    generator.append_tokens(PROMPT)
    return generator.get_logits()[:, -1]


def torch_last_logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(PROMPT.astype(np.int64))).logits[:, -1].numpy()


def test_the_builder_folder_is_ready_for_the_genai_runtime(pruned_llama):
    folder = pruned_llama[0]
    assert genai_folder_problem(folder, "cpu") is None
    assert "built for cpu, not cuda" in genai_folder_problem(folder, "cuda")


def test_a_folder_genai_cannot_read_says_why(pruned_llama, tiny_model_dir, tmp_path):
    no_config = genai_folder_problem(tiny_model_dir("llama"), "cpu")
    assert f"has no {GENAI_CONFIG}" in no_config and "torch.onnx path" in no_config
    broken = tmp_path / "broken"
    shutil.copytree(pruned_llama[0], broken)
    (broken / GENAI_CONFIG).write_text("{not json")
    assert genai_folder_problem(broken, "cpu").startswith(f"cannot read {broken / GENAI_CONFIG}")
    (broken / GENAI_CONFIG).write_text("[]")
    assert "has no 'model' object" in genai_folder_problem(broken, "cpu")
    config = json.loads((pruned_llama[0] / GENAI_CONFIG).read_text())
    config["model"]["decoder"]["filename"] = "missing.onnx"
    (broken / GENAI_CONFIG).write_text(json.dumps(config))
    assert "names missing.onnx, which is not in broken/" in genai_folder_problem(broken, "cpu")
    with pytest.raises(ValueError, match="missing.onnx"):
        open_genai_model(broken, threads=1)


def test_the_sparse_folder_generates_the_pruned_model(pruned_llama):
    folder, model, *_ = pruned_llama
    np.testing.assert_allclose(last_logits(folder), torch_last_logits(model), atol=1e-4)


def test_the_dense_twin_is_the_dense_model_in_the_same_graph(pruned_llama, tmp_path):
    folder, _, dense_model, pruned, dense = pruned_llama
    before = (folder / "model.onnx.data").read_bytes()
    twin = write_dense_genai_twin(folder, "model.onnx", pruned, dense, tmp_path / "dense")
    assert (folder / "model.onnx.data").read_bytes() == before  # the export is left alone
    np.testing.assert_allclose(last_logits(twin), torch_last_logits(dense_model), atol=1e-4)
    assert (twin / "model.onnx").read_bytes() == (folder / "model.onnx").read_bytes()
    sparse_data = np.fromfile(folder / "model.onnx.data", np.uint8)
    twin_data = np.fromfile(twin / "model.onnx.data", np.uint8)
    located = locate_in_genai_folder(folder, "model.onnx", pruned)
    changed = sum(int(pruned[name].ne(dense[name]).sum()) for name in located)
    assert changed > 0 and np.count_nonzero(sparse_data != twin_data) <= 4 * changed
    assert len(located) == 14
    attention = "model.layers.0.self_attn."
    packed = {proj: (located[attention + proj][0].name, located[attention + proj][1])
              for proj in ("q_proj", "k_proj", "v_proj")}
    qkv = "model.layers.0.attn.qkv_proj.MatMul.weight"  # q (4 x 16), k and v (2 x 16) packed
    assert packed == {"q_proj": (qkv, 0), "k_proj": (qkv, 64), "v_proj": (qkv, 96)}


def test_a_weight_that_is_not_in_the_folder_is_named(pruned_llama):
    folder, *_, pruned, _ = pruned_llama
    name = next(iter(pruned))
    foreign = {name: torch.randn_like(pruned[name])}
    with pytest.raises(ValueError, match=rf"{name}: its pruned weight is found nowhere"):
        locate_in_genai_folder(folder, "model.onnx", foreign)


@pytest.mark.parametrize("text", ["prefill:2x16", "decode:2x1@24"])
def test_prefill_and_decode_are_timed_through_the_generator(pruned_llama, text):
    opened = open_genai_model(pruned_llama[0], threads=1)
    shape = parse_shape(text)
    measured = time_genai(opened, shape, warmup=1, iterations=4)
    assert (measured.stats.iterations, measured.stats.warmup) == (4, 1)
    assert 0 < measured.stats.min_ms <= measured.stats.p50_ms <= measured.stats.p95_ms
    assert measured.tokens_per_second == pytest.approx(shape.tokens * 1000 / measured.stats.p50_ms)
    assert measured.to_dict()["shape"] == text and measured.to_dict()["threads"] == 1


def test_a_shape_past_the_context_is_refused(pruned_llama):
    opened = open_genai_model(pruned_llama[0], threads=1)
    with pytest.raises(ValueError, match="needs 301 positions; .* context of 256"):
        time_genai(opened, parse_shape("prefill:1x300"), warmup=0, iterations=1)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        open_genai_model(pruned_llama[0], threads=0)


def test_the_session_runs_the_threads_it_is_given(pruned_llama):
    def threads_added(threads: int) -> int:
        before = len(os.listdir("/proc/self/task"))
        opened = open_genai_model(pruned_llama[0], threads=threads)
        added = len(os.listdir("/proc/self/task")) - before
        del opened
        return added

    assert threads_added(3) - threads_added(1) == 2  # the intra-op pool: threads - 1 workers


# --- the benchmark stage --------------------------------------------------------------------

GENAI_STAGES = {
    "export": {"formats": ["onnx"], "parity": False},
    "benchmark": {"runtimes": ["onnxruntime-genai"], "shapes": ["prefill:2x8", "decode:1x1@8"],
                  "warmup": 1, "iterations": 2, "threads": 1},
}


def pruned_context(pipeline_config, run_context, **settings):
    """A run context of the 2:4 test pipeline with onnxruntime-genai benchmarked, after its
    calibrate and mask stages (the dense weights kept first, as the runner does)."""
    ctx = run_context(pipeline_config(pattern="2:4", stages=GENAI_STAGES, **settings))
    ctx.keep_dense_weights()
    run_calibrate(ctx)
    run_mask(ctx)
    return ctx


def test_the_stage_times_the_export_folder_against_its_dense_twin(
        pipeline_config, run_context, tiny_model_dir, tmp_path):
    ctx = pruned_context(pipeline_config, run_context)
    checkpoint = tmp_path / "pruned"
    shutil.copytree(tiny_model_dir("llama"), checkpoint)
    ctx.loaded.model.save_pretrained(checkpoint)
    folder = build_genai_folder(checkpoint, ctx.staging / "onnx")  # what a genai export writes
    ctx.onnx_export = (folder / "model.onnx", OnnxVerification())
    ctx.availability = check_runtimes(ctx.config)
    record = run_benchmark(ctx)
    assert record.detail["measured"] == ["onnxruntime-genai"] and not record.detail["unavailable"]
    latency = ctx.record.metrics.latency
    rows = {(row.variant, row.shape): row for row in latency.results}
    assert set(rows) == {(variant, shape) for variant in ("dense", "sparse")
                         for shape in ("prefill:2x8", "decode:1x1@8")}
    prefill = rows[("sparse", "prefill:2x8")].to_dict()
    assert prefill["device"] == "cpu" and prefill["iterations"] == 2
    assert prefill["tokens_per_second"] == pytest.approx(16 * 1000 / prefill["p50_ms"])
    assert {row.runtime for row in latency.comparison} == {"onnxruntime-genai"}
    assert latency.runtimes["onnxruntime-genai"].versions["onnxruntime_genai"] == og.__version__


def test_an_export_without_a_genai_config_makes_the_runtime_unavailable(
        pipeline_config, run_context, tiny_model_dir):
    ctx = pruned_context(pipeline_config, run_context)
    ctx.onnx_export = (tiny_model_dir("llama") / "model.onnx", OnnxVerification())
    checked = with_genai_folder(ctx, check_runtimes(ctx.config))
    assert not checked["onnxruntime-genai"].available
    assert f"has no {GENAI_CONFIG}" in checked["onnxruntime-genai"].reason
    gated = pruned_context(pipeline_config, run_context,
                           gates={"latency": {"runtime": "onnxruntime-genai", "max_p50_ms": 1e4}})
    gated.onnx_export = ctx.onnx_export
    with pytest.raises(EnvironmentProblem, match="onnxruntime-genai: .* has no genai_config"):
        with_genai_folder(gated, check_runtimes(gated.config))
