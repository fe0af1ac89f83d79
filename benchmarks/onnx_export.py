"""ONNX export of SmolLM2-135M, dense and Wanda 2:4: export time, peak memory, artifact sizes,
in-file verification, parity, and onnxruntime CPU latency (prefill 1 x 128, per decoded token).

    python benchmarks/onnx_export.py [--threads 2] [--iterations 20]

Dense and sparse are measured in the same run; latency is the median (p50) and p95 over the
timed iterations after warm-up. Results: benchmarks/results/onnx-export.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from wanda_export.data.sources import TextSource, load_documents
from wanda_export.data.windows import calibration_windows
from wanda_export.evaluate.parity import measure_parity, onnx_session, onnx_step
from wanda_export.export.onnx import convert_to_fp16, export_onnx
from wanda_export.export.onnx_verify import verify_onnx
from wanda_export.model.layers import find_targets
from wanda_export.model.loading import load_model
from wanda_export.prune import PruneSpec, prune_model
from wanda_export.sparsity.pattern import Pattern

RESULTS = Path(__file__).parent / "results"


def _peak_rss_reset() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM")


def _latency(session, layout, iterations: int) -> dict:
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 1000, (1, 128))
    for _ in range(3):
        logits, past = onnx_step(session, layout, prompt, None, 0)
    prefill = []
    for _ in range(iterations):
        start = time.perf_counter()
        logits, past = onnx_step(session, layout, prompt, None, 0)
        prefill.append(time.perf_counter() - start)
    token = np.array([[int(logits[0, -1].argmax())]])
    decode = []
    for step in range(iterations + 3):
        start = time.perf_counter()
        onnx_step(session, layout, token, past, 128)  # a fixed past of 128: steady state
        if step >= 3:
            decode.append(time.perf_counter() - start)

    def summary(times):
        ms = sorted(t * 1000 for t in times)
        return {"p50_ms": statistics.median(ms), "p95_ms": ms[int(0.95 * (len(ms) - 1))],
                "mean_ms": statistics.fmean(ms), "iterations": len(ms)}

    return {"prefill_1x128": summary(prefill), "decode_per_token_past128": summary(decode)}


def measure(label, model, tokenizer, work: Path, args, pattern: Pattern) -> dict:
    path = work / label / "model.onnx"
    _peak_rss_reset()
    exported = export_onnx(model, path)
    peak = _peak_rss()
    fp16 = convert_to_fp16(path, work / label / "model.fp16.onnx")
    targets = find_targets(model)
    verification = verify_onnx(path, targets, pattern)
    verification16 = verify_onnx(fp16, targets, pattern)
    parity = measure_parity(model, tokenizer, path, exported.layout, new_tokens=32,
                            threads=args.threads)
    session = onnx_session(path, threads=args.threads)
    return {
        "export_seconds": exported.seconds, "export_peak_rss_bytes": peak,
        "onnx_bytes": sum(f.stat().st_size for f in path.parent.glob("model.onnx*")),
        "onnx_fp16_bytes": fp16.stat().st_size,
        "verified_layers": len(verification.layers), "verified_valid": verification.valid,
        "fp16_verified_valid": verification16.valid,
        "parity": parity.to_dict(), "latency_cpu": _latency(session, exported.layout,
                                                             args.iterations),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--nsamples", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(None, device="cpu")
    dense = loaded.model
    sparse = copy.deepcopy(dense)
    windows = calibration_windows(loaded.tokenizer, load_documents(TextSource("builtin"),
                                  "calibration"), args.nsamples, 512, 0)
    prune_model(sparse, PruneSpec(pattern="2:4", mode="dense"), windows)
    with tempfile.TemporaryDirectory() as tmp:
        result = {
            "dense": measure("dense", dense, loaded.tokenizer, Path(tmp), args,
                             Pattern()),
            "wanda_2of4": measure("sparse", sparse, loaded.tokenizer, Path(tmp), args,
                                  Pattern(2, 4)),
        }
    for shape in ("prefill_1x128", "decode_per_token_past128"):
        result[f"sparse_over_dense_p50_{shape}"] = (
            result["wanda_2of4"]["latency_cpu"][shape]["p50_ms"]
            / result["dense"]["latency_cpu"][shape]["p50_ms"])
    result["environment"] = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                             "threads": args.threads, "provider": "CPUExecutionProvider"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "onnx-export.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
