"""The typed measurements of a run: what the stages measured, as dataclasses the stages fill and
the gates, writers and charts read by attribute.

Each class holds the measuring code's own result (SparsityReport, Allocation, ParityResult,
OnnxVerification, Availability, LatencyStats, ComparisonRow, SparseTactics) and its `to_dict()`
is exactly its part of report.json; a measurement not taken is left out of the JSON. The
classes use slots, so a stage that writes a misspelt field fails where it writes it instead of
leaving a gate to find the measurement missing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from wanda_export.bench.compare import comparison_dict
from wanda_export.bench.shapes import parse_shape, tokens_per_second

if TYPE_CHECKING:
    from wanda_export.allocation import Allocation
    from wanda_export.bench.compare import ComparisonRow
    from wanda_export.bench.runtimes import Availability
    from wanda_export.bench.tensorrt_log import SparseTactics
    from wanda_export.bench.timing import LatencyStats
    from wanda_export.evaluate.parity import ParityResult
    from wanda_export.export.onnx_verify import OnnxVerification
    from wanda_export.sparsity.permute import Permuted
    from wanda_export.sparsity.verify import SparsityReport


def _measured(item: Any) -> dict[str, Any]:
    """The fields of a flat dataclass that hold a value (None: not measured, left out)."""
    values = ((f.name, getattr(item, f.name)) for f in fields(item))
    return {name: value for name, value in values if value is not None}


@dataclass(slots=True)
class SparsityRecord:
    """The sparsity verified in the weights: against which pattern, the planned ratio, each
    layer's result and, when the mask stage ran, the layer-wise allocation."""

    pattern: str
    target: float | None
    report: SparsityReport
    allocation: Allocation | None = None
    verified: bool = False  # the verify stage re-read the weights, so its gate applies
    permuted: dict[str, Permuted] | None = None
    # per layer, the share of the method's importance its mask kept (in-memory runs)
    importance_kept: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """report.json's `sparsity`: pattern, target, overall, valid, layers[, allocation]
        [, permutation: how many linears were permuted and the N:M score mass they keep]
        [, importance_kept]."""
        data = {"pattern": self.pattern, "target": self.target, **self.report.to_dict()}
        if self.allocation is not None:
            data["allocation"] = self.allocation.to_dict()
        if self.permuted:
            before = sum(entry.before for entry in self.permuted.values())
            after = sum(entry.after for entry in self.permuted.values())
            data["permutation"] = {"linears": len(self.permuted), "kept_score_before": before,
                                   "kept_score_after": after,
                                   "gain": after / before - 1 if before else None}
        if self.importance_kept is not None:
            data["importance_kept"] = dict(self.importance_kept)
        return data


@dataclass(slots=True)
class PerplexityMetrics:
    """Perplexity on the evaluation windows, of the dense and of the pruned model."""

    dense: float | None = None
    pruned: float | None = None
    ratio_to_dense: float | None = None
    windows: int | None = None
    seqlen: int | None = None
    onnx: float | None = None  # the exported ONNX model through onnxruntime, same windows
    onnx_ratio_to_torch: float | None = None  # onnx / pruned

    def to_dict(self) -> dict[str, Any]:
        """The measured fields."""
        return _measured(self)


@dataclass(slots=True)
class TaskAccuracy:
    """One lm-eval task: the metric reported (and gated), its dense and pruned values, their
    standard errors (None when lm-eval gives none), recovery (pruned / dense; None when dense
    is 0) and the items evaluated."""

    metric: str
    dense: float
    pruned: float
    recovery: float | None
    dense_stderr: float | None
    pruned_stderr: float | None
    n: int

    @property
    def drop(self) -> float:
        """dense - pruned, in the metric's units."""
        return self.dense - self.pruned

    @property
    def drop_stderr(self) -> float | None:
        """The standard error of the drop, treating the two scores as independent."""
        if self.dense_stderr is None or self.pruned_stderr is None:
            return None
        return (self.dense_stderr ** 2 + self.pruned_stderr ** 2) ** 0.5

    def to_dict(self) -> dict[str, Any]:
        """metric, dense, pruned, recovery, dense_stderr, pruned_stderr, n (None included)."""
        return asdict(self)


@dataclass(slots=True)
class OnnxFileCheck:
    """The pruned weights re-verified inside one exported ONNX file."""

    file: str  # relative to the output folder
    pattern: str  # the pattern checked along K
    verification: OnnxVerification
    exporter: str | None = None  # "genai" (onnxruntime-genai builder) or "torch" (torch.onnx)

    def to_dict(self) -> dict[str, Any]:
        """file, valid, the failing layers, the layer count and the weight layouts found."""
        verification = self.verification
        layouts = {check.layout or "missing" for check in verification.layers.values()}
        return {"file": self.file, "valid": verification.valid,
                "failures": verification.failures, "layers": len(verification.layers),
                "layouts": sorted(layouts), "exporter": self.exporter,
                "packed_layers": sum(1 for check in verification.layers.values()
                                     if any(p.start is not None for p in check.pieces))}


@dataclass(frozen=True, slots=True)
class FileSize:
    """One exported weight file's bytes, and their ratio to a dense export."""

    bytes: int
    ratio_to_dense: float


@dataclass(slots=True)
class ArtifactSizes:
    """Bytes of the exported weight files against the dense parameters' bytes."""

    dense_parameter_bytes: int
    files: dict[str, FileSize] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """dense_parameter_bytes and, per file, bytes and ratio_to_dense."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class LatencyRow:
    """One timed (runtime, dense or sparse variant, shape): where it ran and its statistics.
    onnxruntime rows name the provider; torch rows the device and dtype."""

    runtime: str
    variant: str
    shape: str
    stats: LatencyStats
    provider: str | None = None
    device: str | None = None
    dtype: str | None = None

    @property
    def tokens_per_second(self) -> float | None:
        """Tokens per second at the median (bench.shapes.tokens_per_second)."""
        return tokens_per_second(parse_shape(self.shape), self.stats.p50_ms)

    def to_dict(self) -> dict[str, Any]:
        """runtime, variant, shape, where it ran, tokens/s, then the statistics' fields."""
        where = {"provider": self.provider, "device": self.device, "dtype": self.dtype}
        return {"runtime": self.runtime, "variant": self.variant, "shape": self.shape,
                **{key: value for key, value in where.items() if value is not None},
                "tokens_per_second": self.tokens_per_second, **self.stats.to_dict()}


@dataclass(slots=True)
class LatencyMetrics:
    """The benchmark: its settings, every runtime's availability, the timed rows, dense vs
    sparse per (runtime, shape), and TensorRT's sparse tactics when it ran."""

    threads: int
    warmup: int
    iterations: int
    runtimes: dict[str, Availability]
    results: list[LatencyRow] = field(default_factory=list)
    comparison: list[ComparisonRow] = field(default_factory=list)
    tensorrt: SparseTactics | None = None

    def to_dict(self) -> dict[str, Any]:
        """report.json's `metrics.latency`."""
        data: dict[str, Any] = {
            "threads": self.threads, "warmup": self.warmup, "iterations": self.iterations,
            "runtimes": {name: runtime.to_dict() for name, runtime in self.runtimes.items()}}
        if self.tensorrt is not None:
            data["tensorrt"] = self.tensorrt.to_dict()
        data["results"] = [row.to_dict() for row in self.results]
        data["comparison"] = comparison_dict(self.comparison)
        return data


@dataclass(slots=True)
class Metrics:
    """Everything the run measured besides sparsity; None (or no entry) until a stage measures
    it. `onnx` is keyed by export format ("onnx", "onnx-fp16")."""

    perplexity: PerplexityMetrics | None = None
    lm_eval: dict[str, TaskAccuracy] = field(default_factory=dict)  # by task name
    onnx: dict[str, OnnxFileCheck] = field(default_factory=dict)
    parity: ParityResult | None = None
    sizes: ArtifactSizes | None = None
    latency: LatencyMetrics | None = None

    def to_dict(self) -> dict[str, Any]:
        """report.json's `metrics`: each measurement taken, in stage order."""
        data: dict[str, Any] = {}
        if self.perplexity is not None:
            data["perplexity"] = self.perplexity.to_dict()
        if self.lm_eval:
            data["lm_eval"] = {task: scores.to_dict() for task, scores in self.lm_eval.items()}
        if self.onnx:
            data["onnx"] = {label: check.to_dict() for label, check in self.onnx.items()}
        for name, measured in (("parity", self.parity), ("sizes", self.sizes),
                               ("latency", self.latency)):
            if measured is not None:
                data[name] = measured.to_dict()
        return data
