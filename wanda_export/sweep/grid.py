"""The variants of a sweep: `--grid KEY=V1,V2,...` axes expanded into their cartesian product,
each variant a list of overrides of the pipeline data and a folder name made of its values.

Pure: no file is read here. The first axis varies slowest, so `--grid mask.sparsity=0.5,0.6
--grid score.method=wanda,sparsegpt` gives sparsity-0.5_method-wanda, sparsity-0.5_method-sparsegpt,
sparsity-0.6_method-wanda, ...
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

from wanda_export.config.overrides import Override, parse_override
from wanda_export.errors import ConfigError

GRID_OPTION = "--grid"
MAX_VARIANTS = 256  # a sweep is a handful of runs; a typo such as a 1,000-value axis is refused
_UNSAFE = re.compile(r"[^A-Za-z0-9.+-]+")


@dataclass(frozen=True)
class Axis:
    """One `--grid` option: a dotted key and the values it takes, as typed and as read."""

    key: str
    texts: tuple[str, ...]

    def values(self) -> list[Any]:
        """The values as the pipeline file would read them (`0.5` a number, `2:4` a string)."""
        return [_read(self.key, text).value for text in self.texts]


@dataclass(frozen=True)
class Variant:
    """One run of the sweep: its folder name and its `KEY=VALUE` overrides (grid order)."""

    name: str
    assignments: tuple[tuple[str, str], ...]

    @property
    def overrides(self) -> list[Override]:
        """The overrides, located as `--grid KEY` in errors."""
        return [_read(key, text) for key, text in self.assignments]

    def values(self) -> dict[str, Any]:
        """{key: value} of this variant, each value read as the file would read it."""
        return {override.key: override.value for override in self.overrides}


def _read(key: str, text: str) -> Override:
    """One value of a `--grid` axis, read as `--set KEY=VALUE` reads it."""
    return parse_override(f"{key}={text}", option=GRID_OPTION)


def _split_values(text: str) -> list[str]:
    """Comma-separated values, commas inside [...] or {...} kept (`[safetensors, onnx]`)."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    values.append(current.strip())
    return values


def parse_axis(text: str) -> Axis:
    """One `--grid KEY=V1,V2,...` option; every value must be non-empty and appear once."""
    key, equals, values_text = (part.strip() for part in text.partition("="))
    if not equals or not key:
        raise ConfigError(f"{GRID_OPTION} {text!r} is not KEY=V1,V2,... (e.g. "
                          "mask.sparsity=0.5,0.6,0.7)")
    texts = _split_values(values_text)
    if any(not value for value in texts):
        raise ConfigError(f"{GRID_OPTION} {key}: an empty value in {values_text!r}; write "
                          "KEY=V1,V2,... (e.g. mask.sparsity=0.5,0.6,0.7)")
    repeated = sorted({value for value in texts if texts.count(value) > 1})
    if repeated:
        raise ConfigError(f"{GRID_OPTION} {key}: {', '.join(repeated)} given more than once")
    axis = Axis(key, tuple(texts))
    axis.values()  # a value YAML cannot read is refused now, naming the key
    return axis


def _label(key: str, keys: list[str]) -> str:
    """The key's last part, or the whole key when another axis ends the same way."""
    last = key.rsplit(".", 1)[-1]
    clashes = sum(other.rsplit(".", 1)[-1] == last for other in keys)
    return last if clashes == 1 else key


def _slug(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-") or "x"


def expand(axes: list[Axis]) -> list[Variant]:
    """Every combination of the axes' values, first axis slowest, with unique folder names
    (`sparsity-0.5_method-wanda`: only letters, digits and `.+-_`, safe as a CI artifact name)."""
    if not axes:
        raise ConfigError(f"a sweep needs at least one {GRID_OPTION} KEY=V1,V2,...")
    keys = [axis.key for axis in axes]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ConfigError(f"{GRID_OPTION} {', '.join(repeated)} given more than once; put all "
                          "the values in one option (KEY=V1,V2,...)")
    count = 1
    for axis in axes:
        count *= len(axis.texts)
    if count > MAX_VARIANTS:
        raise ConfigError(f"the grid has {count:,} variants, over the limit of {MAX_VARIANTS}")
    variants, names = [], set()
    for combination in itertools.product(*(axis.texts for axis in axes)):
        name = "_".join(f"{_slug(_label(key, keys))}-{_slug(value)}"
                        for key, value in zip(keys, combination))
        unique, index = name, 2
        while unique in names:
            unique, index = f"{name}-{index}", index + 1
        names.add(unique)
        variants.append(Variant(unique, tuple(zip(keys, combination))))
    return variants
