"""Model fingerprints: a stable identity for the weights a run started from.

A local checkpoint is identified by the sha256 of its weight files, a hub model by its commit.
File hashes are memoised per (path, inode, size, mtime), in-process and on disk under
`<cache root>/fingerprints/` (as dvc's state does), so a 14 GB checkpoint is hashed once, not
on every run. Like make and dvc, this trusts that a file rewritten in place changes its mtime.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from wanda_export.errors import ConfigError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
_CHUNK = 1 << 20
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_file_hashes: dict[tuple[str, int, int], str] = {}


def _memo_path(resolved: Path, stat: os.stat_result) -> Path:
    from wanda_export.model.default import cache_root

    record = f"{resolved}\0{stat.st_ino}\0{stat.st_size}\0{stat.st_mtime_ns}"
    return cache_root() / "fingerprints" / hashlib.sha256(record.encode()).hexdigest()


def file_sha256(path: str | Path) -> str:
    """Return the hex sha256 of a file, streamed in 1 MiB chunks and memoised per stat."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    key = (str(resolved), stat.st_size, stat.st_mtime_ns)
    cached = _file_hashes.get(key)
    if cached is not None:
        return cached
    memo = _memo_path(resolved, stat)
    try:
        stored = memo.read_text().strip()
    except OSError:
        stored = ""
    if _SHA256.fullmatch(stored):
        _file_hashes[key] = stored
        return stored
    digest = hashlib.sha256()
    with resolved.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    _file_hashes[key] = digest.hexdigest()
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        temporary = memo.with_name(f"{memo.name}.{os.getpid()}.tmp")
        temporary.write_text(_file_hashes[key])
        os.replace(temporary, memo)
    except OSError:  # a read-only cache only costs a rehash next time
        pass
    return _file_hashes[key]


def weight_files(directory: Path) -> list[Path]:
    """List a checkpoint directory's weight files, sorted by name."""
    return sorted(
        (p for p in directory.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)),
        key=lambda p: p.name,
    )


def model_fingerprint(path: str | Path, revision: str | None = None) -> str:
    """Identify a model: sha256 over a local checkpoint's weights, or a hub model's commit.

    For a directory the digest covers each weight file's name and content in name order, so
    renaming, adding or editing a shard changes it. For a hub id it is the commit hash when the
    local cache knows it, else ``hub:<id>@<revision or main>``.
    """
    local = Path(path).expanduser()
    if local.is_file():
        return file_sha256(local)
    if local.is_dir():
        files = weight_files(local)
        if not files:
            raise ConfigError(f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) in {local}")
        digest = hashlib.sha256()
        for file in files:
            digest.update(file.name.encode() + b"\0" + file_sha256(file).encode() + b"\n")
        return digest.hexdigest()
    return _hub_fingerprint(str(path), revision)


def _hub_fingerprint(repo_id: str, revision: str | None) -> str:
    """Resolve a hub id to its commit from the local cache only; never touches the network."""
    if revision and _COMMIT.fullmatch(revision):
        return revision
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except (ValueError, OSError):  # a malformed id or unreadable cache only loses the commit
        cached = None
    if isinstance(cached, str):
        snapshot = Path(cached).parent.name
        if _COMMIT.fullmatch(snapshot):
            return snapshot
    return f"hub:{repo_id}@{revision or 'main'}"


def clear_fingerprint_cache() -> None:
    """Forget memoised file hashes (tests, or a long-lived process that rewrites files)."""
    _file_hashes.clear()
