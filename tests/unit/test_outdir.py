"""The --out rules (pipeline/outdir.py) and the disk-failure rule (errors.disk_failure)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from safetensors import SafetensorError

from wanda_export.config import parse_config
from wanda_export.errors import ConfigError, disk_failure
from wanda_export.pipeline.outdir import (
    RELEASE_MARKER,
    check_out_dir,
    is_release,
    locate,
    parse_out,
    protected_paths,
    write_marker,
)
from wanda_export.pipeline.runner import _remove_stale_partials

NOTHING_PROTECTED: list = []


def _release(folder: Path) -> Path:
    folder.mkdir(parents=True)
    write_marker(folder)
    (folder / "report.json").write_text("{}")
    return folder


def _refused(out: Path, protected=NOTHING_PROTECTED, force: bool = False) -> str:
    with pytest.raises(ConfigError) as caught:
        check_out_dir(out, protected, force=force)
    return str(caught.value)


@pytest.mark.parametrize("text", ["", "   "])
def test_an_empty_out_is_refused(text):
    with pytest.raises(ConfigError, match="--out is empty"):
        parse_out(text)


def test_parse_out_expands_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_out("~/rel") == tmp_path / "rel"


def test_locate_keeps_a_symlink_at_out_and_resolves_dot_dot(tmp_path, monkeypatch):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path / "real")
    assert locate(Path("../link")) == tmp_path / "link"  # not followed to real/
    assert locate(Path("..")) == tmp_path
    assert locate(Path(".")) == tmp_path / "real"


def test_a_missing_an_empty_and_a_release_folder_may_be_replaced(tmp_path):
    assert check_out_dir(tmp_path / "new" / "deeper", [], force=False) == tmp_path / "new/deeper"
    (tmp_path / "empty").mkdir()
    assert check_out_dir(tmp_path / "empty", [], force=False) == tmp_path / "empty"
    release = _release(tmp_path / "rel")
    assert is_release(release)
    assert check_out_dir(release, [], force=False) == release


def test_a_marker_alone_or_another_tools_marker_is_not_a_release(tmp_path):
    lone = tmp_path / "lone"
    lone.mkdir()
    write_marker(lone)  # no report.json
    other = _release(tmp_path / "other")
    (other / RELEASE_MARKER).write_text(json.dumps({"tool": "someone-else"}))
    garbled = _release(tmp_path / "garbled")
    (garbled / RELEASE_MARKER).write_bytes(b"\xff\xfe")
    for folder in (lone, other, garbled):
        assert not is_release(folder)
        assert "not an earlier wanda-export release" in _refused(folder)


def test_a_user_folder_is_refused_naming_what_is_in_it_unless_forced(tmp_path):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    for name in "abcdef":
        (mine / f"{name}.txt").write_text(name)
    message = _refused(mine)
    assert "it holds a.txt, b.txt, c.txt, d.txt, e.txt and 2 more" in message
    assert "--force" in message
    assert check_out_dir(mine, [], force=True) == mine


@pytest.mark.parametrize("force", [False, True])
def test_a_file_a_symlink_or_a_path_under_a_file_is_refused_even_forced(tmp_path, force):
    (tmp_path / "file").write_text("mine")
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "dir")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert "is a file" in _refused(tmp_path / "file", force=force)
    assert "symbolic link" in _refused(tmp_path / "link", force=force)
    assert "symbolic link" in _refused(tmp_path / "dangling", force=force)
    assert "file is not a folder" in _refused(tmp_path / "file" / "out", force=force)


def test_protected_paths_and_their_parents_are_refused_even_forced(tmp_path):
    model = tmp_path / "zoo" / "model"
    model.mkdir(parents=True)
    protected = [("the input model", model)]
    assert "is the input model" in _refused(model, protected, force=True)
    message = _refused(tmp_path / "zoo", protected, force=True)
    assert f"holds the input model ({model})" in message and "--force does not" in message
    inside = model / "release"  # a new folder inside the model is allowed
    assert check_out_dir(inside, protected, force=False) == inside


@pytest.mark.parametrize("git", ["dir", "file"])
def test_a_folder_holding_git_is_refused_even_forced(tmp_path, git):
    repo = tmp_path / "repo"
    repo.mkdir()
    if git == "dir":
        (repo / ".git").mkdir()
    else:  # a worktree or submodule: .git is a file
        (repo / ".git").write_text("gitdir: /elsewhere\n")
    assert "holds .git" in _refused(repo, force=True)


def test_protected_paths_name_cwd_root_home_model_config_cache_and_data(tmp_path, monkeypatch):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("text")
    config = parse_config(
        "version: 1\nmodel: {path: m}\n"
        "data: {calibration: {source: text, path: corpus/*.txt}, evaluation: null}\n"
        "stages:\n  - score: {method: magnitude}\n", base_dir=tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDA_EXPORT_CACHE", str(tmp_path / "default-cache"))
    monkeypatch.chdir(tmp_path / "corpus")
    found = dict(protected_paths(config, tmp_path / "cache"))
    assert found == {
        "the filesystem root": Path("/"),
        "the current folder": tmp_path / "corpus",
        "the pipeline file's folder": tmp_path,
        "the cache": tmp_path / "cache",
        "the default model's cache": tmp_path / "default-cache",
        "the home folder": tmp_path / "home",
        "the input model": tmp_path / "m",
        "the data": tmp_path / "corpus",  # a glob: the folder before the pattern
    }


def test_a_stale_old_release_is_put_back_when_out_is_missing(tmp_path):
    out = tmp_path / "out"
    dead = 999_999_999  # above any pid_max: no such process
    old = _release(tmp_path / f".out.old-{dead}-abcd1234")
    partial = tmp_path / f".out.partial-{dead}-abcd1234"
    partial.mkdir()
    _remove_stale_partials(out)
    assert is_release(out) and not old.exists() and not partial.exists()
    again = _release(tmp_path / f".out.old-{dead}-ffff0000")
    _remove_stale_partials(out)  # out exists now: the leftover is deleted instead
    assert not again.exists() and is_release(out)


@pytest.mark.parametrize(("error", "message"), [
    (OSError(errno.ENOSPC, "No space left on device", "/d/x"),
     "no space left on device while writing /d/x"),
    (OSError(errno.ENOSPC, "No space left on device"),
     "no space left on device while writing the outputs"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/d/x"), "disk quota exceeded while writing /d/x"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/x"),
     "read-only file system: cannot write /ro/x"),
    (PermissionError(errno.EACCES, "Permission denied", "/d/lock"),
     "permission denied on /d/lock"),
    (PermissionError(errno.EPERM, "Operation not permitted", "/d/y"),
     "operation not permitted on /d/y"),
    (SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
     "no space left on device while writing the outputs"),
    (RuntimeError("write failed: Read-only file system"),
     "read-only file system: cannot write the outputs"),
])
def test_disk_failures_are_named_with_their_path(error, message):
    assert disk_failure(error, "the outputs") == message


@pytest.mark.parametrize("error", [
    OSError(errno.ENOENT, "No such file or directory", "/x"),
    RuntimeError("shape mismatch"),
    ValueError("No space left on device"),  # only OS and writer errors are the disk's
])
def test_other_failures_are_not_disk_failures(error):
    assert disk_failure(error, "the outputs") is None
