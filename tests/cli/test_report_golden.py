"""report.json is a contract other tools read: a tiny pipeline that fills every section (mask,
verify, perplexity, lm-eval accuracy on a local task, ONNX perplexity, ONNX export with parity and an fp16 copy, benchmark on two runtimes, every
CPU-measurable gate) must publish the same key tree (paths, nesting and value types; list items
merged), the same gate names in the same order, and the same summary.md section headings as the
checked-in expectation in tests/golden/report_keys.json.

After a deliberate contract change, rewrite the expectation with
`WANDA_EXPORT_UPDATE_GOLDEN=1 python -m pytest tests/cli/test_report_golden.py` and commit it
with a message that says what changed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import invoke

GOLDEN = Path(__file__).parents[1] / "golden" / "report_keys.json"
UPDATE = "WANDA_EXPORT_UPDATE_GOLDEN"
# objects keyed by data (layer, runtime, file names): their entries are merged under "*"
DATA_KEYED = {"sparsity.layers", "sparsity.allocation.layers", "sparsity.importance_kept", "metrics.latency.runtimes",
              "metrics.latency.comparison.speedup", "metrics.sizes.files",
              "stages[].detail.speedup", "stages[].detail.unavailable", "metrics.lm_eval",
              "stages[].detail.lm_eval", "stages[].detail.tasks"}
# version strings that are null on a machine without the library or device (CUDA on a CPU box),
# wanda-export's commit (null outside a git checkout), the GPU's name (null without one)
MACHINE_DEPENDENT = ("metrics.latency.runtimes.*.versions.", "versions.")
MACHINE_DEPENDENT_KEYS = {"host.gpu"}
SIZE = re.compile(r"\d+(?:\.\d+)? (?:B|KiB|MiB|GiB|TiB)\b")

PIPELINE: dict[str, Any] = {
    "version": 1,
    "model": {"path": "model", "dtype": "float32", "device": "cpu"},
    "data": {
        "calibration": {"source": "text", "path": "calib.txt", "nsamples": 4, "seqlen": 32,
                        "seed": 0},
        "evaluation": {"source": "text", "path": "eval.txt", "seqlen": 32, "max_windows": 4},
    },
    "stages": [
        {"calibrate": {"mode": "dense"}},
        {"score": {"method": "wanda"}},
        {"mask": {"sparsity": 0.5, "pattern": "2:4"}},
        {"verify": {}},
        {"evaluate": {"perplexity": True, "onnx_perplexity": True,
                      "lm_eval": {"tasks": ["wanda_facts"], "include_path": "tasks", "limit": 8,
                                  "batch_size": 2}}},
        {"export": {"formats": ["safetensors", "onnx", "onnx-fp16"], "parity_tokens": 2}},
        {"benchmark": {"runtimes": ["onnxruntime-cpu", "torch"], "shapes": ["decode:1x1@8"],
                       "warmup": 0, "iterations": 2, "threads": 1}},
    ],
    "gates": {
        "sparsity": {"min": 0.5, "per_layer_min": 0.5, "pattern": "2:4"},
        "perplexity": {"max_ratio_to_dense": 100.0, "max": 1.0e9,
                       "max_onnx_ratio_to_torch": 1.01},
        "accuracy": {"max_drop": 1.0},
        "parity": {"max_abs_diff": 0.01, "generation": True},
        "latency": {"runtime": "onnxruntime-cpu", "max_p50_ms": 60000.0, "min_speedup": 0.001},
    },
}


def _type(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", bool: "bool", int: "int", float: "float",
            str: "str"}[type(value)]


def key_tree(value: Any, path: str = "", tree: dict[str, set[str]] | None = None
             ) -> dict[str, set[str]]:
    """Every path in `value` (`a.b`, `a[].c`, `a.*.c` for data-keyed objects) with the set of
    JSON types seen there; list items and data-keyed entries are merged."""
    tree = {} if tree is None else tree
    if path:
        tree.setdefault(path, set()).add(_type(value))
    if isinstance(value, dict):
        for key, item in value.items():
            child = "*" if path in DATA_KEYED else key
            key_tree(item, f"{path}.{child}" if path else child, tree)
    elif isinstance(value, list):
        for item in value:
            key_tree(item, f"{path}[]", tree)
    return tree


def headings(markdown: str) -> list[str]:
    """summary.md's Markdown headings, with artifact sizes (which vary with timings) masked."""
    return [SIZE.sub("<size>", line) for line in markdown.splitlines() if line.startswith("#")]


def expectation(out: Path) -> dict[str, Any]:
    """What the golden file holds for the outputs in `out`."""
    report = json.loads((out / "report.json").read_text())
    varies = (lambda path: path.startswith(MACHINE_DEPENDENT)
              or path in MACHINE_DEPENDENT_KEYS)
    tree = {path: "null|str" if varies(path) else "|".join(sorted(types))
            for path, types in key_tree(report).items()}
    return {"report_json": tree, "gate_names": [gate["name"] for gate in report["gates"]],
            "summary_md_headings": headings((out / "summary.md").read_text())}


def _differences(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    lines = []
    old, new = expected["report_json"], actual["report_json"]
    lines += [f"missing {path} ({old[path]})" for path in old if path not in new]
    lines += [f"new {path} ({new[path]})" for path in new if path not in old]
    lines += [f"type of {path}: {old[path]} -> {new[path]}" for path in old
              if path in new and old[path] != new[path]]
    if not lines and list(old) != list(new):
        lines.append("key order changed")
    for key in ("gate_names", "summary_md_headings"):
        if expected[key] != actual[key]:
            lines.append(f"{key}: {expected[key]} -> {actual[key]}")
    return lines


def test_report_json_keys_and_summary_headings_match_the_golden(workdir: Path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("matplotlib")  # the charts are listed in summary.md and the artifacts
    shutil.copytree(Path(__file__).parents[1] / "data" / "lm_eval", workdir / "tasks")
    path = workdir / "pipeline.yaml"
    path.write_text(yaml.safe_dump(PIPELINE, sort_keys=False))
    out = workdir / "out"
    result = invoke("run", str(path), "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["latency"] == report["metrics"]["latency"]["results"]  # the same rows
    actual = expectation(out)
    if os.environ.get(UPDATE):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(actual, indent=2, ensure_ascii=False) + "\n")
    expected = json.loads(GOLDEN.read_text())
    assert not _differences(expected, actual), "\n".join(_differences(expected, actual))


def test_the_key_tree_merges_list_items_and_data_keyed_objects():
    report = {"sparsity": {"layers": {"a": {"sparsity": 0.5}, "b": {"sparsity": None}}},
              "gates": [{"value": 1}, {"value": 0.5, "extra": "x"}], "status": "passed"}
    assert key_tree(report) == {
        "sparsity": {"object"}, "sparsity.layers": {"object"},
        "sparsity.layers.*": {"object"}, "sparsity.layers.*.sparsity": {"float", "null"},
        "gates": {"array"}, "gates[]": {"object"}, "gates[].value": {"int", "float"},
        "gates[].extra": {"str"}, "status": {"str"}}
    assert headings("# ok\ntext\n## Artifacts (3 files, 1.5 MiB)\n") == [
        "# ok", "## Artifacts (3 files, <size>)"]
