"""tensorrt.json: commands valid for TensorRT 10 and 11 and onnxruntime provider options that
onnxruntime's TensorRT provider parses."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from wanda_export.bench.onnx_latency import TENSORRT, execution_providers
from wanda_export.export.onnx_verify import OnnxLayerCheck, OnnxVerification
from wanda_export.export.tensorrt import (
    provider_options,
    tensorrt_recipe,
    trtexec_command,
    write_tensorrt_recipe,
)

# The option names onnxruntime's TensorRT provider parses: the `provider_option_names` of
# onnxruntime/core/providers/tensorrt/tensorrt_execution_provider_info.cc (microsoft/onnxruntime,
# read through the library's code search) plus trt_bf16_enable (the ort crate's TensorRT
# wrapper for onnxruntime 1.31, src/ep/tensorrt.rs). The installed CPU wheel ships no TensorRT
# provider library to ask; its own onnxruntime/transformers/models/stable_diffusion/
# engine_builder_ort_trt.py passes trt_fp16_enable, trt_engine_cache_enable,
# trt_engine_cache_path and trt_detailed_build_log, which agree.
ONNXRUNTIME_TRT_OPTION_NAMES = frozenset({
    "device_id", "has_user_compute_stream", "user_compute_stream",
    "trt_max_partition_iterations", "trt_min_subgraph_size", "trt_max_workspace_size",
    "trt_fp16_enable", "trt_bf16_enable", "trt_int8_enable", "trt_int8_calibration_table_name",
    "trt_int8_use_native_calibration_table", "trt_dla_enable", "trt_dla_core",
    "trt_dump_subgraphs", "trt_engine_cache_enable", "trt_engine_cache_path",
    "trt_weight_stripped_engine_enable", "trt_onnx_model_folder_path", "trt_engine_cache_prefix",
    "trt_engine_decryption_enable", "trt_engine_decryption_lib_path",
    "trt_force_sequential_engine_build", "trt_context_memory_sharing_enable",
    "trt_layer_norm_fp32_fallback", "trt_timing_cache_enable", "trt_timing_cache_path",
    "trt_force_timing_cache", "trt_detailed_build_log", "trt_build_heuristics_enable",
    "trt_sparsity_enable", "trt_builder_optimization_level", "trt_auxiliary_streams",
    "trt_tactic_sources", "trt_extra_plugin_lib_paths", "trt_profile_min_shapes",
    "trt_profile_max_shapes", "trt_profile_opt_shapes", "trt_cuda_graph_enable",
    "trt_ep_context_embed_mode", "trt_ep_context_file_path", "trt_dump_ep_context_model",
    "trt_engine_hw_compatible", "trt_op_types_to_exclude",
})
PRECISION_OPTIONS = {"trt_fp16_enable", "trt_bf16_enable", "trt_int8_enable"}
# TensorRT 11 removed every precision flag of trtexec (NVIDIA's "Migrating trtexec Usage from
# TensorRT 10.x to 11.x"); --stronglyTyped is no longer needed there, and exists from 10.0.
REMOVED_IN_11 = {"--fp16", "--int8", "--bf16", "--fp8", "--int4", "--best"}
TRTEXEC_FLAGS = {10: {"--onnx", "--stronglyTyped", "--sparsity", "--saveEngine", "--verbose"},
                 11: {"--onnx", "--sparsity", "--saveEngine", "--verbose"}}


def verification() -> OnnxVerification:
    ok = OnnxLayerCheck("layers.0.q.weight", "[in, out]", 0.5, True, 0, True)
    broken = OnnxLayerCheck("layers.0.k.weight", "[in, out]", 0.5, True, 3, False)
    return OnnxVerification({"model.layers.0.self_attn.q_proj": ok,
                             "model.layers.0.self_attn.k_proj": broken})


def flags(command: str) -> dict[str, str | None]:
    words = shlex.split(command)
    assert words[0] == "trtexec"
    return {word.split("=")[0]: (word.split("=", 1)[1] if "=" in word else None)
            for word in words[1:]}


@pytest.mark.parametrize("major", [10, 11])
def test_trtexec_lines_are_valid_for_each_tensorrt(major):
    found = flags(trtexec_command("model.fp16.onnx", major))
    assert set(found) == TRTEXEC_FLAGS[major]
    assert found["--onnx"] == "model.fp16.onnx" and found["--sparsity"] == "enable"
    assert found["--saveEngine"] == "model.plan"
    assert not REMOVED_IN_11 & set(found)  # 10 too: --stronglyTyped forbids precision flags


@pytest.mark.parametrize("major", [10, 11])
def test_provider_options_exist_in_onnxruntime(major):
    options = provider_options(major)
    assert set(options) <= ONNXRUNTIME_TRT_OPTION_NAMES
    assert options["trt_sparsity_enable"] is True and options["trt_detailed_build_log"] is True
    assert bool(PRECISION_OPTIONS & set(options)) == (major == 10)


def test_the_benchmark_provider_options_exist_in_onnxruntime(tmp_path):
    (_, options), *_ = execution_providers(TENSORRT, tmp_path)
    assert set(options) <= ONNXRUNTIME_TRT_OPTION_NAMES


def test_unknown_tensorrt_versions_are_refused():
    with pytest.raises(ValueError, match=r"TensorRT 9; known: \[10, 11\]"):
        trtexec_command("model.fp16.onnx", 9)
    with pytest.raises(ValueError, match="TensorRT 12"):
        provider_options(12)


def test_recipe_keys_layers_and_the_current_tensorrt(tmp_path: Path):
    path = write_tensorrt_recipe(tmp_path, "model.fp16.onnx", verification())
    recipe = json.loads(path.read_text())
    assert set(recipe) == {"onnx", "pattern", "precision", "precision_source", "eligible_layers",
                           "ineligible_layers", "trtexec", "onnxruntime_tensorrt_provider_options",
                           "tensorrt_versions", "check"}
    assert recipe["onnx"] == "model.fp16.onnx" and recipe["precision"] == "fp16"
    assert recipe["eligible_layers"] == [{"module": "model.layers.0.self_attn.q_proj",
                                          "initializer": "layers.0.q.weight",
                                          "layout": "[in, out]"}]
    assert recipe["ineligible_layers"] == ["model.layers.0.self_attn.k_proj"]
    assert set(recipe["tensorrt_versions"]) == {"10", "11"}
    assert recipe["trtexec"] == recipe["tensorrt_versions"]["11"]["trtexec"]
    assert "--fp16" not in recipe["trtexec"] and "--stronglyTyped" not in recipe["trtexec"]
    assert "--stronglyTyped" in recipe["tensorrt_versions"]["10"]["trtexec"]
    current = recipe["onnxruntime_tensorrt_provider_options"]
    assert current == recipe["tensorrt_versions"]["11"]["onnxruntime_tensorrt_provider_options"]
    assert recipe == tensorrt_recipe("model.fp16.onnx", verification())
