"""Where the memory of a prune of the real SmolLM2-135M goes, streamed vs in memory: resident
set size (VmRSS) read at each phase, each mode in a fresh process, with the allocator setting
streamed runs use (`memory.return_freed_memory`) in both.

    python benchmarks/memory_breakdown.py

Phases. In memory: the runtime (Python, torch, transformers, the tokenizer and the windows),
the loaded model, the peak during the prune. Streamed: the runtime, the skeleton, the peak
while layer 0's inputs are captured (the input embeddings resident), the peak over the layers
(one layer, the hidden states of every window, one layer's statistics), the head (lm_head and
norm, for perplexity). Sequential Wanda 2:4, 32 x 512 calibration windows, 2 threads.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

MIB = 2**20


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def worker(mode: str) -> dict:
    """Measure one mode in this process; return the RSS (MiB) at each phase."""
    import torch
    from transformers import AutoTokenizer

    from wanda_export.data.sources import TextSource, load_documents
    from wanda_export.data.windows import calibration_windows, evaluation_ids, split_windows
    from wanda_export.evaluate.streaming import stream_perplexity
    from wanda_export.memory import return_freed_memory
    from wanda_export.model.default import default_model_dir
    from wanda_export.model.loading import load_model
    from wanda_export.model.streaming import StreamedCheckpoint
    from wanda_export.prune import PruneSpec, prune_model
    from wanda_export.stream import forward
    from wanda_export.stream.prune import stream_prune

    torch.set_num_threads(2)
    return_freed_memory()
    directory = default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    windows = calibration_windows(tokenizer, load_documents(TextSource(kind="builtin"),
                                                            "calibration"), 32, 512, 0)
    evaluation = split_windows(evaluation_ids(tokenizer, load_documents(
        TextSource(kind="builtin"), "evaluation")), 512, 4)
    spec = PruneSpec(method="wanda", mode="sequential", pattern="2:4")
    phases = {"runtime": _rss()}
    peak = [0]

    def sample(*_args) -> None:
        peak[0] = max(peak[0], _rss())

    if mode == "memory":
        model = load_model(str(directory), device="cpu").model
        phases["model loaded"] = _rss()
        prune_model(model, spec, windows, on_progress=sample)
        phases["prune peak (per layer)"] = peak[0]
        return {name: round(value / MIB) for name, value in phases.items()}
    checkpoint = StreamedCheckpoint(directory)
    phases["skeleton"] = _rss()
    capture = forward.capture_layer0_inputs

    def measured_capture(*args, **kwargs):
        result = capture(*args, **kwargs)
        sample()
        return result

    forward.capture_layer0_inputs = measured_capture
    stream_prune(checkpoint, spec, windows, None, device="cpu", on_layer=sample)
    phases["capture + layers peak"] = peak[0]
    peak[0] = 0
    stream_perplexity(checkpoint, evaluation, 4, device="cpu", on_layer=sample)
    sample()
    phases["perplexity peak (head)"] = peak[0]
    return {name: round(value / MIB) for name, value in phases.items()}


def estimate() -> dict:
    """The tool's own estimate (memory.estimate_memory) for the same prune, in MiB."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from wanda_export.memory import WindowPass, estimate_memory
    from wanda_export.model.default import default_model_dir
    from wanda_export.model.layers import find_decoder_layers

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(default_model_dir()))
    calibration = WindowPass(windows=32, seqlen=512, batch_size=8, logits=False)
    result = estimate_memory(model, find_decoder_layers(model)[1], 4, passes=[calibration],
                             hessian=False, keep_dense_copy=False, shard_bytes=0)
    return {"in memory": round(result.in_memory / MIB), "streamed": round(result.streaming / MIB)}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2])))
        return
    results = {"estimate": estimate()}
    for mode in ("memory", "stream"):
        done = subprocess.run([sys.executable, __file__, "--worker", mode], check=True,
                              capture_output=True, text=True)
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
