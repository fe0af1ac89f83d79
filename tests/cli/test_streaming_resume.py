"""A streamed prune killed in the middle of a layer resumes there: no earlier layer is computed
again, and the release equals an uninterrupted run's."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys

import torch
from helpers import invoke, wait_for_marker
from pipelines import REMOVE, pipeline_data, write_pipeline_file
from safetensors.torch import load_file

from wanda_export.cache.store import STREAM_HIDDEN, STREAM_LAYER, CacheStore

# The real CLI in a child process whose pruning of decoder layer 1 never ends, so the test can
# SIGKILL it there (layer 0 done and cached, layer 1 half-way).
STUCK_IN_LAYER_1 = """
import sys, time
from pathlib import Path
import wanda_export.stream.prune as streamed
real = streamed.prune_targets
def stuck(targets, *args, **kwargs):
    if any(".layers.1." in target.name for target in targets):
        Path(sys.argv[1]).write_text("in layer 1")
        time.sleep(300)
    return real(targets, *args, **kwargs)
streamed.prune_targets = stuck
from wanda_export.cli import app
app(sys.argv[2:])
"""


def _weights(out):
    tensors = {}
    for file in sorted(glob.glob(f"{out}/model/*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def test_a_streamed_run_killed_in_layer_1_resumes_at_layer_1(workdir, isolated_cache,
                                                              monkeypatch):
    data = pipeline_data(mode="sequential", pattern="2:4", model={"streaming": True},
                         gates={"perplexity": REMOVE})
    path = write_pipeline_file(workdir / "pipeline.yaml", data)
    marker, out = workdir / "marker", workdir / "out"
    env = {**os.environ, "WANDA_EXPORT_CACHE": str(isolated_cache)}
    child = subprocess.Popen([sys.executable, "-c", STUCK_IN_LAYER_1, str(marker), "run",
                              str(path), "--out", str(out), "--quiet"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_marker(child, marker, 180, "layer 1")
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    store = CacheStore(isolated_cache)
    assert [e.kind for e in store.entries() if e.kind.startswith("stream")] == [
        STREAM_HIDDEN, STREAM_LAYER]  # layer 0 and the hidden states that feed layer 1

    assert invoke("run", str(path), "--out", str(out), "--quiet").exit_code == 0
    resumed = json.loads((out / "report.json").read_text())
    calibrate = next(s for s in resumed["stages"] if s["name"] == "calibrate")
    assert calibrate["detail"]["layers_from_cache"] == 1 and calibrate["cache"] == "miss"
    assert [e.kind for e in store.entries() if e.kind == STREAM_HIDDEN] == []  # cleaned up

    monkeypatch.setenv("WANDA_EXPORT_CACHE", str(workdir / "fresh-cache"))
    reference = workdir / "reference"
    assert invoke("run", str(path), "--out", str(reference), "--quiet").exit_code == 0
    expected = json.loads((reference / "report.json").read_text())
    assert resumed["metrics"]["perplexity"] == expected["metrics"]["perplexity"]
    assert resumed["sparsity"]["layers"] == expected["sparsity"]["layers"]
    a, b = _weights(out), _weights(reference)
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    assert sorted(p.name for p in (out / "model").iterdir()) == sorted(
        p.name for p in (reference / "model").iterdir())

    monkeypatch.setenv("WANDA_EXPORT_CACHE", str(isolated_cache))
    again = workdir / "again"
    assert invoke("run", str(path), "--out", str(again), "--quiet").exit_code == 0
    rerun = json.loads((again / "report.json").read_text())
    calibrate = next(s for s in rerun["stages"] if s["name"] == "calibrate")
    assert calibrate["cache"] == "hit" and calibrate["detail"]["layers_from_cache"] == 2
    c = _weights(again)
    assert all(torch.equal(a[name], c[name]) for name in a)
