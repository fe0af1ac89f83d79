"""The release gates of the pipeline file: the thresholds a run must meet (sparsity, perplexity,
ONNX parity, latency, TensorRT sparse tactics). Evaluated against the run record by
`report/gates.py`."""

from __future__ import annotations

from typing import ClassVar, Self

from pydantic import Field, field_validator, model_validator

from wanda_export.config.base import StrictModel, custom_error
from wanda_export.config.nested import TaskName
from wanda_export.config.stages import RuntimeName, bounded_shape
from wanda_export.sparsity.pattern import parse_pattern


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
    """Release gate on perplexity: an absolute maximum, a maximum ratio to dense, and the
    exported ONNX model's perplexity over the PyTorch model's (`evaluate.onnx_perplexity`)."""

    gate_name: ClassVar[str] = "perplexity"

    max: float | None = Field(None, gt=0.0)
    max_ratio_to_dense: float | None = Field(None, ge=1.0)
    max_onnx_ratio_to_torch: float | None = Field(None, ge=1.0)


class TaskAccuracyGate(GateModel):
    """Thresholds on one lm-eval task: recovery (pruned score / dense score) at least
    `min_recovery`; drop (dense - pruned, in the metric's units: 0.02 is 2 points of accuracy)
    at most `max_drop`."""

    gate_name: ClassVar[str] = "accuracy"

    min_recovery: float | None = Field(None, gt=0.0)
    max_drop: float | None = Field(None, ge=0.0, le=1.0)


class AccuracyGate(TaskAccuracyGate):
    """Release gate on lm-eval task accuracy: thresholds for every task, and per task under
    `tasks` (a task's own threshold replaces the shared one of the same name; the other one
    still applies)."""

    tasks: dict[TaskName, TaskAccuracyGate] | None = None

    def thresholds(self, task: str) -> TaskAccuracyGate | None:
        """The thresholds that apply to `task` (None: none do)."""
        own = (self.tasks or {}).get(task)
        values = {name: getattr(self, name) for name in TaskAccuracyGate.model_fields}
        if own is not None:
            values |= {name: value for name, value in own.model_dump().items()
                       if value is not None}
        if all(value is None for value in values.values()):
            return None
        return TaskAccuracyGate.model_construct(**values)


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
        return None if value is None else bounded_shape(value)


class TensorRTGate(GateModel):
    """Release gate on the TensorRT engine of the pruned model: how many layers TensorRT ran
    with sparse tactics (2:4 sparse tensor cores), read from its build log."""

    gate_name: ClassVar[str] = "tensorrt"

    min_sparse_tactics: int | None = Field(None, ge=0)


class GatesConfig(StrictModel):
    """The release gates; a missing gate is not checked."""

    sparsity: SparsityGate | None = None
    perplexity: PerplexityGate | None = None
    accuracy: AccuracyGate | None = None
    parity: ParityGate | None = None
    latency: LatencyGate | None = None
    tensorrt: TensorRTGate | None = None

