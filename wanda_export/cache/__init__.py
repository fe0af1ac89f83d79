"""On-disk cache of tensor dicts (e.g. calibration statistics), keyed by explicit records.

``keys`` decides what an entry's identity is; ``store`` keeps entries atomic, locked and
checksummed so several processes can share one cache directory.
"""

from __future__ import annotations

from wanda_export.cache.keys import (
    COLLECTOR_VERSION,
    CalibrationKey,
    canonical_json,
    digest_of,
    plan_digest,
)
from wanda_export.cache.store import CacheEntryInfo, CacheStore

__all__ = [
    "COLLECTOR_VERSION",
    "CacheEntryInfo",
    "CacheStore",
    "CalibrationKey",
    "canonical_json",
    "digest_of",
    "plan_digest",
]
