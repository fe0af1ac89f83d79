"""The README's "memory you need" table: wanda-export's own estimate (wanda_export.memory) for
Llama-3-8B and Llama-3-70B shapes, in memory vs streaming, fp32 and bf16, on the meta device
(no weights): host memory for a CPU run, and for a GPU run the GPU's part (the host then holds
the runtime, the hidden states and the shard being written). 128 x 2048 calibration windows,
64 x 2048 evaluation windows, batch 1. The estimate is checked against measured peaks on SmolLM2 and on the 5.6 GiB
random checkpoint in BENCHMARKS.md.

    python benchmarks/memory_table.py
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from wanda_export.memory import WindowPass, estimate_memory
from wanda_export.model.layers import find_decoder_layers

SHAPES = {
    "Llama-3-8B": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256},
    "Llama-3-70B": {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                    "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256},
}
GIB = 2**30


def main() -> None:
    print("| model | dtype | method | CPU in memory | CPU streaming | GPU in memory "
          "| GPU streaming | largest layer |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    passes = [WindowPass(windows=128, seqlen=2048, batch_size=1, logits=False),
              WindowPass(windows=64, seqlen=2048, batch_size=1, logits=True)]
    for name, shape in SHAPES.items():
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(LlamaConfig(**shape))
        layers = find_decoder_layers(model)[1]
        for dtype, size in (("float32", 4), ("bfloat16", 2)):
            for method, hessian in (("wanda", False), ("sparsegpt", True)):
                estimate = estimate_memory(model, layers, size, passes=passes, hessian=hessian,
                                           keep_dense_copy=False, shard_bytes=2 * GIB)
                sizes = (estimate.in_memory, estimate.streaming, estimate.in_memory_on_device,
                         estimate.streaming_on_device)
                cells = " | ".join(f"{value / GIB:.1f} GiB" for value in sizes)
                print(f"| {name} | {dtype} | {method} | {cells} | "
                      f"{estimate.largest_layer / GIB:.2f} GiB |")


if __name__ == "__main__":
    main()
