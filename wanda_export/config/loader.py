"""Reading a pipeline YAML file into a `PipelineConfig`, reporting every mistake with its position.

The YAML is composed into nodes with the safe loader (never constructing Python objects) so each
value keeps its line and column. Duplicate keys, validation errors, cross-stage rules and data
paths that match no file are all collected first, then raised as one `ConfigError` of the form

    pipeline.yaml: 2 errors in the pipeline file
    pipeline.yaml:4:10: model -> dtype: Input should be 'float32', ... got the string 'int8'
    pipeline.yaml:9:20: stages -> mask -> sparsity: Input should be less than 1, got 1.2

with the same problems attached as `error.problems` (dicts with path, line, column, message).
As in pydantic, the rules spanning several keys of a mapping are checked once that mapping's
own keys are valid, so a file with type errors reports those first.

A hostile file fails fast, before anything follows its aliases: a file over
`MAX_PIPELINE_BYTES` is refused by its size, and a document nesting deeper than
`MAX_YAML_DEPTH`, holding more than `MAX_YAML_ALIASES` aliases, or expanding (aliases followed)
to more than `MAX_YAML_NODES` values ("billion laughs") is refused once composed, in time
linear in the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from wanda_export.config.base import readable_errors
from wanda_export.config.inputs import ModelConfig, resolve_data_path
from wanda_export.config.overrides import Override, overridden
from wanda_export.config.pipeline import PipelineConfig, unknown_key_message
from wanda_export.config.problems import Locations, Problem, config_error
from wanda_export.config.yaml_reader import (
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    BoundedLoader,
    LimitError,
    compose_bounded,
)
from wanda_export.errors import ConfigError

# Limits on a pipeline file: real ones are a few kilobytes with fewer than 1,000 values, a
# handful of aliases and about 5 levels of nesting.
MAX_PIPELINE_BYTES = 1 << 20


def load_config(path: str | Path, overrides: Sequence[str | Override] = ()) -> PipelineConfig:
    """Read and validate the pipeline file at `path` with `overrides` (`mask.sparsity=0.6`,
    config/overrides.py) applied; relative paths in it are relative to its folder. Raises
    ConfigError (exit code 2) listing every problem found."""
    file = Path(path).expanduser()
    try:
        with file.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_PIPELINE_BYTES:
                raise config_error(str(file), [Problem((), _too_large(size))])
            raw = handle.read(MAX_PIPELINE_BYTES + 1)  # a device or a pipe has no size
        if len(raw) > MAX_PIPELINE_BYTES:
            raise config_error(str(file), [Problem((), _too_large(None))])
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise config_error(str(file), [Problem((), "no such pipeline file")]) from None
    except IsADirectoryError:
        raise config_error(
            str(file), [Problem((), "is a directory, not a pipeline file")]
        ) from None
    except UnicodeDecodeError as exc:
        message = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
        raise config_error(str(file), [Problem((), message)]) from None
    except OSError as exc:
        message = f"cannot read the pipeline file: {exc.strerror or exc}"
        raise config_error(str(file), [Problem((), message)]) from None
    return parse_config(text, source=str(file), base_dir=file.resolve().parent,
                        overrides=overrides)


def _too_large(size: int | None) -> str:
    """Why a pipeline file of `size` bytes (None: of unknown size, read past the limit) is
    refused."""
    limit = f"the limit of {MAX_PIPELINE_BYTES:,} bytes ({MAX_PIPELINE_BYTES / 2**20:g} MiB)"
    what = f"is {size:,} bytes, over {limit}" if size is not None else f"holds more than {limit}"
    return f"the pipeline file {what}; a pipeline file holds a few kilobytes of settings"


def parse_config(text: str, *, source: str = "<string>", base_dir: Path,
                 overrides: Sequence[str | Override] = ()) -> PipelineConfig:
    """Validate pipeline YAML `text` with `overrides` applied; `source` names it in messages,
    `base_dir` anchors its relative paths. Every problem is collected before one ConfigError is
    raised; a problem with an overridden value is located at its `--set KEY`."""
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_PIPELINE_BYTES:
        raise config_error(source, [Problem((), _too_large(size))])
    node, data, problems, locations = _read_yaml(text, source)
    if node is None:
        raise config_error(source, [Problem((), "the pipeline file is empty")])
    if not isinstance(data, dict):
        message = (
            "the top level must be a mapping with version, model, data, stages, gates; "
            f"got a {type(data).__name__}"
        )
        raise config_error(source, [Problem((), message)], locations)
    if overrides:
        data, origins = overridden(data, overrides, source=source)
        locations.overrides.update(origins)
    problems += _path_problems(data, Path(base_dir))
    config = None
    try:
        config = PipelineConfig.model_validate(
            data, context={"base_dir": Path(base_dir), "source": source}
        )
    except ValidationError as error:
        problems += validation_problems(error)
    if problems or config is None:
        raise config_error(source, problems, locations)
    config._locations = locations
    return config


def _read_yaml(text: str, source: str) -> tuple[Any, Any, list[Problem], Locations]:
    """Compose the YAML safely, refuse it over the limits, then index and construct it; return
    the root node, the data, the duplicate key problems and the node positions. A syntax error
    or a passed limit raises at once."""
    loader = None
    try:
        loader = BoundedLoader(text)
        node = compose_bounded(loader)
        locations, problems = Locations(), []
        if node is not None:
            _index_nodes(node, (), None, locations, problems)
        data = loader.construct_document(node) if node is not None else None
    except LimitError as exc:
        raise config_error(source, [Problem((), exc.message, position=_mark(exc.mark))]) from None
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(source, exc) from None
    except yaml.reader.ReaderError as exc:
        raise _reader_error(source, text, exc) from None
    except yaml.YAMLError as exc:
        raise config_error(source, [Problem((), f"invalid YAML: {exc}")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    return node, data, problems, locations


def _mark(mark: yaml.Mark | None) -> tuple[int, int] | None:
    return (mark.line + 1, mark.column + 1) if mark is not None else None


def _reader_error(source: str, text: str, exc: yaml.reader.ReaderError) -> ConfigError:
    """A character YAML does not accept (a NUL byte, a control character), at its position."""
    before = text[: exc.position]
    line, column = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
    what = "a NUL byte (binary data?)" if exc.character == 0 else (
        f"the control character #x{exc.character:04x}")
    message = f"invalid YAML: {what} is not allowed in a YAML file"
    return config_error(source, [Problem((), message, position=(line, column))])


def _syntax_error(source: str, exc: yaml.MarkedYAMLError) -> ConfigError:
    """A YAML error at the line and column of its problem mark."""
    message = f"invalid YAML: {exc.problem or exc.context or 'syntax error'}"
    if exc.problem and exc.context:
        message += f" ({exc.context})"
    mark = exc.problem_mark or exc.context_mark
    locations = Locations()
    if mark is not None:
        locations.values[()] = (mark.line + 1, mark.column + 1)
    return config_error(source, [Problem((), message)], locations)


def _position(node: yaml.Node) -> tuple[int, int]:
    return _mark(node.start_mark)


def _index_nodes(
    node: yaml.Node,
    path: tuple[str, ...],
    key: yaml.Node | None,
    locations: Locations,
    problems: list[Problem],
) -> None:
    """Record each node's position by path, and report keys repeated within one mapping.

    At most MAX_YAML_NODES paths and MAX_YAML_DEPTH levels are recorded, so the work stays
    bounded even on a document whose aliases were not checked first."""
    if (path in locations.values or len(path) > MAX_YAML_DEPTH
            or len(locations.values) >= MAX_YAML_NODES):
        return  # a repeated key, a recursive alias, or past the limits
    locations.values[path] = _position(node)
    if key is not None:
        locations.keys[path] = _position(key)
    if isinstance(node, yaml.MappingNode):
        first_seen: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue
            name = key_node.value
            if name in first_seen:
                line = first_seen[name].start_mark.line + 1
                problems.append(
                    Problem(
                        (*path, name),
                        f"duplicate key {name!r} (first at line {line})",
                        position=_position(key_node),
                    )
                )
                continue
            first_seen[name] = key_node
            _index_nodes(value_node, (*path, name), key_node, locations, problems)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index_nodes(item, (*path, str(index)), None, locations, problems)


def validation_problems(error: ValidationError) -> list[Problem]:
    """Turn every pydantic error into a Problem at its YAML path, with a readable message."""
    return [Problem(loc, message, at_key)
            for loc, message, at_key in readable_errors(error, unknown_key_message)]


def _path_problems(data: dict[str, Any], base_dir: Path) -> list[Problem]:
    """Data paths that match no file, and model paths that name nothing, checked on the raw
    data so they are reported together with the validation errors."""
    problems = []
    sections = data.get("data")
    for section in ("calibration", "evaluation"):
        fields = sections.get(section) if isinstance(sections, dict) else None
        if not isinstance(fields, dict) or fields.get("source") not in ("text", "jsonl"):
            continue
        path = fields.get("path")
        if isinstance(path, str) and path.strip():
            message = data_path_problem(path, base_dir)
            if message:
                problems.append(Problem(("data", section, "path"), message))
    model = data.get("model")
    path = model.get("path") if isinstance(model, dict) else None
    if isinstance(path, str) and path.strip():
        message = model_path_problem(path, base_dir)
        if message:
            problems.append(Problem(("model", "path"), message))
    return problems


def data_path_problem(path: str, base_dir: Path) -> str | None:
    """Why a data file, directory or glob names no file the text readers would read (a
    directory: none with a text suffix); None if it names some."""
    from wanda_export.data.sources import matching_files

    resolved = resolve_data_path(path, base_dir)
    try:
        matching_files(resolved)
    except ConfigError as error:
        if Path(resolved).is_dir():
            return error.message
        return f"no file matches {path!r} (looked for {resolved})"
    return None


def model_path_problem(path: str, base_dir: Path) -> str | None:
    """Why a model path names no checkpoint directory, .gguf file or hub id; None if it does."""
    from wanda_export.model.loading import classify_path

    try:
        classify_path(ModelConfig(path=path).resolved_path(base_dir))
    except ConfigError as error:
        return f"{error.message} (relative paths are relative to {base_dir})"
    return None
