"""The hostile-input corpus harness: one `HostileCase` per probe, checked the same way everywhere.

A case names the CLI arguments (with `{work}` standing for the test's work folder), the exit code
the CLI must give, a phrase its message must contain, and a `setup` that plants the hostile input.
`check_case` runs the CLI in-process (`catch_exceptions=False`, so a traceback fails the test) and
asserts that the work folder is byte-for-byte unchanged afterwards, the cache folder and the
paths listed in `may_change` aside: a failed run changes nothing it does not own.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from helpers import invoke


@dataclass(frozen=True)
class HostileCase:
    """One hostile input: what to run, what the CLI must answer, what may change on disk."""

    id: str
    args: tuple[str, ...]
    exit_code: int
    phrase: str
    setup: Callable[[Path], None] | None = None
    may_change: tuple[str, ...] = field(default_factory=tuple)
    env: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        return self.id


def tree_digest(root: Path, *, skip: tuple[str, ...] = ()) -> str:
    """sha256 over every path, mode, symlink target and file content under `root` (sorted),
    leaving out the top-level names in `skip`."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = Path(dirpath).relative_to(root)
        if rel_dir == Path("."):
            dirnames[:] = [d for d in dirnames if d not in skip]
            filenames = [f for f in filenames if f not in skip]
        dirnames.sort()
        for name in sorted(dirnames) + sorted(filenames):
            path = Path(dirpath) / name
            info = path.lstat()
            digest.update(f"{rel_dir / name}\0{info.st_mode:o}\0".encode())
            if path.is_symlink():
                digest.update(os.readlink(path).encode())
            elif path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()


def check_case(case: HostileCase, work: Path, monkeypatch) -> str:
    """Run `case` in `work`; assert its exit code, its phrase and an unchanged work folder.

    Returns the CLI's combined output for further assertions."""
    if case.setup is not None:
        case.setup(work)
    for name, value in case.env:
        monkeypatch.setenv(name, value.format(work=work))
    skip = ("cache", *case.may_change)
    before = tree_digest(work, skip=skip)
    monkeypatch.chdir(work)
    args = [arg.format(work=work) for arg in case.args]
    result = invoke(*args)
    output = result.stdout + result.stderr
    assert result.exit_code == case.exit_code, f"{case.id}: exit {result.exit_code}\n{output}"
    assert case.phrase.lower() in " ".join(output.lower().split()), f"{case.id}: {output}"
    assert "Traceback" not in output, f"{case.id}: {output}"
    assert tree_digest(work, skip=skip) == before, f"{case.id}: the work folder changed"
    return output
