"""Write a random-weight Llama checkpoint larger than memory, one shard at a time (issue 11).

    python benchmarks/make_random_checkpoint.py /tmp/random-llama-5g --check
    python benchmarks/make_random_checkpoint.py OUT --tiny        # a few MB, for tests

The scale tests of the streaming pipeline need a checkpoint bigger than the memory they may use,
and none that size is on this machine. The tensor names, shapes and the shard plan come from
`AutoModelForCausalLM` built on the meta device and huggingface_hub's shard splitter; each shard
is then filled from one seeded generator (normal std 0.02, norms 1, so the forward pass stays
finite), saved with safetensors and freed, so peak memory is about one shard plus the runtime.
The tokenizer, vocabulary size and special token ids are the offline default model's, so the
pipeline can tokenise text. --size-gib is the size of the weights in the chosen dtype; the
number of decoder layers is the fewest that reach it unless --layers is given.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import resource
import sys
import time
from pathlib import Path

import torch
from accelerate import init_empty_weights
from accelerate.utils import convert_file_size_to_int
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig

INDEX = "model.safetensors.index.json"
INIT_STD = 0.02
DTYPES = ("float32", "bfloat16", "float16")
HEADER_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
TINY = {"hidden_size": 16, "intermediate_size": 32, "heads": 2, "kv_heads": 1, "layers": 2,
        "max_shard_size": "2MiB"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the options; --tiny swaps in the small shape, and explicit options still win."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="new or empty folder to write the checkpoint to")
    parser.add_argument("--size-gib", type=float, default=5.5,
                        help="weights size to reach, in GiB of --dtype (ignored with --layers)")
    parser.add_argument("--layers", type=int, help="number of decoder layers")
    parser.add_argument("--hidden-size", type=int, default=2048)
    parser.add_argument("--intermediate-size", type=int, default=5632)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--max-shard-size", default="512MiB", help='bytes, or "512MiB", "1GB"...')
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer-from", type=Path,
                        help="model folder whose tokenizer, vocabulary size and special token ids "
                             "to use (default: the offline default model)")
    parser.add_argument("--tiny", action="store_true", help=f"a few-MB model for tests: {TINY}")
    parser.add_argument("--check", action="store_true",
                        help="afterwards, check config and index against the model's parameters")
    if parser.parse_args(argv).tiny:
        parser.set_defaults(**TINY)
    args = parser.parse_args(argv)
    try:
        args.max_shard_bytes = convert_file_size_to_int(
            int(args.max_shard_size) if args.max_shard_size.isdigit() else args.max_shard_size)
    except ValueError as error:
        parser.error(f"--max-shard-size: {error}")
    if args.layers is not None and args.layers < 1:
        parser.error(f"--layers must be at least 1, got {args.layers}")
    if args.output.exists() and any(args.output.iterdir()):
        parser.error(f"{args.output} is not empty; choose a new folder")
    return args


def meta_model(config: LlamaConfig) -> torch.nn.Module:
    """The model with every parameter on the meta device: names and shapes, no memory."""
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, dtype=config.dtype)


def weights_bytes(config: LlamaConfig) -> int:
    """Bytes of the model's weights in its dtype, counted on the meta device."""
    return sum(t.numel() * t.element_size() for t in meta_model(config).state_dict().values())


def layers_for_size(config: LlamaConfig, target_bytes: float) -> int:
    """The fewest decoder layers (at least one) whose weights reach ``target_bytes``."""
    probe = copy.deepcopy(config)
    probe.num_hidden_layers = 0
    fixed = weights_bytes(probe)
    probe.num_hidden_layers = 1
    per_layer = weights_bytes(probe) - fixed
    return max(1, -(-int(target_bytes - fixed) // per_layer))


def random_tensor(name: str, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Norm weights are ones; every other weight is N(0, INIT_STD), drawn in float32."""
    if name.endswith("norm.weight"):
        return torch.ones(like.shape, dtype=like.dtype)
    values = torch.empty(like.shape, dtype=torch.float32).normal_(0, INIT_STD, generator=generator)
    return values.to(like.dtype)


def write_checkpoint(config: LlamaConfig, out: Path, max_shard_bytes: int, seed: int) -> dict:
    """Write the weights shard by shard and the index; return the index."""
    shapes = meta_model(config).state_dict()
    split = split_torch_state_dict_into_shards(shapes, max_shard_size=max_shard_bytes)
    generator = torch.Generator().manual_seed(seed)
    for number, (filename, names) in enumerate(split.filename_to_tensors.items(), 1):
        shard = {name: random_tensor(name, shapes[name], generator) for name in names}
        save_file(shard, out / filename, metadata={"format": "pt"})
        del shard  # before the next shard is drawn, or two would be in memory at once
        print(f"  shard {number}/{len(split.filename_to_tensors)}: {filename}", flush=True)
    index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
    (out / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return index


def header(path: Path) -> dict[str, tuple[torch.dtype, list[int]]]:
    """Dtype and shape of every tensor in a safetensors file, read from its header only."""
    with safe_open(path, framework="pt") as shard:
        slices = {name: shard.get_slice(name) for name in shard.keys()}  # noqa: SIM118
        return {name: (HEADER_DTYPES[s.get_dtype()], s.get_shape()) for name, s in slices.items()}


def check(out: Path) -> list[str]:
    """Problems with a written checkpoint: config, index and shard headers vs the model."""
    expected = meta_model(AutoConfig.from_pretrained(out)).state_dict()
    index = json.loads((out / INDEX).read_text())
    weight_map = index["weight_map"]
    problems = [f"missing from the index: {name}" for name in expected if name not in weight_map]
    problems += [f"unexpected in the index: {name}" for name in weight_map if name not in expected]
    files = sorted(set(weight_map.values()))
    problems += [f"the index names {f}, which does not exist" for f in files
                 if not (out / f).is_file()]
    headers = {f: header(out / f) if (out / f).is_file() else {} for f in files}
    total = 0
    for name, filename in weight_map.items():
        if name not in headers[filename]:
            problems.append(f"{filename} lacks {name}, which the index puts there")
            continue
        dtype, shape = headers[filename][name]
        total += math.prod(shape) * dtype.itemsize
        want = expected.get(name)
        if want is not None and (dtype, shape) != (want.dtype, list(want.shape)):
            problems.append(f"{filename}: {name} is {dtype} {shape}, the model wants "
                            f"{want.dtype} {list(want.shape)}")
    if total != index["metadata"]["total_size"]:
        problems.append(f"index total_size {index['metadata']['total_size']} != {total}, "
                        "the bytes of the tensors it maps")
    return problems


def main(argv: list[str] | None = None) -> None:
    """Write the checkpoint, print its size, time and peak memory, and optionally check it."""
    args = parse_args(argv)
    started = time.perf_counter()
    if args.tokenizer_from is None:
        from wanda_export.model.default import default_model_dir

        args.tokenizer_from = default_model_dir()
    source = AutoConfig.from_pretrained(args.tokenizer_from)
    try:
        config = LlamaConfig(
            hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
            num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
            num_hidden_layers=args.layers or 1, vocab_size=source.vocab_size,
            bos_token_id=source.bos_token_id, eos_token_id=source.eos_token_id,
            pad_token_id=source.pad_token_id, tie_word_embeddings=False, dtype=args.dtype,
            architectures=["LlamaForCausalLM"])
    except ValueError as error:
        sys.exit(f"invalid shape: {error}")
    if args.layers is None:
        config.num_hidden_layers = layers_for_size(config, args.size_gib * 2**30)
    args.output.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(args.output)
    print(f"writing {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
          f"intermediate {config.intermediate_size}, heads {config.num_attention_heads}/"
          f"{config.num_key_value_heads}, vocab {config.vocab_size}, {args.dtype}, "
          f"shards <= {args.max_shard_bytes} bytes, to {args.output}", flush=True)
    index = write_checkpoint(config, args.output, args.max_shard_bytes, args.seed)
    # after the shards: the tokenizer's ~100 MiB would otherwise add to the peak
    AutoTokenizer.from_pretrained(args.tokenizer_from).save_pretrained(args.output)
    size = index["metadata"]["total_size"]
    params = sum(t.numel() for t in meta_model(config).state_dict().values())
    print(f"{params / 1e9:.3f}B parameters, {size} bytes = {size / 2**30:.2f} GiB in "
          f"{len(set(index['weight_map'].values()))} shards, "
          f"{time.perf_counter() - started:.1f} s, "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    if args.check:
        problems = check(args.output)
        if problems:
            sys.exit("check failed:\n  " + "\n  ".join(problems))
        print("check: config loads; the index and shard headers match every model parameter")


if __name__ == "__main__":
    main()
