"""wanda-export: prune causal LMs with Wanda and ship verified sparse artifacts.

The public API, imported on first use so `import wanda_export` stays instant:

    from wanda_export import prune
    result = prune("HuggingFaceTB/SmolLM2-135M", sparsity=0.5, pattern="2:4", out="release/")
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "prune": "wanda_export.api",
    "PruneOutcome": "wanda_export.api",
    "PruneSpec": "wanda_export.config.prune_spec",
    "SettingsError": "wanda_export.config.prune_spec",
    "PipelineConfig": "wanda_export.config.pipeline",
    "load_config": "wanda_export.config.loader",
    "apply_overrides": "wanda_export.config.overrides",
    "prune_model": "wanda_export.prune",
    "load_model": "wanda_export.model.loading",
    "run_pipeline": "wanda_export.pipeline.runner",
    "ConfigError": "wanda_export.errors",
    "EnvironmentProblem": "wanda_export.errors",
    "GateFailure": "wanda_export.errors",
}

__all__ = ["ConfigError", "EnvironmentProblem", "GateFailure", "PipelineConfig", "PruneOutcome",
           "PruneSpec", "SettingsError", "__version__", "apply_overrides", "load_config",
           "load_model", "prune", "prune_model", "run_pipeline"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'wanda_export' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


class _Package(types.ModuleType):
    """The package, whose `prune` attribute stays the API function: importing the engine
    module `wanda_export.prune` (reached by its full path, `from wanda_export.prune import
    prune_model`) would otherwise bind the module over it."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "prune" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
