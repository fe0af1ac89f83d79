"""Interim dotted-key overrides of pipeline data, for the sweep's variants.

`apply_overrides(data, ["mask.sparsity=0.6", ...])` has the shape of the `--set` overrides
(`config/overrides.py`, being written in parallel); when that module lands, the sweep switches
by changing its one import in `sweep/grid.py` and this file goes.

A key's first part is a top-level section (`model`, `data`, `gates`) or a stage name
(`mask.sparsity` is the `mask` entry of the `stages` list; `stages.mask.sparsity` too). A value is
read as one YAML scalar or flow collection by the bounded safe loader (`0.6`, `true`, `null`,
`[a, b]`); a value holding ':' stays a string, so `2:4` is the pattern, not YAML 1.1's base-60
integer 124.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from wanda_export.config import PipelineConfig, load_config, parse_config
from wanda_export.config.stages import STAGE_ORDER
from wanda_export.config.yaml_reader import BoundedLoader
from wanda_export.errors import ConfigError, did_you_mean

SECTIONS = ("version", "model", "data", "stages", "gates")


def parse_value(text: str, option: str) -> Any:
    """The value of one override: a YAML scalar or flow collection; `option` names it in errors."""
    if ":" in text:
        return text
    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as error:
        raise ConfigError(f"{option}: cannot read the value {text!r}: {error}") from None
    finally:
        loader.dispose()


def split_assignment(text: str, option: str) -> tuple[str, str]:
    """`KEY=VALUE` into (KEY, VALUE), refusing a missing '=' or an empty key."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{option} {text!r} is not KEY=VALUE (e.g. mask.sparsity=0.6)")
    return key.strip(), value.strip()


def _stage_body(data: dict[str, Any], name: str, option: str) -> dict[str, Any]:
    """The settings mapping of stage `name` in the raw `stages` list (made a mapping if null)."""
    for entry in data.get("stages") or []:
        if isinstance(entry, dict) and name in entry:
            if entry[name] is None:
                entry[name] = {}
            if not isinstance(entry[name], dict):
                raise ConfigError(f"{option}: the stage {name!r} is not a mapping in the file")
            return entry[name]
    raise ConfigError(f"{option}: the pipeline has no {name!r} stage; an override changes a "
                      "stage of the file, it does not add one")


def set_dotted(data: dict[str, Any], key: str, value: Any, option: str) -> None:
    """Set `key` (dotted) to `value` in pipeline `data` in place, creating missing mappings
    below a section; `option` (e.g. `--grid mask.sparsity`) names the override in errors."""
    parts = key.split(".")
    if any(not part for part in parts):
        raise ConfigError(f"{option}: {key!r} has an empty part")
    head, rest = parts[0], parts[1:]
    if head == "stages" and rest:
        head, rest = rest[0], rest[1:]
    if head in STAGE_ORDER:
        node = _stage_body(data, head, option)
    elif head in SECTIONS and parts[0] != "stages":
        node, rest = data, parts
    else:
        known = [*SECTIONS, *STAGE_ORDER]
        raise ConfigError(f"{option}: unknown section or stage {head!r}; known: "
                          f"{', '.join(known)}" + did_you_mean(head, known))
    if not rest or node is data and len(rest) < 2:
        raise ConfigError(f"{option}: name a setting inside {head!r}, e.g. {head}.KEY=VALUE")
    for part in rest[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{option}: {part!r} holds a {type(child).__name__}, not a mapping")
        node = child
    node[rest[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str],
                    option: str = "--set") -> dict[str, Any]:
    """A copy of pipeline `data` with each `KEY=VALUE` of `overrides` applied in order."""
    result = copy.deepcopy(data)
    for text in overrides:
        key, value = split_assignment(text, option)
        set_dotted(result, key, parse_value(value, f"{option} {key}"), f"{option} {key}")
    return result


def read_pipeline_data(file: Path) -> dict[str, Any]:
    """The raw data of pipeline `file`, after the loader's checks of the file itself (size,
    encoding, YAML syntax and limits, a mapping at the top); schema errors are left to the
    overrides to fix, so a sweep may vary a setting the file alone gets wrong."""
    try:
        load_config(file)
    except ConfigError as error:
        if any(not problem["path"] for problem in getattr(error, "problems", [])):
            raise
    loader = BoundedLoader(Path(file).expanduser().read_text(encoding="utf-8"))
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_with_overrides(file: Path, data: dict[str, Any], overrides: list[str],
                        option: str = "--set") -> PipelineConfig:
    """The validated config of pipeline `data` (read from `file`) with `overrides` applied;
    errors name the file and the overrides (their line numbers are of the merged YAML)."""
    merged = apply_overrides(data, overrides, option)
    text = yaml.safe_dump(merged, sort_keys=False, default_flow_style=None)
    source = f"{file} with {option} {' '.join(overrides)}" if overrides else str(file)
    return parse_config(text, source=source, base_dir=Path(file).expanduser().resolve().parent)
