"""Pipeline files as data: the small pipeline the CLI and stage tests run (a model folder,
calib.txt and eval.txt beside the file), varied by nested overrides instead of edits of YAML text.

In the data form the stages are a mapping, stage name -> settings, in file order; a stage that
is not there yet is added at the end. The YAML written is the file's list of one-key mappings.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

TEXT = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.\n"
    "Sphinx of black quartz, judge my vow. How vexingly quick daft zebras jump!\n"
) * 40

REMOVE = object()  # an override value that deletes the key (a stage, a gate, a setting)


def write_data_files(folder: Path) -> Path:
    """Write the calibration (calib.txt) and evaluation (eval.txt) text into `folder`."""
    (folder / "calib.txt").write_text(TEXT)
    (folder / "eval.txt").write_text(TEXT[::-1])
    return folder


def merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of `base` with `overrides` merged in: a mapping merges into a mapping key by
    key, `REMOVE` deletes the key, any other value replaces it."""
    result = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if value is REMOVE:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def pipeline_data(*, mode: str = "dense", sparsity: float = 0.5,
                  pattern: str = "unstructured", gate_min: float = 0.5, max_ratio: float = 100.0,
                  ppl_max: float = 1e9, **sections: Any) -> dict[str, Any]:
    """The test pipeline: calibrate, score (wanda), mask, verify, evaluate, export (safetensors)
    with sparsity and perplexity gates. The keywords set its common knobs (`pattern` both in the
    mask stage and its gate); `sections` are nested overrides of the top-level sections, e.g.
    ``stages={"mask": {"allocation": "owl"}}`` or ``gates={"parity": {"max_abs_diff": 0.01}}``.
    """
    data = {
        "version": 1,
        "model": {"path": "model", "dtype": "float32", "device": "cpu"},
        "data": {
            "calibration": {"source": "text", "path": "calib.txt", "nsamples": 4, "seqlen": 32,
                            "seed": 0},
            "evaluation": {"source": "text", "path": "eval.txt", "seqlen": 32, "max_windows": 4},
        },
        "stages": {
            "calibrate": {"mode": mode},
            "score": {"method": "wanda"},
            "mask": {"sparsity": sparsity, "pattern": pattern},
            "verify": {},
            "evaluate": {"perplexity": True},
            "export": {"formats": ["safetensors"]},
        },
        "gates": {
            "sparsity": {"min": gate_min, "pattern": pattern},
            "perplexity": {"max_ratio_to_dense": max_ratio, "max": ppl_max},
        },
    }
    return merged(data, sections)


def pipeline_yaml(data: Mapping[str, Any]) -> str:
    """The YAML text of pipeline `data` (leaf mappings in flow style, as people write them)."""
    stages = [{name: body} for name, body in data["stages"].items()]
    return yaml.safe_dump({**data, "stages": stages}, sort_keys=False, default_flow_style=None)


def write_pipeline_file(path: Path, data: Mapping[str, Any]) -> Path:
    """Write pipeline `data` as YAML to `path`; return `path`."""
    path.write_text(pipeline_yaml(data))
    return path


def read_pipeline_file(path: Path) -> dict[str, Any]:
    """The data form of the pipeline file at `path` (its stages as a mapping)."""
    data = yaml.safe_load(path.read_text())
    return {**data, "stages": {name: body for entry in data["stages"]
                               for name, body in entry.items()}}


def edit_pipeline_file(path: Path, out: Path | None = None, **sections: Any) -> Path:
    """Merge the nested overrides `sections` into the pipeline file at `path` and write the
    result to `out` (default: back to `path`); return where it was written."""
    return write_pipeline_file(out or path, merged(read_pipeline_file(path), sections))
