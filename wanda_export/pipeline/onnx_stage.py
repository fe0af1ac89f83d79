"""The ONNX part of the export stage, for in-memory and streamed runs: which exporter runs, the
files it writes into `onnx/`, their in-file verification, and parity.

- genai (onnxruntime-genai's builder) reads the pruned safetensors checkpoint, memory-mapped:
  the release's `model/` when the safetensors format was asked for, else a temporary copy.
  It writes model.onnx (fp32), model.fp16.onnx / model.bf16.onnx, genai_config.json and the
  tokenizer. A streamed run exports this way from its written shards, never loading the model.
- torch (torch.onnx.export) traces the in-memory model; fp16 is a converted copy.

`auto` picks genai when the family has a builder and no TensorRT artifact is asked for.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from wanda_export.errors import ConfigError
from wanda_export.evaluate.onnx_perplexity import onnx_perplexity
from wanda_export.evaluate.parity import measure_parity
from wanda_export.export.onnx import OnnxExport, convert_to_fp16, export_onnx
from wanda_export.export.onnx_genai import GENAI_ARCHITECTURES, export_genai, genai_supports
from wanda_export.export.onnx_verify import OnnxVerification, Reference, module_weight, verify_onnx
from wanda_export.export.safetensors import export_checkpoint
from wanda_export.export.tensorrt import write_tensorrt_recipe
from wanda_export.model.layers import Target
from wanda_export.pipeline.context import RunContext
from wanda_export.report.metrics import OnnxFileCheck, PerplexityMetrics

ONNX_DIR = "onnx"
CHECKPOINT_DIR = "model"
# extra formats -> the genai builder's precision
GENAI_FLAVOURS = {"onnx-fp16": "fp16", "onnx-bf16": "bf16"}
TENSORRT_NEEDS_TORCH = ("the tensorrt format gets the generic torch.onnx graph: TensorRT's ONNX "
                        "parser has no onnxruntime fused operators (GroupQueryAttention, "
                        "SkipSimplifiedLayerNormalization)")


def choose_exporter(setting: str, config, formats: list[str]) -> tuple[str, str]:
    """The exporter that runs ("genai" or "torch") and why; ConfigError when the setting or
    a format asks for what this model cannot get."""
    architecture = (getattr(config, "architectures", None) or ["?"])[0]
    supported = genai_supports(config)
    if setting == "genai" and not supported:
        raise ConfigError(f"export -> onnx_exporter: genai has no builder for {architecture}; "
                          f"it builds {sorted(GENAI_ARCHITECTURES)}",
                          hint="set onnx_exporter: auto or torch")
    if setting == "auto":
        if "tensorrt" in formats:
            setting, reason = "torch", TENSORRT_NEEDS_TORCH
        elif not supported:
            setting, reason = "torch", f"onnxruntime-genai has no builder for {architecture}"
        else:
            setting, reason = "genai", f"onnxruntime-genai builds {architecture}"
    else:
        reason = "set by export -> onnx_exporter"
    if setting == "torch" and "onnx-bf16" in formats:
        raise ConfigError(f"export -> formats: onnx-bf16 is written by the genai exporter, and "
                          f"this export runs torch ({reason})")
    return setting, reason


@contextmanager
def float32(model: nn.Module) -> Iterator[nn.Module]:
    """The model in float32 for the duration of the block (an exact upcast of fp16/bf16
    weights, undone exactly afterwards): what the fp32 ONNX file computes."""
    dtype = next(model.parameters()).dtype
    if dtype == torch.float32:
        yield model
        return
    model.float()
    try:
        yield model
    finally:
        model.to(dtype)


@contextmanager
def builder_source(ctx: RunContext, formats: list[str], plan: dict) -> Iterator[Path]:
    """The pruned safetensors checkpoint the builder reads: the release's model/ when it is
    being written (or was, shard by shard, in a streamed run), else a temporary one in the
    staging folder (stamped with `plan`), removed afterwards."""
    if "safetensors" in formats or ctx.checkpoint is not None:
        yield ctx.staging / CHECKPOINT_DIR
        return
    scratch = ctx.staging / ".onnx-source"
    export_checkpoint(ctx.loaded.model, ctx.loaded.tokenizer, scratch, plan)
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _verify(ctx: RunContext, path: Path, label: str, exporter: str, targets: list[Target],
            reference: Reference) -> OnnxVerification:
    """Re-verify the pruned weights inside one exported file and record it (the
    `<label>.sparsity` gate reads it)."""
    verification = verify_onnx(path, targets, ctx.pattern, reference)
    ctx.record.metrics.onnx[label] = OnnxFileCheck(
        file=str(path.relative_to(ctx.staging)), pattern=str(ctx.pattern),
        verification=verification, exporter=exporter)
    return verification


def _write_files(ctx: RunContext, exporter: str, formats: list[str], plan: dict
                 ) -> tuple[OnnxExport, dict[str, Path]]:
    """Run the exporter: model.onnx and one file per extra precision format."""
    directory = ctx.staging / ONNX_DIR
    flavours: dict[str, Path] = {}
    if exporter == "genai":
        with builder_source(ctx, formats, plan) as source:
            exported = export_genai(source, directory)
            for name, precision in GENAI_FLAVOURS.items():
                if name in formats or (name == "onnx-fp16" and "tensorrt" in formats):
                    flavours[name] = export_genai(source, directory, precision).path
        return exported, flavours
    model = ctx.loaded.model
    with float32(model):
        exported = export_onnx(model, directory / "model.onnx")
    model.config.save_pretrained(directory)
    if ctx.loaded.tokenizer is not None:
        ctx.loaded.tokenizer.save_pretrained(directory)
    if {"onnx-fp16", "tensorrt"} & set(formats):  # the fp16 file is the TensorRT artifact
        flavours["onnx-fp16"] = convert_to_fp16(exported.path, directory / "model.fp16.onnx")
    return exported, flavours


def export_onnx_formats(ctx: RunContext, formats: list[str], stage, plan: dict,
                        targets: list[Target], reference: Reference = module_weight
                        ) -> tuple[dict, bool]:
    """Export, verify every file in place against `reference` (each target's pruned weight),
    write the TensorRT recipe, and (in memory) measure parity. `plan` stamps a temporary
    checkpoint. Returns the stage detail and whether every file passed its verification."""
    config = ctx.checkpoint.config if ctx.checkpoint is not None else ctx.loaded.model.config
    exporter, reason = choose_exporter(stage.onnx_exporter, config, formats)
    exported, flavours = _write_files(ctx, exporter, formats, plan)
    detail = {"onnx_export_seconds": round(exported.seconds, 3), "onnx_exporter": exporter,
              "onnx_exporter_reason": reason}
    verification = _verify(ctx, exported.path, "onnx", exporter, targets, reference)
    ctx.onnx_export = (exported.path, verification)
    valid = verification.valid
    checks = {label: _verify(ctx, path, label, exporter, targets, reference)
              for label, path in flavours.items()}
    valid = valid and all(check.valid for check in checks.values())
    if "tensorrt" in formats:
        write_tensorrt_recipe(ctx.staging / ONNX_DIR, flavours["onnx-fp16"].name,
                              checks["onnx-fp16"])
    if stage.parity and ctx.checkpoint is None:
        with ctx.progress.task("parity (onnxruntime vs torch)", 1) as advance, \
                float32(ctx.loaded.model) as model:
            ctx.record.metrics.parity = measure_parity(
                model, ctx.loaded.tokenizer, exported.path, exported.layout,
                new_tokens=stage.parity_tokens,
                genai_folder=exported.path.parent if exporter == "genai" else None)
            advance(1)
    elif stage.parity:
        detail["parity_skipped"] = "a streamed model is never whole in PyTorch to compare with"
    evaluate = ctx.config.stage("evaluate")
    if evaluate is not None and evaluate.onnx_perplexity and ctx.checkpoint is None:
        detail["onnx_perplexity"] = _record_onnx_perplexity(ctx, exported.path)
    return detail, valid


def _record_onnx_perplexity(ctx: RunContext, path: Path) -> float:
    """The exported model's perplexity through onnxruntime on the evaluation windows, beside
    the PyTorch model's in the record (the evaluate stage asked for it; the file exists only
    now)."""
    windows = ctx.evaluation_windows
    with ctx.progress.task("perplexity (onnxruntime)", windows.shape[0]) as advance:
        value = onnx_perplexity(path, windows, ctx.config.data.evaluation.batch_size,
                                ctx.loaded.model.config, advance)
    measured = ctx.record.metrics.perplexity = ctx.record.metrics.perplexity or PerplexityMetrics()
    measured.onnx = value
    if measured.pruned is not None:
        measured.onnx_ratio_to_torch = value / measured.pruned
    return value
