"""Latency library of the benchmark stage: statistics, shapes, runtime availability on injected
machines, comparisons, a latency chart, and real ONNX/torch timings of a tiny llama on CPU."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from wanda_export.bench import runtimes, timing, torch_latency
from wanda_export.bench.compare import compare, comparison_dict, speedup
from wanda_export.bench.onnx_latency import (
    CPU,
    TENSORRT,
    execution_providers,
    open_session,
    session_layout,
    shape_inputs,
    time_session,
)
from wanda_export.bench.runtimes import (
    NO_CUDA,
    NO_GENAI,
    NO_GENAI_CUDA,
    NO_ONNXRUNTIME,
    GenaiWheel,
    Probe,
    runtime_availability,
)
from wanda_export.bench.shapes import DEFAULT_SHAPES, Shape, parse_shape, parse_shapes
from wanda_export.bench.timing import LatencyStats, latency_stats, per_call, time_callable
from wanda_export.bench.torch_latency import (
    measure_linear_sparse24,
    measure_torch_model,
    random_24_weight,
    to_sparse24_,
)
from wanda_export.config.stages import RUNTIMES
from wanda_export.errors import ConfigError, EnvironmentProblem
from wanda_export.evaluate.parity import onnx_session
from wanda_export.export.onnx import export_onnx
from wanda_export.report.charts import latency_chart
from wanda_export.sparsity.verify import nm_violations

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GPU_STUB = "the CPU-only error path is tested; this machine has CUDA"
BENCH_SCRIPT = Path(__file__).parents[2] / "benchmarks" / "gpu_sparse24.py"


def stats(p50: float, p95: float | None = None) -> LatencyStats:
    return LatencyStats(p50, p95 if p95 is not None else p50 * 1.5, p50, p50 * 0.9, 3, 2)


# --- timing ---------------------------------------------------------------------------------


def test_percentiles_interpolate_linearly():
    result = latency_stats([ms / 1000 for ms in range(1, 11)], warmup=4)
    assert result.p50_ms == pytest.approx(5.5)
    assert result.p95_ms == pytest.approx(9.55)
    assert result.mean_ms == pytest.approx(5.5)
    assert result.min_ms == pytest.approx(1.0)
    assert (result.iterations, result.warmup) == (10, 4)
    assert result.to_dict()["p50_ms"] == pytest.approx(5.5)


def test_latency_stats_needs_a_timing():
    with pytest.raises(ValueError, match="at least one"):
        latency_stats([], warmup=0)


def test_setup_runs_before_every_call_outside_the_clock(monkeypatch):
    clock = {"now": 0.0}
    events = []

    def setup():
        events.append("setup")
        clock["now"] += 1.0  # slow, and never timed

    def fn():
        events.append("call")
        clock["now"] += 0.002

    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock["now"])
    result = time_callable(fn, warmup=1, iterations=3, setup=setup)
    assert events == ["setup", "call"] * 4
    assert result.p50_ms == pytest.approx(2.0) and result.iterations == 3


def test_warmup_calls_run_but_are_not_timed(monkeypatch):
    clock = {"now": 0.0}
    durations = iter([0.5, 0.5, 0.001, 0.002, 0.003, 0.004, 0.005])  # 2 slow warm-ups first
    calls = []

    def fn():
        calls.append(1)
        clock["now"] += next(durations)

    syncs = []
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock["now"])
    result = time_callable(fn, warmup=2, iterations=5, sync=lambda: syncs.append(1))
    assert len(calls) == 7
    assert len(syncs) == 10  # before and after each timed call, never around warm-ups
    assert (result.iterations, result.warmup) == (5, 2)
    assert result.p50_ms == pytest.approx(3.0)
    assert result.min_ms == pytest.approx(1.0)
    assert result.p95_ms < 500


@pytest.mark.parametrize(("warmup", "iterations", "message"),
                         [(0, 0, "iterations must be >= 1"), (-1, 3, "warmup must be >= 0")])
def test_time_callable_validates_counts(warmup, iterations, message):
    with pytest.raises(ValueError, match=message):
        time_callable(lambda: None, warmup, iterations)


def test_per_call_divides_times_only():
    scaled = per_call(LatencyStats(10.0, 20.0, 12.0, 8.0, 5, 1), 10)
    assert (scaled.p50_ms, scaled.p95_ms, scaled.mean_ms, scaled.min_ms) == (1.0, 2.0, 1.2, 0.8)
    assert (scaled.iterations, scaled.warmup) == (5, 1)
    with pytest.raises(ValueError, match="calls"):
        per_call(scaled, 0)


# --- shapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("prefill:1x128", Shape("prefill", 1, 128, 0)),
    ("prefill:8x512", Shape("prefill", 8, 512, 0)),
    ("decode:1x1@128", Shape("decode", 1, 1, 128)),
    (" Decode:4x1@16 ", Shape("decode", 4, 1, 16)),
])
def test_shapes_parse_and_print_back(text, expected):
    shape = parse_shape(text)
    assert shape == expected
    assert parse_shape(str(shape)) == shape
    assert shape.tokens == expected.batch * expected.seqlen


@pytest.mark.parametrize(("text", "reason"), [
    ("prefill:1x128@4", "no '@PAST'"),
    ("decode:1x1", "needs '@PAST'"),
    ("decode:1x4@8", "one token"),
    ("decode:1x1@0", "past of >= 1"),
    ("prefill:0x8", ">= 1"),
    ("encode:1x8", "kind must be one of"),
    ("1x128", "cannot parse"),
    ("prefill:1by128", "cannot parse"),
])
def test_bad_shapes_name_the_string_and_the_forms(text, reason):
    with pytest.raises(ValueError, match=reason) as error:
        parse_shape(text)
    assert repr(text) in str(error.value)
    assert "prefill:BATCHxSEQLEN" in str(error.value)
    assert "decode:BATCHx1@PAST" in str(error.value)


def test_shape_constructor_validates_and_defaults_are_the_documented_ones():
    with pytest.raises(ValueError, match="one token"):
        Shape("decode", 1, 2, 3)
    assert [str(s) for s in DEFAULT_SHAPES] == ["prefill:1x128", "prefill:8x512",
                                                "decode:1x1@128"]
    assert parse_shapes(["prefill:1x8", "decode:2x1@4"])[1] == Shape("decode", 2, 1, 4)


# --- runtime availability -------------------------------------------------------------------

VERSIONS = {"torch": "2.13.0", "onnxruntime": "1.32.0", "cuda": "12.8", "device": "H100"}
ORT_CPU = ("CPUExecutionProvider",)
ORT_GPU = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


GENAI_CPU, GENAI_GPU = GenaiWheel("0.18.0", cuda=False), GenaiWheel("0.18.0", cuda=True)


def machine(providers=ORT_CPU, capability=None, semi_structured=True, genai=GENAI_CPU) -> Probe:
    return Probe(providers, capability, semi_structured, VERSIONS, genai)


GPU_EP_HINT = "(install onnxruntime-gpu: pip install 'wanda-export[gpu]')"


@pytest.mark.parametrize(("name", "found", "reason"), [
    ("onnxruntime-cpu", machine(providers=None), NO_ONNXRUNTIME),
    ("onnxruntime-cuda", machine(providers=None), NO_ONNXRUNTIME),
    ("onnxruntime-tensorrt", machine(providers=None), NO_ONNXRUNTIME),
    ("onnxruntime-cpu", machine(providers=()), "onnxruntime has no CPUExecutionProvider"),
    ("onnxruntime-cuda", machine(), f"onnxruntime has no CUDAExecutionProvider {GPU_EP_HINT}"),
    ("onnxruntime-tensorrt", machine(),
     f"onnxruntime has no TensorrtExecutionProvider and no CUDAExecutionProvider {GPU_EP_HINT}"),
    ("onnxruntime-tensorrt", machine(providers=("TensorrtExecutionProvider", *ORT_CPU)),
     f"onnxruntime has no CUDAExecutionProvider {GPU_EP_HINT}"),
    ("torch-sparse24", machine(), NO_CUDA),
    ("torch-sparse24", machine(capability=(7, 5)),
     "compute capability 7.5 < 8.0 needed for semi-structured 2:4 kernels"),
    ("torch-sparse24", machine(capability=(8, 0), semi_structured=False),
     "torch 2.13.0 has no torch.sparse.to_sparse_semi_structured (torch >= 2.1 needed)"),
    ("onnxruntime-genai", machine(genai=None), NO_GENAI),
    ("onnxruntime-genai-cuda", machine(genai=None, capability=(9, 0)), NO_GENAI),
    ("onnxruntime-genai", machine(providers=None), NO_ONNXRUNTIME),
    ("onnxruntime-genai-cuda", machine(genai=GENAI_GPU), NO_CUDA),
    ("onnxruntime-genai-cuda", machine(capability=(9, 0)), NO_GENAI_CUDA),
])
def test_unavailable_runtimes_say_exactly_why(name, found, reason):
    result = runtime_availability(name, found)
    assert not result.available
    assert result.reason == reason
    assert result.versions == VERSIONS


@pytest.mark.parametrize(("name", "found", "device", "provider"), [
    ("onnxruntime-cpu", machine(), "cpu", "CPUExecutionProvider"),
    ("onnxruntime-cuda", machine(providers=ORT_GPU), "cuda", "CUDAExecutionProvider"),
    ("onnxruntime-tensorrt", machine(providers=ORT_GPU), "cuda", "TensorrtExecutionProvider"),
    ("torch", machine(providers=None), "cpu", None),
    ("torch", machine(capability=(7, 0)), "cuda", None),
    ("torch-sparse24", machine(capability=(8, 0)), "cuda", None),
    ("torch-sparse24", machine(capability=(9, 0)), "cuda", None),
    ("onnxruntime-genai", machine(), "cpu", None),
    ("onnxruntime-genai", machine(capability=(9, 0), genai=GENAI_GPU), "cpu", None),
    ("onnxruntime-genai-cuda", machine(capability=(8, 0), genai=GENAI_GPU), "cuda", None),
])
def test_available_runtimes_name_device_and_provider(name, found, device, provider):
    result = runtime_availability(name, found)
    assert result.available and result.reason == "available"
    assert (result.device, result.provider) == (device, provider)
    assert result.to_dict()["versions"]["cuda"] == "12.8"


def test_the_runtimes_are_the_ones_the_config_accepts():
    assert runtimes.RUNTIMES == RUNTIMES
    assert set(runtimes.GENAI_DEVICES) <= set(RUNTIMES)


def test_unknown_runtime_lists_choices_and_suggests():
    with pytest.raises(ValueError, match="did you mean 'torch-sparse24'") as error:
        runtime_availability("torch-sparse", machine())
    assert all(name in str(error.value) for name in runtimes.RUNTIMES)
    with pytest.raises(ValueError, match="unknown runtime 'xyz'") as error:
        runtime_availability("xyz", machine())
    assert "did you mean" not in str(error.value)


def test_runtime_availability_probes_this_machine(monkeypatch):
    found = runtimes.probe()
    assert found.versions["torch"] == torch.__version__
    genai = importlib.util.find_spec("onnxruntime_genai")
    assert (found.genai is None) == (genai is None)
    if genai is not None:
        assert found.versions["onnxruntime_genai"] == found.genai.version
        assert found.genai.version == importlib.metadata.version("onnxruntime-genai")
    assert "CPUExecutionProvider" in (found.providers or ())
    assert runtime_availability("onnxruntime-cpu").available
    monkeypatch.setattr(runtimes, "onnxruntime_providers", lambda: None)
    monkeypatch.setattr(runtimes, "cuda_capability", lambda: (7, 5))
    assert runtime_availability("onnxruntime-cpu").reason == NO_ONNXRUNTIME
    assert "compute capability 7.5" in runtime_availability("torch-sparse24").reason


# --- comparison -----------------------------------------------------------------------------


def test_compare_divides_dense_by_sparse_p50():
    dense = {("onnxruntime-cpu", "prefill:1x128"): stats(10.0, 12.0),
             ("torch", "decode:1x1@128"): stats(4.0)}
    sparse = {("onnxruntime-cpu", "prefill:1x128"): stats(8.0, 9.0),
              ("torch-sparse24", "prefill:8x512"): stats(2.0)}
    rows = compare(dense, sparse)
    assert [(r.runtime, r.shape) for r in rows] == [("onnxruntime-cpu", "prefill:1x128"),
                                                    ("torch", "decode:1x1@128"),
                                                    ("torch-sparse24", "prefill:8x512")]
    assert rows[0].speedup == pytest.approx(1.25)
    assert (rows[0].dense_p95_ms, rows[0].sparse_p95_ms) == (12.0, 9.0)
    assert rows[1].sparse_p50_ms is None and rows[1].speedup is None
    assert rows[2].dense_p50_ms is None and rows[2].speedup is None
    summary = json.loads(json.dumps(comparison_dict(rows)))
    assert summary["speedup"]["onnxruntime-cpu prefill:1x128"] == pytest.approx(1.25)
    assert summary["rows"][1]["speedup"] is None
    assert speedup(3.0, 0.0) is None and speedup(3.0, 1.5) == 2.0


def test_latency_chart_writes_a_png(tmp_path):
    rows = compare({("onnxruntime-cpu", "prefill:1x128"): stats(10.0),
                    ("onnxruntime-cpu", "decode:1x1@128"): stats(0.2)},
                   {("onnxruntime-cpu", "prefill:1x128"): stats(8.0)})
    path = latency_chart(rows, tmp_path / "charts" / "latency.png")
    assert path == tmp_path / "charts" / "latency.png"
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind
    again = latency_chart(rows, tmp_path / "again.png")
    assert again.read_bytes() == path.read_bytes()
    assert latency_chart([], tmp_path / "empty.png") is None


# --- ONNX and torch latency on a real tiny model --------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama(tiny_model):
    return tiny_model("llama")


@pytest.fixture(scope="module")
def tiny_onnx(tiny_llama, tmp_path_factory):
    return export_onnx(tiny_llama, tmp_path_factory.mktemp("bench-onnx") / "model.onnx")


@pytest.mark.parametrize("text", ["prefill:1x8", "decode:1x1@8"])
def test_onnxruntime_cpu_latency_of_a_real_export(tiny_onnx, text):
    session = open_session(tiny_onnx.path, threads=1)
    result = time_session(session, parse_shape(text), threads=1, warmup=2, iterations=3)
    assert result.provider == "CPUExecutionProvider"
    assert math.isfinite(result.stats.p50_ms) and 0 < result.stats.p50_ms <= result.stats.p95_ms
    assert (result.stats.iterations, result.stats.warmup, result.threads) == (3, 2, 1)
    assert result.to_dict()["shape"] == text


def test_cache_layout_is_read_off_the_onnx_inputs(tiny_onnx):
    layout = session_layout(onnx_session(tiny_onnx.path))
    assert layout == tiny_onnx.layout
    ids, past = shape_inputs(parse_shape("decode:2x1@8"), layout, 256)
    assert ids.shape == (2, 1) and ids.dtype == np.int64
    assert len(past) == 2 * layout.layers
    assert past[0].shape == (2, layout.kv_heads, 8, layout.head_dim)
    again, _ = shape_inputs(parse_shape("decode:2x1@8"), layout, 256)
    assert np.array_equal(ids, again)
    assert shape_inputs(parse_shape("prefill:1x8"), layout, 256)[1] is None


def test_execution_provider_options(tmp_path):
    assert execution_providers(CPU) == [CPU]
    assert execution_providers("CUDAExecutionProvider") == ["CUDAExecutionProvider", CPU]
    trt, *rest = execution_providers(TENSORRT, tmp_path)
    assert trt == (TENSORRT, {"trt_fp16_enable": True, "trt_sparsity_enable": True,
                              "trt_engine_cache_enable": True,
                              "trt_engine_cache_path": str(tmp_path),
                              "trt_detailed_build_log": True,
                              "trt_dump_subgraphs": False})
    assert rest == ["CUDAExecutionProvider", CPU]
    with pytest.raises(ValueError, match="trt_cache_dir"):
        execution_providers(TENSORRT)
    with pytest.raises(ValueError, match="unknown execution provider"):
        execution_providers("ROCMExecutionProvider")


def test_torch_prefill_latency(tiny_llama):
    result = measure_torch_model(tiny_llama, parse_shape("prefill:2x8"), warmup=1, iterations=3)
    assert (result.device, result.dtype) == ("cpu", "float32")
    assert 0 < result.stats.p50_ms <= result.stats.p95_ms
    assert result.stats.iterations == 3


def test_torch_decode_sees_the_same_past_every_call(tiny_llama):
    seen = []

    def spy(_module, _args, kwargs):
        cache = kwargs.get("past_key_values")
        seen.append((kwargs["input_ids"].shape[1], cache.get_seq_length() if cache else 0))

    handle = tiny_llama.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        result = measure_torch_model(tiny_llama, parse_shape("decode:1x1@8"), warmup=2,
                                     iterations=3)
    finally:
        handle.remove()
    assert seen == [(8, 0)] + [(1, 8)] * 5  # one cache build, then 2 + 3 single-token steps
    assert 0 < result.stats.p50_ms <= result.stats.p95_ms


# --- 2:4 semi-structured (CUDA only: the CPU error path) --------------------------------------


def test_random_24_weight_keeps_the_two_largest_of_every_four():
    weight = random_24_weight(8, 16, torch.float32, "cpu")
    assert nm_violations(weight, 2, 4) == 0
    assert int((weight == 0).sum()) == weight.numel() // 2
    dense = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    kept = dense.abs().reshape(-1, 4).topk(2, dim=1).values.sort(dim=1).values
    got = weight.abs().reshape(-1, 4).sort(dim=1).values[:, 2:]
    assert torch.equal(got, kept)


@pytest.mark.skipif(torch.cuda.is_available(), reason=GPU_STUB)
def test_sparse24_is_refused_clearly_without_cuda(tiny_llama):
    with pytest.raises(EnvironmentProblem, match=r"no CUDA device \(torch.cuda.is_available"):
        to_sparse24_(tiny_llama, ["model.layers.0.mlp.gate_proj"])
    with pytest.raises(EnvironmentProblem, match="semi-structured 2:4 sparsity is unavailable"):
        measure_linear_sparse24(128, 256, 16, torch.float16, warmup=1, iterations=1, calls=1)
    assert tiny_llama.model.layers[0].mlp.gate_proj.weight.layout == torch.strided


def test_sparse24_conversion_checks_every_module_first(monkeypatch):
    monkeypatch.setattr(torch_latency, "require_sparse24", lambda: None)
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU())
    with pytest.raises(ConfigError, match="needs float16 or bfloat16 weights on CUDA"):
        to_sparse24_(model, ["0"])
    with pytest.raises(ConfigError, match="not an nn.Linear"):
        to_sparse24_(model, ["1"])
    with pytest.raises(ConfigError, match="no module 'missing'"):
        to_sparse24_(model, ["missing"])
    converted = []
    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", converted.append)

    def only_module_1_fails(name, _module):
        if name == "1":
            raise ConfigError("bad module 1")

    monkeypatch.setattr(torch_latency, "_check_sparse24_linear", only_module_1_fails)
    with pytest.raises(ConfigError, match="bad module 1"):
        to_sparse24_(model, ["0", "1"])  # "0" passes its check, "1" fails: nothing converted
    assert converted == [] and isinstance(model[0].weight, nn.Parameter)


@pytest.mark.skipif(torch.cuda.is_available(), reason=GPU_STUB)
def test_gpu_benchmark_script_exits_cleanly_without_cuda(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("gpu_sparse24", BENCH_SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    output = tmp_path / "gpu_sparse24.json"
    monkeypatch.setattr(sys, "argv", ["gpu_sparse24.py", "--output", str(output)])
    script.main()
    printed = capsys.readouterr().out
    assert "prefill:1x128 = 128, prefill:1x512 = 512, prefill:8x512 = 4096" in printed
    assert NO_CUDA in printed and "no results written" in printed
    assert not output.exists()
