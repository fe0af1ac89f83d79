"""The README's "memory you need" table: wanda-export's own estimate (wanda_export.memory) for
Llama-3-8B and Llama-3-70B shapes, in memory vs streaming, fp32 and bf16, on the meta device
(no weights). The estimate is checked against measured peaks on SmolLM2 and on the 5.6 GiB
random checkpoint in BENCHMARKS.md.

    python benchmarks/memory_table.py
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from wanda_export.memory import estimate_memory
from wanda_export.model.layers import find_decoder_layers

SHAPES = {
    "Llama-3-8B": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256},
    "Llama-3-70B": {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                    "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256},
}
GIB = 2**30


def main() -> None:
    print("| model | dtype | method | in memory | streaming | largest layer |")
    print("|---|---|---|---:|---:|---:|")
    for name, shape in SHAPES.items():
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(LlamaConfig(**shape))
        layers = find_decoder_layers(model)[1]
        for dtype, size in (("float32", 4), ("bfloat16", 2)):
            for method, hessian in (("wanda", False), ("sparsegpt", True)):
                estimate = estimate_memory(model, layers, size, windows=128, seqlen=2048,
                                           batch_size=1, hessian=hessian, keep_dense_copy=False,
                                           shard_bytes=2 * GIB)
                print(f"| {name} | {dtype} | {method} | {estimate.in_memory / GIB:.1f} GiB | "
                      f"{estimate.streaming / GIB:.1f} GiB | "
                      f"{estimate.largest_layer / GIB:.2f} GiB |")


if __name__ == "__main__":
    main()
