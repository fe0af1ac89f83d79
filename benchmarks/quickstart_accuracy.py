"""The quickstart with task accuracy, through the real CLI in fresh processes, on a fresh cache:

    python benchmarks/quickstart_accuracy.py

1. `sample_configs/quickstart.yaml` as shipped (Wanda 2:4, lm-eval on the builtin task, the
   loose accuracy gate): its wall time, the share of it lm-eval took (dense + pruned), the exit
   code and the dense scores' cache miss.
2. The same pipeline with an accuracy gate 2:4 cannot meet (min_recovery 0.99 on the builtin
   task), without the export and benchmark stages: exit 3, the junit failure naming the task,
   and the dense scores taken from the cache (hit).

Results go to benchmarks/results/quickstart-accuracy.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

from wanda_export.model.default import default_model_dir
from wanda_export.paths import cache_root

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "sample_configs" / "quickstart.yaml"
LM_EVAL_STAGES = ("evaluate-dense-lm-eval",)


def run(config: dict, work: Path, name: str, env: dict) -> dict:
    """One CLI run of `config`: exit code, wall time, stage seconds, lm-eval and junit."""
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "wanda_export", "run", str(path), "--out",
                           str(work / name), "--quiet"], env=env, check=False)
    wall = time.perf_counter() - start
    report = json.loads((work / name / "report.json").read_text())
    stages = {stage["name"]: stage for stage in report["stages"]}
    evaluate = stages.get("evaluate", {}).get("detail", {})
    junit = ET.parse(work / name / "junit.xml").getroot()
    failures = {case.get("name"): case.find("failure").get("message")
                for case in junit.iter("testcase") if case.find("failure") is not None}
    return {"exit_code": done.returncode, "wall_s": wall,
            "dense_lm_eval": {key: stages["evaluate-dense-lm-eval"][key]
                              for key in ("cache", "seconds")},
            "evaluate_s": stages["evaluate"]["seconds"],
            "evaluate_perplexity": evaluate.get("perplexity"),
            "lm_eval": report["metrics"]["lm_eval"], "junit_failures": failures,
            "stages": {n: (s["cache"], s["seconds"]) for n, s in stages.items()}}


def main() -> None:
    """Run both and save the results."""
    default_model_dir()  # convert once, outside the timed runs
    shipped = yaml.safe_load(QUICKSTART.read_text())
    strict = {**shipped, "stages": [s for s in shipped["stages"]
                                    if not {"export", "benchmark"} & set(s)],
              "gates": {"accuracy": {"tasks": {"wanda_docstrings": {"min_recovery": 0.99}}}}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "cache").mkdir()
        (work / "cache" / "models").symlink_to(cache_root() / "models")
        env = {**os.environ, "WANDA_EXPORT_CACHE": str(work / "cache")}
        first = run(shipped, work, "quickstart", env)
        second = run(strict, work, "strict", env)
    result = {"quickstart": first, "strict_gate": second}
    out = ROOT / "benchmarks" / "results" / "quickstart-accuracy.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
