"""Command-line overrides of a pipeline file, `--set mask.sparsity=0.6` (as `dvc exp run -S`).

A key is a dotted path: a top-level section and its keys (`model.device`, `data.calibration.
nsamples`, `gates.sparsity.min`), or a stage name and its keys (`mask.sparsity`, also written
`stages.mask.sparsity`); a list item is addressed by its index (`export.formats.0`). The value
is read as YAML within the file's bounds (`0.6`, `dense`, `[onnx, safetensors]`, `null`).
Overrides apply in order to the file's data before validation, so an overridden value is
checked exactly like the file's, and a problem with it is located at `--set KEY`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml

from wanda_export.config.base import yaml_kind
from wanda_export.config.pipeline import PipelineConfig
from wanda_export.config.problems import Problem, config_error
from wanda_export.config.stages import STAGE_ORDER
from wanda_export.config.yaml_reader import LimitError, read_value
from wanda_export.errors import ConfigError, did_you_mean

SET_OPTION = "--set"
MAX_OVERRIDE_CHARS = 65_536  # one KEY=VALUE; a real one is a few dozen characters
_KEY_PART = re.compile(r"[A-Za-z0-9_-]+")


class OverrideError(ConfigError):
    """A malformed override: `label` (`--set mask.sparsity`) says which, `reason` what is wrong."""

    def __init__(self, label: str, reason: str) -> None:
        super().__init__(f"{label}: {reason}")
        self.label, self.reason = label, reason


@dataclass(frozen=True)
class Override:
    """One parsed `KEY=VALUE`: the dotted key as typed, its parts, and the value read as YAML."""

    key: str
    parts: tuple[str, ...]
    value: Any
    label: str  # where a problem with it is reported: `--set mask.sparsity`, `--device`

    @property
    def text(self) -> str:
        """The override as `KEY=VALUE` again, for logs."""
        return f"{self.key}={self.value}"


def parse_override(text: str, *, option: str = SET_OPTION, keyed: bool = True) -> Override:
    """Read one `KEY=VALUE` given to `option`: an option that takes keys (`--set`, the sweep's
    `--grid`), located as `--set KEY`, or with `keyed=False` an option standing for one key
    (`--device`), located as the option. Raises ConfigError naming it when it is malformed."""
    key, equals, value_text = text.partition("=")
    key = key.strip()
    where = f"{option} {key or text}" if keyed else option
    if len(text) > MAX_OVERRIDE_CHARS:
        raise OverrideError(where, f"the override is {len(text):,} characters, over the limit "
                          f"of {MAX_OVERRIDE_CHARS:,}")
    if not equals:
        raise OverrideError(where, "expected KEY=VALUE, e.g. mask.sparsity=0.6")
    parts = tuple(key.split("."))
    if not all(_KEY_PART.fullmatch(part) for part in parts):
        raise OverrideError(where, "the key must be dotted names or list indices, e.g. "
                          "mask.sparsity or export.formats.0")
    try:
        value = read_value(value_text)
    except LimitError as error:
        raise OverrideError(where, f"{error.message}") from None
    except yaml.YAMLError as error:
        reason = getattr(error, "problem", None) or "syntax error"
        if not isinstance(error, yaml.constructor.ConstructorError):
            reason += "; quote a string holding ':' or '#'"
        raise OverrideError(where, f"the value is not valid YAML ({reason})") from None
    return Override(key, parts, value, where)


def _data_path(data: dict[str, Any], override: Override) -> tuple[str, ...]:
    """The path in the file's data that `override` sets: ("stages", "2", "mask", "sparsity")
    for `mask.sparsity`. Raises ConfigError for a section or stage that cannot be there."""
    parts = override.parts
    if parts[0] == "stages" and len(parts) > 1 and parts[1] in STAGE_ORDER:
        parts = parts[1:]
    head = parts[0]
    if head in STAGE_ORDER:
        stages = data.get("stages")
        names = [next(iter(item)) for item in stages if isinstance(item, dict) and len(item) == 1
                 ] if isinstance(stages, list) else []
        if head not in names:
            raise OverrideError(override.label, f"the pipeline has no '{head}' stage (it has: "
                              f"{', '.join(names) or 'none'}); add the stage to the file")
        return ("stages", str(names.index(head)), *parts)
    if head not in PipelineConfig.model_fields:
        choices = [*PipelineConfig.model_fields, *STAGE_ORDER]
        raise OverrideError(override.label, f"unknown key {head!r}; a key starts with a section "
                          f"or a stage: {', '.join(choices)}" + did_you_mean(head, choices))
    return parts


def _set(data: dict[str, Any], path: tuple[str, ...], value: Any, label: str) -> None:
    """Set `path` in `data` to `value`, making the missing mappings on the way (a null section
    counts as an empty one). Raises ConfigError where the path runs into a value."""
    node: Any = data
    for depth, part in enumerate(path):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise OverrideError(label, f"{part!r} is not an index of the list there, "
                                    f"which has {len(node)} item(s)")
            part = int(part)  # type: ignore[assignment]
        elif not isinstance(node, dict):
            raise OverrideError(label, f"the value before {part!r} is a {yaml_kind(node)}, "
                                    "not a mapping")
        if depth == len(path) - 1:
            node[part] = copy.deepcopy(value)
        else:
            if isinstance(node, dict) and node.get(part) is None:
                node[part] = {}
            node = node[part]


def overridden(data: dict[str, Any], overrides: Iterable[str | Override], *,
               source: str = "the overrides"
               ) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """`data` (a pipeline file's YAML data, left unchanged) with `overrides` (`KEY=VALUE` texts
    or parsed ones) applied in order, and each overridden path mapped to its label
    (`--set mask.sparsity`) for locating problems. Raises one ConfigError listing every
    malformed override, headed by `source`."""
    result, origins, problems = copy.deepcopy(data), {}, []
    for item in overrides:
        try:
            override = parse_override(item) if isinstance(item, str) else item
            path = _data_path(result, override)
            _set(result, path, override.value, override.label)
        except OverrideError as error:
            problems.append(Problem((), error.reason, origin=error.label))
            continue
        origins.pop(path, None)  # a later override of the same key is the one that counts
        origins[path] = override.label
    if problems:
        raise config_error(source, problems)
    return result, origins


def apply_overrides(data: dict[str, Any], overrides: Iterable[str | Override]
                    ) -> dict[str, Any]:
    """A copy of pipeline `data` with `overrides` (`["mask.sparsity=0.6", ...]`) applied in
    order; validate it with `parse_config(..., overrides=...)` or `PipelineConfig`. Raises
    ConfigError for a malformed override."""
    return overridden(data, overrides)[0]
