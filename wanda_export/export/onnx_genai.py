"""ONNX export through onnxruntime-genai's model builder, fed the pruned safetensors checkpoint.

The builder writes onnxruntime's fused decoder (GroupQueryAttention with rotary embedding,
SkipSimplifiedLayerNormalization, q/k/v packed into one MatMul per layer) with optimum's I/O
names (`input_ids`, `attention_mask`, `past_key_values.{i}.key|value` -> `logits`,
`present.{i}.key|value`; no `position_ids`: the attention op derives positions from the mask),
a `genai_config.json` and the tokenizer, so `onnxruntime_genai` generates from the folder.

What we add around it:
- the weights are the checkpoint's safetensors files memory-mapped (`model.mapped`) instead of
  the builder's `from_pretrained` copy, written to the file block by block with the mapped
  pages released as they go (`genai_weights`), so the export holds a block, not the model;
- nothing is fetched: local config and tokenizer, `HF_HUB_OFFLINE`, no token; no quantization
  (precision fp32, fp16 or bf16 only: a cast keeps every zero a zero);
- the KV-cache head dimension is pinned in the graph's I/O (the builder leaves it symbolic).

fp32 targets the CPU provider (the artifact onnxruntime and onnxruntime-genai run here); fp16 and
bf16 target CUDA (the builder's valid combinations), which onnxruntime's CPU provider also runs
for fp16.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

from wanda_export.errors import WandaExportError, missing_dependency
from wanda_export.export.genai_weights import builder_writes_blocks
from wanda_export.export.onnx import CacheLayout, OnnxExport, input_names, output_names

# transformers architectures that both this project and the builder support. Phi-3 is left to
# torch.onnx: the builder's graph of a tiny random Phi-3 missed parity (max |logit diff| 0.35).
GENAI_ARCHITECTURES = frozenset({"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                                 "Qwen3ForCausalLM"})
# precision -> (builder execution provider, file name in onnx/)
GENAI_PRECISIONS = {"fp32": ("cpu", "model.onnx"), "fp16": ("cuda", "model.fp16.onnx"),
                    "bf16": ("cuda", "model.bf16.onnx")}
GENAI_CONFIG = "genai_config.json"
_SYMBOLIC_HEAD_DIM = "kv_cache_dim"


def genai_supports(config) -> bool:
    """Whether the builder exports this transformers config (by its architecture)."""
    architectures = getattr(config, "architectures", None) or []
    return bool(architectures) and architectures[0] in GENAI_ARCHITECTURES


@contextlib.contextmanager
def _builder_environment(checkpoint_dir: Path) -> Iterator[object]:
    """The builder module, with its weights memory-mapped from `checkpoint_dir` and written
    in blocks (`genai_weights`), the hub offline, and its prints and progress bars kept out of
    our output (stdout is --json's)."""
    try:
        from onnxruntime_genai.models import builder
    except ImportError as error:
        raise missing_dependency("onnxruntime_genai", "onnx") from error
    from wanda_export.model.mapped import MappedModel
    from wanda_export.model.streaming import StreamedCheckpoint

    base = sys.modules["builders.base"]  # the builder imports its package by its short name
    mapped = MappedModel(StreamedCheckpoint(checkpoint_dir))
    saved = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    log = io.StringIO()
    try:
        with mock.patch.object(base.Model, "load_weights", lambda _self, _path: mapped.model), \
                builder_writes_blocks(base.Model, mapped.release), \
                contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            yield builder
    except WandaExportError:
        raise  # a problem of ours, already naming the file and the reason
    except Exception as error:
        raise RuntimeError(f"the onnxruntime-genai model builder failed on {checkpoint_dir}: "
                           f"{error}\n{log.getvalue()[-2000:]}") from error
    finally:
        if saved is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved


def _run_builder(checkpoint_dir: Path, out_dir: Path, precision: str, filename: str) -> None:
    """One builder run: `filename` (+ `.data`), genai_config.json and the tokenizer files."""
    provider, _ = GENAI_PRECISIONS[precision]
    options = ["hf_token=false", f"filename={filename}"]
    cache = out_dir / ".builder-cache"
    with _builder_environment(checkpoint_dir) as builder:
        extra = builder.parse_extra_options(None, str(checkpoint_dir), str(out_dir), precision,
                                            provider, str(cache), options)
        builder.create_model(None, str(checkpoint_dir), str(out_dir), precision, provider,
                             str(cache), **extra)
    shutil.rmtree(cache, ignore_errors=True)


def read_layout(directory: Path) -> CacheLayout:
    """The KV-cache layout from the genai_config.json the builder wrote."""
    decoder = json.loads((directory / GENAI_CONFIG).read_text())["model"]["decoder"]
    return CacheLayout(layers=int(decoder["num_hidden_layers"]),
                       kv_heads=int(decoder["num_key_value_heads"]),
                       head_dim=int(decoder["head_size"]))


def _canonical_io(path: Path, layout: CacheLayout) -> tuple[list[str], list[str]]:
    """Pin the static head dimension into the cache inputs and outputs (the builder leaves it
    symbolic) and order them as optimum does (each layer's key, then its value; the builder
    lists all keys first). The graph only: the external weights are not read. Returns the
    input and output names."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for value in [*proto.graph.input, *proto.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == _SYMBOLIC_HEAD_DIM:
                dim.dim_value = layout.head_dim
    for values, names in ((proto.graph.input, input_names(layout.layers)),
                          (proto.graph.output, output_names(layout.layers))):
        order = {name: index for index, name in enumerate(names)}
        ordered = sorted(values, key=lambda value: order.get(value.name, len(order)))
        copies = [type(value)() for value in ordered]
        for copy, value in zip(copies, ordered, strict=True):
            copy.CopyFrom(value)
        del values[:]
        values.extend(copies)
    onnx.save(proto, str(path))
    return [v.name for v in proto.graph.input], [v.name for v in proto.graph.output]


def export_genai(checkpoint_dir: Path, directory: Path, precision: str = "fp32") -> OnnxExport:
    """Export the checkpoint in `checkpoint_dir` into `directory` at `precision` (see
    GENAI_PRECISIONS for the file name). The fp32 export also writes genai_config.json and the
    tokenizer files; the others add their model file beside it."""
    _, filename = GENAI_PRECISIONS[precision]
    directory.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if precision == "fp32":
        _run_builder(checkpoint_dir, directory, precision, filename)
        layout = read_layout(directory)
    else:
        scratch = directory / f".build-{precision}"
        _run_builder(checkpoint_dir, scratch, precision, filename)
        layout = read_layout(scratch)
        for name in (filename, f"{filename}.data"):
            os.replace(scratch / name, directory / name)
        shutil.rmtree(scratch)
    path = directory / filename
    names_in, names_out = _canonical_io(path, layout)
    return OnnxExport(path, time.perf_counter() - start, names_in, names_out, layout,
                      exporter="genai")
