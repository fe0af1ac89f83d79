"""SmolLM2-135M Wanda 2:4 exported by both ONNX exporters in one run: export time, peak RSS
(process high-water mark reset before each export; anonymous and file-backed parts), weights
verified 2:4 along K in the file, parity (logits, greedy through the KV cache, and through
onnxruntime-genai for its folder), and onnxruntime CPU latency of both graphs on the same shapes
(the benchmark stage's timing: fixed threads, warm-up, p50 / p95).

    python benchmarks/onnx_exporters.py [--threads 2] [--iterations 10]
    python benchmarks/onnx_exporters.py --write-checkpoint DIR   # the pruned checkpoint only
    python benchmarks/onnx_exporters.py --alone CHECKPOINT_DIR   # the builder alone
    python benchmarks/onnx_exporters.py --alone CHECKPOINT_DIR --save-alone NAME
        # ... and its result written to benchmarks/results/NAME.json
    python benchmarks/onnx_exporters.py --alone CHECKPOINT_DIR --with-model
        # ... with the model loaded in that process first, as a pipeline holds it

Results: benchmarks/results/onnx-exporters.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from onnx_export import _peak_rss, _peak_rss_reset  # benchmarks/ is on sys.path

from wanda_export.bench.onnx_latency import open_session, time_session
from wanda_export.bench.shapes import parse_shape
from wanda_export.data.sources import TextSource, load_documents
from wanda_export.data.windows import calibration_windows
from wanda_export.evaluate.parity import measure_parity
from wanda_export.export.onnx import export_onnx
from wanda_export.export.onnx_genai import export_genai
from wanda_export.export.onnx_verify import verify_onnx
from wanda_export.export.safetensors import export_checkpoint
from wanda_export.model.layers import find_targets
from wanda_export.model.loading import load_model
from wanda_export.model.mapped import MappedFile
from wanda_export.prune import PruneSpec, prune_model
from wanda_export.sparsity.pattern import Pattern

RESULTS = Path(__file__).parent / "results"


def _rss_anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("RssAnon")


SHAPES = ("prefill:1x128", "prefill:8x512", "decode:1x1@128")


def _latency(path: Path, args) -> dict:
    """p50 / p95 ms per shape on onnxruntime's CPU provider."""
    session = open_session(path, threads=args.threads)
    result = {}
    for shape in SHAPES:
        stats = time_session(session, parse_shape(shape), threads=args.threads, warmup=2,
                             iterations=args.iterations).stats
        result[shape] = {"p50_ms": stats.p50_ms, "p95_ms": stats.p95_ms}
    return result


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(name, export, model, tokenizer, args, genai_folder=None) -> dict:
    baseline = _rss_anon()
    _peak_rss_reset()
    cpu = _cpu_seconds()
    exported = export()
    cpu = _cpu_seconds() - cpu
    peak = _peak_rss()
    targets = find_targets(model)
    verification = verify_onnx(exported.path, targets, Pattern(2, 4))
    parity = measure_parity(model, tokenizer, exported.path, exported.layout, new_tokens=32,
                            genai_folder=genai_folder)
    return {"exporter": name, "export_seconds": exported.seconds, "export_cpu_seconds": cpu,
            "latency_cpu": _latency(exported.path, args),
            "peak_rss_bytes": peak, "rss_anon_before_bytes": baseline,
            "verified_layers": sum(c.valid for c in verification.layers.values()),
            "pruned_layers": len(targets), "parity": parity.to_dict()}


_ALONE = """
import json, resource, sys, threading
from pathlib import Path


def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {key: int(fields[key].split()[0]) * 1024
            for key in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}


from onnxruntime_genai.models import builder  # the runtime the export needs: torch, transformers
from wanda_export.export.onnx_genai import export_genai
if sys.argv[3:] == ["--with-model"]:  # held as the pipeline's export stage holds it
    from wanda_export.model.loading import load_model
    loaded = load_model(sys.argv[1], device="cpu")
imports = status()
peak, done = dict(imports), threading.Event()


def sample():
    while not done.wait(0.002):
        now = status()
        if now["VmRSS"] > peak["VmRSS"]:
            peak.update(now)


thread = threading.Thread(target=sample, daemon=True)
thread.start()
before = resource.getrusage(resource.RUSAGE_SELF)
exported = export_genai(Path(sys.argv[1]), Path(sys.argv[2]))
after = resource.getrusage(resource.RUSAGE_SELF)
done.set()
thread.join()
cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
end = status()
print(json.dumps({"seconds": exported.seconds, "cpu_seconds": cpu,
                  **{key: end[key] for key in ("VmHWM", "RssAnon", "RssFile")},
                  "imports_rss_bytes": imports["VmRSS"], "imports_VmHWM": imports["VmHWM"],
                  "peak_sampled_rss_bytes": peak["VmRSS"], "peak_RssAnon": peak["RssAnon"],
                  "peak_RssFile": peak["RssFile"]}))
"""


def checkpoint_bytes(directory: Path) -> int:
    """Bytes of the tensors of a safetensors checkpoint (read from the headers only)."""
    return sum(tensor.numel() * tensor.element_size()
               for path in sorted(directory.glob("*.safetensors"))
               for tensor in MappedFile(path).tensors.values())


def genai_alone(checkpoint: Path, out: Path, with_model: bool = False) -> dict:
    """The genai export in a fresh process: its wall and CPU time inside the builder; RSS after
    the imports it needs (the runtime; with `with_model`, also the checkpoint's model loaded
    first, as a pipeline holds it); peak RSS (VmHWM) and, at the highest RSS sampled every
    2 ms, its anonymous and file-backed (mapped checkpoint, libraries) parts; the same parts at
    the end; and the checkpoint's weights with the peak's ratio to them."""
    command = [sys.executable, "-c", _ALONE, str(checkpoint), str(out)]
    run = subprocess.run(command + ["--with-model"] * with_model,
                         capture_output=True, text=True, check=True)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    weights = checkpoint_bytes(checkpoint)
    return {**result, "weights_bytes": weights, "peak_rss_over_weights": result["VmHWM"] / weights,
            "export_peak_over_imports_bytes": result["VmHWM"] - result["imports_rss_bytes"]}


def pruned_checkpoint(directory: Path):
    """SmolLM2-135M pruned Wanda 2:4 (dense calibration, 32 x 512), written to `directory` as
    the pipeline writes it (safetensors); returns the pruned model and its tokenizer."""
    loaded = load_model(None, device="cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    windows = calibration_windows(tokenizer, load_documents(TextSource("builtin"),
                                  "calibration"), 32, 512, 0)
    prune_model(model, PruneSpec(pattern="2:4", mode="dense"), windows)
    export_checkpoint(model, tokenizer, directory, {})
    return model, tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--alone", type=Path, metavar="CHECKPOINT",
                        help="only the builder on CHECKPOINT, in a fresh process, then stop")
    parser.add_argument("--write-checkpoint", type=Path, metavar="DIR",
                        help="only write the pruned checkpoint to DIR (for --alone), then stop")
    parser.add_argument("--with-model", action="store_true",
                        help="with --alone: the model loaded in that process first")
    parser.add_argument("--save-alone", metavar="NAME",
                        help="with --alone: also write benchmarks/results/NAME.json")
    args = parser.parse_args()
    if args.alone is not None:
        with tempfile.TemporaryDirectory() as tmp:
            alone = genai_alone(args.alone, Path(tmp) / "onnx", args.with_model)
        text = json.dumps({"checkpoint": str(args.alone), "with_model": args.with_model,
                           **alone}, indent=2) + "\n"
        if args.save_alone:
            RESULTS.mkdir(exist_ok=True)
            (RESULTS / f"{args.save_alone}.json").write_text(text)
        print(text, end="")
        return
    torch.set_num_threads(args.threads)
    if args.write_checkpoint is not None:
        pruned_checkpoint(args.write_checkpoint)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, tokenizer = pruned_checkpoint(work / "model")
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        alone = genai_alone(work / "model", work / "genai-alone")
        genai = measure("genai", lambda: export_genai(work / "model", work / "genai"), model,
                        tokenizer, args, genai_folder=work / "genai")
        torch_path = measure("torch", lambda: export_onnx(model, work / "torch" / "model.onnx"),
                             model, tokenizer, args)
    result = {"weights_bytes": weights, "genai_alone": alone, "genai": genai,
              "torch": torch_path,
              "genai_alone_peak_rss_over_weights": alone["VmHWM"] / weights,
              "time_ratio_genai_over_torch": genai["export_seconds"]
              / torch_path["export_seconds"],
              "genai_peak_rss_over_weights": genai["peak_rss_bytes"] / weights,
              "note": "one process: the genai peak includes the loaded, pruned model held for "
                      "parity (the pipeline holds it too); see BENCHMARKS.md"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "onnx-exporters.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
