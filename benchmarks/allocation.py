"""Layer-wise allocation and SparseGPT on the real SmolLM2-135M model and the offline corpus.

    python benchmarks/allocation.py table   # perplexity at 50/60/70%: wanda and magnitude x
                                            # uniform/alphapruning/owl, sparsegpt uniform
    python benchmarks/allocation.py sweep   # wanda 70%: AlphaPruning epsilon and OWL lambda
                                            # sweeps, and the spread of the block alphas

Every case prunes a fresh copy of the dense model sequentially (the papers' setting) on the same
calibration windows and is evaluated on the same evaluation windows. The ESD alphas and OWL's
dense statistics are measured once and shared by the cases that use them (they do not depend
on the sparsity). Threads are fixed (--threads, default 2). Results are printed as a Markdown
table and written to benchmarks/results/allocation-<command>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from engine import RESULTS, environment, load

from wanda_export.allocation import allocate, esd_alphas, target_groups
from wanda_export.calibrate.dense import collect_dense
from wanda_export.evaluate.perplexity import perplexity
from wanda_export.model.layers import find_targets
from wanda_export.prune import PruneSpec, prune_model


class Shared:
    """The dense model, its windows, and the sparsity-independent allocation inputs."""

    def __init__(self, args) -> None:
        self.model, self.calib, self.evaluation = load(args)
        targets = find_targets(self.model)
        start = time.perf_counter()
        self.alphas = esd_alphas(targets, "ks")
        self.alpha_seconds = time.perf_counter() - start
        self.dense_stats = collect_dense(self.model, self.calib, targets, batch_size=8)
        self.dense_ppl = perplexity(self.model, self.evaluation, batch_size=4)

    def run(self, **fields) -> dict:
        """Prune a copy with PruneSpec(**fields); its perplexity, sparsity and timings."""
        model = copy.deepcopy(self.model)
        spec = PruneSpec(mode="sequential", **fields)
        allocation = allocate(find_targets(model), spec, self.dense_stats, self.alphas)
        start = time.perf_counter()
        result = prune_model(model, spec, self.calib, allocation=allocation)
        seconds = time.perf_counter() - start
        ratios = list(allocation.ratios.values())
        row = {**fields, "perplexity": perplexity(model, self.evaluation, batch_size=4),
               "overall": result.report.overall, "valid": result.report.valid,
               "prune_seconds": seconds, "ratio_min": min(ratios), "ratio_max": max(ratios)}
        print(json.dumps(row), flush=True)
        return row


def block_alphas(shared: Shared) -> list[float]:
    """The per-block mean alpha, in block order (what the block-wise allocation maps)."""
    groups = target_groups(find_targets(shared.model), "block")
    blocks: dict = {}
    for name, alpha in shared.alphas.items():
        blocks.setdefault(groups[name], []).append(alpha)
    return [statistics.fmean(values) for values in blocks.values()]


def run_table(args) -> dict:
    shared = Shared(args)
    rows = []
    for sparsity in (0.5, 0.6, 0.7):
        for method in ("wanda", "magnitude"):
            for allocation in ("uniform", "alphapruning", "owl"):
                rows.append(shared.run(method=method, sparsity=sparsity, allocation=allocation))
        rows.append(shared.run(method="sparsegpt", sparsity=sparsity))
    return {"dense_perplexity": shared.dense_ppl, "alpha_seconds": shared.alpha_seconds,
            "rows": rows, "table": markdown(rows, shared.dense_ppl)}


def run_sweep(args) -> dict:
    shared = Shared(args)
    rows = [shared.run(method="wanda", sparsity=0.7)]
    rows += [shared.run(method="wanda", sparsity=0.7, allocation="alphapruning", epsilon=eps)
             for eps in (0.05, 0.1, 0.2, 0.3)]
    rows += [shared.run(method="wanda", sparsity=0.7, allocation="alphapruning", epsilon=0.2,
                        granularity="matrix")]
    rows += [shared.run(method="wanda", sparsity=0.7, allocation="owl", owl_lambda=lam)
             for lam in (0.04, 0.08, 0.15)]
    alphas = block_alphas(shared)
    return {"dense_perplexity": shared.dense_ppl, "block_alphas": alphas,
            "block_alpha_min": min(alphas), "block_alpha_max": max(alphas), "rows": rows}


def markdown(rows: list[dict], dense_ppl: float) -> str:
    """Perplexity per (method, allocation) row and sparsity column."""
    columns = sorted({row["sparsity"] for row in rows})
    keys = list(dict.fromkeys((row["method"], row.get("allocation", "uniform")) for row in rows))
    lines = ["| method | allocation | " + " | ".join(f"{s:.0%}" for s in columns) + " |",
             "|---|---|" + "---:|" * len(columns)]
    for method, allocation in keys:
        cells = [next((f"{r['perplexity']:.2f}" for r in rows if r["method"] == method
                       and r.get("allocation", "uniform") == allocation and r["sparsity"] == s),
                      "-") for s in columns]
        lines.append(f"| {method} | {allocation} | " + " | ".join(cells) + " |")
    lines.append(f"| dense | - | {dense_ppl:.2f} (all) |" + " |" * (len(columns) - 1))
    table = "\n".join(lines)
    print(table)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["table", "sweep"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"TABLE": run_table, "SWEEP": run_sweep}[args.command.upper()](args)
    result["environment"] = environment(args)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"allocation-{args.command}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
