"""Model fingerprints: a stable identity for the weights a run started from.

A local checkpoint is identified by the sha256 of its weight files, a hub model by its commit.
File hashes are memoised per file identity (path, device, inode, size, mtime, ctime), in-process
and on disk under `<cache root>/fingerprints/` (as dvc's state does), so a 14 GB checkpoint is
hashed once, not on every run. Each on-disk memo records the identity it was made for and is
dropped when it does not match, so an overwritten memo cannot lend one model another's hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from pathlib import Path

from wanda_export.atomic import atomic_write_bytes
from wanda_export.errors import ConfigError
from wanda_export.paths import cache_root

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
MEMO_FIELD = "sha256"
_file_hashes: dict[tuple[int | str, ...], str] = {}
log = logging.getLogger(__name__)


def _identity(resolved: Path, stat: os.stat_result) -> dict[str, int | str]:
    """What a memo is valid for: the path and the file behind it, as stat() sees it now.

    ctime cannot be set from user space, so a file replaced by another with the same size and
    a copied mtime (or a reused inode) still gets a new identity.
    """
    return {"path": str(resolved), "device": stat.st_dev, "inode": stat.st_ino,
            "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns}


def _memo_path(identity: dict[str, int | str]) -> Path:
    record = json.dumps(identity, sort_keys=True)
    return cache_root() / "fingerprints" / hashlib.sha256(record.encode()).hexdigest()


def _read_memo(memo: Path, identity: dict[str, int | str]) -> str | None:
    """The sha256 a memo stores, if it is a record of exactly this file; else drop the memo.

    A memo copied or written over from another file carries that file's identity and is
    removed, so it can never attach one model's cache entries to another.
    """
    try:
        record = json.loads(memo.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        record = None
    if (isinstance(record, dict) and _SHA256.fullmatch(str(record.get(MEMO_FIELD, "")))
            and {k: record.get(k) for k in identity} == identity):
        return record[MEMO_FIELD]
    log.warning("ignoring fingerprint memo %s: it does not describe %s", memo, identity["path"])
    with contextlib.suppress(OSError):
        memo.unlink()
    return None


def file_sha256(path: str | Path) -> str:
    """Return the hex sha256 of a file, streamed in 1 MiB chunks and memoised per file identity.

    The memo (in-process and on disk) is keyed by path, device, inode, size, mtime and ctime,
    and the on-disk record repeats them: one that does not match the file is not used.
    """
    resolved = Path(path).resolve()
    identity = _identity(resolved, resolved.stat())
    key = tuple(identity.values())
    cached = _file_hashes.get(key)
    if cached is not None:
        return cached
    memo = _memo_path(identity)
    stored = _read_memo(memo, identity)
    if stored is not None:
        _file_hashes[key] = stored
        return stored
    with resolved.open("rb") as handle:
        _file_hashes[key] = hashlib.file_digest(handle, "sha256").hexdigest()
    try:
        atomic_write_bytes(memo, json.dumps({**identity, MEMO_FIELD: _file_hashes[key]}).encode())
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
