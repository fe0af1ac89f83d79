"""Dense vs 2:4 latency of the default model on every runtime, through the benchmark stage.

    .venv/bin/python benchmarks/latency.py                      # benchmarks/latency-2of4.yaml
    .venv/bin/python benchmarks/latency.py --config other.yaml

Runs the pipeline (prune, export, benchmark), prints the stage's comparison as a Markdown table
and writes benchmarks/results/latency-<device>.json (the report's `metrics.latency`). Run it
alone: the timings share the machine with nothing else.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from wanda_export.config import load_config
from wanda_export.pipeline.runner import run_pipeline

HERE = Path(__file__).parent


def table(latency: dict) -> str:
    """The comparison rows as Markdown, then the unavailable runtimes."""
    header = ("| runtime | shape | dense p50 ms | sparse p50 ms | dense p95 ms | sparse p95 ms "
              "| speedup |")
    lines = [header, "|---|---|---:|---:|---:|---:|---:|"]
    for row in latency["comparison"]["rows"]:
        lines.append(f"| {row['runtime']} | {row['shape']} | {row['dense_p50_ms']:.2f} | "
                     f"{row['sparse_p50_ms']:.2f} | {row['dense_p95_ms']:.2f} | "
                     f"{row['sparse_p95_ms']:.2f} | {row['speedup']:.3f} |")
    lines += [f"- {name}: unavailable ({runtime['reason']})"
              for name, runtime in latency["runtimes"].items() if not runtime["available"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=HERE / "latency-2of4.yaml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wanda-latency-") as tmp:
        record = run_pipeline(load_config(args.config), Path(tmp) / "out")
    latency = record.metrics.latency.to_dict()
    device = "gpu" if any(r["runtime"] != "onnxruntime-cpu" and r.get("device") == "cuda"
                          for r in latency["results"]) else "cpu"
    output = HERE / "results" / f"latency-{device}.json"
    output.write_text(json.dumps({"config": str(args.config.name), "model": record.model,
                                  "latency": latency}, indent=2) + "\n")
    print(table(latency))
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
