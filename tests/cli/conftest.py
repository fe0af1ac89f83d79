"""Fixtures for CLI tests: a tiny model, small text files, and a pipeline file writer."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

TEXT = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.\n"
    "Sphinx of black quartz, judge my vow. How vexingly quick daft zebras jump!\n"
) * 40

PIPELINE = """\
version: 1
model: {{path: {model}, dtype: float32, device: cpu}}
data:
  calibration: {{source: text, path: calib.txt, nsamples: 4, seqlen: 32, seed: 0}}
  evaluation: {{source: text, path: eval.txt, seqlen: 32, max_windows: 4}}
stages:
  - calibrate: {{mode: {mode}}}
  - score: {{method: wanda}}
  - mask: {{sparsity: {sparsity}, pattern: "{pattern}"}}
  - verify: {{}}
  - evaluate: {{perplexity: true}}
  - export: {{formats: [safetensors]}}
gates:
  sparsity: {{min: {gate_min}, pattern: "{pattern}"}}
  perplexity: {{max_ratio_to_dense: {max_ratio}, max: {ppl_max}}}
"""


@pytest.fixture
def workdir(tmp_path: Path, tiny_model_dir) -> Path:
    """A folder with the tiny llama model, calib.txt and eval.txt."""
    shutil.copytree(tiny_model_dir("llama"), tmp_path / "model")
    (tmp_path / "calib.txt").write_text(TEXT)
    (tmp_path / "eval.txt").write_text(TEXT[::-1])
    return tmp_path


@pytest.fixture
def write_pipeline(workdir: Path):
    """Write pipeline.yaml into the workdir with the given settings; return its path."""

    def write(name: str = "pipeline.yaml", *, mode: str = "dense", sparsity: float = 0.5,
              pattern: str = "unstructured", gate_min: float = 0.5,
              max_ratio: float = 100.0, ppl_max: float = 1e9) -> Path:
        path = workdir / name
        path.write_text(PIPELINE.format(model="model", mode=mode, sparsity=sparsity,
                                        pattern=pattern, gate_min=gate_min, max_ratio=max_ratio,
                                        ppl_max=ppl_max))
        return path

    return write


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch) -> Path:
    """Every CLI test gets its own cache folder."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("WANDA_EXPORT_CACHE", str(cache))
    return cache
