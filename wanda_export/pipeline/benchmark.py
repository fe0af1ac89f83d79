"""The benchmark stage: latency of the dense and the pruned model, per runtime and shape, in
the same run, reported as p50/p95/mean and as a speedup (dense p50 / sparse p50).

- onnxruntime-cpu / -cuda / -tensorrt: the exported model.onnx against its dense twin (the same
  graph with the unpruned weights restored); TensorRT builds fp16 engines with sparsity
  enabled, and its build log says how many layers really got sparse tactics.
- torch: the model itself with its pruned weights against its dense weights (dense kernels
  both: on CPU this shows what zeros alone buy, usually nothing).
- torch-sparse24: the pruned linears as semi-structured 2:4 tensors (CUDA, fp16) against the
  same weights in dense fp16 kernels.
- onnxruntime-genai / -cuda: the export's folder generating through onnxruntime-genai (prefill
  and decode steps, as tokens/s) against its dense twin, when the folder holds a
  genai_config.json.

A runtime this machine cannot run is reported "unavailable" with the reason; when a gate needs
it, the run stops before any work with exit 4 (EnvironmentProblem). A genai runtime is also
unavailable when the export wrote no genai_config.json, which is known once it ran: a gate that
needs it then stops the run at the benchmark stage, with exit 4 too.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path

import torch

from wanda_export.bench.compare import compare, comparison_dict
from wanda_export.bench.dense_twin import write_dense_genai_twin, write_dense_twin
from wanda_export.bench.genai_latency import (
    genai_folder_problem,
    genai_model_file,
    open_genai_model,
    read_genai_config,
    time_genai,
)
from wanda_export.bench.onnx_latency import CPU, CUDA, TENSORRT, open_session, time_session
from wanda_export.bench.runtimes import GENAI_DEVICES, Availability, probe, runtime_availability
from wanda_export.bench.shapes import Shape, parse_shapes
from wanda_export.bench.tensorrt_log import SparseTactics, captured_stderr, parse_sparse_tactics
from wanda_export.bench.timing import LatencyStats
from wanda_export.bench.torch_latency import measure_torch_model, to_sparse24_
from wanda_export.config import PipelineConfig
from wanda_export.errors import EnvironmentProblem
from wanda_export.model.layers import weight_out_in
from wanda_export.pipeline.context import RunContext
from wanda_export.report.metrics import LatencyMetrics, LatencyRow
from wanda_export.report.record import StageRecord

ORT_PROVIDERS = {"onnxruntime-cpu": CPU, "onnxruntime-cuda": CUDA,
                 "onnxruntime-tensorrt": TENSORRT}


def gated_runtimes(config: PipelineConfig) -> set[str]:
    """The runtimes a configured gate needs measurements of."""
    needed = set()
    if config.gates.latency is not None:
        needed.add(config.gates.latency.runtime)
    if config.gates.tensorrt is not None:
        needed.add("onnxruntime-tensorrt")
    return needed


def check_runtimes(config: PipelineConfig) -> dict[str, Availability]:
    """Probe the benchmark stage's runtimes; raise EnvironmentProblem (exit 4) when a gate
    needs one that cannot run here. Called before any work and again by the stage."""
    stage = config.stage("benchmark")
    if stage is None:
        return {}
    found = probe()
    availability = {name: runtime_availability(name, found) for name in stage.runtimes}
    _refuse_gated(config, availability, "this machine cannot run")
    return availability


def _refuse_gated(config: PipelineConfig, availability: dict[str, Availability],
                  why: str) -> None:
    """Raise EnvironmentProblem (exit 4) when a gate needs a runtime that is unavailable."""
    blocked = [a for a in availability.values()
               if not a.available and a.name in gated_runtimes(config)]
    if blocked:
        raise EnvironmentProblem(
            f"a release gate needs a runtime {why}: "
            + "; ".join(f"{a.name}: {a.reason}" for a in blocked),
            hint="run on a machine that has it, or drop that gate from the pipeline file")


def _genai_folder(ctx: RunContext) -> Path | None:
    """The folder of the run's ONNX export, which onnxruntime-genai generates from."""
    return None if ctx.onnx_export is None else ctx.onnx_export[0].parent


def with_genai_folder(ctx: RunContext,
                      availability: dict[str, Availability]) -> dict[str, Availability]:
    """`availability` with each available genai runtime checked against the export's folder
    (a genai_config.json, built for its device); a gate that needs one it makes unavailable
    stops the run (exit 4)."""
    folder = _genai_folder(ctx)
    checked = dict(availability)
    for name, runtime in availability.items():
        if name in GENAI_DEVICES and runtime.available:
            problem = ("the run has no ONNX export" if folder is None
                       else genai_folder_problem(folder, GENAI_DEVICES[name]))
            if problem:
                checked[name] = replace(runtime, available=False, reason=problem)
    _refuse_gated(ctx.config, checked, "the export cannot serve")
    return checked


@contextmanager
def _threads(count: int) -> Iterator[None]:
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@contextmanager
def _dense_weights(ctx: RunContext) -> Iterator[None]:
    """Put the unpruned weights back into the targets for the duration of the block."""
    pruned = {t.name: weight_out_in(t.module).detach().clone() for t in ctx.targets}
    with torch.no_grad():
        for target in ctx.targets:
            weight_out_in(target.module).copy_(ctx.dense_weights[target.name])
        try:
            yield
        finally:
            for target in ctx.targets:
                weight_out_in(target.module).copy_(pruned[target.name])


@contextmanager
def _tensorrt_build_log(provider: str) -> Iterator[list[str]]:
    """For TensorRT, onnxruntime's verbose log (the builder's sparsity lines) captured from
    native stderr; for any other provider, nothing."""
    if provider != TENSORRT:
        yield []
        return
    import onnxruntime

    onnxruntime.set_default_logger_severity(0)
    try:
        with captured_stderr() as log:
            yield log
    finally:
        onnxruntime.set_default_logger_severity(2)


def _measure_onnx(ctx: RunContext, runtime: str, shapes: list[Shape], stage, workdir: Path,
                  add: Callable[[LatencyRow], None]) -> SparseTactics | None:
    """Both ONNX files on one onnxruntime provider, one session per file timed on every shape;
    for TensorRT, the sparse tactics its builder picked for the pruned file."""
    sparse_path, verification = ctx.onnx_export
    dense_path = workdir / "dense" / "model.onnx"
    if not dense_path.exists():
        write_dense_twin(sparse_path, verification, ctx.dense_weights, dense_path)
    provider = ORT_PROVIDERS[runtime]
    tactics = None
    for variant, path in (("dense", dense_path), ("sparse", sparse_path)):
        with _tensorrt_build_log(provider) as log:
            session = open_session(path, threads=stage.threads, provider=provider,
                                   trt_cache_dir=workdir / "trt-engines" / variant)
            for shape in shapes:
                measured = time_session(session, shape, threads=stage.threads,
                                        warmup=stage.warmup, iterations=stage.iterations)
                add(LatencyRow(runtime, variant, str(shape), measured.stats,
                               provider=measured.provider))
        if provider == TENSORRT and variant == "sparse":
            tactics = parse_sparse_tactics("".join(log))
    return tactics


def _measure_genai(ctx: RunContext, runtime: str, shapes: list[Shape], stage, workdir: Path,
                   add: Callable[[LatencyRow], None]) -> None:
    """The export's folder and its dense twin through onnxruntime-genai, one og.Model per
    folder timed on every shape."""
    folder = _genai_folder(ctx)
    dense = workdir / "genai-dense"
    if not dense.exists():
        pruned = {target.name: weight_out_in(target.module) for target in ctx.targets}
        write_dense_genai_twin(folder, genai_model_file(read_genai_config(folder)), pruned,
                               ctx.dense_weights, dense)
    device = GENAI_DEVICES[runtime]
    for variant, path in (("dense", dense), ("sparse", folder)):
        opened = open_genai_model(path, threads=stage.threads, device=device)
        for shape in shapes:
            measured = time_genai(opened, shape, warmup=stage.warmup,
                                  iterations=stage.iterations)
            add(LatencyRow(runtime, variant, str(shape), measured.stats, device=device))
        del opened  # one model in memory at a time


def _measure_torch(ctx: RunContext, runtime: str, shapes: list[Shape], stage,
                   add: Callable[[LatencyRow], None]) -> None:
    """The model in PyTorch: dense vs pruned weights (torch), or the pruned weights in dense
    fp16 kernels vs 2:4 semi-structured ones on CUDA (torch-sparse24)."""
    model = ctx.loaded.model
    if runtime == "torch-sparse24":
        model = copy.deepcopy(model).to("cuda", torch.float16)
    for variant in ("dense", "sparse"):
        if runtime == "torch":
            weights = _dense_weights(ctx) if variant == "dense" else nullcontext()
        else:
            weights = nullcontext()
            if variant == "sparse":
                to_sparse24_(model, [t.name for t in ctx.targets])
        with weights:
            for shape in shapes:
                measured = measure_torch_model(model, shape, stage.warmup, stage.iterations)
                add(LatencyRow(runtime, variant, str(shape), measured.stats,
                               device=measured.device, dtype=measured.dtype))


def run_benchmark(ctx: RunContext) -> StageRecord:
    """Measure every available runtime on every shape, dense and pruned; record the latencies,
    the speedups and the unavailable runtimes with their reasons."""
    stage = ctx.config.stage("benchmark")
    shapes = parse_shapes(stage.shapes)
    availability = with_genai_folder(ctx, ctx.availability or check_runtimes(ctx.config))
    latency = LatencyMetrics(threads=stage.threads, warmup=stage.warmup,
                             iterations=stage.iterations, runtimes=dict(availability))
    with tempfile.TemporaryDirectory(prefix="wanda-export-bench-") as tmp, _threads(stage.threads):
        for name, runtime in availability.items():
            if not runtime.available:
                continue
            with ctx.progress.task(f"benchmark ({name})", 2 * len(shapes)) as advance:

                def add(row: LatencyRow, advance=advance) -> None:
                    latency.results.append(row)
                    advance(1)

                if name in ORT_PROVIDERS:
                    tactics = _measure_onnx(ctx, name, shapes, stage, Path(tmp), add)
                    if tactics is not None:
                        latency.tensorrt = tactics
                elif name in GENAI_DEVICES:
                    _measure_genai(ctx, name, shapes, stage, Path(tmp), add)
                else:
                    _measure_torch(ctx, name, shapes, stage, add)
    by_variant: dict[str, dict[tuple[str, str], LatencyStats]] = {"dense": {}, "sparse": {}}
    for row in latency.results:
        by_variant[row.variant][(row.runtime, row.shape)] = row.stats
    latency.comparison = compare(by_variant["dense"], by_variant["sparse"])
    ctx.record.metrics.latency = latency
    unavailable = {name: a.reason for name, a in availability.items() if not a.available}
    return StageRecord("benchmark", detail={
        "measured": sorted({row.runtime for row in latency.results}),
        "unavailable": unavailable, "speedup": comparison_dict(latency.comparison)["speedup"]})
