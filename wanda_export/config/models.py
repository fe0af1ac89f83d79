"""The pipeline file as pydantic models, with the rules that need nothing but the file itself.

Every model forbids unknown keys and validates strictly (a quoted "32" is not an integer), so a
typo fails the CI step before any model is loaded. Rules that span several sections (stage
order, what a stage needs, what a gate needs) live in `pipeline_problems` and are raised
together as one `pipeline_rules` error whose context lists each problem with its own location,
so the loader can point at the offending YAML node of each.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Self, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from wanda_export.bench.shapes import parse_shape
from wanda_export.cache.keys import digest_of
from wanda_export.data.sources import TextSource
from wanda_export.sparsity.pattern import parse_pattern

if TYPE_CHECKING:
    from wanda_export.prune import PruneSpec

Loc = tuple[str | int, ...]

CONFIG_ERROR = "wanda_config"
RULES_ERROR = "pipeline_rules"
STAGE_ORDER: tuple[str, ...] = (
    "calibrate",
    "score",
    "mask",
    "verify",
    "evaluate",
    "export",
    "benchmark",
)
EXPORT_FORMATS: tuple[str, ...] = ("safetensors", "onnx", "onnx-fp16", "tensorrt")
PLANNED_EXPORT_FORMATS: tuple[str, ...] = ()
ONNX_FORMATS = frozenset({"onnx", "onnx-fp16", "tensorrt"})
MAX_SEQLEN = 131072
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
_GLOB_MAGIC = re.compile(r"[*?\[]")


def custom_error(message: str) -> PydanticCustomError:
    """A validation error whose message is shown verbatim (no "Value error, " prefix)."""
    return PydanticCustomError(CONFIG_ERROR, "{message}", {"message": message})


def problem(loc: Loc, message: str, *, at_key: bool = False) -> dict[str, Any]:
    """One rule violation: `loc` relative to the validated object, `at_key` to point at the key."""
    return {"loc": tuple(loc), "message": message, "at_key": at_key}


def rules_error(problems: list[dict[str, Any]]) -> PydanticCustomError:
    """Raise several rule violations at once; the loader expands them into separate lines."""
    summary = "; ".join(
        f"{' -> '.join(map(str, p['loc']))}: {p['message']}" if p["loc"] else p["message"]
        for p in problems
    )
    return PydanticCustomError(RULES_ERROR, "{summary}", {"summary": summary, "problems": problems})


def did_you_mean(word: str, choices: tuple[str, ...] | list[str]) -> str:
    """A "; did you mean 'x'?" suffix for the closest choice, or "" when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _fspath(value: Any) -> Any:
    """Accept a `Path` where a path string is expected (for configs built in Python)."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


PathText = Annotated[str | None, BeforeValidator(_fspath)]


def yaml_kind(value: Any) -> str:
    """The YAML word for a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, list):
        return "list"
    if isinstance(value, bool):
        return "boolean"
    return "string" if isinstance(value, str) else "number"


def describe_value(value: Any) -> str:
    """A rejected value as YAML shows it: `the string 'int8'`, `1.2`, `true`, `a list`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"the string {shown!r}"
    return (
        f"a {yaml_kind(value)}" if isinstance(value, (dict, list)) else f"a {type(value).__name__}"
    )


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


class StrictModel(BaseModel):
    """Base of every section: unknown keys are errors, and values are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ModelConfig(StrictModel):
    """Which model to prune; no `path` means the embedded offline default model."""

    path: PathText = None
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "auto"
    trust_remote_code: bool = False
    allow_pickle: bool = False
    revision: str | None = None

    @field_validator("path")
    @classmethod
    def _path_not_empty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise custom_error("the model path is empty; leave it out to use the default model")
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not _DEVICE.fullmatch(value):
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
    text_field: str = Field("text", min_length=1)
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
    if kind in ("builtin", "text") and fields.text_field != "text":
        problems.append(
            problem(
                ("text_field",), "only a 'jsonl' or 'hf' source takes 'text_field'", at_key=True
            )
        )
    return problems


class CalibrationData(SourceFields):
    """The calibration text and how many windows of which length to draw from it."""

    nsamples: int = Field(32, ge=1)
    seqlen: int = Field(512, ge=2, le=MAX_SEQLEN)
    seed: int = Field(0, ge=0)
    batch_size: int = Field(8, ge=1)


class EvaluationData(SourceFields):
    """The evaluation text; perplexity runs over non-overlapping windows of `seqlen` tokens."""

    DEFAULT_SPLIT: ClassVar[str] = "test"

    seqlen: int = Field(512, ge=2, le=MAX_SEQLEN)
    max_windows: int | None = Field(64, ge=1)
    batch_size: int = Field(4, ge=1)


class DataConfig(StrictModel):
    """The two corpora; null switches one off (for pipelines that do not need it)."""

    calibration: CalibrationData | None = Field(default_factory=CalibrationData)
    evaluation: EvaluationData | None = Field(default_factory=EvaluationData)


class CalibrateStage(StrictModel):
    """Collect input statistics: layer by layer on pruned inputs, or in one dense pass."""

    mode: Literal["sequential", "dense"] = "sequential"


def only_with(fields: BaseModel, keys: tuple[str, ...], condition: bool, owner: str) -> list[dict]:
    """Problems for each of `keys` given a non-default value although `condition` (its owner)
    is off. An explicit default is accepted, so a dumped config validates again."""
    if condition:
        return []
    return [problem((key,), f"only {owner} takes {key!r}", at_key=True) for key in keys
            if getattr(fields, key) != type(fields).model_fields[key].default]


class ScoreStage(StrictModel):
    """How weights are ranked; `group` None takes the method's usual comparison group.

    sparsegpt reconstructs the kept weights from the input Hessian (`dampening` relative to
    its mean diagonal, columns processed in blocks of `block_size`); it takes no group.
    """

    method: Literal["wanda", "magnitude", "sparsegpt"] = "wanda"
    group: Literal["row", "layer"] | None = None
    dampening: float = Field(0.01, gt=0.0, lt=1.0)
    block_size: int = Field(128, ge=1, le=4096)

    @model_validator(mode="after")
    def _settings_fit_the_method(self) -> Self:
        sparsegpt = self.method == "sparsegpt"
        problems = only_with(self, ("dampening", "block_size"), sparsegpt, "method 'sparsegpt'")
        if sparsegpt and self.group is not None:
            problems.append(problem(("group",), "method 'sparsegpt' chooses its mask per block "
                                    "of columns and takes no group", at_key=True))
        if problems:
            raise rules_error(problems)
        return self


class MaskStage(StrictModel):
    """How much to prune, in which pattern, and which linear layers (fnmatch globs).

    `allocation` spreads `sparsity` over the layers (the parameter-weighted mean stays exact):
    uniform; alphapruning (ratios in [s - epsilon, s + epsilon] from each weight's ESD
    power-law alpha, Hill estimator with `alpha_xmin`); owl (ratios in [s - owl_lambda,
    s + owl_lambda] from the share of Wanda scores above owl_m times their mean). One ratio per
    decoder block or per matrix (`granularity`). N:M patterns need uniform allocation.
    """

    sparsity: float = Field(0.5, ge=0.0, lt=1.0)
    pattern: str = "unstructured"
    include: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    exclude: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    allocation: Literal["uniform", "alphapruning", "owl"] = "uniform"
    epsilon: float = Field(0.3, gt=0.0, lt=1.0)
    alpha_xmin: Literal["ks", "median"] = "ks"
    owl_m: float = Field(5.0, gt=0.0)
    owl_lambda: float = Field(0.08, gt=0.0, lt=1.0)
    granularity: Literal["block", "matrix"] = "block"

    @model_validator(mode="after")
    def _allocation_settings(self) -> Self:
        problems = [
            *only_with(self, ("epsilon", "alpha_xmin"), self.allocation == "alphapruning",
                       "allocation 'alphapruning'"),
            *only_with(self, ("owl_m", "owl_lambda"), self.allocation == "owl",
                       "allocation 'owl'"),
            *only_with(self, ("granularity",), self.allocation != "uniform",
                       "a layer-wise allocation"),
        ]
        if self.allocation != "uniform" and parse_pattern(self.pattern).structured:
            problems.append(problem(
                ("allocation",), f"allocation {self.allocation!r} gives layers different "
                f"ratios, but pattern {self.pattern} needs the same N:M in every layer; use "
                "allocation: uniform or an unstructured pattern"))
        if problems:
            raise rules_error(problems)
        return self

    @field_validator("pattern")
    @classmethod
    def _valid_pattern(cls, value: str) -> str:
        try:
            return str(parse_pattern(value))
        except ValueError as error:
            raise custom_error(str(error)) from None

    @model_validator(mode="after")
    def _sparsity_fits_pattern(self) -> Self:
        implied = parse_pattern(self.pattern).sparsity
        if implied is None:
            return self
        if "sparsity" in self.model_fields_set and not math.isclose(
            self.sparsity, implied, abs_tol=1e-3
        ):
            raise rules_error(
                [
                    problem(
                        ("sparsity",),
                        f"pattern {self.pattern} means sparsity {implied:g} ((M-N)/M), not "
                        f"{self.sparsity:g}; set sparsity: {implied:g} or leave it out",
                    )
                ]
            )
        self.sparsity = implied
        return self


class VerifyStage(StrictModel):
    """Re-check the pruned weights: sparsity per layer and N:M conformance."""


class EvaluateStage(StrictModel):
    """Measure perplexity on the evaluation data, optionally of the dense model too."""

    perplexity: bool = True
    dense_baseline: bool = True


def _format_available(value: Any) -> Any:
    """Name a planned export format as not available yet rather than as unknown."""
    if value in PLANNED_EXPORT_FORMATS:
        raise custom_error(
            f"the {value!r} export format is not available in this version of wanda-export; "
            f"available: {', '.join(EXPORT_FORMATS)}"
        )
    return value


ExportFormat = Literal["safetensors", "onnx", "onnx-fp16", "tensorrt"]


class ExportStage(StrictModel):
    """Write the pruned model; a list of format names so new formats are additive.

    onnx: fp32 decoder with KV cache for onnxruntime; onnx-fp16: an fp16 copy; tensorrt: the
    ONNX plus tensorrt.json (2:4 only). With any ONNX format the sparsity is re-verified in the
    file, and with `parity` onnxruntime's logits and greedy generation are compared to PyTorch.
    """

    formats: list[Annotated[ExportFormat, BeforeValidator(_format_available)]] = Field(
        default_factory=lambda: ["safetensors"], min_length=1
    )
    parity: bool = True
    parity_tokens: int = Field(32, ge=1, le=1024)


RuntimeName = Literal["onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "torch",
                      "torch-sparse24"]
DEFAULT_BENCHMARK_SHAPES = ["prefill:1x128", "prefill:8x512", "decode:1x1@128"]


class BenchmarkStage(StrictModel):
    """Latency of the dense and the pruned model on each runtime and shape, in the same run.

    Shapes: "prefill:BATCHxSEQLEN" or "decode:BATCHx1@PAST" (one token on a KV cache of PAST).
    onnxruntime runtimes run the exported ONNX against its dense twin (same graph, unpruned
    weights); torch runs the model itself; torch-sparse24 runs the pruned linears through
    semi-structured 2:4 kernels (CUDA, compute capability >= 8.0) against dense fp16 kernels.
    `threads` fixes torch's and onnxruntime's intra-op threads so numbers compare.
    """

    runtimes: list[RuntimeName] = Field(default_factory=lambda: ["onnxruntime-cpu"],
                                        min_length=1)
    shapes: list[str] = Field(default_factory=lambda: list(DEFAULT_BENCHMARK_SHAPES),
                              min_length=1)
    warmup: int = Field(3, ge=0)
    iterations: int = Field(20, ge=1)
    threads: int = Field(2, ge=1)

    @field_validator("shapes")
    @classmethod
    def _valid_shapes(cls, value: list[str]) -> list[str]:
        try:
            return [str(parse_shape(text)) for text in value]
        except ValueError as error:
            raise custom_error(str(error)) from None

    @field_validator("runtimes")
    @classmethod
    def _unique_runtimes(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise custom_error("a runtime is listed twice")
        return value


StageBody = (
    CalibrateStage
    | ScoreStage
    | MaskStage
    | VerifyStage
    | EvaluateStage
    | ExportStage
    | BenchmarkStage
)
STAGE_MODELS: dict[str, type[StrictModel]] = {
    "calibrate": CalibrateStage,
    "score": ScoreStage,
    "mask": MaskStage,
    "verify": VerifyStage,
    "evaluate": EvaluateStage,
    "export": ExportStage,
    "benchmark": BenchmarkStage,
}


class StageEntry(StrictModel):
    """One item of `stages`: a one-key mapping `{name: body}`; a null body means defaults."""

    calibrate: CalibrateStage | None = None
    score: ScoreStage | None = None
    mask: MaskStage | None = None
    verify: VerifyStage | None = None
    evaluate: EvaluateStage | None = None
    export: ExportStage | None = None
    benchmark: BenchmarkStage | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_known_stage(cls, data: Any) -> Any:
        if isinstance(data, StageEntry):
            return data
        example = "such as '- mask: {sparsity: 0.5}'"
        if not isinstance(data, dict) or not data:
            raise custom_error(f"a stage is a one-key mapping {example}, got a {yaml_kind(data)}")
        if len(data) > 1:
            keys = ", ".join(map(str, data))
            raise custom_error(
                f"a stage item holds exactly one stage, got {len(data)} keys ({keys}); "
                "start each stage with its own '- '"
            )
        ((name, body),) = data.items()
        if name not in STAGE_MODELS:
            raise rules_error(
                [
                    problem(
                        (str(name),),
                        f"unknown stage {str(name)!r}; allowed: {', '.join(STAGE_ORDER)}"
                        + did_you_mean(str(name), STAGE_ORDER),
                        at_key=True,
                    )
                ]
            )
        return {name: {} if body is None else body}

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if len(self.model_fields_set) != 1:
            raise custom_error("a stage item holds exactly one stage")
        return self

    @model_serializer(mode="wrap")
    def _only_the_stage(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {self.name: handler(self)[self.name]}

    @classmethod
    def of(cls, body: StageBody) -> StageEntry:
        """Wrap a stage body model into its list item, e.g. `StageEntry.of(MaskStage())`."""
        name = next(name for name, model in STAGE_MODELS.items() if type(body) is model)
        return cls.model_validate({name: body})

    @property
    def name(self) -> str:
        """The stage's name (the item's only key)."""
        return next(iter(self.model_fields_set))

    @property
    def body(self) -> StageBody:
        """The stage's settings."""
        return getattr(self, self.name)


class GateModel(StrictModel):
    """A gate's thresholds; at least one must be set, or the gate would check nothing.
    `selectors` name the fields that say what to check (not thresholds): they do not count."""

    gate_name: ClassVar[str] = "gate"
    selectors: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _something_to_check(self) -> Self:
        fields = [name for name in type(self).model_fields if name not in self.selectors]
        if all(getattr(self, name) is None for name in fields):
            raise custom_error(f"a {self.gate_name} gate needs at least one of {', '.join(fields)}")
        return self


class SparsityGate(GateModel):
    """Release gate on the measured sparsity (overall and per layer) and the N:M pattern."""

    gate_name: ClassVar[str] = "sparsity"

    min: float | None = Field(None, ge=0.0, le=1.0)
    per_layer_min: float | None = Field(None, ge=0.0, le=1.0)
    pattern: str | None = None

    @field_validator("pattern")
    @classmethod
    def _valid_pattern(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(parse_pattern(value))
        except ValueError as error:
            raise custom_error(str(error)) from None


class PerplexityGate(GateModel):
    """Release gate on perplexity: an absolute maximum and/or a maximum ratio to dense."""

    gate_name: ClassVar[str] = "perplexity"

    max: float | None = Field(None, gt=0.0)
    max_ratio_to_dense: float | None = Field(None, ge=1.0)


class ParityGate(GateModel):
    """Release gate on ONNX-vs-PyTorch output parity."""

    gate_name: ClassVar[str] = "parity"

    max_abs_diff: float | None = Field(None, gt=0.0)
    generation: bool | None = None


class LatencyGate(GateModel):
    """Release gate on the benchmark of one runtime: the pruned model's p50 per shape (ms) and
    its speedup over the dense model (dense p50 / sparse p50), for `shape` or every shape."""

    gate_name: ClassVar[str] = "latency"
    selectors: ClassVar[tuple[str, ...]] = ("runtime", "shape")

    runtime: RuntimeName = "onnxruntime-cpu"
    shape: str | None = None
    max_p50_ms: float | None = Field(None, gt=0.0)
    min_speedup: float | None = Field(None, gt=0.0)

    @field_validator("shape")
    @classmethod
    def _valid_shape(cls, value: str | None) -> str | None:
        try:
            return None if value is None else str(parse_shape(value))
        except ValueError as error:
            raise custom_error(str(error)) from None


class TensorRTGate(GateModel):
    """Release gate on the TensorRT engine of the pruned model: how many layers TensorRT ran
    with sparse tactics (2:4 sparse tensor cores), read from its build log."""

    gate_name: ClassVar[str] = "tensorrt"

    min_sparse_tactics: int | None = Field(None, ge=0)


class GatesConfig(StrictModel):
    """The release gates; a missing gate is not checked."""

    sparsity: SparsityGate | None = None
    perplexity: PerplexityGate | None = None
    parity: ParityGate | None = None
    latency: LatencyGate | None = None
    tensorrt: TensorRTGate | None = None


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
        """The `PruneSpec` of the score/mask/calibrate stages, or None without a mask stage."""
        from wanda_export.prune import PruneSpec

        mask: MaskStage | None = self.stage("mask")
        if mask is None:
            return None
        score: ScoreStage = self.stage("score") or ScoreStage()
        calibrate: CalibrateStage = self.stage("calibrate") or CalibrateStage()
        calibration = self.data.calibration
        return PruneSpec(
            method=score.method,
            sparsity=mask.sparsity,
            pattern=mask.pattern,
            group=score.group,
            mode=calibrate.mode,
            include=tuple(mask.include),
            exclude=tuple(mask.exclude),
            batch_size=calibration.batch_size if calibration is not None else 8,
            allocation=mask.allocation,
            epsilon=mask.epsilon,
            alpha_xmin=mask.alpha_xmin,
            owl_m=mask.owl_m,
            owl_lambda=mask.owl_lambda,
            allocation_granularity=mask.granularity,
            dampening=score.dampening,
            block_size=score.block_size,
        )


def _order_problems(stages: list[StageEntry]) -> list[dict[str, Any]]:
    """Each stage at most once, in the order calibrate < score < ... < benchmark."""
    problems = []
    seen: dict[str, int] = {}
    latest: tuple[int, str] | None = None
    order = ", ".join(STAGE_ORDER)
    for index, entry in enumerate(stages):
        name = entry.name
        loc = ("stages", index, name)
        if name in seen:
            problems.append(problem(loc, f"the {name} stage appears twice", at_key=True))
            continue
        seen[name] = index
        rank = STAGE_ORDER.index(name)
        if latest is not None and rank < latest[0]:
            problems.append(
                problem(
                    loc,
                    f"the {name} stage must come before {latest[1]}; the order is {order}",
                    at_key=True,
                )
            )
        else:
            latest = (rank, name)
    return problems


def _stage_problems(config: PipelineConfig) -> list[dict[str, Any]]:
    """What each stage needs: another stage before it, or a data section."""
    problems = []
    at = {entry.name: ("stages", i, entry.name) for i, entry in enumerate(config.stages)}
    score: ScoreStage | None = config.stage("score")
    if "mask" in at and score is None:
        problems.append(
            problem(at["mask"], "the mask stage needs a score stage before it", at_key=True)
        )
    if "calibrate" in at and config.data.calibration is None:
        problems.append(
            problem(("data", "calibration"), "the calibrate stage needs calibration data, not null")
        )
    if score is not None and score.method != "magnitude" and "calibrate" not in at:
        problems.append(
            problem(
                (*at["score"], "method"),
                f"method {score.method!r} needs activation statistics: add '- calibrate: {{}}' "
                "before score, or use method: magnitude",
            )
        )
    mask: MaskStage | None = config.stage("mask")
    if mask is not None and mask.allocation == "owl" and "calibrate" not in at:
        problems.append(
            problem(
                (*at["mask"], "allocation"),
                "allocation 'owl' needs activation statistics: add '- calibrate: {}' before "
                "score",
            )
        )
    if "evaluate" in at and config.data.evaluation is None:
        problems.append(
            problem(
                at["evaluate"],
                "the evaluate stage needs data.evaluation, which is null",
                at_key=True,
            )
        )
    export: ExportStage | None = config.stage("export")
    benchmark: BenchmarkStage | None = config.stage("benchmark")
    onnx_runtimes = [r for r in (benchmark.runtimes if benchmark else []) if r.startswith("onnx")]
    if onnx_runtimes and (export is None or not ONNX_FORMATS & set(export.formats)):
        problems.append(
            problem(
                (*at["benchmark"], "runtimes"),
                f"{', '.join(onnx_runtimes)} run the exported ONNX: add 'onnx' to the export "
                "stage's formats",
            )
        )
    if benchmark is not None and "torch-sparse24" in benchmark.runtimes and (
        mask is None or mask.pattern != "2:4"
    ):
        problems.append(
            problem(
                (*at["benchmark"], "runtimes"),
                "torch-sparse24 runs 2:4 semi-structured kernels, which need a mask stage with "
                "pattern '2:4'",
            )
        )
    if export is not None and "tensorrt" in export.formats and (mask is None or mask.pattern != "2:4"):
        problems.append(
            problem(
                (*at["export"], "formats"),
                "the tensorrt format targets sparse tensor cores, which need a mask stage with "
                "pattern '2:4'",
            )
        )
    return problems


def _gate_problems(config: PipelineConfig) -> list[dict[str, Any]]:
    """What each gate needs: a stage that measures it, and a pattern that agrees with mask."""
    problems = []
    sparsity, perplexity = config.gates.sparsity, config.gates.perplexity
    export: ExportStage | None = config.stage("export")
    if config.gates.parity is not None and (
        export is None or not export.parity or not ONNX_FORMATS & set(export.formats)
    ):
        problems.append(
            problem(
                ("gates", "parity"),
                "a parity gate needs an export stage with an ONNX format and parity: true",
                at_key=True,
            )
        )
    mask: MaskStage | None = config.stage("mask")
    evaluate: EvaluateStage | None = config.stage("evaluate")
    if sparsity is not None:
        if mask is None and config.stage("verify") is None:
            problems.append(
                problem(
                    ("gates", "sparsity"),
                    "a sparsity gate needs a mask or verify stage",
                    at_key=True,
                )
            )
        if sparsity.pattern is not None and mask is not None and sparsity.pattern != mask.pattern:
            problems.append(
                problem(
                    ("gates", "sparsity", "pattern"),
                    f"the gate pattern {sparsity.pattern!r} differs from the mask stage pattern "
                    f"{mask.pattern!r}",
                )
            )
    if perplexity is not None:
        if evaluate is None or not evaluate.perplexity:
            problems.append(
                problem(
                    ("gates", "perplexity"),
                    "a perplexity gate needs an evaluate stage with perplexity: true",
                    at_key=True,
                )
            )
        elif perplexity.max_ratio_to_dense is not None and not evaluate.dense_baseline:
            problems.append(
                problem(
                    ("gates", "perplexity", "max_ratio_to_dense"),
                    "max_ratio_to_dense needs the dense baseline: set dense_baseline: true in evaluate",
                )
            )
    return problems


def _benchmark_gate_problems(config: PipelineConfig) -> list[dict[str, Any]]:
    """A latency or TensorRT gate needs the benchmark stage to measure its runtime."""
    benchmark: BenchmarkStage | None = config.stage("benchmark")
    runtimes = benchmark.runtimes if benchmark is not None else []
    problems = []
    latency, tensorrt = config.gates.latency, config.gates.tensorrt
    if latency is not None and latency.runtime not in runtimes:
        problems.append(problem(("gates", "latency", "runtime"),
                                f"the benchmark stage does not measure {latency.runtime!r}; add "
                                "it to the benchmark stage's runtimes"))
    if latency is not None and latency.shape is not None and benchmark is not None and (
        latency.shape not in benchmark.shapes
    ):
        problems.append(problem(("gates", "latency", "shape"),
                                f"the benchmark stage does not measure shape {latency.shape!r}; "
                                f"it measures {', '.join(benchmark.shapes)}"))
    if tensorrt is not None and "onnxruntime-tensorrt" not in runtimes:
        problems.append(problem(("gates", "tensorrt"), "a tensorrt gate needs a benchmark stage "
                                "with runtime onnxruntime-tensorrt", at_key=True))
    return problems


def pipeline_problems(config: PipelineConfig) -> list[dict[str, Any]]:
    """Every cross-section rule the file breaks, each with its location in the file."""
    return [*_order_problems(config.stages), *_stage_problems(config), *_gate_problems(config),
            *_benchmark_gate_problems(config)]


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
