"""Engine benchmarks on the real SmolLM2-135M model and the offline stdlib corpus.

    python benchmarks/engine.py perplexity   # the perplexity table, both calibration modes
    python benchmarks/engine.py speed        # score+mask time; dense calibration vs bare forward
    python benchmarks/engine.py memory       # peak RSS of sequential calibration

Thread count is fixed (--threads, default 2); timings are medians. Results are printed and
written to benchmarks/results/engine-<command>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers

from wanda_export.calibrate.dense import collect_dense
from wanda_export.data.sources import TextSource, load_documents
from wanda_export.data.windows import calibration_windows, evaluation_ids, split_windows
from wanda_export.evaluate.perplexity import perplexity
from wanda_export.model.layers import find_targets, weight_out_in
from wanda_export.model.loading import load_model
from wanda_export.prune import PruneSpec, prune_model, prune_targets

RESULTS = Path(__file__).parent / "results"


def load(args):
    loaded = load_model(None, device="cpu")
    source = TextSource(kind="builtin")
    calib = calibration_windows(
        loaded.tokenizer, load_documents(source, "calibration"), args.nsamples, args.seqlen, 0
    )
    ids = evaluation_ids(loaded.tokenizer, load_documents(source, "evaluation"))
    return loaded.model, calib, split_windows(ids, args.seqlen, args.eval_windows)


def environment(args) -> dict:
    cpu = next((line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "threads": args.threads, "cpu": cpu, "nsamples": args.nsamples,
            "seqlen": args.seqlen, "eval_windows": args.eval_windows,
            "date": time.strftime("%Y-%m-%d")}


def run_perplexity(args) -> dict:
    base, calib, evaluation = load(args)
    rows = [{"case": "dense", "mode": "-", "perplexity": perplexity(base, evaluation, batch_size=4)}]
    cases = [("magnitude", "unstructured"), ("wanda", "unstructured"), ("magnitude", "4:8"),
             ("wanda", "4:8"), ("magnitude", "2:4"), ("wanda", "2:4")]
    for method, pattern in cases:
        for mode in (("sequential", "dense") if method == "wanda" else ("-",)):
            model = copy.deepcopy(base)
            spec = PruneSpec(method=method, sparsity=0.5, pattern=pattern,
                             mode=mode if mode != "-" else "dense")
            start = time.perf_counter()
            result = prune_model(model, spec, calib)
            seconds = time.perf_counter() - start
            ppl = perplexity(model, evaluation, batch_size=4)
            label = f"{method} {'50%' if pattern == 'unstructured' else pattern}"
            rows.append({"case": label, "mode": mode, "perplexity": ppl,
                         "sparsity": result.report.overall, "valid": result.report.valid,
                         "prune_seconds": seconds})
            print(json.dumps(rows[-1]), flush=True)
            del model
    return {"rows": rows}


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_speed(args) -> dict:
    base, calib, _ = load(args)
    targets = find_targets(base)
    stats = collect_dense(base, calib, targets, batch_size=8)
    original = {t.name: weight_out_in(t.module).clone() for t in targets}

    def restore():
        for t in targets:
            weight_out_in(t.module).copy_(original[t.name])

    out = {}
    for pattern in ("unstructured", "2:4", "4:8"):
        times = []
        for _ in range(args.repeats):
            restore()
            start = time.perf_counter()
            prune_targets(targets, PruneSpec(pattern=pattern), stats)
            times.append(time.perf_counter() - start)
        out[f"score_mask_{pattern}_s"] = statistics.median(times)
    restore()

    def bare_forward():
        with torch.inference_mode():
            for start in range(0, calib.shape[0], 8):
                base(input_ids=calib[start:start + 8], use_cache=False, logits_to_keep=1)

    def full_forward():
        with torch.inference_mode():
            for start in range(0, calib.shape[0], 8):
                base(input_ids=calib[start:start + 8], use_cache=False)

    bare_forward()  # warm-up
    out["bare_forward_s"] = _median_time(bare_forward, args.repeats)
    out["full_forward_with_logits_s"] = _median_time(full_forward, args.repeats)
    out["dense_calibration_s"] = _median_time(lambda: collect_dense(base, calib, targets, batch_size=8), args.repeats)
    out["dense_calibration_over_bare_forward"] = out["dense_calibration_s"] / out["bare_forward_s"]
    return out


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(field)


def run_memory(args) -> dict:
    base, calib, _ = load(args)
    weights = sum(p.numel() * p.element_size() for p in base.parameters())

    def reset_peak():
        Path("/proc/self/clear_refs").write_text("5")

    reset_peak()
    with torch.inference_mode():
        base(input_ids=calib[:8], use_cache=False, logits_to_keep=1)
    forward_peak = _rss_kib("VmHWM") * 1024
    loaded_rss = _rss_kib("VmRSS") * 1024
    reset_peak()
    model = base
    prune_model(model, PruneSpec(mode="sequential"), calib)
    sequential_peak = _rss_kib("VmHWM") * 1024
    hidden_states = calib.numel() * base.config.hidden_size * 4
    return {"weights_bytes": weights, "rss_after_load_bytes": loaded_rss,
            "peak_one_batch_forward_bytes": forward_peak,
            "peak_sequential_calibration_bytes": sequential_peak,
            "cached_hidden_states_bytes": hidden_states,
            "sequential_over_one_batch_forward": sequential_peak / forward_peak,
            "sequential_increase_over_loaded_bytes": sequential_peak - loaded_rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["perplexity", "speed", "memory"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"PERPLEXITY": run_perplexity, "SPEED": run_speed, "MEMORY": run_memory}[
        args.command.upper()](args)
    result["environment"] = environment(args)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"engine-{args.command}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
