"""The whole pipeline file as one pydantic model: its sections, its stages in order, its gates,
where it was read from, its digest, and the pruning settings it gives the engine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Self, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from wanda_export.cache.keys import digest_of
from wanda_export.config.base import (
    Loc,
    StrictModel,
    custom_error,
    describe_value,
    rules_error,
)
from wanda_export.config.gates import GatesConfig
from wanda_export.config.inputs import DataConfig, ModelConfig, resolve_data_path
from wanda_export.config.pipeline_rules import pipeline_problems
from wanda_export.config.prune_spec import PruneSpec
from wanda_export.config.stages import STAGE_MODELS, STAGE_ORDER, StageEntry
from wanda_export.errors import did_you_mean


def _exact_version(value: Any) -> Any:
    """Accept only the integer 1 (Literal[1] alone would also take true and 1.0)."""
    if type(value) is not int or value != 1:
        raise custom_error(
            "the version must be 1 (the only one this wanda-export reads), "
            f"got {describe_value(value)}"
        )
    return value


class PipelineConfig(StrictModel):
    """A whole pipeline file. `base_dir` (the file's folder) anchors relative paths."""

    version: Annotated[Literal[1], BeforeValidator(_exact_version)]
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    stages: list[StageEntry]
    gates: GatesConfig = Field(default_factory=GatesConfig)

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _source: str = PrivateAttr(default="<config>")
    _locations: Any = PrivateAttr(default=None)

    @field_validator("model", "data", "gates", mode="before")
    @classmethod
    def _null_section_means_defaults(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("stages")
    @classmethod
    def _not_empty(cls, value: list[StageEntry]) -> list[StageEntry]:
        if not value:
            raise custom_error("the pipeline needs at least one stage, e.g. '- mask: {}'")
        return value

    @model_validator(mode="after")
    def _cross_stage_rules(self, info: ValidationInfo) -> Self:
        context = info.context or {}
        if context.get("base_dir") is not None:
            self._base_dir = Path(context["base_dir"]).resolve()
        if context.get("source"):
            self._source = str(context["source"])
        problems = pipeline_problems(self)
        if problems:
            raise rules_error(problems)
        return self

    @property
    def base_dir(self) -> Path:
        """The folder relative paths resolve against: the YAML file's folder (else the cwd)."""
        return self._base_dir

    @property
    def source(self) -> str:
        """Where the config was read from, for error messages."""
        return self._source

    def stage_names(self) -> list[str]:
        """The stage names in file order."""
        return [entry.name for entry in self.stages]

    def stage_index(self, name: str) -> int | None:
        """The position of stage `name` in `stages`, or None when absent."""
        if name not in STAGE_MODELS:
            raise ValueError(f"unknown stage {name!r}; known: {', '.join(STAGE_ORDER)}")
        return next((i for i, entry in enumerate(self.stages) if entry.name == name), None)

    def stage(self, name: str) -> Any:
        """The settings of stage `name` (e.g. a `MaskStage`), or None when it is not in the file."""
        index = self.stage_index(name)
        return None if index is None else self.stages[index].body

    def resolved_dump(self) -> dict[str, Any]:
        """The config as JSON data with the model and data paths made absolute."""
        dump = self.model_dump(mode="json")
        dump["model"]["path"] = self.model.resolved_path(self.base_dir)
        for section in ("calibration", "evaluation"):
            fields = getattr(self.data, section)
            if fields is not None and fields.path:
                dump["data"][section]["path"] = resolve_data_path(fields.path, self.base_dir)
        return dump

    def digest(self) -> str:
        """sha256 of the canonical JSON of the resolved config: the cache key of a run.

        Comments, key order and formatting of the YAML do not change it; any value does.
        """
        return digest_of(self.resolved_dump())

    def prune_spec(self) -> PruneSpec | None:
        """The `PruneSpec` of the calibrate, score and mask stages (and the calibration batch
        size), or None without a mask stage."""
        if self.stage("mask") is None:
            return None
        settings: dict[str, Any] = {}
        for name in ("calibrate", "score", "mask"):
            body = self.stage(name)
            if body is not None:
                settings |= body.model_dump()
        if self.data.calibration is not None:
            settings["batch_size"] = self.data.calibration.batch_size
        return PruneSpec(**settings)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `X | None`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _item_type(annotation: Any) -> Any:
    """The element type of a list annotation (through `| None`)."""
    if getattr(annotation, "__origin__", None) is list:
        return get_args(annotation)[0]
    for arg in get_args(annotation):
        if getattr(arg, "__origin__", None) is list:
            return get_args(arg)[0]
    return None


def allowed_keys(loc: Loc) -> list[str]:
    """The keys the mapping at `loc` (e.g. `("data", "calibration")`) accepts, for messages."""
    annotation: Any = PipelineConfig
    for part in loc:
        if isinstance(part, int):
            annotation = _item_type(annotation)
            continue
        model = _model_in(annotation)
        if model is None or part not in model.model_fields:
            return []
        annotation = model.model_fields[part].annotation
    model = _model_in(annotation)
    return list(model.model_fields) if model is not None else []


def unknown_key_message(loc: Loc) -> str:
    """The message for an unknown key: what is allowed there, and the closest match."""
    key = str(loc[-1]) if loc else ""
    allowed = allowed_keys(loc[:-1])
    if not allowed:
        return f"unknown key {key!r}"
    return f"unknown key {key!r}; allowed: {', '.join(allowed)}" + did_you_mean(key, allowed)
