"""How close `update: admm` gets to the exact optimum of a fixed mask after k steps, on real
SmolLM2-135M layers (issue 15).

For one linear, the exact optimum keeps the masked entries at zero and solves one linear system
per output row on its kept inputs (with the update's 1% ridge); the script prints the output
error ||(W - W0) X^T||^2 of plain masking, of the optimum, and of `admm_update` after k steps,
relative to the optimum. Statistics: the methods benchmark's dense calibration pass (32 x 512
windows of the builtin corpus, from the wanda-export cache). Masks: Wanda 2:4.

    python benchmarks/admm_convergence.py [--layer 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from engine import load
from methods import dense_statistics

from wanda_export.model.layers import find_targets
from wanda_export.sparsity.admm import ADMM_DAMPENING, admm_update
from wanda_export.sparsity.mask import nm_mask
from wanda_export.sparsity.score import wanda_scores

STEPS = (5, 10, 20, 30, 60, 100)


def ridge_hessian(xtx: torch.Tensor) -> torch.Tensor:
    """X^T X plus the update's ridge (relative to each input's own norm), in float64."""
    hessian = xtx.double()
    return hessian + ADMM_DAMPENING * torch.diag(hessian.diagonal())


def exact_optimum(weight: torch.Tensor, hessian: torch.Tensor, pruned: torch.Tensor):
    """Per row, the kept weights that minimise the ridge-regularised output error."""
    solution = torch.zeros_like(weight, dtype=torch.float64)
    for row in range(weight.shape[0]):
        kept = (~pruned[row]).nonzero().squeeze(1)
        rhs = (weight[row].double() @ hessian)[kept]
        solution[row, kept] = torch.linalg.solve(hessian[kept][:, kept], rhs)
    return solution


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = argparse.Namespace(nsamples=32, seqlen=512, eval_windows=64)
    base, calib, _ = load(settings)
    stats = dense_statistics(base, calib)
    targets = {t.name: t for t in find_targets(base)}
    rows = []
    for kind in ("self_attn.q_proj", "mlp.down_proj"):
        name = f"model.layers.{args.layer}.{kind}"
        weight = targets[name].module.weight.detach()
        hessian = ridge_hessian(stats[name].xtx)
        pruned = nm_mask(wanda_scores(weight, stats[name].sumsq), 2, 4)

        def error(candidate, weight=weight, hessian=hessian):
            delta = candidate.double() - weight.double()
            return float(((delta @ hessian) * delta).sum())

        best = error(exact_optimum(weight, hessian, pruned))
        row = {"linear": name, "masked_over_optimum": error(weight * ~pruned) / best, "steps": {}}
        for steps in STEPS:
            start = time.perf_counter()
            updated = admm_update(weight, stats[name].xtx, pruned, steps)
            row["steps"][steps] = {"over_optimum": error(updated) / best - 1,
                                   "seconds": time.perf_counter() - start}
        rows.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
