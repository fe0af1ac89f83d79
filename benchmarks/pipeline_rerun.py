"""A pipeline run, then a rerun with only mask.sparsity changed (dense calibration).

    python benchmarks/pipeline_rerun.py [--threads 2] [--nsamples 32]

Both runs go through the real CLI in fresh processes (imports, model load and all), on a fresh
cache folder. Prints each run's wall time, its evaluation time (dense + pruned perplexity and
task accuracy) and
the ratio (second run minus evaluation) / (first run minus evaluation); the target is <= 0.20.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from wanda_export.model.default import default_model_dir
from wanda_export.paths import cache_root

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "sample_configs" / "quickstart.yaml"


def pipeline(sparsity: float, nsamples: int) -> dict:
    config = yaml.safe_load(QUICKSTART.read_text())
    config["data"]["calibration"]["nsamples"] = nsamples
    for stage in config["stages"]:
        if "mask" in stage:
            stage["mask"] = {"sparsity": sparsity, "pattern": "unstructured"}
    config["gates"] = {"sparsity": {"min": sparsity}}
    return config


def run(config: dict, work: Path, name: str, env: dict) -> dict:
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "wanda_export", "run", str(path), "--out",
                    str(work / name), "--quiet"], env=env, check=True)
    wall = time.perf_counter() - start
    report = json.loads((work / name / "report.json").read_text())
    stages = {stage["name"]: stage for stage in report["stages"]}
    evaluation = sum(stages[s]["seconds"] for s in ("evaluate-dense", "evaluate-dense-lm-eval",
                                                    "evaluate") if s in stages)
    return {"wall_s": wall, "evaluation_s": evaluation,
            "calibrate_cache": stages["calibrate"]["cache"],
            "stages": {n: (s["cache"], s["seconds"]) for n, s in stages.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nsamples", type=int, default=32, help="calibration windows of 512")
    args = parser.parse_args()
    default_model_dir()  # convert once, outside the timed runs
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # a fresh statistics cache, but the already-converted default model (not timed here)
        (work / "cache").mkdir()
        (work / "cache" / "models").symlink_to(cache_root() / "models")
        env = {**os.environ, "WANDA_EXPORT_CACHE": str(work / "cache"),
               "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        first = run(pipeline(0.5, args.nsamples), work, "first", env)
        second = run(pipeline(0.6, args.nsamples), work, "second", env)
    ratio = (second["wall_s"] - second["evaluation_s"]) / (first["wall_s"] - first["evaluation_s"])
    result = {"nsamples": args.nsamples, "threads": args.threads, "first": first,
              "second": second, "ratio_without_evaluation": ratio}
    out = ROOT / "benchmarks" / "results" / f"pipeline-rerun-{args.nsamples}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
