"""Fixtures for CLI tests: a tiny model, small text files, and a pipeline file writer."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pipelines import pipeline_data, write_data_files, write_pipeline_file


@pytest.fixture
def workdir(tmp_path: Path, tiny_model_dir) -> Path:
    """A folder with the tiny llama model, calib.txt and eval.txt."""
    shutil.copytree(tiny_model_dir("llama"), tmp_path / "model")
    return write_data_files(tmp_path)


@pytest.fixture
def write_pipeline(workdir: Path):
    """Write pipeline.yaml (or `name`) into the workdir; return its path. The keywords are
    `pipelines.pipeline_data`'s: its knobs and nested overrides of whole sections."""

    def write(name: str = "pipeline.yaml", **settings) -> Path:
        return write_pipeline_file(workdir / name, pipeline_data(**settings))

    return write


@pytest.fixture(autouse=True)
def isolated_cache(isolated_cache: Path) -> Path:
    """Every CLI test gets its own cache folder (tests/conftest.py's, here used always)."""
    return isolated_cache
