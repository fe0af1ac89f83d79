"""The stages of a pipeline and their settings: the one definition of each setting's default,
allowed values, bounds and the rules that tie settings of one stage together. The library API
(`PruneSpec`) and the engine read these same models."""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal, Self, get_args

from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    create_model,
    field_validator,
    model_serializer,
    model_validator,
)

from wanda_export.bench.shapes import FORMS as SHAPE_FORMS
from wanda_export.bench.shapes import parse_shape
from wanda_export.config.base import (
    StrictModel,
    custom_error,
    only_with,
    problem,
    rules_error,
    yaml_kind,
)
from wanda_export.config.limits import (
    MAX_BENCHMARK_BATCH,
    MAX_BENCHMARK_ITERATIONS,
    MAX_BENCHMARK_SHAPES,
    MAX_BENCHMARK_TOKENS,
    MAX_BENCHMARK_WARMUP,
    MAX_BLOCK_SIZE,
    MAX_LAYER_GLOBS,
    MAX_PARITY_TOKENS,
    MAX_REFINE_ITERATIONS,
    MAX_SEQLEN,
    MAX_THREADS,
    MAX_UPDATE_ITERATIONS,
)
from wanda_export.config.nested import LmEvalSettings, PushToHub
from wanda_export.errors import did_you_mean
from wanda_export.memory import parse_size
from wanda_export.sparsity.pattern import parse_pattern

Mode = Literal["sequential", "dense"]
Method = Literal["wanda", "magnitude", "sparsegpt", "ria"]
Refinement = Literal["dsnot"]
WeightUpdate = Literal["admm"]
Group = Literal["row", "layer"]
AllocationMethod = Literal["uniform", "alphapruning", "owl"]
AlphaXmin = Literal["ks", "median"]
Granularity = Literal["block", "matrix"]
ExportFormat = Literal["safetensors", "onnx", "onnx-fp16", "onnx-bf16", "tensorrt"]
OnnxExporter = Literal["auto", "genai", "torch"]
RuntimeName = Literal["onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt",
                      "onnxruntime-genai", "onnxruntime-genai-cuda", "torch", "torch-sparse24"]
ONNX_FORMATS = frozenset({"onnx", "onnx-fp16", "onnx-bf16", "tensorrt"})
RUNTIMES: tuple[str, ...] = get_args(RuntimeName)
_MAX_SHAPE_CHARS = 40  # "decode:1024x1@131072" is 20


def refine_problem(method: str, refine: str | None) -> str | None:
    """Why `refine` cannot follow scoring `method` (None when it can): DSnoT swaps entries of a
    mask under the dense weights' reconstruction error, which SparseGPT's update invalidates."""
    if refine == "dsnot" and method == "sparsegpt":
        return ("refine 'dsnot' refines the masks of wanda, ria or magnitude against the dense "
                "weights; method 'sparsegpt' updates the weights it keeps: drop refine or "
                "choose another method")
    return None


class CalibrateStage(StrictModel):
    """Collect input statistics: layer by layer on pruned inputs, or in one dense pass."""

    summary: ClassVar[str] = "Collect activation statistics into the cache."

    mode: Mode = "sequential"


class ScoreStage(StrictModel):
    """How weights are ranked; `group` None takes the method's usual comparison group.

    sparsegpt reconstructs the kept weights from the input Hessian (`dampening` relative to
    its mean diagonal, columns processed in blocks of `block_size`); it takes no group.
    ria scores (|W|/row sum + |W|/column sum) * ||X||^`exponent` (the paper's a).
    """

    summary: ClassVar[str] = "Score weights (Wanda, RIA, magnitude, or SparseGPT's update)."
    # Settings only method sparsegpt takes (they also key sequential statistics).
    SPARSEGPT_SETTINGS: ClassVar[tuple[str, ...]] = ("dampening", "block_size")
    # Settings only method ria takes (they also key sequential statistics).
    RIA_SETTINGS: ClassVar[tuple[str, ...]] = ("exponent",)

    method: Method = "wanda"
    group: Group | None = None
    dampening: float = Field(0.01, gt=0.0, lt=1.0)
    block_size: int = Field(128, ge=1, le=MAX_BLOCK_SIZE)
    exponent: float = Field(0.5, ge=0.0, le=4.0)

    @model_validator(mode="after")
    def _settings_fit_the_method(self) -> Self:
        sparsegpt = self.method == "sparsegpt"
        problems = only_with(self, self.SPARSEGPT_SETTINGS, sparsegpt, "method 'sparsegpt'")
        problems += only_with(self, self.RIA_SETTINGS, self.method == "ria", "method 'ria'")
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

    `permute` (N:M only) permutes the input channels of the linears whose producer can absorb
    the permutation exactly (down_proj with gate/up rows, o_proj with v_proj rows within each
    head) so the N:M groups hold more score mass; the model computes the same function. `refine:
    dsnot` then swaps pruned and kept weights per output row (within each N:M group) to shrink
    the expected reconstruction error, at most `refine_iterations` swaps per row, stopping a row
    once |error| <= `refine_threshold`; growth candidates are ranked by W_ij E[x_j] /
    Var(x_j)^`refine_variance_power`; `refine_exclude` globs leave linears unrefined (the
    paper's default leaves the MLP alone). `update: admm` finally reconstructs the weights the
    mask keeps from the input Hessian (the least-squares optimum for the mask, by
    `update_iterations` ADMM steps; Boža 2024), whichever method chose the mask.
    """

    summary: ClassVar[str] = "Prune to the configured sparsity, pattern and layer-wise allocation."
    # Settings each layer-wise allocation takes (they also key sequential statistics).
    ALLOCATION_SETTINGS: ClassVar[dict[str, tuple[str, ...]]] = {
        "alphapruning": ("epsilon", "alpha_xmin"), "owl": ("owl_m", "owl_lambda"),
        "layer-wise": ("granularity",)}
    # Settings only `refine: dsnot` takes (they also key sequential statistics).
    REFINE_SETTINGS: ClassVar[tuple[str, ...]] = (
        "refine_iterations", "refine_threshold", "refine_variance_power", "refine_exclude")
    # Settings only `update: admm` takes (they also key sequential statistics).
    UPDATE_SETTINGS: ClassVar[tuple[str, ...]] = ("update_iterations",)

    sparsity: float = Field(0.5, ge=0.0, lt=1.0)
    pattern: str = "unstructured"
    include: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list,
                                                               max_length=MAX_LAYER_GLOBS)
    exclude: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list,
                                                               max_length=MAX_LAYER_GLOBS)
    allocation: AllocationMethod = "uniform"
    epsilon: float = Field(0.3, gt=0.0, lt=1.0)
    alpha_xmin: AlphaXmin = "ks"
    owl_m: float = Field(5.0, gt=0.0)
    owl_lambda: float = Field(0.08, gt=0.0, lt=1.0)
    granularity: Granularity = "block"
    permute: bool = False
    refine: Refinement | None = None
    refine_iterations: int = Field(50, ge=1, le=MAX_REFINE_ITERATIONS)
    refine_threshold: float = Field(0.1, ge=0.0)
    refine_variance_power: float = Field(1.0, ge=0.0, le=4.0)
    refine_exclude: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=lambda: ["*.mlp.*"], max_length=MAX_LAYER_GLOBS)
    update: WeightUpdate | None = None
    update_iterations: int = Field(20, ge=1, le=MAX_UPDATE_ITERATIONS)

    @model_validator(mode="after")
    def _refine_and_permute(self) -> Self:
        problems = only_with(self, self.REFINE_SETTINGS, self.refine is not None,
                             "'refine: dsnot'")
        problems += only_with(self, self.UPDATE_SETTINGS, self.update is not None,
                              "'update: admm'")
        if self.permute and not parse_pattern(self.pattern).structured:
            problems.append(problem(("permute",), f"permute reorders input channels so the N:M "
                                    f"groups keep more; pattern {self.pattern} has no groups: "
                                    "use an N:M pattern such as 2:4, or permute: false"))
        if problems:
            raise rules_error(problems)
        return self

    @model_validator(mode="after")
    def _allocation_settings(self) -> Self:
        problems = [
            *only_with(self, self.ALLOCATION_SETTINGS["alphapruning"],
                       self.allocation == "alphapruning", "allocation 'alphapruning'"),
            *only_with(self, self.ALLOCATION_SETTINGS["owl"], self.allocation == "owl",
                       "allocation 'owl'"),
            *only_with(self, self.ALLOCATION_SETTINGS["layer-wise"], self.allocation != "uniform",
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

    def targets_of(self, model: Any) -> list:
        """The linears of `model` this stage prunes: `include` (default: every linear of the
        decoder layers) minus `exclude`."""
        from wanda_export.model.layers import find_targets

        return find_targets(model, self.include or None, self.exclude or None)

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

    summary: ClassVar[str] = "Check per-layer sparsity and the N:M pattern along K."


class EvaluateStage(StrictModel):
    """Measure perplexity on the evaluation data, optionally of the dense model too; with
    `lm_eval`, accuracy on lm-evaluation-harness tasks (dense, cached, and pruned); with
    `onnx_perplexity`, the exported ONNX model's perplexity on the same windows (measured by
    the export stage, through onnxruntime)."""

    summary: ClassVar[str] = "Measure perplexity and task accuracy, dense and pruned."

    perplexity: bool = True
    dense_baseline: bool = True
    lm_eval: LmEvalSettings | None = None
    onnx_perplexity: bool = False

    @property
    def measures(self) -> bool:
        """Whether the stage measures anything on the PyTorch model."""
        return self.perplexity or self.lm_eval is not None


class ExportStage(StrictModel):
    """Write the pruned model; a list of format names so new formats are additive.

    onnx: fp32 decoder with KV cache for onnxruntime; onnx-fp16 / onnx-bf16: the same decoder
    in that precision (bf16 needs the genai exporter); tensorrt: the fp16 file (precision in the
    file, as strongly typed TensorRT wants) plus tensorrt.json (2:4 only). With any ONNX format
    the sparsity is re-verified in the file, and with `parity` onnxruntime's logits and greedy
    generation are compared to PyTorch.

    `onnx_exporter`: genai (onnxruntime-genai's model builder fed the pruned safetensors: fast,
    memory of one tensor, fused onnxruntime operators, genai_config.json), torch
    (torch.onnx.export, the generic graph), or auto: genai for the families it builds, torch for
    the others and for the tensorrt format (TensorRT's parser lacks onnxruntime's fused ops).
    """

    summary: ClassVar[str] = "Write the deployable artifacts."

    formats: list[ExportFormat] = Field(
        default_factory=lambda: ["safetensors"], min_length=1
    )
    onnx_exporter: OnnxExporter = "auto"
    parity: bool = True
    parity_tokens: int = Field(32, ge=1, le=MAX_PARITY_TOKENS)
    max_shard_size: str = "2GiB"  # safetensors shards written while streaming
    push_to_hub: PushToHub | None = None

    @model_validator(mode="after")
    def _bf16_needs_genai(self) -> Self:
        if "onnx-bf16" in self.formats and self.onnx_exporter == "torch":
            raise rules_error([problem(("formats",), "the onnx-bf16 format is written by the "
                                       "genai exporter; set onnx_exporter: auto or genai")])
        return self

    @field_validator("max_shard_size")
    @classmethod
    def _a_size(cls, value: str) -> str:
        try:
            parse_size(value)
        except ValueError as error:
            raise custom_error(str(error)) from None
        return value


def bounded_shape(text: str) -> str:
    """The canonical form of a benchmark shape, refused when it cannot be parsed or passes the
    limits on its batch, its sequence (past included) and its tokens."""
    if len(text) > _MAX_SHAPE_CHARS:
        raise custom_error(f"cannot parse a shape of {len(text):,} characters; expected "
                           f"{SHAPE_FORMS}")
    try:
        shape = parse_shape(text)
    except ValueError as error:
        raise custom_error(str(error)) from None
    length = shape.seqlen + shape.past
    tokens = shape.batch * length
    limits = [(shape.batch, MAX_BENCHMARK_BATCH, "batch"),
              (length, MAX_SEQLEN, "seqlen + past"),
              (tokens, MAX_BENCHMARK_TOKENS, "batch x (seqlen + past)")]
    for value, limit, name in limits:
        if value > limit:
            raise custom_error(f"shape {text!r}: {name} is {value:,}, over the limit of "
                               f"{limit:,}")
    return str(shape)


DEFAULT_BENCHMARK_SHAPES = ["prefill:1x128", "prefill:8x512", "decode:1x1@128"]


class BenchmarkStage(StrictModel):
    """Latency of the dense and the pruned model on each runtime and shape, in the same run.

    Shapes: "prefill:BATCHxSEQLEN" or "decode:BATCHx1@PAST" (one token on a KV cache of PAST).
    onnxruntime runtimes run the exported ONNX against its dense twin (same graph, unpruned
    weights); torch runs the model itself; torch-sparse24 runs the pruned linears through
    semi-structured 2:4 kernels (CUDA, compute capability >= 8.0) against dense fp16 kernels.
    onnxruntime-genai (-cuda) generates through onnxruntime-genai from the export's folder when
    it holds a genai_config.json (prefill and decode tokens/s), against its dense twin.
    `threads` fixes torch's, onnxruntime's and onnxruntime-genai's intra-op threads so numbers
    compare.
    """

    summary: ClassVar[str] = "Time the dense and the pruned model on each runtime and shape."

    runtimes: list[RuntimeName] = Field(default_factory=lambda: ["onnxruntime-cpu"],
                                        min_length=1)
    shapes: list[str] = Field(default_factory=lambda: list(DEFAULT_BENCHMARK_SHAPES),
                              min_length=1, max_length=MAX_BENCHMARK_SHAPES)
    warmup: int = Field(3, ge=0, le=MAX_BENCHMARK_WARMUP)
    iterations: int = Field(20, ge=1, le=MAX_BENCHMARK_ITERATIONS)
    threads: int = Field(2, ge=1, le=MAX_THREADS)

    @field_validator("shapes")
    @classmethod
    def _valid_shapes(cls, value: list[str]) -> list[str]:
        return [bounded_shape(text) for text in value]

    @field_validator("runtimes")
    @classmethod
    def _unique_runtimes(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise custom_error("a runtime is listed twice")
        return value


class _StageItem(StrictModel):
    """One item of `stages`: a one-key mapping `{name: body}`; a null body means defaults.
    `StageEntry` adds one optional field per stage of `STAGE_MODELS`."""

    @model_validator(mode="before")
    @classmethod
    def _one_known_stage(cls, data: Any) -> Any:
        if isinstance(data, _StageItem):
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
    def of(cls, body: StrictModel) -> _StageItem:
        """Wrap a stage body model into its list item, e.g. `StageEntry.of(MaskStage())`."""
        name = next(name for name, model in STAGE_MODELS.items() if type(body) is model)
        return cls.model_validate({name: body})

    @property
    def name(self) -> str:
        """The stage's name (the item's only key)."""
        return next(iter(self.model_fields_set))

    @property
    def body(self) -> Any:
        """The stage's settings."""
        return getattr(self, self.name)


STAGE_MODELS: dict[str, type[StrictModel]] = {
    "calibrate": CalibrateStage,
    "score": ScoreStage,
    "mask": MaskStage,
    "verify": VerifyStage,
    "evaluate": EvaluateStage,
    "export": ExportStage,
    "benchmark": BenchmarkStage,
}
"""Every stage, in the order a pipeline runs them: the one list of stages."""
STAGE_ORDER: tuple[str, ...] = tuple(STAGE_MODELS)


StageEntry = create_model(
    "StageEntry", __base__=_StageItem, __module__=__name__,
    **{name: (model | None, None) for name, model in STAGE_MODELS.items()},
)
