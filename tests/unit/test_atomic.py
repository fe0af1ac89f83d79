"""Atomic files and folders: a failure leaves the old content and no temporary behind."""

from __future__ import annotations

import os

import pytest

from wanda_export.atomic import (
    OLD_MARK,
    TEMP_MARK,
    atomic_file,
    atomic_write_bytes,
    owner_is_gone,
    replace_directory,
    staging_directory,
    temporary_sibling,
)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = atomic_write_bytes(tmp_path / "report.json", b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as handle:
        handle.write(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and len(list(tmp_path.iterdir())) == 1


def test_a_failed_staging_folder_is_removed(tmp_path):
    with pytest.raises(KeyboardInterrupt), staging_directory(tmp_path / "out") as staging:
        (staging / "file").write_text("partial")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_replace_directory_swaps_and_restores_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    (target / "v").write_text("1")
    with staging_directory(target) as staging:
        (staging / "v").write_text("2")
        replace_directory(staging, target)
    assert (target / "v").read_text() == "2" and sorted(os.listdir(tmp_path)) == ["out"]

    real_replace = os.replace

    def fail_on_publish(source, destination):
        if TEMP_MARK in str(source):
            raise OSError(28, "No space left on device")
        return real_replace(source, destination)

    monkeypatch.setattr(os, "replace", fail_on_publish)
    with pytest.raises(OSError), staging_directory(target) as staging:
        (staging / "v").write_text("3")
        replace_directory(staging, target)
    assert (target / "v").read_text() == "2" and sorted(os.listdir(tmp_path)) == ["out"]


def test_temporary_names_say_whose_they_are(tmp_path):
    mine = temporary_sibling(tmp_path / "out", OLD_MARK)
    assert mine.name.startswith(f".out{OLD_MARK}{os.getpid()}-")
    assert not owner_is_gone(mine, OLD_MARK)
    assert owner_is_gone(tmp_path / f".out{OLD_MARK}999999999-abcd", OLD_MARK)
