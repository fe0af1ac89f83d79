"""TensorRT-ready 2:4: what a user needs to build an engine that uses sparse tensor cores.

Sparse tensor cores take 2:4 weights along the reduction dimension in FP16/BF16 or INT8; the
ONNX export already holds such weights, so this writes `tensorrt.json` beside it: the eligible
layers (verified 2:4 in the file), the precision, a `trtexec` command line and the onnxruntime
TensorRT provider options. Whether TensorRT picks sparse tactics is only known when an engine
is built on a GPU ("picked sparse implementation" in its verbose log).
"""

from __future__ import annotations

import json
from pathlib import Path

from wanda_export.export.onnx_verify import OnnxVerification


def tensorrt_recipe(onnx_name: str, verification: OnnxVerification) -> dict:
    """The content of tensorrt.json for a verified 2:4 ONNX export."""
    eligible = [
        {"module": name, "initializer": check.initializer, "layout": check.layout}
        for name, check in verification.layers.items() if check.valid
    ]
    return {
        "onnx": onnx_name,
        "pattern": "2:4",
        "precision": "fp16",
        "eligible_layers": eligible,
        "ineligible_layers": verification.failures,
        "trtexec": (f"trtexec --onnx={onnx_name} --fp16 --sparsity=enable "
                    "--saveEngine=model.plan --verbose"),
        "onnxruntime_tensorrt_provider_options": {
            "trt_fp16_enable": True,
            "trt_sparsity_enable": True,
            "trt_engine_cache_enable": True,
        },
        "check": "grep -i 'sparse' in the trtexec --verbose log lists the layers that got "
                 "sparse tactics",
    }


def write_tensorrt_recipe(directory: Path, onnx_name: str, verification: OnnxVerification) -> Path:
    """Write tensorrt.json next to the ONNX file."""
    path = directory / "tensorrt.json"
    path.write_text(json.dumps(tensorrt_recipe(onnx_name, verification), indent=2) + "\n")
    return path
