"""On-disk cache of tensor dicts (e.g. calibration statistics), keyed by explicit records.

``keys`` decides what an entry's identity is; ``store`` keeps entries atomic, locked and
checksummed so several processes can share one cache directory. The names below are imported
on first use, so reading a key does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "COLLECTOR_VERSION": "keys",
    "CalibrationKey": "keys",
    "canonical_json": "keys",
    "digest_of": "keys",
    "plan_digest": "keys",
    "CacheEntryInfo": "store",
    "CacheStore": "store",
}

__all__ = ["COLLECTOR_VERSION", "CacheEntryInfo", "CacheStore", "CalibrationKey", "canonical_json",
           "digest_of", "plan_digest"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
