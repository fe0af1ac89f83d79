"""Where wanda-export keeps its files: one folder for the activation cache, the converted
default model and the fingerprint memo. A leaf module: everything may import it."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Return the wanda-export cache root: $WANDA_EXPORT_CACHE, else the platform user cache."""
    configured = os.environ.get("WANDA_EXPORT_CACHE")
    if configured:
        return Path(configured).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("wanda-export"))
