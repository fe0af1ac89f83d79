"""Prefill and decode tokens/s of SmolLM2-135M through onnxruntime-genai, dense vs Wanda 2:4.

    python benchmarks/genai_latency.py [--threads 2] [--warmup 3] [--iterations 20] [--rounds 2]
        [--shapes prefill:1x128 prefill:8x512 decode:1x1@128] [--output genai-latency.json]

Prunes the default model (Wanda 2:4, dense calibration), saves it, builds the onnxruntime-genai
folder with the genai model builder (fp32, CPU; offline), writes its dense twin (the same files
with the unpruned weights back in place) and times both through og.Generator with the benchmark
stage's code (wanda_export.bench.genai_latency). Dense and sparse alternate, `--rounds` times
(which goes first alternates too), each a full warm-up + timed series; the median of the rounds'
p50 is reported with every round's p50, and `within_noise` when the two ranges of round p50s
overlap. Also the last-position logits of each folder against PyTorch (dense twin vs
the dense model, sparse vs the pruned one). Results: benchmarks/results/<--output>.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from wanda_export.bench.dense_twin import write_dense_genai_twin
from wanda_export.bench.genai_latency import open_genai_model, time_genai
from wanda_export.bench.runtimes import versions
from wanda_export.bench.shapes import parse_shapes, tokens_per_second
from wanda_export.data.sources import TextSource, load_documents
from wanda_export.data.windows import calibration_windows
from wanda_export.model.layers import find_targets, weight_out_in
from wanda_export.model.loading import load_model
from wanda_export.prune import PruneSpec, prune_model

RESULTS = Path(__file__).parent / "results"
SHAPES = ["prefill:1x128", "prefill:8x512", "decode:1x1@128"]


def build_genai(checkpoint: Path, out: Path) -> float:
    """Run the genai model builder on a local checkpoint (fp32, CPU, hub disabled); seconds."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    start = time.perf_counter()
    built = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i",
                            str(checkpoint), "-o", str(out), "-p", "fp32", "-e", "cpu", "-c",
                            str(out.parent / "builder-cache")], env=env, capture_output=True,
                           text=True, check=False)
    if built.returncode:
        sys.exit(f"the genai model builder failed:\n{built.stderr[-4000:]}")
    return time.perf_counter() - start


def last_logits_diff(folder: Path, model, prompt: np.ndarray, threads: int) -> float:
    """Max |genai - torch| over the last position's logits of `prompt`."""
    import onnxruntime_genai as og

    opened = open_genai_model(folder, threads=threads)
    params = og.GeneratorParams(opened.model)
    params.set_search_options(max_length=prompt.shape[1] + 1, batch_size=prompt.shape[0])
    generator = og.Generator(opened.model, params)
    generator.append_tokens(prompt)
    genai = generator.get_logits()[:, -1]
    with torch.no_grad():
        reference = model(torch.from_numpy(prompt.astype(np.int64))).logits[:, -1].numpy()
    return float(np.abs(genai - reference).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--shapes", nargs="+", default=SHAPES)
    parser.add_argument("--output", default="genai-latency.json", help="file in results/")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(None, device="cpu")
    dense_model = copy.deepcopy(loaded.model)
    sparse_model = loaded.model
    windows = calibration_windows(loaded.tokenizer, load_documents(TextSource("builtin"),
                                  "calibration"), args.nsamples, 512, 0)
    prune_model(sparse_model, PruneSpec(pattern="2:4", mode="dense"), windows)
    targets = find_targets(sparse_model)
    pruned = {t.name: weight_out_in(t.module) for t in targets}
    dense = {t.name: weight_out_in(t.module) for t in find_targets(dense_model)}
    result: dict = {"settings": vars(args), "versions": versions()}
    with tempfile.TemporaryDirectory(prefix="wanda-genai-") as tmp:
        work = Path(tmp)
        sparse_model.save_pretrained(work / "pruned")
        loaded.tokenizer.save_pretrained(work / "pruned")
        result["builder_seconds"] = build_genai(work / "pruned", work / "sparse")
        start = time.perf_counter()
        write_dense_genai_twin(work / "sparse", "model.onnx", pruned, dense, work / "dense")
        result["dense_twin_seconds"] = time.perf_counter() - start
        prompt = np.random.default_rng(0).integers(3, 1000, (1, 32)).astype(np.int32)
        result["logits_max_abs_diff"] = {
            "dense_twin_vs_torch_dense": last_logits_diff(work / "dense", dense_model, prompt,
                                                          args.threads),
            "sparse_vs_torch_pruned": last_logits_diff(work / "sparse", sparse_model, prompt,
                                                       args.threads)}
        models = {variant: open_genai_model(work / variant, threads=args.threads)
                  for variant in ("dense", "sparse")}
        rounds: dict = {str(shape): {"dense": [], "sparse": []}
                        for shape in parse_shapes(args.shapes)}
        for round_ in range(args.rounds):
            order = list(models.items())[:: 1 if round_ % 2 == 0 else -1]  # alternate who is first
            for shape in parse_shapes(args.shapes):
                for variant, opened in order:
                    measured = time_genai(opened, shape, warmup=args.warmup,
                                          iterations=args.iterations)
                    rounds[str(shape)][variant].append(measured.stats.to_dict())
    result["shapes"] = {}
    for text, by_variant in rounds.items():
        shape = parse_shapes([text])[0]
        row = {}
        for variant, series in by_variant.items():
            p50 = statistics.median(stats["p50_ms"] for stats in series)
            row[variant] = {"p50_ms": p50, "tokens_per_second": tokens_per_second(shape, p50),
                            "round_p50_ms": [stats["p50_ms"] for stats in series],
                            "round_p95_ms": [stats["p95_ms"] for stats in series]}
        row["speedup"] = row["dense"]["p50_ms"] / row["sparse"]["p50_ms"]
        dense_range, sparse_range = (row[v]["round_p50_ms"] for v in ("dense", "sparse"))
        row["within_noise"] = (max(min(dense_range), min(sparse_range))
                               <= min(max(dense_range), max(sparse_range)))  # ranges overlap
        result["shapes"][text] = row
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print("| shape | dense tokens/s | sparse tokens/s | dense p50 ms (rounds) | "
          "sparse p50 ms (rounds) | speedup | within noise |")
    print("|---|---:|---:|---|---|---:|---|")
    for text, row in result["shapes"].items():
        rounds_text = {v: ", ".join(f"{ms:.2f}" for ms in row[v]["round_p50_ms"])
                       for v in ("dense", "sparse")}
        print(f"| {text} | {row['dense']['tokens_per_second']:.0f} | "
              f"{row['sparse']['tokens_per_second']:.0f} | {rounds_text['dense']} | "
              f"{rounds_text['sparse']} | {row['speedup']:.3f} | {row['within_noise']} |")


if __name__ == "__main__":
    main()
