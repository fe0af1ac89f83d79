"""SIGTERM is handled like SIGINT: exit 130, one message, no staging folder left, the previous
release byte-identical and every cache entry valid. Real signals sent to a child process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import invoke, wait_for_marker
from hostile import tree_digest

from wanda_export.cache.store import CacheStore

# Runs the real CLI in a child process with MODULE.NAME replaced by a version that (after the
# real call when WHEN is "after") writes MARKER and sleeps, so the test can signal it right there.
SLOW_AT = """
import importlib, sys, time
from pathlib import Path
module_name, name, when, marker = sys.argv[1:5]
module = importlib.import_module(module_name)
real = getattr(module, name)
def slow(*args, **kwargs):
    result = real(*args, **kwargs) if when == "after" else None
    Path(marker).write_text(name)
    time.sleep(120)
    return result
setattr(module, name, slow)
from wanda_export.cli import app
app(sys.argv[5:], prog_name="wanda-export")
"""

# (module, function, when): the points at which the child is stopped
MID_CALIBRATION = ("wanda_export.pipeline.allocation", "collect_dense", "before")
MID_EXPORT = ("wanda_export.pipeline.stages", "export_checkpoint", "after")


def _interrupt_at(point, signum: int, cli_args: list[str], marker: Path, env: dict):
    """Start the CLI, wait until it reaches `point`, send `signum`; return (code, out, err)."""
    child = subprocess.Popen([sys.executable, "-c", SLOW_AT, *point, str(marker), *cli_args],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_marker(child, marker, 120, "the signal point")
        child.send_signal(signum)
        stdout, stderr = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.returncode, stdout, stderr


def _earlier_release(path: Path, out: Path) -> str:
    result = invoke("run", str(path), "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    return tree_digest(out)


def _assert_cache_consistent(root: Path) -> None:
    store = CacheStore(root)
    entries = store.entries()
    assert entries, "the stages before the signal should have left entries"
    assert all(store.get(entry.kind, entry.key) is not None for entry in entries)
    leftovers = [p for p in root.rglob("*") if ".tmp-" in p.name or ".trash-" in p.name]
    assert leftovers == []


def _assert_one_message(stderr: str, signal_name: str) -> None:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines == [f"error: interrupted by {signal_name}; nothing was written"], stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_calibration_exits_130_and_keeps_the_release(
        signum, write_pipeline, workdir, tmp_path):
    path, out = write_pipeline(), workdir / "out"
    before = _earlier_release(path, out)
    fresh_cache = tmp_path / "fresh-cache"  # so that the child calibrates instead of hitting
    env = {**os.environ, "WANDA_EXPORT_CACHE": str(fresh_cache)}
    code, _, stderr = _interrupt_at(MID_CALIBRATION, signum,
                                    ["run", str(path), "--out", str(out), "--quiet"],
                                    workdir / "marker", env)
    assert code == 130
    _assert_one_message(stderr, signal.Signals(signum).name)
    assert tree_digest(out) == before
    assert not list(workdir.glob(".out.*"))
    _assert_cache_consistent(fresh_cache)  # the dense perplexity entry, written before


def test_sigterm_mid_export_exits_130_with_a_json_error_and_keeps_the_release(
        write_pipeline, workdir, isolated_cache):
    path, out = write_pipeline(), workdir / "out"
    before = _earlier_release(path, out)
    code, stdout, stderr = _interrupt_at(
        MID_EXPORT, signal.SIGTERM, ["run", str(path), "--out", str(out), "--quiet", "--json"],
        workdir / "marker", {**os.environ, "WANDA_EXPORT_CACHE": str(isolated_cache)})
    assert code == 130
    _assert_one_message(stderr, "SIGTERM")
    error = json.loads(stdout)["error"]
    assert error["exit_code"] == 130 and error["kind"] == "interrupted"
    assert tree_digest(out) == before
    assert not list(workdir.glob(".out.*"))  # the staging folder held a written checkpoint
    _assert_cache_consistent(isolated_cache)


def test_the_signal_handlers_are_restored_after_a_command(workdir):
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    result = invoke("cache", "ls")
    assert result.exit_code == 0
    assert {signum: signal.getsignal(signum) for signum in before} == before
