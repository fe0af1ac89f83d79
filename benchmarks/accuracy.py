"""Task accuracy of SmolLM2-135M-Instruct, dense and pruned, through lm-evaluation-harness on
the in-memory model (the pipeline's own path: `evaluate/harness.py`).

    python benchmarks/accuracy.py --threads 1 --limit 50 --nsamples 16   # BENCHMARKS.md

Tasks: the builtin offline task (docstring continuations from the held-out corpus) and a local
task (tests/data/lm_eval: 80 general-knowledge questions, 4 choices), the first `--limit` items
of each. Pruning: sequential calibration on the builtin corpus, `--nsamples` x 512 tokens.
Printed as a Markdown table and written to benchmarks/results/accuracy-limit-<N>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

from wanda_export.config.nested import LmEvalSettings
from wanda_export.data.sources import TextSource, load_documents
from wanda_export.data.windows import calibration_windows
from wanda_export.evaluate.builtin_task import BUILTIN_TASK
from wanda_export.evaluate.harness import resolve_tasks, score_tasks
from wanda_export.model.loading import load_model
from wanda_export.pipeline.accuracy import task_accuracy
from wanda_export.prune import PruneSpec, prune_model

RESULTS = Path(__file__).parent / "results"
LOCAL_TASKS = Path(__file__).parents[1] / "tests" / "data" / "lm_eval"
CASES = [("wanda 50%", {"method": "wanda", "sparsity": 0.5}),
         ("wanda 2:4", {"method": "wanda", "pattern": "2:4"}),
         ("sparsegpt 2:4", {"method": "sparsegpt", "pattern": "2:4"})]


def main() -> None:
    """Score the dense model and each pruned copy on both tasks; print and save the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="items per task (all)")
    parser.add_argument("--nsamples", type=int, default=32, help="calibration windows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(None, device="cpu")
    settings = LmEvalSettings(tasks=[BUILTIN_TASK, "wanda_facts"], include_path=str(LOCAL_TASKS),
                              limit=args.limit, batch_size=8)
    tasks = resolve_tasks(settings, Path.cwd(), Path(tempfile.mkdtemp()))
    calib = calibration_windows(loaded.tokenizer,
                                load_documents(TextSource(kind="builtin"), "calibration"),
                                args.nsamples, 512, 0)
    start = time.perf_counter()
    dense = score_tasks(loaded.model, loaded.tokenizer, tasks, settings)
    rows = [{"case": "dense", "seconds": time.perf_counter() - start, "limit": args.limit,
             "nsamples": args.nsamples, "threads": args.threads,
             **{task: {"metric": s.metric(task, None), "value": s.values[s.metric(task, None)],
                       "stderr": s.stderrs[s.metric(task, None)], "n": s.n}
                for task, s in dense.items()}}]
    print(json.dumps(rows[0]), flush=True)
    for name, fields in CASES:
        model = copy.deepcopy(loaded.model)
        prune_model(model, PruneSpec(mode="sequential", **fields), calib)
        start = time.perf_counter()
        pruned = score_tasks(model, loaded.tokenizer, tasks, settings)
        row = {"case": name, "seconds": time.perf_counter() - start}
        for task, scores in pruned.items():
            row[task] = task_accuracy(scores.metric(task, None), dense[task], scores).to_dict()
        rows.append(row)
        print(json.dumps(row), flush=True)
        del model
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"accuracy-limit-{args.limit or 'all'}.json"
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(markdown(rows))


def markdown(rows: list[dict]) -> str:
    """The BENCHMARKS.md table: per case and task, the score ± stderr and the recovery."""
    tasks = [key for key, value in rows[0].items() if isinstance(value, dict)]
    header = "| | " + " | ".join(f"{task} ({rows[0][task]['metric']}) | recovery"
                                  for task in tasks) + " |"
    lines = [header, "|---|" + "---:|---:|" * len(tasks)]
    for row in rows:
        cells = []
        for task in tasks:
            item = row[task]
            value = item.get("pruned", item.get("value"))
            stderr = item.get("pruned_stderr", item.get("stderr"))
            recovery = item.get("recovery")
            cells += [f"{value:.3f} ± {stderr:.3f}",
                      "" if recovery is None else f"{recovery:.3f}"]
        lines.append(f"| {row['case']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
