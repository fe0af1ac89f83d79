"""Loading a .gguf file with transformers, dequantized to plain weights that can be pruned and
saved (the offline default model ships as GGUF)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from wanda_export.model.checkpoint import check_gguf, check_loading_info
from wanda_export.model.load_errors import loading_errors

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def strip_quantizer(model: PreTrainedModel) -> None:
    """Drop the GGUF quantizer marker from a dequantized model so that it can be saved.

    The weights of a dequantized GGUF load are plain tensors, but transformers refuses to
    save_pretrained while the model still carries its quantizer or quantization_config.
    """
    if "hf_quantizer" in vars(model):
        del model.hf_quantizer
    if "quantization_method" in vars(model):
        del model.quantization_method
    if "is_quantized" in vars(model):
        model.is_quantized = False
    configs = {id(model.config): model.config}
    text_config = model.config.get_text_config(decoder=True)
    configs[id(text_config)] = text_config
    for config in configs.values():
        if hasattr(config, "quantization_config"):
            del config.quantization_config


def load_gguf(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a .gguf file with transformers, dequantized to plain ``dtype`` weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    check_gguf(path)
    with loading_errors(f"the GGUF file {path}", trust_remote_code=False):
        model, info = AutoModelForCausalLM.from_pretrained(
            path.parent,
            gguf_file=path.name,
            dtype=dtype,
            quantization_config=GgufConfig(dequantize=True),
            output_loading_info=True,
        )
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    check_loading_info(info, str(path), type(model).__name__)
    strip_quantizer(model)
    return model, tokenizer
