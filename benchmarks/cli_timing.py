"""Wall time of the command line's quick commands, each in a fresh process:
`import wanda_export`, `wanda-export --help`, `validate` and `plan` of the quickstart pipeline
(no weights read; the built-in corpus already saved in the cache by an earlier run).

    python benchmarks/cli_timing.py [--runs 5] [--source DIR]

`--source` runs the code of another checkout (its folder goes first on PYTHONPATH), e.g. main's
(`git worktree add /tmp/main main`), so two versions are compared on the same machine in the
same session; they alternate run by run. Results: benchmarks/results/cli-timing.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "sample_configs" / "quickstart.yaml"
COMMANDS = {
    "import": ["-c", "import wanda_export"],
    "--help": ["-m", "wanda_export", "--help"],
    "validate": ["-m", "wanda_export", "validate", str(QUICKSTART)],
    "plan": ["-m", "wanda_export", "plan", str(QUICKSTART)],
}


def timed(source: Path, args: list[str]) -> float:
    """Seconds of one child `python ARGS` running `source`'s code (started in `source`: the
    current folder comes first on sys.path, before PYTHONPATH)."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, cwd=source, check=True,
                   capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--source", type=Path, action="append", default=[],
                        help="another checkout to time too (repeatable)")
    options = parser.parse_args()
    sources = [ROOT, *options.source]
    timed(ROOT, COMMANDS["plan"])  # saves the built-in corpus and warms the disk cache
    seconds: dict[str, dict[str, list[float]]] = {str(s): {c: [] for c in COMMANDS}
                                                 for s in sources}
    for _ in range(options.runs):
        for name, args in COMMANDS.items():
            for source in sources:  # alternating, so load changes hit every version alike
                seconds[str(source)][name].append(timed(source, args))
    results = {source: {name: {"median_s": round(statistics.median(values), 3),
                               "runs_s": [round(value, 3) for value in values]}
                        for name, values in by_command.items()}
               for source, by_command in seconds.items()}
    out = ROOT / "benchmarks" / "results" / "cli-timing.json"
    out.write_text(json.dumps({"runs": options.runs, "load_average": os.getloadavg(),
                               "results": results}, indent=2) + "\n")
    for source, by_command in results.items():
        print(source)
        for name, value in by_command.items():
            print(f"  {name:10s} median {value['median_s']:.2f} s")


if __name__ == "__main__":
    main()
