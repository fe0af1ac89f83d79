"""ONNX export with KV cache on tiny models of every family, through both exporters (torch.onnx
and onnxruntime-genai's builder): names, in-file verification, parity."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoTokenizer

from wanda_export.config.stages import ExportStage
from wanda_export.errors import ConfigError
from wanda_export.evaluate.parity import measure_parity
from wanda_export.export.onnx import convert_to_fp16, export_onnx, input_names, output_names
from wanda_export.export.onnx_genai import export_genai, genai_supports
from wanda_export.export.onnx_tensors import load_graph, read_initializer
from wanda_export.export.onnx_verify import matmul_weights, verify_onnx
from wanda_export.export.safetensors import export_checkpoint
from wanda_export.model.layers import find_targets
from wanda_export.pipeline.onnx_stage import choose_exporter
from wanda_export.prune import PruneSpec, prune_model
from wanda_export.sparsity.pattern import Pattern

GENAI_FAMILIES = ["llama", "mistral", "qwen2", "qwen3"]


@pytest.fixture(scope="module")
def exported(tiny_model, tiny_model_dir, tmp_path_factory):
    """(family, exporter) -> (model, tokenizer, export) with the model pruned 2:4 by magnitude;
    the genai exporter reads the pruned checkpoint as the pipeline writes it."""
    cache = {}

    def get(family, exporter="torch"):
        if (family, exporter) not in cache:
            model = tiny_model(family)
            prune_model(model, PruneSpec(method="magnitude", pattern="2:4"))
            tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir(family))
            folder = tmp_path_factory.mktemp(f"onnx-{family}-{exporter}")
            if exporter == "genai":
                export_checkpoint(model, tokenizer, folder / "model", {})
                result = export_genai(folder / "model", folder / "onnx")
            else:
                result = export_onnx(model, folder / "model.onnx")
            cache[family, exporter] = (model, tokenizer, result)
        return cache[family, exporter]

    return get


def test_export_verify_and_parity_for_every_family(exported, tiny_family):
    model, tokenizer, result = exported(tiny_family)
    proto = onnx.load(str(result.path))
    assert [i.name for i in proto.graph.input] == input_names(result.layout.layers)
    assert [o.name for o in proto.graph.output] == output_names(result.layout.layers)
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) >= 18
    verification = verify_onnx(result.path, find_targets(model), Pattern(2, 4))
    assert verification.valid, verification.failures
    assert len(verification.layers) == len(find_targets(model))
    parity = measure_parity(model, tokenizer, result.path, result.layout, new_tokens=8)
    assert parity.max_abs_diff <= 1e-4 and parity.generation_match
    assert parity.genai_generation_match is None


@pytest.mark.parametrize("family", GENAI_FAMILIES)
def test_genai_export_verify_and_parity(exported, family):
    model, tokenizer, result = exported(family, "genai")
    assert genai_supports(model.config) and result.exporter == "genai"
    graph = load_graph(result.path)
    # optimum's names and order; no position_ids (the attention op derives them from the mask)
    assert [i.name for i in graph.graph.input] == [
        name for name in input_names(result.layout.layers) if name != "position_ids"]
    assert [o.name for o in graph.graph.output] == output_names(result.layout.layers)
    assert (result.path.parent / "genai_config.json").is_file()
    verification = verify_onnx(result.path, find_targets(model), Pattern(2, 4))
    assert verification.valid, verification.failures
    q = verification.layers["model.layers.0.self_attn.q_proj"].pieces
    v = verification.layers["model.layers.0.self_attn.v_proj"].pieces
    assert q[0].initializer == v[0].initializer == "model.layers.0.attn.qkv_proj.MatMul.weight"
    assert (q[0].start, v[0].stop) == (0, model.config.hidden_size + 2 * 2 * 16)
    parity = measure_parity(model, tokenizer, result.path, result.layout, new_tokens=8,
                            genai_folder=result.path.parent)
    assert parity.max_abs_diff <= 1e-4 and parity.generation_match
    assert parity.genai_generation_match


def _break_one_group(result, model, tmp_path):
    """Copy the export with one group of 4 along K of the 4th target's stored rows set to
    ones; returns (copy, target name, initializer name)."""
    import shutil

    targets = find_targets(model)
    victim = targets[3]
    check = verify_onnx(result.path, targets, Pattern(2, 4)).layers[victim.name]
    folder = tmp_path / "broken"
    shutil.copytree(result.path.parent, folder)
    proto = onnx.load(str(folder / result.path.name))
    stored = matmul_weights(proto)
    init = next(i for i in proto.graph.initializer if i.name == check.initializer)
    array = read_initializer(init, folder).numpy().copy()
    piece = check.pieces[0]
    column = piece.start or 0  # the first output row of the victim inside the stored weight
    if stored[check.initializer].k_axis == 0:
        array[0:4, column] = 1.0
    else:
        array[column, 0:4] = 1.0
    init.CopyFrom(onnx.numpy_helper.from_array(array, init.name))
    onnx.save(proto, str(folder / result.path.name))
    return folder / result.path.name, targets, victim.name, check.initializer


@pytest.mark.parametrize("exporter", ["torch", "genai"])
def test_a_broken_4_group_is_named(exported, tmp_path, exporter):
    model, _, result = exported("llama", exporter)
    broken, targets, victim, initializer = _break_one_group(result, model, tmp_path)
    after = verify_onnx(broken, targets, Pattern(2, 4))
    assert after.failures == [victim]
    assert after.layers[victim].initializer == initializer
    assert after.layers[victim].violating_groups == 1
    assert not after.layers[victim].zeros_kept


def test_fp16_copy_keeps_the_zeros(exported, tmp_path):
    model, _, result = exported("qwen2")
    fp16 = convert_to_fp16(result.path, tmp_path / "model.fp16.onnx")
    verification = verify_onnx(fp16, find_targets(model), Pattern(2, 4))
    assert verification.valid
    weights = matmul_weights(onnx.load(str(fp16)))
    assert {w.read().dtype for w in weights.values()} == {torch.float16}


@pytest.mark.parametrize("precision, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_genai_precisions_keep_the_zeros(exported, precision, dtype):
    model, _, result = exported("llama", "genai")
    other = export_genai(result.path.parent.parent / "model", result.path.parent, precision)
    graph = load_graph(other.path)
    weights = matmul_weights(graph, other.path.parent)
    assert {w.read().dtype for w in weights.values()} == {dtype}
    assert graph.graph.input[2].type.tensor_type.elem_type == (10 if precision == "fp16" else 16)
    verification = verify_onnx(other.path, find_targets(model), Pattern(2, 4))
    assert verification.valid, verification.failures


def test_bf16_model_verifies_against_its_own_zeros(tiny_model, tiny_model_dir, tmp_path):
    model = tiny_model("llama").to(torch.bfloat16)
    prune_model(model, PruneSpec(method="magnitude", pattern="2:4"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir("llama"))
    export_checkpoint(model, tokenizer, tmp_path / "model", {})
    result = export_genai(tmp_path / "model", tmp_path / "onnx")
    weights = matmul_weights(load_graph(result.path), result.path.parent)
    assert {w.read().dtype for w in weights.values()} == {torch.float32}
    verification = verify_onnx(result.path, find_targets(model), Pattern(2, 4))
    assert verification.valid, verification.failures
    assert np.isclose(verification.layers["model.layers.0.mlp.up_proj"].sparsity, 0.5)


@pytest.mark.parametrize("family, setting, formats, expected", [
    ("llama", "auto", ["onnx"], "genai"),
    ("qwen3", "auto", ["onnx", "onnx-bf16"], "genai"),
    ("llama", "auto", ["onnx", "tensorrt"], "torch"),  # TensorRT gets the generic graph
    ("gpt2", "auto", ["onnx"], "torch"),
    ("phi3", "auto", ["onnx"], "torch"),
    ("llama", "torch", ["onnx"], "torch"),
])
def test_the_exporter_choice(tiny_model, family, setting, formats, expected):
    exporter, reason = choose_exporter(setting, tiny_model(family).config, formats)
    assert exporter == expected and reason


@pytest.mark.parametrize("family, setting, formats, phrase", [
    ("opt", "genai", ["onnx"], "genai has no builder for OPTForCausalLM"),
    ("gpt2", "auto", ["onnx", "onnx-bf16"], "onnx-bf16 is written by the genai exporter"),
])
def test_an_exporter_the_model_cannot_have_is_a_config_error(tiny_model, family, setting,
                                                              formats, phrase):
    with pytest.raises(ConfigError, match=phrase):
        choose_exporter(setting, tiny_model(family).config, formats)


def test_bf16_with_the_torch_exporter_is_refused_by_the_schema():
    with pytest.raises(ValueError, match="onnx-bf16 format is written by the genai exporter"):
        ExportStage(formats=["onnx", "onnx-bf16"], onnx_exporter="torch")
