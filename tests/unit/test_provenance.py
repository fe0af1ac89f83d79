"""Provenance and honest numbers: when, with what and where a report was made, the model's public
name, latency quartiles and the speedup's interval ("within noise"), and a message on every
gate row."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from wanda_export.bench.compare import compare
from wanda_export.bench.timing import latency_stats, per_call
from wanda_export.model.default import HUB_ID
from wanda_export.model.loading import model_name
from wanda_export.report.metrics import LatencyMetrics, LatencyRow
from wanda_export.report.provenance import VERSIONED, created_now, git_commit, host, versions
from wanda_export.report.record import GateResult, RunRecord
from wanda_export.report.summary import render_summary_md


def test_created_is_utc_to_the_second() -> None:
    created = datetime.fromisoformat(created_now())
    assert created.tzinfo == UTC and created.microsecond == 0
    assert abs((datetime.now(UTC) - created).total_seconds()) < 5


def test_versions_name_every_library_and_the_checkout(tmp_path: Path) -> None:
    found = versions()
    assert set(found) == {"python", *VERSIONED, "wanda-export-commit"}
    assert found["python"].count(".") == 2 and found["torch"]
    commit = git_commit(Path(__file__).parent)
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", commit)
    assert git_commit(tmp_path) is None  # not a repository


def test_host_names_the_cpu_cores_and_gpu() -> None:
    import torch

    machine = host()
    assert machine["cpu"] and machine["cores"] >= machine["cores_usable"] >= 1
    assert (machine["gpu"] is None) == (not torch.cuda.is_available())
    assert machine["gpu_count"] == (torch.cuda.device_count() if torch.cuda.is_available() else 0)


@pytest.mark.parametrize(("kind", "source", "name"), [
    ("default", "/home/u/.cache/wanda-export/models/smollm2-135m-instruct-abc", HUB_ID),
    ("hub", "org/model", "org/model"),
    ("dir", "/root/.cache/huggingface/hub/models--Org--Some-Model/snapshots/0a1b2c",
     "Org/Some-Model"),
    ("dir", "/data/checkpoints/llama-7b", "llama-7b"),
    ("gguf", "/models/tiny.Q4_1.gguf", "tiny.Q4_1"),
])
def test_the_model_is_named_never_by_a_local_path(kind, source, name) -> None:
    assert model_name(kind, source) == name


def test_quartiles_and_the_speedup_interval() -> None:
    stats = latency_stats([ms / 1000 for ms in range(1, 11)], warmup=0)
    assert (stats.p25_ms, stats.p50_ms, stats.p75_ms) == pytest.approx((3.25, 5.5, 7.75))
    assert per_call(stats, 10).p75_ms == pytest.approx(0.775)
    key = ("torch", "prefill:1x8")
    dense = latency_stats([0.010, 0.011, 0.012, 0.013], warmup=0)
    overlapping = latency_stats([0.009, 0.0105, 0.0115, 0.012], warmup=0)
    faster = latency_stats([0.004, 0.0041, 0.0042, 0.0043], warmup=0)
    (noise,) = compare({key: dense}, {key: overlapping})
    assert noise.speedup > 1.0 and noise.within_noise
    assert noise.speedup_low == pytest.approx(dense.p25_ms / overlapping.p75_ms)
    (real,) = compare({key: dense}, {key: faster})
    assert real.speedup_low > 1.0 and real.within_noise is False


def test_summary_shows_the_name_spread_noise_and_a_message_per_gate() -> None:
    key = ("torch", "prefill:1x8")
    dense = latency_stats([0.010, 0.011, 0.012, 0.013], warmup=0)
    sparse = latency_stats([0.009, 0.0105, 0.0115, 0.012], warmup=0)
    record = RunRecord(tool_version="0.1.0", config_digest="0" * 64,
                       created="2026-11-30T14:00:00+00:00",
                       versions={"python": "3.11.7", "torch": "2.13.0"},
                       host={"cpu": "AMD EPYC", "cores": 2, "gpu": None},
                       model={"name": "Org/Some-Model", "source": "/root/.cache/x/snapshots/1"})
    record.metrics.latency = LatencyMetrics(
        threads=2, warmup=0, iterations=4, runtimes={},
        results=[LatencyRow("torch", "dense", key[1], dense),
                 LatencyRow("torch", "sparse", key[1], sparse)],
        comparison=compare({key: dense}, {key: sparse}))
    record.gates = [GateResult("verify", True, 0, 0, "")]
    text = render_summary_md(record)
    assert "**Model:** `Org/Some-Model`" in text and "/root/.cache" not in text
    assert "**Made:** 2026-11-30T14:00:00+00:00 · Python 3.11.7, torch 2.13.0 · AMD EPYC" in text
    row = next(line for line in text.splitlines() if line.startswith("| torch |"))
    assert "11.5 (10.75–12.25)" in row and "≈ within noise" in row
    gate = next(line for line in text.splitlines() if line.startswith("| `verify`"))
    assert gate.rstrip().endswith("| passed |")


def test_importance_kept_is_the_share_of_score_the_mask_keeps() -> None:
    import torch

    from wanda_export.sparsity.score import importance_kept

    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    pruned = torch.tensor([[False, False, True, True], [True, False, True, False]])
    assert importance_kept(scores, pruned) == pytest.approx((7 + 2) / 14)
    assert importance_kept(torch.zeros(2, 2), torch.ones(2, 2, dtype=torch.bool)) == 1.0


def test_a_uniform_run_charts_the_importance_each_layer_kept(tiny_model, tmp_path) -> None:
    import torch

    from wanda_export.prune import PruneSpec, prune_model
    from wanda_export.report.charts import plot_importance_kept, uniform_sparsity
    from wanda_export.report.metrics import SparsityRecord

    windows = torch.randint(4, 200, (4, 32), generator=torch.Generator().manual_seed(0))
    result = prune_model(tiny_model("llama"), PruneSpec(pattern="2:4", mode="dense"), windows)
    kept = result.importance_kept
    assert list(kept) == list(result.report.layers)  # every target, in model order
    assert all(0.5 < share <= 1.0 for share in kept.values())  # 2:4 keeps the larger half
    assert len({round(share, 6) for share in kept.values()}) > 1  # tells the layers apart
    record = RunRecord(tool_version="0.1.0", config_digest="0" * 64, sparsity=SparsityRecord(
        pattern="2:4", target=0.5, report=result.report, importance_kept=kept))
    assert uniform_sparsity(record)
    assert record.to_dict()["sparsity"]["importance_kept"] == kept
    png = plot_importance_kept(record, tmp_path / "importance.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
