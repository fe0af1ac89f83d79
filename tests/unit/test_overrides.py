"""Unit tests of config/overrides.py: `--set KEY=VALUE` applied to a pipeline's data, validated
like the file, and every problem located at the override that caused it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pipelines import pipeline_data, pipeline_yaml, write_data_files

from wanda_export.config import parse_config
from wanda_export.config.overrides import (
    MAX_OVERRIDE_CHARS,
    apply_overrides,
    overridden,
    parse_override,
)
from wanda_export.errors import ConfigError


@pytest.fixture
def text(tmp_path: Path) -> str:
    """The test pipeline's YAML (hub model id, so no model folder is needed), its data files
    in tmp_path."""
    write_data_files(tmp_path)
    return pipeline_yaml(pipeline_data(model={"path": "org/model"}))


def parse(text: str, folder: Path, *overrides: str):
    return parse_config(text, source="p.yaml", base_dir=folder, overrides=overrides)


def error_of(text: str, folder: Path, *overrides: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse(text, folder, *overrides)
    return caught.value


@pytest.mark.parametrize(("given", "value"), [
    ("mask.sparsity=0.6", 0.6), ("mask.pattern=2:4", "2:4"), ("a.b=[onnx, safetensors]",
                                                              ["onnx", "safetensors"]),
    ("a.b={max: 30}", {"max": 30}), ("a.b=", None), ("a.b=null", None), ("a.b=true", True),
    ("a.b='0.5'", "0.5"), ("a.b=x=y", "x=y"), ("a.b=[1:2]", ["1:2"]),
])
def test_values_are_read_as_yaml(given: str, value) -> None:
    assert parse_override(given).value == value


def test_overrides_set_sections_and_stages_in_order_and_leave_the_input_alone(text, tmp_path):
    data = yaml.safe_load(text)
    before = yaml.safe_dump(data)
    changed = apply_overrides(data, [
        "mask.sparsity=0.6", "stages.calibrate.mode=sequential", "model.device=cuda",
        "data.calibration.nsamples=8", "export.formats.0=onnx", "gates.parity.max_abs_diff=0.01",
        "mask.sparsity=0.7"])
    assert yaml.safe_dump(data) == before
    stages = {name: body for item in changed["stages"] for name, body in item.items()}
    assert stages["mask"]["sparsity"] == 0.7 and stages["calibrate"]["mode"] == "sequential"
    assert stages["export"]["formats"] == ["onnx"]
    assert changed["model"]["device"] == "cuda" and changed["data"]["calibration"]["nsamples"] == 8
    assert changed["gates"]["parity"] == {"max_abs_diff": 0.01}


def test_an_overridden_config_is_the_config_of_the_edited_file(text, tmp_path):
    config = parse(text, tmp_path, "mask.sparsity=0.6", "calibrate.mode=sequential",
                   "gates.sparsity.min=0.6")
    edited = text.replace("sparsity: 0.5", "sparsity: 0.6").replace("mode: dense",
                                                                    "mode: sequential")
    edited = edited.replace("min: 0.5", "min: 0.6")
    assert config.stage("mask").sparsity == 0.6
    assert config.digest() == parse(edited, tmp_path).digest() != parse(text, tmp_path).digest()


def test_problems_with_overridden_values_are_located_at_the_override(text, tmp_path):
    error = error_of(text, tmp_path, "mask.sparsity=1.2", "calibrate.mode=lazy",
                     "mask.sparsty=0.6", "gates.parityy={max_abs_diff: 1}")
    lines = str(error).splitlines()
    assert lines[0] == "p.yaml: 4 errors in the pipeline file"
    assert "--set mask.sparsity: Input should be less than 1, got 1.2" in lines
    assert "--set calibrate.mode: Input should be 'sequential' or 'dense', got the string 'lazy'" \
        in lines
    assert any(line.startswith("--set mask.sparsty: unknown key 'sparsty'")
               and line.endswith("did you mean 'sparsity'?") for line in lines)
    assert any(line.startswith("--set gates.parityy: unknown key") for line in lines)
    row = next(row for row in error.problems if row["origin"] == "--set mask.sparsity")
    assert row == {"path": "stages -> mask -> sparsity", "line": None, "column": None,
                   "origin": "--set mask.sparsity",
                   "message": "Input should be less than 1, got 1.2"}


def test_a_file_problem_keeps_its_line_and_a_nested_override_problem_shows_its_path(
        text, tmp_path):
    broken = text.replace("seed: 0", "seed: -1")
    error = error_of(broken, tmp_path, "gates.parity={max_abs_dif: 1}")
    first, second = error.problems
    assert first["origin"] is None and first["line"] and "calibration -> seed" in first["path"]
    assert second["origin"] == "--set gates.parity"
    assert ("--set gates.parity: gates -> parity -> max_abs_dif: unknown key 'max_abs_dif'"
            in str(error))


def test_a_cross_section_rule_broken_by_an_override_points_at_it(text, tmp_path):
    error = error_of(text, tmp_path, "mask.pattern=2:4", "mask.sparsity=0.6",
                     "gates.sparsity.pattern=2:4")
    assert "--set mask.sparsity: pattern 2:4 means sparsity 0.5" in str(error)


@pytest.mark.parametrize(("override", "phrase"), [
    ("maks.sparsity=0.6", "unknown key 'maks'; a key starts with a section or a stage"),
    ("mask.sparsity", "expected KEY=VALUE"),
    ("mask..sparsity=1", "the key must be dotted names or list indices"),
    ("=1", "the key must be dotted names"),
    ("mask.pattern=[2", "the value is not valid YAML"),
    ("mask.pattern=!!python/name:os.system ''", "the tag !!python/name:os.system is not allowed"),
    ("mask.sparsity=1" + "0" * 200, "an integer of 201 characters"),
    ("mask.x=[" + ",".join(["1"] * 20_001) + "]", "more than 20,000 values"),
    ("mask.x=" + "x" * MAX_OVERRIDE_CHARS, "over the limit of 65,536"),
    ("benchmark.warmup=3", "the pipeline has no 'benchmark' stage (it has: calibrate, score"),
    ("export.formats.5=onnx", "'5' is not an index of the list there, which has 1 item(s)"),
    ("export.formats.x.y=onnx", "'x' is not an index of the list there"),
    ("mask.sparsity.x=1", "the value before 'x' is a number, not a mapping"),
])
def test_malformed_overrides_are_refused_by_name(text, tmp_path, override, phrase):
    error = error_of(text, tmp_path, override, "calibrate.mode=lazy")
    row = error.problems[0]
    assert phrase in row["message"] and row["origin"].startswith("--set ")
    assert len(error.problems) == 1  # the malformed one is reported before validation runs
    assert "did you mean 'mask'?" in str(error) or not override.startswith("maks")


def test_every_malformed_override_is_reported_at_once(text) -> None:
    with pytest.raises(ConfigError) as caught:
        overridden(yaml.safe_load(text), ["a", "maks.x=1", "b.c=[", "mask.sparsity=0.6"])
    assert [row["origin"] for row in caught.value.problems] == [
        "--set a", "--set maks.x", "--set b.c"]
