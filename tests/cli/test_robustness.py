"""Runs that are killed or race each other: nothing half-written, nothing corrupt, same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from helpers import wait_for_marker

from wanda_export.cache.store import CacheStore

# Runs the real CLI in a child process, with calibration slowed down so the test can kill it
# while calibrating.
SLOW_CALIBRATION = """
import sys, time
from pathlib import Path
import wanda_export.pipeline.allocation as run_allocation
real = run_allocation.collect_dense
def slow(*args, **kwargs):
    Path(sys.argv[1]).write_text("calibrating")
    time.sleep(120)
    return real(*args, **kwargs)
run_allocation.collect_dense = slow
from wanda_export.cli import app
app(sys.argv[2:])
"""


def _cli(*args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "wanda_export", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_mid_calibration_then_rerun(write_pipeline, workdir, isolated_cache):
    path = write_pipeline()
    out, marker = workdir / "out", workdir / "marker"
    env = {**os.environ, "WANDA_EXPORT_CACHE": str(isolated_cache)}
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_CALIBRATION, str(marker), "run", str(path), "--out", str(out),
         "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_marker(child, marker, 120, "calibrating")
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert not out.exists()
    assert CacheStore(isolated_cache).get("calibration", "0" * 64) is None

    rerun = _cli("run", str(path), "--out", str(out), "--quiet", "--json", env=env)
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    report = json.loads(stdout)
    assert {s["name"]: s["cache"] for s in report["stages"]}["calibrate"] == "miss"
    assert not list(workdir.glob(".out.partial-*"))  # the killed run's leftovers are gone
    store = CacheStore(isolated_cache)
    entries = store.entries()
    assert entries and all(store.get(e.kind, e.key) is not None for e in entries)


def test_two_concurrent_runs_share_one_cache(write_pipeline, workdir, isolated_cache):
    path = write_pipeline(mode="sequential", pattern="2:4")
    env = {**os.environ, "WANDA_EXPORT_CACHE": str(isolated_cache)}
    runs = [_cli("run", str(path), "--out", str(workdir / name), "--quiet", "--json", env=env)
            for name in ("a", "b")]
    reports = []
    for run in runs:
        stdout, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr
        reports.append(json.loads(stdout))
    first, second = reports
    assert first["sparsity"] == second["sparsity"]
    assert first["metrics"]["perplexity"] == second["metrics"]["perplexity"]
    caches = sorted(next(s["cache"] for s in r["stages"] if s["name"] == "calibrate")
                    for r in reports)
    assert caches == ["hit", "miss"]  # check-lock-recheck: the second waits, then hits
    assert len([e for e in CacheStore(isolated_cache).entries() if e.kind == "calibration"]) == 1
