"""In-memory vs streamed pruning of the real SmolLM2-135M model: wall time and peak RSS.

    python benchmarks/streaming.py            # load + prune: prune_model vs stream_prune
    python benchmarks/streaming.py --export   # ... + writing the pruned checkpoint

Sequential Wanda 2:4 on 32 x 512 calibration windows of the offline corpus, torch threads fixed
(--threads, default 2). Each run is a fresh subprocess (so its ru_maxrss is its own peak); the
two modes alternate, --repeats times each, and the medians are compared: wall time per phase,
and the process CPU time (user + sys) of the timed part, steadier on a shared machine.
In memory: load_model then prune_model (then export_checkpoint). Streamed: open the
checkpoint's skeleton then stream_prune, one decoder layer read at a time (into a ShardWriter
with 64 MiB shards, then finish, with --export; without, the pruned tensors are dropped).
Results are printed and written to benchmarks/results/streaming[-export].json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SHARD_BYTES = 64 * 2**20


def _vm_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def worker(mode: str, args) -> dict:
    """One timed run in this process; returns its phase times and memory."""
    import torch
    from transformers import AutoTokenizer

    from wanda_export.data.sources import TextSource, load_documents
    from wanda_export.data.windows import calibration_windows
    from wanda_export.export.safetensors import export_checkpoint
    from wanda_export.export.sharded import ShardWriter
    from wanda_export.model.default import default_model_dir
    from wanda_export.model.loading import load_model
    from wanda_export.model.streaming import StreamedCheckpoint
    from wanda_export.prune import PruneSpec, prune_model
    from wanda_export.stream.prune import stream_prune

    torch.set_num_threads(args.threads)
    directory = default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    windows = calibration_windows(tokenizer, load_documents(TextSource(kind="builtin"),
                                                            "calibration"),
                                  args.nsamples, args.seqlen, 0)
    spec = PruneSpec(method="wanda", mode="sequential", pattern="2:4")
    scratch = tempfile.TemporaryDirectory(prefix="wanda-stream-bench-")
    out = Path(scratch.name)
    seconds: dict[str, float] = {}
    baseline = _vm_rss()
    before = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = before.ru_utime + before.ru_stime
    started = time.perf_counter()
    if mode == "memory":
        model = load_model(str(directory), device="cpu").model
        seconds["load"] = time.perf_counter() - started
        result = prune_model(model, spec, windows)
        seconds["prune"] = time.perf_counter() - started - seconds["load"]
        if args.export:
            export_checkpoint(model, tokenizer, out, {"benchmark": "streaming"})
    else:
        checkpoint = StreamedCheckpoint(directory)
        seconds["load"] = time.perf_counter() - started
        writer = ShardWriter(out, SHARD_BYTES) if args.export else None
        result = stream_prune(checkpoint, spec, windows, writer, device="cpu")
        seconds["prune"] = time.perf_counter() - started - seconds["load"]
        if writer is not None:
            writer.finish({"benchmark": "streaming"}, checkpoint.config, tokenizer,
                          checkpoint.generation_config)
    seconds["total"] = time.perf_counter() - started
    if args.export:
        seconds["export"] = seconds["total"] - seconds["load"] - seconds["prune"]
    scratch.cleanup()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    seconds["cpu"] = usage.ru_utime + usage.ru_stime - cpu_before
    return {"mode": mode, "seconds": seconds, "overall_sparsity": result.report.overall,
            "baseline_rss_bytes": baseline,
            "peak_rss_bytes": usage.ru_maxrss * 1024}


def run(args) -> dict:
    """Alternate fresh-process runs of both modes; medians and the streamed / in-memory ratio."""
    runs: dict[str, list[dict]] = {"memory": [], "stream": []}
    flags = ["--threads", str(args.threads), "--nsamples", str(args.nsamples),
             "--seqlen", str(args.seqlen)] + (["--export"] if args.export else [])
    for repeat in range(args.repeats):
        for mode, results in runs.items():
            done = subprocess.run([sys.executable, __file__, "--worker", mode, *flags],
                                  check=True, capture_output=True, text=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"repeat {repeat + 1} {mode}: {results[-1]['seconds']}", file=sys.stderr)
    summary = {}
    for mode, results in runs.items():
        phases = results[0]["seconds"]
        summary[mode] = {
            **{f"{phase}_s": statistics.median(r["seconds"][phase] for r in results)
               for phase in phases},
            "peak_rss_mib": statistics.median(r["peak_rss_bytes"] for r in results) / 2**20,
            "baseline_rss_mib": statistics.median(r["baseline_rss_bytes"] for r in results)
            / 2**20,
            "overall_sparsity": results[0]["overall_sparsity"]}
    for key in ("total_s", "prune_s", "cpu_s", "peak_rss_mib"):
        summary[f"stream_over_memory_{key}"] = summary["stream"][key] / summary["memory"][key]
    return {"summary": summary, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=["memory", "stream"])
    parser.add_argument("--export", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from engine import environment

    args.eval_windows = 0
    result = {**run(args), "environment": environment(args)}
    RESULTS.mkdir(exist_ok=True)
    name = "streaming-export" if args.export else "streaming"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
