"""TensorRT-ready 2:4: what a user needs to build an engine that uses sparse tensor cores.

Sparse tensor cores take 2:4 weights along the reduction dimension in FP16/BF16 or INT8. The
recipe names the fp16 ONNX file, whose precision is in the file itself: TensorRT 11 removed the
builder precision flags (--fp16, --int8, --bf16: networks are always strongly typed) and
TensorRT 10 takes the file's types with --stronglyTyped. `tensorrt.json` beside the file holds
the eligible layers (verified 2:4 in that file), a `trtexec` command per TensorRT major version
and the onnxruntime TensorRT provider options. Whether TensorRT picks sparse tactics is only
known when an engine is built on a GPU ("picked sparse implementation" in its verbose log,
parsed by `bench/tensorrt_log.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

from wanda_export.export.onnx_verify import OnnxVerification

TENSORRT_MAJORS = (10, 11)
CURRENT_TENSORRT = 11
ENGINE_FILE = "model.plan"
ENGINE_CACHE_DIR = "trt-engines"
# TensorRT 10.x: strong typing is opt-in and forbids the precision flags; in 11.x it is always
# on and --stronglyTyped is no longer needed.
_TYPING_FLAGS = {10: ("--stronglyTyped",), 11: ()}
# onnxruntime's provider: the engine cache, the builder log with the sparsity lines, 2:4.
_PROVIDER_OPTIONS = {"trt_sparsity_enable": True, "trt_engine_cache_enable": True,
                     "trt_engine_cache_path": ENGINE_CACHE_DIR, "trt_detailed_build_log": True}
# onnxruntime linked against TensorRT 10 builds weakly typed networks: fp16 kernels (and so the
# fp16 sparse ones) need the fp16 flag even for an fp16 file. TensorRT 11 has no such flag.
_PRECISION_OPTIONS = {10: {"trt_fp16_enable": True}, 11: {}}
_CHECK = ("the trtexec --verbose log (or onnxruntime's with trt_detailed_build_log) lists "
          "'Layers eligible for sparse math' and the layers TensorRT 'picked sparse "
          "implementation' for")


def trtexec_command(onnx_name: str, tensorrt_major: int) -> str:
    """The trtexec line that builds a 2:4 engine from `onnx_name` with TensorRT
    `tensorrt_major`; no precision flag: the precision is the file's."""
    if tensorrt_major not in _TYPING_FLAGS:
        raise ValueError(f"no trtexec recipe for TensorRT {tensorrt_major}; "
                         f"known: {list(TENSORRT_MAJORS)}")
    flags = [f"--onnx={onnx_name}", *_TYPING_FLAGS[tensorrt_major], "--sparsity=enable",
             f"--saveEngine={ENGINE_FILE}", "--verbose"]
    return " ".join(["trtexec", *flags])


def provider_options(tensorrt_major: int) -> dict[str, bool | str]:
    """onnxruntime TensorrtExecutionProvider options for an onnxruntime build linked against
    TensorRT `tensorrt_major` (option names as onnxruntime's provider parses them)."""
    if tensorrt_major not in _PRECISION_OPTIONS:
        raise ValueError(f"no provider options for TensorRT {tensorrt_major}; "
                         f"known: {list(TENSORRT_MAJORS)}")
    return {**_PRECISION_OPTIONS[tensorrt_major], **_PROVIDER_OPTIONS}


def tensorrt_recipe(onnx_name: str, verification: OnnxVerification) -> dict:
    """The content of tensorrt.json for `onnx_name`, an fp16 2:4 ONNX export verified in the
    file; `trtexec` and `onnxruntime_tensorrt_provider_options` are the current TensorRT's,
    `tensorrt_versions` holds each major's."""
    eligible = [
        {"module": name, "initializer": check.initializer, "layout": check.layout}
        for name, check in verification.layers.items() if check.valid
    ]
    versions = {str(major): {"trtexec": trtexec_command(onnx_name, major),
                             "onnxruntime_tensorrt_provider_options": provider_options(major)}
                for major in TENSORRT_MAJORS}
    return {
        "onnx": onnx_name,
        "pattern": "2:4",
        "precision": "fp16",
        "precision_source": "the ONNX file (strongly typed: no builder precision flag)",
        "eligible_layers": eligible,
        "ineligible_layers": verification.failures,
        "trtexec": versions[str(CURRENT_TENSORRT)]["trtexec"],
        "onnxruntime_tensorrt_provider_options":
            versions[str(CURRENT_TENSORRT)]["onnxruntime_tensorrt_provider_options"],
        "tensorrt_versions": versions,
        "check": _CHECK,
    }


def write_tensorrt_recipe(directory: Path, onnx_name: str, verification: OnnxVerification) -> Path:
    """Write tensorrt.json next to the ONNX file."""
    path = directory / "tensorrt.json"
    path.write_text(json.dumps(tensorrt_recipe(onnx_name, verification), indent=2) + "\n")
    return path
