"""The model and data sections of the pipeline file: which checkpoint, in which dtype on which
device, and which text is read for calibration and for evaluation (with how many windows of
which length)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, Field, field_validator, model_validator

from wanda_export.config.base import PathText, StrictModel, custom_error, problem, rules_error
from wanda_export.config.limits import (
    MAX_BATCH_SIZE,
    MAX_BATCH_TOKENS,
    MAX_CALIBRATION_TOKENS,
    MAX_EVALUATION_WINDOWS,
    MAX_NSAMPLES,
    MAX_SEQLEN,
)
from wanda_export.data.sources import DEFAULT_TEXT_FIELD, TextSource
from wanda_export.memory import RUNTIME_BYTES as MIN_MEMORY_BUDGET
from wanda_export.memory import parse_size

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
_GLOB_MAGIC = re.compile(r"[*?\[]")


def resolve_data_path(path: str, base_dir: Path) -> str:
    """Resolve a file, directory or glob against `base_dir`, keeping the glob part intact.

    Only the directory part before the first glob character is resolved, so `data/*.txt`
    becomes `/abs/dir/data/*.txt` and still globs the same files wherever the tool runs.
    """
    expanded = Path(path).expanduser()
    full = expanded if expanded.is_absolute() else Path(base_dir) / expanded
    parts = full.parts
    first_magic = next((i for i, part in enumerate(parts) if _GLOB_MAGIC.search(part)), len(parts))
    return str(Path(*parts[:first_magic]).resolve().joinpath(*parts[first_magic:]))


class ModelConfig(StrictModel):
    """Which model to prune; no `path` means the embedded offline default model."""

    path: PathText = None
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "auto"
    trust_remote_code: bool = False
    allow_pickle: bool = False
    revision: str | None = None
    streaming: Literal["auto"] | bool = "auto"
    memory_budget: str | None = None

    @field_validator("memory_budget")
    @classmethod
    def _a_size(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                size = parse_size(value)
            except ValueError as error:
                raise custom_error(str(error)) from None
            if size < MIN_MEMORY_BUDGET:
                raise custom_error(f"a memory budget of {value} is below the "
                                   f"{MIN_MEMORY_BUDGET // 2**20} MiB any run needs")
        return value

    @field_validator("path")
    @classmethod
    def _path_not_empty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise custom_error("the model path is empty; leave it out to use the default model")
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not DEVICE_PATTERN.fullmatch(value):
            raise custom_error(
                f"unsupported device {value!r}; allowed: auto, cpu, cuda, cuda:N, mps"
            )
        return value

    def resolved_path(self, base_dir: Path) -> str | None:
        """The model path with a relative local path made absolute against `base_dir`.

        A relative path that does not exist under `base_dir` is returned unchanged: it is a hub
        id (`org/name`), or a missing path that model loading reports.
        """
        if self.path is None:
            return None
        local = Path(self.path).expanduser()
        if local.is_absolute():
            return str(local)
        candidate = Path(base_dir) / local
        return str(candidate.resolve()) if candidate.exists() else self.path


class SourceFields(StrictModel):
    """Where text comes from: the built-in corpus, local text/JSONL files, or a hub dataset."""

    DEFAULT_SPLIT: ClassVar[str] = "train"
    HF_ONLY: ClassVar[tuple[str, ...]] = ("dataset", "dataset_config", "data_files", "split")

    source: Literal["builtin", "text", "jsonl", "hf"] = "builtin"
    path: PathText = None
    text_field: str = Field(DEFAULT_TEXT_FIELD, min_length=1)
    dataset: str | None = None
    dataset_config: str | None = None
    data_files: str | None = None
    split: str | None = None

    @model_validator(mode="after")
    def _fields_fit_source(self) -> Self:
        problems = source_problems(self)
        if problems:
            raise rules_error(problems)
        return self

    def to_text_source(self, base_dir: Path) -> TextSource:
        """The `TextSource` to read, with a relative path or glob resolved against `base_dir`."""
        return TextSource(
            kind=self.source,
            path=resolve_data_path(self.path, base_dir) if self.path else None,
            text_field=self.text_field,
            dataset=self.dataset,
            dataset_config=self.dataset_config,
            data_files=self.data_files,
            split=self.split or self.DEFAULT_SPLIT,
        )


def source_problems(fields: SourceFields) -> list[dict[str, Any]]:
    """Which keys a source kind needs or forbids: a path for files, a dataset for the hub."""
    kind = fields.source
    problems = []
    if kind in ("text", "jsonl") and not (fields.path and fields.path.strip()):
        problems.append(
            problem(("path",), f"a {kind!r} source needs a path (file, directory or glob)")
        )
    if kind == "builtin" and fields.path is not None:
        problems.append(
            problem(("path",), "the 'builtin' source takes no path; use source: text or jsonl")
        )
    if kind == "hf" and fields.path is not None:
        problems.append(problem(("path",), "an 'hf' source takes no path; use data_files"))
    if kind == "hf" and not fields.dataset:
        problems.append(problem(("dataset",), "an 'hf' source needs a dataset name"))
    if kind != "hf":
        for key in SourceFields.HF_ONLY:
            if getattr(fields, key) is not None:
                problems.append(problem((key,), f"only an 'hf' source takes {key!r}", at_key=True))
    if kind in ("builtin", "text") and fields.text_field != DEFAULT_TEXT_FIELD:
        problems.append(
            problem(
                ("text_field",), "only a 'jsonl' or 'hf' source takes 'text_field'", at_key=True
            )
        )
    return problems


def product_problems(fields: BaseModel, first: str, second: str, what: str,
                     limit: int) -> list[dict[str, Any]]:
    """A problem at `first` when `first` x `second` (a count of `what`) passes `limit`."""
    a, b = getattr(fields, first), getattr(fields, second)
    if a * b <= limit:
        return []
    return [problem((first,), f"{first} x {second} = {a:,} x {b:,} = {a * b:,} {what}, over "
                    f"the limit of {limit:,}; lower {first} or {second}")]


class CalibrationBatch(StrictModel):
    """How many calibration windows go through the model in one forward pass (shared by the
    calibration data section and the library's `PruneSpec`)."""

    batch_size: int = Field(8, ge=1, le=MAX_BATCH_SIZE)


class CalibrationData(CalibrationBatch, SourceFields):
    """The calibration text and how many windows of which length to draw from it."""

    nsamples: int = Field(32, ge=1, le=MAX_NSAMPLES)
    seqlen: int = Field(512, ge=2, le=MAX_SEQLEN)
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _tokens_within_limits(self) -> Self:
        problems = [
            *product_problems(self, "nsamples", "seqlen", "calibration tokens",
                              MAX_CALIBRATION_TOKENS),
            *product_problems(self, "batch_size", "seqlen", "tokens per forward pass",
                              MAX_BATCH_TOKENS)]
        if problems:
            raise rules_error(problems)
        return self


class EvaluationData(SourceFields):
    """The evaluation text; perplexity runs over non-overlapping windows of `seqlen` tokens."""

    DEFAULT_SPLIT: ClassVar[str] = "test"

    seqlen: int = Field(512, ge=2, le=MAX_SEQLEN)
    max_windows: int | None = Field(64, ge=1, le=MAX_EVALUATION_WINDOWS)
    batch_size: int = Field(4, ge=1, le=MAX_BATCH_SIZE)

    @model_validator(mode="after")
    def _tokens_within_limits(self) -> Self:
        problems = product_problems(self, "batch_size", "seqlen", "tokens per forward pass",
                                    MAX_BATCH_TOKENS)
        if problems:
            raise rules_error(problems)
        return self


class DataConfig(StrictModel):
    """The two corpora; null switches one off (for pipelines that do not need it)."""

    calibration: CalibrationData | None = Field(default_factory=CalibrationData)
    evaluation: EvaluationData | None = Field(default_factory=EvaluationData)

