"""Rules that span several sections of the pipeline file (stage order, what a stage needs, what a
gate needs), each reported at its own location; checked once every section is valid on its
own."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wanda_export.config.base import problem
from wanda_export.config.stages import (
    ONNX_FORMATS,
    STAGE_ORDER,
    BenchmarkStage,
    EvaluateStage,
    ExportStage,
    MaskStage,
    ScoreStage,
    refine_problem,
)

if TYPE_CHECKING:
    from wanda_export.config.pipeline import PipelineConfig


def _order_problems(stages: list) -> list[dict[str, Any]]:
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
    if mask is not None and mask.refine and score is not None:
        message = refine_problem(score.method, mask.refine)
        if message:
            problems.append(problem((*at["mask"], "refine"), message))
    if mask is not None and mask.refine and "calibrate" not in at:
        problems.append(problem((*at["mask"], "refine"), f"refine {mask.refine!r} needs "
                                "activation statistics: add '- calibrate: {}' before score"))
    if mask is not None and mask.allocation == "owl" and "calibrate" not in at:
        problems.append(
            problem(
                (*at["mask"], "allocation"),
                "allocation 'owl' needs activation statistics: add '- calibrate: {}' before "
                "score",
            )
        )
    evaluate: EvaluateStage | None = config.stage("evaluate")
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
    if evaluate is not None and evaluate.onnx_perplexity and (
        not evaluate.perplexity or export is None or "onnx" not in export.formats
    ):
        problems.append(problem(
            (*at["evaluate"], "onnx_perplexity"),
            "onnx_perplexity scores the exported model on the evaluation windows: it needs "
            "perplexity: true and an export stage with format 'onnx'"))
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
    problems.extend(_accuracy_gate_problems(config))
    if perplexity is not None and perplexity.max_onnx_ratio_to_torch is not None and (
        evaluate is None or not evaluate.onnx_perplexity
    ):
        problems.append(problem(
            ("gates", "perplexity", "max_onnx_ratio_to_torch"),
            "max_onnx_ratio_to_torch needs the ONNX perplexity: set onnx_perplexity: true in "
            "evaluate"))
    return problems


def _accuracy_gate_problems(config: PipelineConfig) -> list[dict[str, Any]]:
    """An accuracy gate needs lm-eval tasks in the evaluate stage, and gates only those."""
    gate = config.gates.accuracy
    if gate is None:
        return []
    evaluate: EvaluateStage | None = config.stage("evaluate")
    if evaluate is None or evaluate.lm_eval is None:
        return [problem(("gates", "accuracy"), "an accuracy gate needs an evaluate stage with "
                        "lm_eval: {tasks: [...]}", at_key=True)]
    tasks = evaluate.lm_eval.tasks
    return [problem(("gates", "accuracy", "tasks", task),
                    f"task {task!r} is not evaluated; the evaluate stage's lm_eval tasks are "
                    f"{', '.join(tasks)}", at_key=True)
            for task in gate.tasks or {} if task not in tasks]


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

