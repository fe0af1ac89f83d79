"""One cache entry on disk: its two files (the tensors as safetensors, never pickle, and a JSON
manifest written last), how they are written durably, and how an entry is read back and
verified (format, kind, key, size, sha256, tensor count) before anything trusts it."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

FORMAT_VERSION = 1
TENSORS_FILE = "tensors.safetensors"
MANIFEST_FILE = "manifest.json"

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class CacheEntryInfo:
    """One published entry, as listed by ``cache ls``."""

    kind: str
    key: str
    path: Path
    bytes: int
    created: datetime | None
    metadata: dict[str, Any] = field(default_factory=dict)
    used: datetime | None = None  # last read by a run (the entry folder's mtime), for `cache gc`


def read_entry(entry: Path, kind: str, key: str) -> tuple[Tensors | None, str | None]:
    """Load and verify an entry: (tensors, None), (None, None) on a miss, (None, why) if corrupt.

    The tensors file is read once into memory and the checksum is verified on those very bytes
    before safetensors parses them, so a concurrent removal cannot slip an unverified file in.
    An entry that vanishes while being read (removed by another process) is a plain miss.
    """
    if not entry.is_dir():
        return None, None
    try:
        manifest_text = (entry / MANIFEST_FILE).read_text(encoding="utf-8")
        data = (entry / TENSORS_FILE).read_bytes()
    except FileNotFoundError as error:
        if not entry.is_dir():
            return None, None
        return None, f"missing file {Path(error.filename or '?').name}"
    except (OSError, UnicodeDecodeError) as error:
        return None, f"unreadable: {error}"
    try:
        manifest = json.loads(manifest_text)
    except json.JSONDecodeError as error:
        return None, f"manifest is not valid JSON ({error})"
    problem = manifest_problem(manifest, kind, key)
    if problem is None and manifest["bytes"] != len(data):
        problem = f"tensors file has {len(data)} bytes, manifest says {manifest['bytes']}"
    if problem is None and hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        problem = "sha256 of the tensors file does not match the manifest"
    if problem is not None:
        return None, problem
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError, KeyError, TypeError, RuntimeError) as error:
        return None, f"tensors file does not parse: {error}"
    if len(tensors) != manifest["tensor_count"]:
        return None, f"{len(tensors)} tensors, manifest says {manifest['tensor_count']}"
    return tensors, None


def manifest_problem(manifest: Any, kind: str, key: str) -> str | None:
    """Say what is wrong with a parsed manifest for (kind, key), or None if it is consistent."""
    if not isinstance(manifest, dict):
        return "manifest is not a JSON object"
    if manifest.get("format") != FORMAT_VERSION:
        return f"manifest format {manifest.get('format')!r}, expected {FORMAT_VERSION}"
    if manifest.get("kind") != kind or manifest.get("key") != key:
        return f"manifest is for {manifest.get('kind')!r}/{manifest.get('key')!r}"
    if not isinstance(manifest.get("sha256"), str):
        return "manifest has no sha256"
    for name in ("bytes", "tensor_count"):
        if not isinstance(manifest.get(name), int):
            return f"manifest has no integer {name!r}"
    return None


def entry_info(entry: Path, kind: str, key: str) -> CacheEntryInfo | None:
    """Describe an entry from its manifest, or None if the manifest is unreadable or mismatched."""
    try:
        manifest = json.loads((entry / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if manifest_problem(manifest, kind, key) is not None:
        return None
    try:
        created: datetime | None = datetime.fromisoformat(manifest.get("created"))
    except (TypeError, ValueError):
        created = None
    metadata = manifest.get("metadata")
    try:
        size = sum(path.stat().st_size for path in entry.iterdir() if path.is_file())
        used = datetime.fromtimestamp(entry.stat().st_mtime, UTC)
    except OSError:
        return None
    return CacheEntryInfo(
        kind=kind,
        key=key,
        path=entry,
        bytes=size,
        created=created,
        metadata=metadata if isinstance(metadata, dict) else {},
        used=used,
    )


def write_new_file(path: Path, data: bytes) -> None:
    """Write a new file and fsync it, so it is on disk before the entry is published.

    A failed write (a full disk) names no file; the error raised here names ``path``."""
    try:
        with path.open("xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        if error.filename is not None:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from error


def fsync_dir(directory: Path) -> None:
    """Fsync a directory so the names created or renamed in it survive a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
