"""Writing files and folders so that no reader, crash or interrupt ever sees them half written.

Everything is built under a hidden temporary name beside its target (`.NAME<mark>PID-XXXXXXXX`,
so a later run can tell whose leftover it is) and renamed into place with one `os.replace`,
the one atomic step a POSIX file system offers. Used for report files, the fingerprint memo,
stamped safetensors headers, cache entries, the converted default model and release folders.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

TEMP_MARK = ".tmp-"
OLD_MARK = ".old-"  # a replaced folder, moved aside until its successor is in place


def temporary_sibling(target: Path, mark: str) -> Path:
    """A fresh hidden name beside `target`, `.NAME<mark>PID-XXXXXXXX`: unique per call, and
    naming the process that made it."""
    return target.with_name(f".{target.name}{mark}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def owner_is_gone(path: Path, mark: str) -> bool:
    """Whether the process named in a `temporary_sibling` name has ended (its leftover)."""
    pid = path.name.rsplit(mark, 1)[1].split("-", 1)[0]
    return pid.isdigit() and not Path(f"/proc/{pid}").exists()


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary sibling of `path` for binary writing; when the block ends, fsync it and
    rename it onto `path` (creating parent folders); if the block fails, remove it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(target, TEMP_MARK)
    try:
        with open(temporary, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically: readers see the old file or the new one."""
    with atomic_file(path) as handle:
        handle.write(data)
    return Path(path)


@contextmanager
def staging_directory(target: Path, mark: str = TEMP_MARK) -> Iterator[Path]:
    """A new empty folder beside `target` to build it in; removed if the block fails. The
    caller publishes it (`os.replace` or `replace_directory`) inside the block."""
    staging = temporary_sibling(target, mark)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def replace_directory(staging: Path, target: Path) -> None:
    """Rename the finished `staging` folder onto `target`. An existing target is moved aside
    first, put back if the rename fails, and removed once its successor is in place."""
    old = None
    if os.path.lexists(target):
        old = temporary_sibling(target, OLD_MARK)
        os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
