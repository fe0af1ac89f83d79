"""PyTorch dense vs 2:4 semi-structured GEMMs of a Llama-7B MLP (fp16) on a CUDA GPU.

    python benchmarks/gpu_sparse24.py [--shapes prefill:1x128 prefill:1x512 prefill:8x512]

gate_proj/up_proj are 4096 -> 11008 (one shape, timed once), down_proj 11008 -> 4096. Each
prefill shape gives the GEMM's token count (batch x seqlen). Latency is p50/p95 per call after
warm-up; speedup = dense p50 / sparse p50. Results: benchmarks/results/gpu_sparse24.json.
Without a CUDA GPU of compute capability >= 8.0 it prints why and exits 0 without results.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from wanda_export.bench.runtimes import runtime_availability
from wanda_export.bench.shapes import parse_shapes
from wanda_export.bench.torch_latency import measure_linear_sparse24

RESULTS = Path(__file__).parent / "results" / "gpu_sparse24.json"
HIDDEN, INTERMEDIATE = 4096, 11008
GEMMS = {"gate_proj/up_proj": (INTERMEDIATE, HIDDEN), "down_proj": (HIDDEN, INTERMEDIATE)}
DEFAULT_SHAPES = ["prefill:1x128", "prefill:1x512", "prefill:8x512"]
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _table(rows: list[dict]) -> str:
    lines = ["| GEMM | shape | tokens | out x in | dense p50 ms | 2:4 p50 ms | speedup |",
             "|---|---|---:|---|---:|---:|---:|"]
    lines += [f"| {r['gemm']} | {r['shape']} | {r['tokens']} | {r['out_features']} x "
              f"{r['in_features']} | {r['dense']['p50_ms']:.4f} | {r['sparse']['p50_ms']:.4f} | "
              f"{r['speedup']:.2f}x |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES,
                        help="prefill shapes BATCHxSEQLEN (default: %(default)s)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--calls", type=int, default=10, help="GEMM calls per timed iteration")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    try:
        shapes = parse_shapes(args.shapes)
    except ValueError as error:
        parser.error(str(error))
    if any(shape.kind != "prefill" for shape in shapes):
        parser.error("only prefill shapes apply to a single GEMM")
    torch.set_num_threads(args.threads)
    print("shapes (batch x seqlen = GEMM tokens): "
          + ", ".join(f"{shape} = {shape.tokens}" for shape in shapes))
    availability = runtime_availability("torch-sparse24")
    if not availability.available:
        print(f"torch-sparse24 is unavailable here: {availability.reason}")
        print("nothing measured, no results written (needs a CUDA GPU with compute capability "
              ">= 8.0)")
        return
    rows = []
    for shape in shapes:
        for gemm, (out_features, in_features) in GEMMS.items():
            result = measure_linear_sparse24(out_features, in_features, shape.tokens,
                                             DTYPES[args.dtype], args.warmup, args.iterations,
                                             args.calls)
            rows.append({"gemm": gemm, "shape": str(shape), **result.to_dict()})
    print(_table(rows))
    record = {"rows": rows, "environment": {**availability.versions, "threads": args.threads,
                                            "warmup": args.warmup, "iterations": args.iterations,
                                            "calls_per_iteration": args.calls}}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
