"""ONNX export of a decoder with KV cache, for onnxruntime generation.

Inputs and outputs are named as optimum's decoders name them: `input_ids`, `attention_mask`,
`position_ids`, `past_key_values.{i}.key|value` -> `logits`, `present.{i}.key|value`, with
dynamic batch, sequence and past-sequence axes. The exporter is `torch.onnx.export(dynamo=True)`
(the torch.export path): optimum's ONNX exporter requires transformers < 4.58, and the legacy
TorchScript path is deprecated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from wanda_export.errors import missing_dependency

ONNX_OPSET = 18
# Above this the weights go to an external data file beside the .onnx (protobuf's 2 GB limit).
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3


@dataclass(frozen=True)
class CacheLayout:
    """Shape of one layer's cached keys/values: [batch, kv_heads, past, head_dim]."""

    layers: int
    kv_heads: int
    head_dim: int


@dataclass
class OnnxExport:
    """What was written and how long it took."""

    path: Path
    seconds: float
    input_names: list[str]
    output_names: list[str]
    layout: CacheLayout
    exporter: str = "torch"  # "torch" (torch.onnx, dynamo) or "genai" (onnxruntime-genai)


def input_names(layers: int) -> list[str]:
    """optimum's decoder input names."""
    past = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past]


def output_names(layers: int) -> list[str]:
    """optimum's decoder output names."""
    return ["logits", *[f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]]


@torch.no_grad()
def cache_layout(model: nn.Module) -> CacheLayout:
    """Read the KV-cache shapes off one tiny forward pass, so no per-family config is needed."""
    device = next(model.parameters()).device
    out = model(input_ids=torch.zeros(1, 2, dtype=torch.long, device=device), use_cache=True)
    layers = out.past_key_values.layers
    keys = layers[0].keys
    return CacheLayout(layers=len(layers), kv_heads=keys.shape[1], head_dim=keys.shape[3])


class DecoderWithPast(nn.Module):
    """Flat tensors in, flat tensors out, around a transformers causal LM and its DynamicCache."""

    def __init__(self, model: nn.Module, layers: int) -> None:
        super().__init__()
        self.model = model
        self.layers = layers

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.layers)]
        cache = DynamicCache(ddp_cache_data=pairs, config=self.model.config)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, past_key_values=cache, use_cache=True)
        presents = []
        for layer in out.past_key_values.layers:
            presents += [layer.keys, layer.values]
        return (out.logits, *presents)


def _sample_inputs(layout: CacheLayout, device, dtype) -> tuple:
    batch, seq, past = 2, 3, 4
    ids = torch.randint(0, 8, (batch, seq), device=device)
    mask = torch.ones(batch, past + seq, dtype=torch.long, device=device)
    positions = torch.arange(past, past + seq, device=device).expand(batch, seq)
    cache = [torch.zeros(batch, layout.kv_heads, past, layout.head_dim, device=device, dtype=dtype)
             for _ in range(2 * layout.layers)]
    return (ids, mask, positions, *cache)


def export_onnx(model: nn.Module, path: Path, *, opset: int = ONNX_OPSET) -> OnnxExport:
    """Export `model` (float32) to `path`; returns the names, cache layout and export time."""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as error:
        raise missing_dependency("onnxscript", "onnx") from error
    layout = cache_layout(model)
    wrapper = DecoderWithPast(model, layout.layers).eval()
    param = next(model.parameters())
    args = _sample_inputs(layout, param.device, param.dtype)
    auto = torch.export.Dim.AUTO
    # the varargs of forward() form one group in torch.export's view of the inputs
    dynamic = ({0: auto, 1: auto}, {0: auto, 1: auto}, {0: auto, 1: auto},
               tuple({0: auto, 2: auto} for _ in range(2 * layout.layers)))
    names_in, names_out = input_names(layout.layers), output_names(layout.layers)
    start = time.perf_counter()
    with torch.no_grad():
        program = torch.onnx.export(wrapper, args, dynamo=True, opset_version=opset,
                                    input_names=names_in, output_names=names_out,
                                    dynamic_shapes=dynamic, optimize=True, verbose=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    program.save(str(path), external_data=weights > EXTERNAL_DATA_THRESHOLD)
    return OnnxExport(path, time.perf_counter() - start, names_in, names_out, layout)


def convert_to_fp16(source: Path, target: Path) -> Path:
    """An fp16 copy of an fp32 export (inputs/outputs stay fp32; zeros stay zeros)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source))
    converted = convert_float_to_float16(model, keep_io_types=True)
    external = converted.ByteSize() > EXTERNAL_DATA_THRESHOLD  # the fp32 file may be external
    onnx.save(converted, str(target), save_as_external_data=external)
    return target
