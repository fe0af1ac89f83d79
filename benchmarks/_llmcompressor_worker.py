"""Prune one model with llm-compressor's WandaPruningModifier or SparseGPTModifier; runs INSIDE
the peer venv.

Started by benchmarks/compare_llmcompressor.py as a subprocess (never imported by wanda_export,
whose venv cannot hold llm-compressor's pins). Everything it needs comes on argv:

    python _llmcompressor_worker.py --model-dir DIR --calibration IDS.safetensors \
        --targets TARGETS.json --mask-structure 0:0|2:4 --sparsity 0.5 --threads N \
        --method wanda|sparsegpt \
        --out-weights PRUNED.safetensors --out-json RESULT.json

It loads the checkpoint, builds a `datasets.Dataset` from the driver's calibration ids (already
tokenized, so llm-compressor applies no template, tokenization or preprocessing; the truncation
collator is a no-op because every row has exactly `max_seq_length` tokens; shuffling is off),
times ONLY the `oneshot` call, checks through a hook on the embedding that the model saw exactly
the driver's token rows, and saves the whole pruned state dict with safetensors.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--calibration", required=True, help="safetensors file with input_ids")
    parser.add_argument("--targets", required=True, help="JSON list of linear module names")
    parser.add_argument("--mask-structure", required=True, help='"0:0" (unstructured) or "N:M"')
    parser.add_argument("--sparsity", type=float, required=True)
    parser.add_argument("--method", choices=["wanda", "sparsegpt"], default="wanda")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--out-weights", required=True)
    parser.add_argument("--out-json", required=True)
    return parser.parse_args(argv)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "llmcompressor", "compressed-tensors", "datasets"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = "missing"
    return found


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    torch.set_num_threads(args.threads)

    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = load_file(args.calibration)["input_ids"].long()
    nsamples, seqlen = ids.shape
    with open(args.targets) as handle:
        targets = json.load(handle)

    # Pre-tokenized rows: llm-compressor returns a dataset that has `input_ids` as it is.
    dataset = Dataset.from_dict(
        {
            "input_ids": ids.tolist(),
            "attention_mask": torch.ones_like(ids).tolist(),
        }
    )
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)

    # Record the token rows that reach the embedding, to prove the calibration data is ours.
    seen: list[torch.Tensor] = []

    def record(_module, inputs):
        if inputs and isinstance(inputs[0], torch.Tensor) and not inputs[0].is_floating_point():
            seen.append(inputs[0].detach().to("cpu").clone())

    handle = model.get_input_embeddings().register_forward_pre_hook(record)

    common = {"sparsity": args.sparsity, "mask_structure": args.mask_structure,
              "targets": targets, "ignore": ["lm_head"]}
    if args.method == "sparsegpt":  # the paper's settings, as ours: 1% dampening, 128 columns
        recipe = SparseGPTModifier(**common, dampening_frac=0.01, block_size=128)
    else:
        recipe = WandaPruningModifier(**common)
    start = time.perf_counter()
    oneshot(
        model=model,
        processor=tokenizer,
        dataset=dataset,
        recipe=recipe,
        num_calibration_samples=nsamples,
        max_seq_length=seqlen,
        shuffle_calibration_samples=False,
        pipeline="sequential",
    )
    seconds = time.perf_counter() - start
    handle.remove()

    ours = {tuple(row.tolist()) for row in ids}
    rows = [tuple(row.tolist()) for batch in seen for row in batch.reshape(-1, batch.shape[-1])]
    tokens_match = set(rows) == ours and all(len(row) == seqlen for row in rows)

    state = {name: tensor.detach().to("cpu").contiguous().clone()
             for name, tensor in model.state_dict().items()}
    save_file(state, args.out_weights)

    result = {
        "seconds": seconds,
        "nsamples": nsamples,
        "seqlen": seqlen,
        "mask_structure": args.mask_structure,
        "sparsity": args.sparsity,
        "method": args.method,
        "threads": torch.get_num_threads(),
        "targets": len(targets),
        "embedding_rows_seen": len(rows),
        "distinct_rows_seen": len(set(rows)),
        "tokens_match": tokens_match,
        "oneshot_kwargs": {
            "num_calibration_samples": nsamples,
            "max_seq_length": seqlen,
            "shuffle_calibration_samples": False,
            "pipeline": "sequential",
            "batch_size": 1,
            "data_collator": "truncation",
        },
        "versions": versions(),
    }
    with open(args.out_json, "w") as out:
        json.dump(result, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
