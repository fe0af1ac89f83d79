"""RIA, N:M channel permutation, DSnoT and the ADMM weight update against Wanda and SparseGPT
on the real SmolLM2-135M model and the offline corpus (issue 15).

    python benchmarks/methods.py validate --part ria     # choose the settings on a validation
    python benchmarks/methods.py validate --part dsnot   # split of the calibration corpus
    python benchmarks/methods.py validate --part admm    # (never the evaluation text)
    python benchmarks/methods.py table      # the table: every row pruned from the same dense
                                            # statistics of the same calibration windows,
                                            # evaluated on the same evaluation windows
    python benchmarks/methods.py table --mode sequential --only 2:4   # the paper's setting

Validation windows: the calibration corpus (the same token stream the calibration windows are
drawn from) cut into non-overlapping windows, keeping only those that share no token position
with any calibration window. Both commands prune from one dense calibration pass (statistics
with X^T X and the channel sums, kept in the wanda-export cache under their real calibration
key, so it runs once); `validate` measures perplexity on the validation windows, `table` on the
evaluation windows with the settings `validate` chose (benchmarks/results/methods-validate-*.json).
Threads fixed (--threads, default 2).
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from engine import RESULTS, environment, load

from wanda_export.cache.keys import CalibrationKey
from wanda_export.cache.store import CALIBRATION, CacheStore
from wanda_export.calibrate.dense import collect_dense
from wanda_export.calibrate.stats import stats_from_tensors, stats_to_tensors
from wanda_export.data.sources import TextSource, load_documents
from wanda_export.data.windows import _JOIN, encode, token_digest
from wanda_export.evaluate.perplexity import perplexity
from wanda_export.model.default import default_model_dir
from wanda_export.model.fingerprint import model_fingerprint
from wanda_export.model.layers import find_targets
from wanda_export.paths import cache_root
from wanda_export.prune import PruneSpec, prune_model

VALIDATION_WINDOWS = 8
RIA_EXPONENTS = (0.5, 1.0)  # the paper's a, and Wanda's (the norm to the first power)
ADMM_ITERATIONS = (5, 20, 60)  # steps of the weight update (it converges: 20 is the default)
# (name, pattern, spec settings) of each validation case; method settings are the issue's.
PATTERNS = {"50%": {"sparsity": 0.5}, "2:4": {"pattern": "2:4"}, "70%": {"sparsity": 0.7}}
DSNOT_VARIANTS = {
    "paper (threshold 0.1, MLP left alone)": {},
    "threshold 0": {"refine_threshold": 0.0},
    "MLP refined too": {"refine_exclude": []},
    "threshold 0, MLP refined too": {"refine_threshold": 0.0, "refine_exclude": []},
}


def validation_windows(tokenizer, args) -> torch.Tensor:
    """Windows of the calibration token stream disjoint from every calibration window (the
    starts are redrawn exactly as `calibration_windows` draws them: same seed, same order)."""
    documents = load_documents(TextSource(kind="builtin"), "calibration")
    ids = encode(tokenizer, _JOIN.join(documents))
    rng = random.Random(0)
    starts = [rng.randint(0, len(ids) - args.seqlen - 1) for _ in range(args.nsamples)]
    taken = torch.zeros(len(ids), dtype=torch.bool)
    for start in starts:
        taken[start:start + args.seqlen] = True
    corpus = torch.tensor(ids)
    free = [s for s in range(0, len(ids) - args.seqlen + 1, args.seqlen)
            if not taken[s:s + args.seqlen].any()]
    if len(free) < VALIDATION_WINDOWS:
        raise SystemExit(f"only {len(free)} validation windows are disjoint from calibration")
    return torch.stack([corpus[s:s + args.seqlen] for s in free[:VALIDATION_WINDOWS]])


def dense_statistics(base, calib) -> dict:
    """Dense statistics of every target with X^T X and channel sums, from the wanda-export cache
    (keyed like a pipeline's dense calibration with hessian and means) or computed once."""
    targets = find_targets(base)
    fingerprint = model_fingerprint(default_model_dir())
    key = CalibrationKey(fingerprint, token_digest(calib), calib.shape[0], calib.shape[1], 0,
                         "float32", "dense", tuple(t.name for t in targets), hessian=True,
                         means=True)
    tensors, _hit = CacheStore(cache_root()).get_or_compute(
        CALIBRATION, key.digest(),
        lambda: stats_to_tensors(collect_dense(base, calib, targets, 8, hessian=True)),
        key.record())
    return stats_from_tensors(tensors)


def _case(base, spec: PruneSpec, calib, windows, stats=None) -> dict:
    """Prune a fresh copy with `spec` and measure its perplexity on `windows`."""
    model = copy.deepcopy(base)
    start = time.perf_counter()
    result = prune_model(model, spec, calib, stats=stats)
    seconds = time.perf_counter() - start
    row = {"perplexity": perplexity(model, windows, batch_size=4), "prune_seconds": seconds,
           "sparsity": result.report.overall, "valid": result.report.valid}
    if result.permuted:
        before = sum(p.before for p in result.permuted.values())
        after = sum(p.after for p in result.permuted.values())
        row["permutation_kept_score_gain"] = after / before - 1
    return row


def run_validate(args) -> dict:
    base, calib, _ = load(args)
    windows = validation_windows(_tokenizer(), args)
    stats = dense_statistics(base, calib)
    rows = []

    def case(label: str, pattern: str, **settings) -> dict:
        spec = PruneSpec(mode="dense", **PATTERNS[pattern], **settings)
        row = {"case": label, "pattern": pattern, "settings": settings,
               **_case(base, spec, calib, windows, stats)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        return row

    if args.part == "ria":
        for exponent in RIA_EXPONENTS:
            case("ria", "2:4", method="ria", exponent=exponent)
            for group in ("layer", "row"):
                case("ria", "50%", method="ria", group=group, exponent=exponent)
    elif args.part == "admm":
        for iterations in ADMM_ITERATIONS:
            case("wanda+admm", "2:4", update="admm", update_iterations=iterations)
    else:
        case("wanda", "2:4")
        for label, variant in DSNOT_VARIANTS.items():
            case(f"wanda+dsnot ({label})", "2:4", refine="dsnot", **variant)
    return {"validation_windows": int(windows.shape[0]), "rows": rows,
            "chosen": choose(rows)}


def choose(rows: list[dict]) -> dict:
    """Per pattern, the RIA settings and the DSnoT variant with the lowest validation
    perplexity (the DSnoT variant chosen at 2:4 serves 50% and 70% too)."""
    chosen: dict = {}
    for pattern in PATTERNS:
        ria = [r for r in rows if r["pattern"] == pattern and r["case"] == "ria"]
        if ria:
            chosen[f"ria {pattern}"] = min(ria, key=lambda r: r["perplexity"])["settings"]
        dsnot = [r for r in rows if r["pattern"] == pattern and "+dsnot" in r["case"]]
        if dsnot:
            best = min(dsnot, key=lambda r: r["perplexity"])["settings"]
            chosen[f"dsnot {pattern}"] = {k: v for k, v in best.items() if k.startswith("refine")}
    admm = [r for r in rows if r["case"] == "wanda+admm"]
    if admm:
        chosen["admm"] = min(admm, key=lambda r: r["perplexity"])["settings"]
    if "dsnot 2:4" in chosen:
        for pattern in ("50%", "70%"):
            chosen.setdefault(f"dsnot {pattern}", chosen["dsnot 2:4"])
    return chosen


def _tokenizer():
    """The default model's tokenizer (the one the calibration windows were tokenized with)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir())


TABLE = [  # (label, pattern, what the row adds to the base method)
    ("wanda", "50%", {}), ("ria", "50%", {"ria": True}),
    ("wanda+dsnot", "50%", {"dsnot": "wanda"}),
    ("ria+dsnot", "50%", {"ria": True, "dsnot": "ria"}),
    ("sparsegpt", "50%", {"method": "sparsegpt"}),
    ("wanda", "2:4", {}), ("ria", "2:4", {"ria": True}),
    ("wanda+permute", "2:4", {"permute": True}),
    ("ria+permute", "2:4", {"ria": True, "permute": True}),
    ("wanda+dsnot", "2:4", {"dsnot": "wanda"}),
    ("ria+dsnot", "2:4", {"ria": True, "dsnot": "ria"}),
    ("wanda+permute+dsnot", "2:4", {"permute": True, "dsnot": "wanda"}),
    ("ria+permute+dsnot", "2:4", {"ria": True, "permute": True, "dsnot": "ria"}),
    ("sparsegpt", "2:4", {"method": "sparsegpt"}),
    ("sparsegpt+permute", "2:4", {"method": "sparsegpt", "permute": True}),
    ("wanda", "70%", {}), ("wanda+dsnot", "70%", {"dsnot": "wanda"}),
    # the ADMM weight update after each kind of mask
    ("wanda+admm", "50%", {"admm": True}), ("sparsegpt+admm", "50%",
                                             {"method": "sparsegpt", "admm": True}),
    ("wanda+admm", "2:4", {"admm": True}), ("ria+admm", "2:4", {"ria": True, "admm": True}),
    ("wanda+permute+admm", "2:4", {"permute": True, "admm": True}),
    ("wanda+permute+dsnot+admm", "2:4", {"permute": True, "dsnot": "wanda", "admm": True}),
    ("sparsegpt+admm", "2:4", {"method": "sparsegpt", "admm": True}),
    ("sparsegpt+permute+admm", "2:4", {"method": "sparsegpt", "permute": True, "admm": True}),
    ("wanda+admm", "70%", {"admm": True}),
]


def table_spec(pattern: str, row: dict, chosen: dict, mode: str) -> PruneSpec:
    """The row's settings: RIA's and DSnoT's as chosen on the validation split."""
    settings: dict = {"mode": mode, **PATTERNS[pattern]}
    if row.get("ria"):
        settings |= chosen.get(f"ria {pattern}", {"method": "ria"})
    if "method" in row:
        settings["method"] = row["method"]
    if row.get("permute"):
        settings["permute"] = True
    if "dsnot" in row:
        settings |= {"refine": "dsnot", **chosen.get(f"dsnot {pattern}", {})}
    if row.get("admm"):
        settings |= chosen.get("admm", {"update": "admm"})
    return PruneSpec(**settings)


def run_table(args) -> dict:
    chosen: dict = {}
    for part in ("ria", "dsnot", "admm"):
        validated = RESULTS / f"methods-validate-{part}.json"
        if validated.exists():
            chosen |= json.loads(validated.read_text())["chosen"]
    base, calib, evaluation = load(args)
    stats = dense_statistics(base, calib) if args.mode == "dense" else None
    out_path = RESULTS / f"methods-table-{args.mode}{args.tag}.json"
    earlier = (json.loads(out_path.read_text()) if args.resume and out_path.exists()
               else {"dense": None, "rows": []})
    rows = [r for r in earlier["rows"] if r["case"] != "dense"]
    dense = perplexity(base, evaluation, batch_size=4) if args.dense else earlier["dense"]
    for label, pattern, extra in TABLE:
        if (args.only and pattern not in args.only) or (args.rows and label not in args.rows):
            continue
        if any(r["case"] == label and r["pattern"] == pattern for r in rows):
            continue
        spec = table_spec(pattern, extra, chosen, args.mode)
        row = {"case": label, "pattern": pattern,
               "spec": spec.model_dump(exclude_defaults=True),
               **_case(base, spec, calib, evaluation, stats)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        out_path.write_text(json.dumps({"dense": dense, "rows": rows}, indent=2) + "\n")
    return {"dense": dense, "rows": rows, "chosen": chosen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["validate", "table"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=64)
    parser.add_argument("--only", nargs="*", help="table: only these patterns (50%% 2:4 70%%)")
    parser.add_argument("--rows", nargs="*", help="table: only the rows of these labels")
    parser.add_argument("--tag", default="", help="table: suffix of the results file")
    parser.add_argument("--dense", action="store_true", help="table: measure the dense model too")
    parser.add_argument("--part", choices=["ria", "dsnot", "admm"], default="dsnot",
                        help="validate: RIA's settings, DSnoT's variant or the ADMM steps")
    parser.add_argument("--resume", action="store_true", help="table: keep the rows measured")
    parser.add_argument("--mode", choices=["dense", "sequential"], default="dense",
                        help="table: calibration mode of every row (dense: one shared pass)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"VALIDATE": run_validate, "TABLE": run_table}[args.command.upper()](args)
    result["environment"] = environment(args)
    result["command"] = "python benchmarks/methods.py " + " ".join(sys.argv[1:])
    RESULTS.mkdir(exist_ok=True)
    name = (f"validate-{args.part}" if args.command == "validate"
            else f"table-{args.mode}{args.tag}")
    (RESULTS / f"methods-{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
