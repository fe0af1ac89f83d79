"""Fixtures for unit tests of the pipeline's parts: the test pipeline over the tiny llama
checkpoint (its text files in the test's tmp_path), and a run context built as the runner
builds one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pipelines import pipeline_data, write_data_files, write_pipeline_file

from wanda_export import __version__
from wanda_export.cache.store import CacheStore
from wanda_export.config import PipelineConfig, load_config
from wanda_export.model.loading import load_model
from wanda_export.pipeline.context import RunContext
from wanda_export.pipeline.run_plan import plan_run
from wanda_export.report.record import RunRecord


@pytest.fixture
def pipeline_config(tmp_path: Path, tiny_model_dir) -> Callable[..., PipelineConfig]:
    """Factory: ``pipeline_config(**settings)`` writes the test pipeline (the keywords of
    `pipelines.pipeline_data`) into tmp_path, over the read-only tiny llama, and loads it."""
    write_data_files(tmp_path)

    def load(name: str = "pipeline.yaml", **settings) -> PipelineConfig:
        settings["model"] = {"path": str(tiny_model_dir("llama")), **settings.get("model", {})}
        return load_config(write_pipeline_file(tmp_path / name, pipeline_data(**settings)))

    return load


@pytest.fixture
def run_context(tmp_path: Path, isolated_cache: Path) -> Callable[..., RunContext]:
    """Factory: ``run_context(config, names=None)`` loads the config's model and returns a
    fresh `RunContext` with its run plan for the stages `names` (default: all), as
    `run_pipeline` builds it; every context of a test shares the cache in `isolated_cache`."""

    def build(config: PipelineConfig, names: list[str] | None = None) -> RunContext:
        model = config.model
        loaded = load_model(model.resolved_path(config.base_dir), dtype=model.dtype,
                            device=model.device)
        staging = tmp_path / "staging"
        staging.mkdir(exist_ok=True)
        ctx = RunContext(config=config, cache=CacheStore(isolated_cache), staging=staging,
                         record=RunRecord(tool_version=__version__,
                                          config_digest=config.digest()),
                         loaded=loaded)
        ctx.run_plan = plan_run(config, names or config.stage_names(), loaded.fingerprint,
                                [target.name for target in ctx.targets],
                                lambda: ctx.calibration_windows, lambda: ctx.evaluation_windows)
        return ctx

    return build
