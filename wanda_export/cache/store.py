"""A content cache of tensor dicts on disk: atomic, locked, checksummed, safe across processes.

The entry format is in `entry.py`. Layout under the root (default ``cache_root()``)::

    <kind>/<key>.lock                     filelock serialising writers of one key
    <kind>/<key[:2]>/<key>/               a published entry
        tensors.safetensors               the tensors (safetensors, never pickle)
        manifest.json                     kind, key, record, sha256, bytes, ... (written last)
    <kind>/<key[:2]>/.<key>.tmp-XXXX/     a write in progress, or left by a killed writer
    <kind>/<key[:2]>/.<key>.trash-XXXX/   an entry being removed

An entry becomes visible only through one ``os.replace`` of a complete, fsynced directory, and
published entries are never modified, only removed (renamed away, then deleted). Readers verify
the manifest and the checksum of the tensors, so a corrupt entry is reported and treated as a
miss instead of being loaded.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from filelock import FileLock, Timeout
from safetensors.torch import save as save_safetensors

from wanda_export.atomic import staging_directory
from wanda_export.cache.entry import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    TENSORS_FILE,
    CacheEntryInfo,
    Tensors,
    entry_info,
    fsync_dir,
    read_entry,
    write_new_file,
)
from wanda_export.errors import ConfigError, EnvironmentProblem, did_you_mean
from wanda_export.paths import cache_root

DEFAULT_LOCK_TIMEOUT = 3600.0
STALE_AFTER_SECONDS = 3600.0

# The kinds the pipeline stores (pipeline/run_plan.py decides which); `clear` also
# knows every kind with entries on disk.
ALPHAS, CALIBRATION, PERPLEXITY = "alphas", "calibration", "perplexity"
STREAM_LAYER, STREAM_HIDDEN = "stream-layer", "stream-hidden"
LM_EVAL = "lm-eval"
PIPELINE_KINDS = (ALPHAS, CALIBRATION, LM_EVAL, PERPLEXITY, STREAM_HIDDEN, STREAM_LAYER)

_KIND = re.compile(r"[a-z0-9][a-z0-9_-]*")
_KEY = re.compile(r"[0-9a-f]{64}")
_TEMP_MARKERS = (".tmp-", ".trash-")
_EPOCH = datetime.fromtimestamp(0, UTC)

log = logging.getLogger("wanda_export.cache")



class CacheStore:
    """Tensor-dict entries addressed by (kind, key), shared safely by concurrent processes."""

    def __init__(
        self,
        root: Path | None = None,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        stale_after: float = STALE_AFTER_SECONDS,
    ) -> None:
        """Open the store at ``root`` (default: ``cache_root()``); nothing is created yet.

        ``lock_timeout`` bounds how long a writer waits for another process computing the same
        key; ``stale_after`` is the age after which a leftover temp dir is assumed abandoned.
        """
        self.root = Path(root) if root is not None else cache_root()
        self.lock_timeout = lock_timeout
        self.stale_after = stale_after

    def entry_dir(self, kind: str, key: str) -> Path:
        """Return where the entry (kind, key) lives once published."""
        _check_name(kind, key)
        return self.root / kind / key[:2] / key

    def lock_path(self, kind: str, key: str) -> Path:
        """Return the lock file that serialises writers of (kind, key)."""
        _check_name(kind, key)
        return self.root / kind / f"{key}.lock"

    def get(self, kind: str, key: str) -> Tensors | None:
        """Return the entry's tensors (on CPU), or None on a miss.

        The manifest and the sha256 of the tensors are verified before anything is deserialised;
        a corrupt or mismatched entry is logged as a warning, removed and reported as a miss, so
        the caller simply recomputes.
        """
        entry = self.entry_dir(kind, key)
        tensors, problem = read_entry(entry, kind, key)
        if problem is not None:
            log.warning("discarding cache entry %s/%s at %s: %s", kind, key, entry, problem)
            _discard(entry)
        if tensors is not None:
            _mark_used(entry)
        return tensors

    def contains(self, kind: str, key: str) -> bool:
        """Whether a published entry for (kind, key) exists with a matching manifest, without
        reading or hashing its tensors (`plan` asks; `get` verifies fully before any use)."""
        _check_name(kind, key)
        return entry_info(self.entry_dir(kind, key), kind, key) is not None

    def put(
        self,
        kind: str,
        key: str,
        tensors: Tensors,
        record: dict[str, Any],
        metadata: dict[str, Any] | None = None,
    ) -> Path:
        """Store ``tensors`` under (kind, key) atomically and return the entry directory.

        Takes the key's lock so writers of one key never interleave. If a valid entry is already
        there (another process won), it is kept and this write is dropped.
        """
        with self._locked(kind, key):
            return self._publish(kind, key, tensors, record, metadata)

    def get_or_compute(
        self,
        kind: str,
        key: str,
        compute: Callable[[], Tensors],
        record: dict[str, Any],
        metadata: dict[str, Any] | None = None,
    ) -> tuple[Tensors, bool]:
        """Return (tensors, hit): the cached entry, or ``compute()``'s result after storing it.

        On a miss the key's lock is taken and the cache checked again, so when several processes
        miss at once exactly one computes and the others load its entry. On a miss the tensors
        ``compute`` returned are handed back as they are (same device); on a hit they are on CPU.
        """
        cached = self.get(kind, key)
        if cached is not None:
            return cached, True
        with self._locked(kind, key):
            cached = self.get(kind, key)
            if cached is not None:
                return cached, True
            tensors = compute()
            self._publish(kind, key, tensors, record, metadata)
            return tensors, False

    def entries(self) -> list[CacheEntryInfo]:
        """List published entries with a readable manifest, sorted by (kind, key).

        Read-only: temp dirs are skipped, and entries whose manifest cannot be read are skipped
        with a warning (``get`` or ``clear`` removes them). Checksums are not verified here.
        """
        found: list[CacheEntryInfo] = []
        for kind, key, entry in self._entry_dirs(None):
            info = entry_info(entry, kind, key)
            if info is not None:
                found.append(info)
            elif entry.is_dir():  # else it vanished meanwhile (a concurrent clear or discard)
                log.warning("cache entry %s/%s at %s has an unreadable manifest", kind, key, entry)
        return sorted(found, key=lambda info: (info.kind, info.key))

    def remove(self, kind: str, key: str) -> bool:
        """Remove one entry (renamed away, then deleted); whether it was there."""
        return _discard(self.entry_dir(kind, key))

    def clear(self, kind: str | None = None) -> int:
        """Remove every entry (of ``kind``, or of all kinds) and return how many were removed.

        Corrupt entries are removed and counted too. Temp dirs are removed when abandoned: older
        than ``stale_after``, or with no process holding their key's lock, so a write in progress
        in another process is never broken. Lock files stay (deleting a held one is unsafe).
        """
        if kind is not None:
            self._check_known_kind(kind)
        removed = 0
        for _kind, _key, entry in self._entry_dirs(kind):
            if _discard(entry):
                removed += 1
        for kind_dir in self._kind_dirs(kind):
            for bucket in _subdirs(kind_dir):
                self._sweep(kind_dir.name, bucket, only_key=None)
        return removed

    def gc(self, max_bytes: int | None = None, max_age: float | None = None,
           now: float | None = None) -> list[CacheEntryInfo]:
        """Remove the entries unused for more than `max_age` seconds, then the least recently
        used ones until the rest take at most `max_bytes`; return those removed.

        Each removal is atomic (renamed away, then deleted) and takes its key's lock without
        waiting: an entry that a process is writing is skipped (and still counted in the
        size). Abandoned temp dirs are swept as `clear` sweeps them.
        """
        now = time.time() if now is None else now
        entries = sorted(self.entries(), key=lambda info: info.used or info.created or _EPOCH)
        total, removed = sum(info.bytes for info in entries), []
        for info in entries:
            used = (info.used or _EPOCH).timestamp()
            too_old = max_age is not None and now - used > max_age
            if not too_old and (max_bytes is None or total <= max_bytes):
                continue
            if self._remove_unlocked(info):
                removed.append(info)
                total -= info.bytes
        for kind_dir in self._kind_dirs(None):
            for bucket in _subdirs(kind_dir):
                self._sweep(kind_dir.name, bucket, only_key=None)
        return removed

    def _remove_unlocked(self, info: CacheEntryInfo) -> bool:
        """Remove an entry if no process holds its key's lock; whether it was removed."""
        try:
            with FileLock(str(self.lock_path(info.kind, info.key)), timeout=0):
                return _discard(info.path)
        except Timeout:
            log.info("cache entry %s/%s is in use; kept", info.kind, info.key)
            return False

    def kinds(self) -> list[str]:
        """The kinds a user may name: the pipeline's and every kind with entries on disk."""
        return sorted({*PIPELINE_KINDS, *(kind for kind, _, _ in self._entry_dirs(None))})

    def _check_known_kind(self, kind: str) -> None:
        """Refuse (ConfigError) a kind the user named that is malformed or unknown."""
        known = self.kinds()
        if _KIND.fullmatch(kind) and kind in known:
            return
        what = "unknown" if _KIND.fullmatch(kind) else "not a kind name"
        raise ConfigError(f"cache kind {kind!r} is {what}; known kinds: {', '.join(known)}"
                          + did_you_mean(kind, known))

    def _publish(
        self,
        kind: str,
        key: str,
        tensors: Tensors,
        record: dict[str, Any],
        metadata: dict[str, Any] | None,
    ) -> Path:
        """Write and publish an entry; the caller must hold the key's lock."""
        final = self.entry_dir(kind, key)
        bucket = final.parent
        bucket.mkdir(parents=True, exist_ok=True)
        self._sweep(kind, bucket, only_key=key)
        if final.exists():
            existing, problem = read_entry(final, kind, key)
            if existing is not None:
                return final
            log.warning("replacing cache entry %s/%s at %s: %s", kind, key, final, problem)
            _discard(final)
        data = save_safetensors(
            {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        )
        manifest = {
            "format": FORMAT_VERSION,
            "kind": kind,
            "key": key,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "record": record,
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "tensor_count": len(tensors),
            "metadata": dict(metadata or {}),
        }
        manifest_text = json.dumps(manifest, sort_keys=True, indent=2)
        with staging_directory(final) as staging:
            write_new_file(staging / TENSORS_FILE, data)
            write_new_file(staging / MANIFEST_FILE, manifest_text.encode("utf-8"))
            fsync_dir(staging)
            try:
                os.replace(staging, final)
            except OSError as error:
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                shutil.rmtree(staging, ignore_errors=True)
                return final
            fsync_dir(bucket)
        return final

    def _locked(self, kind: str, key: str) -> _KeyLock:
        """Return a context manager holding the key's lock, mapping a timeout to a clear error."""
        path = self.lock_path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return _KeyLock(path, self.lock_timeout)

    def _sweep(self, kind: str, bucket: Path, only_key: str | None) -> None:
        """Remove abandoned temp dirs in a bucket.

        With ``only_key`` (caller holds that key's lock) every temp dir of that key is abandoned;
        other temp dirs are removed when older than ``stale_after`` or, without ``only_key``,
        when their key's lock can be taken at once (no writer alive).
        """
        now = time.time()
        for path in _subdirs(bucket, hidden=True):
            temp_key = _temp_dir_key(path.name)
            if temp_key is None:
                continue
            if temp_key == only_key or _age(path, now) > self.stale_after:
                shutil.rmtree(path, ignore_errors=True)
            elif only_key is None and _KEY.fullmatch(temp_key):
                lock = FileLock(str(self.root / kind / f"{temp_key}.lock"), timeout=0)
                try:
                    with lock:
                        shutil.rmtree(path, ignore_errors=True)
                except Timeout:
                    continue

    def _kind_dirs(self, kind: str | None) -> list[Path]:
        """The per-kind directories that exist (all kinds, or just ``kind``)."""
        if kind is not None:
            return [self.root / kind] if (self.root / kind).is_dir() else []
        return [path for path in _subdirs(self.root) if _KIND.fullmatch(path.name)]

    def _entry_dirs(self, kind: str | None) -> list[tuple[str, str, Path]]:
        """(kind, key, path) of every published entry directory, valid or not."""
        found = []
        for kind_dir in self._kind_dirs(kind):
            for bucket in _subdirs(kind_dir):
                for entry in _subdirs(bucket):
                    if _KEY.fullmatch(entry.name):
                        found.append((kind_dir.name, entry.name, entry))
        return found


class _KeyLock:
    """A ``FileLock`` on one key whose timeout raises ``EnvironmentProblem`` with a hint."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self.lock = FileLock(str(path), timeout=timeout)

    def __enter__(self) -> Self:
        try:
            self.lock.acquire()
        except Timeout as error:
            raise EnvironmentProblem(
                f"timed out after {self.timeout:g}s waiting for the cache lock {self.path}",
                hint="another wanda-export process is computing the same entry; wait for it, "
                "or point WANDA_EXPORT_CACHE at another directory",
            ) from error
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def _check_kind(kind: str) -> None:
    """Reject kinds that are not simple lowercase names (they become directory names)."""
    if not _KIND.fullmatch(kind):
        raise ValueError(f"cache kind must match {_KIND.pattern}, got {kind!r}")


def _check_name(kind: str, key: str) -> None:
    """Reject malformed kinds and keys; keys come from ``wanda_export.cache.keys`` (sha256 hex)."""
    _check_kind(kind)
    if not _KEY.fullmatch(key):
        raise ValueError(f"cache key must be a sha256 hex digest from cache.keys, got {key!r}")


def _discard(entry: Path) -> bool:
    """Remove an entry: rename it away first (one atomic step), then delete it.

    Returns whether this call removed it (False if it was already gone).
    """
    trash = entry.parent / f".{entry.name}.trash-{uuid.uuid4().hex[:8]}"
    try:
        os.replace(entry, trash)
    except FileNotFoundError:
        return False
    shutil.rmtree(trash, ignore_errors=True)
    return True


def _mark_used(entry: Path) -> None:
    """Record a read as the entry folder's mtime (the contents stay untouched), for `gc`'s
    least-recently-used order; a read-only cache is left as it is."""
    try:
        os.utime(entry)
    except OSError:
        pass


def _subdirs(directory: Path, hidden: bool = False) -> list[Path]:
    """Subdirectories of ``directory`` (hidden ones only if asked), [] if it does not exist."""
    try:
        children = list(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(
        child
        for child in children
        if child.name.startswith(".") == hidden and child.is_dir() and not child.is_symlink()
    )


def _temp_dir_key(name: str) -> str | None:
    """The key a temp or trash dir name (``.<key>.tmp-XXXX``) belongs to, else None."""
    if not name.startswith("."):
        return None
    for marker in _TEMP_MARKERS:
        if marker in name:
            return name[1:].split(marker, 1)[0]
    return None


def _age(path: Path, now: float) -> float:
    """Seconds since ``path`` was last modified (0 if it vanished meanwhile)."""
    try:
        return now - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
