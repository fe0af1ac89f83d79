"""A full, read-only or forbidden disk is the environment's fault: exit 4, one line naming the
path and the reason, no traceback, nothing half-written and an earlier release untouched.

Real faults where the test can mount a small tmpfs (we run as root in CI, and root ignores
chmod, so permission bits cannot make a folder read-only); where mounting fails, the same write
is made to raise the same OSError.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import invoke
from hostile import tree_digest

from wanda_export.cache.store import CacheStore
from wanda_export.pipeline import stages

RELEASE_BYTES = "1100k"  # one release of the tiny model fits (0.9 MB at its peak), a second not


@pytest.fixture
def tmpfs(tmp_path):
    """Factory: `tmpfs(name, size)` mounts a tmpfs at tmp_path/name and returns it, or None
    where this machine will not mount one; every mount is undone after the test."""
    mounted: list[Path] = []

    def mount(name: str, size: str) -> Path | None:
        path = tmp_path / name
        path.mkdir()
        if shutil.which("mount") is None:
            return None
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              check=False, capture_output=True)
        if done.returncode != 0:
            return None
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", str(path)], check=True)


def _read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


def _fail_writes_with(monkeypatch, code: int, writer: str, path: Path) -> None:
    """The fallback: make `writer` (the checkpoint export or the cache) raise OSError(code)
    naming `path`, the file it would have written."""
    def raise_it(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(path))

    if writer == "export":
        monkeypatch.setattr(stages, "export_checkpoint", raise_it)
    else:
        monkeypatch.setattr(CacheStore, "_publish", raise_it)


def _assert_one_line(result, phrase: str) -> None:
    assert result.exit_code == 4, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert phrase in lines[0], lines[0]


def _assert_cache_consistent(root: Path) -> None:
    store = CacheStore(root)
    assert all(store.get(entry.kind, entry.key) is not None for entry in store.entries())
    assert [p for p in root.rglob("*") if ".tmp-" in p.name or ".trash-" in p.name] == []


def test_a_full_disk_during_export_exits_4_and_keeps_the_previous_release(
        write_pipeline, workdir, tmpfs, monkeypatch, isolated_cache):
    disk = tmpfs("disk", RELEASE_BYTES)
    out = (disk or workdir) / "out"
    assert invoke("run", str(write_pipeline()), "--out", str(out), "--quiet").exit_code == 0
    before = tree_digest(out)
    if disk is None:
        _fail_writes_with(monkeypatch, errno.ENOSPC, "export", workdir / ".out.partial-1/model")
    result = invoke("run", str(write_pipeline(sparsity=0.6, gate_min=0.6)), "--out", str(out),
                     "--quiet", "--json")
    _assert_one_line(result, "no space left on device while writing")
    assert json.loads(result.stdout)["error"]["kind"] == "environment"
    assert tree_digest(out) == before
    assert not list(out.parent.glob(".out.*"))  # no staging folder left
    _assert_cache_consistent(isolated_cache)


def test_a_read_only_out_exits_4_before_any_work(write_pipeline, workdir, tmpfs, monkeypatch):
    disk = tmpfs("ro", RELEASE_BYTES)
    out = (disk or workdir) / "out"
    path = write_pipeline()
    assert invoke("calibrate", str(path), "--out", str(out), "--quiet").exit_code == 0
    before = tree_digest(out)
    if disk is not None:
        _read_only(disk)
    else:
        _fail_writes_with(monkeypatch, errno.EROFS, "export", out.parent / ".out.partial-1")
    result = invoke("run", str(path), "--out", str(out), "--quiet")
    _assert_one_line(result, f"read-only file system: cannot write {out.parent}")
    assert tree_digest(out) == before
    assert not list(out.parent.glob(".out.*"))


def test_a_read_only_cache_on_a_miss_exits_4(write_pipeline, workdir, tmpfs, monkeypatch):
    cache = tmpfs("ro-cache", "64k")
    if cache is not None:
        _read_only(cache)
    else:
        cache = workdir / "ro-cache"
        _fail_writes_with(monkeypatch, errno.EROFS, "cache", cache / "perplexity")
    monkeypatch.setenv("WANDA_EXPORT_CACHE", str(cache))
    result = invoke("run", str(write_pipeline()), "--out", str(workdir / "out"), "--quiet")
    _assert_one_line(result, f"read-only file system: cannot write {cache}")
    assert not (workdir / "out").exists() and not list(workdir.glob(".out.*"))
    _assert_cache_consistent(cache)


def test_a_full_cache_disk_names_the_file_and_leaves_no_temp_dir(write_pipeline, workdir,
                                                                   tmpfs, monkeypatch):
    cache = tmpfs("full-cache", "8k")
    if cache is None:
        cache = workdir / "full-cache"
        _fail_writes_with(monkeypatch, errno.ENOSPC, "cache", cache / "perplexity")
    monkeypatch.setenv("WANDA_EXPORT_CACHE", str(cache))
    result = invoke("run", str(write_pipeline()), "--out", str(workdir / "out"), "--quiet")
    _assert_one_line(result, f"no space left on device while writing {cache}")
    assert not (workdir / "out").exists() and not list(workdir.glob(".out.*"))
    _assert_cache_consistent(cache)


def test_a_lock_file_we_may_not_open_exits_4(write_pipeline, workdir, monkeypatch,
                                             isolated_cache):
    class ForbiddenLock:
        def __init__(self, path: str, timeout: float) -> None:
            self.path = path

        def acquire(self) -> None:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), self.path)

    monkeypatch.setattr("wanda_export.cache.store.FileLock", ForbiddenLock)
    result = invoke("run", str(write_pipeline()), "--out", str(workdir / "out"), "--quiet")
    _assert_one_line(result, f"permission denied on {isolated_cache}")
    assert ".lock" in result.stderr
    assert not (workdir / "out").exists() and not list(workdir.glob(".out.*"))
