"""Layer-wise allocation and SparseGPT through the pipeline: report fields, chart, caching."""

from __future__ import annotations

import json

import pytest
from helpers import invoke

ALPHAPRUNING = {"allocation": "alphapruning", "epsilon": 0.2}


def layerwise(write_pipeline, name="pipeline.yaml", *, mode="dense", sparsity=0.6,
              mask_extra=ALPHAPRUNING, method="wanda"):
    return write_pipeline(name, mode=mode, sparsity=sparsity, gate_min=sparsity - 0.01,
                          stages={"score": {"method": method}, "mask": mask_extra})


def stages_of(report: dict) -> dict:
    return {s["name"]: s for s in report["stages"]}


@pytest.mark.parametrize("mode", ["dense", "sequential"])
def test_alphapruning_reports_ratios_and_alphas_and_caches_them(write_pipeline, workdir, mode):
    out = workdir / "a"
    result = invoke("run", str(layerwise(write_pipeline, mode=mode)), "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    allocation = report["sparsity"]["allocation"]
    assert allocation["method"] == "alphapruning" and allocation["epsilon"] == 0.2
    layers = report["sparsity"]["layers"]
    assert set(allocation["layers"]) == set(layers)
    assert all(entry["alpha"] > 1.0 for entry in allocation["layers"].values())
    assert len({round(e["ratio"], 9) for e in allocation["layers"].values()}) == 2  # 2 blocks
    for name, entry in allocation["layers"].items():
        assert layers[name]["sparsity"] >= entry["ratio"] - 1e-9
    assert report["sparsity"]["overall"] == pytest.approx(0.6, abs=1 / 64)
    assert stages_of(report)["mask"]["detail"]["cache"] == {"alphas": "miss"}
    assert (out / "charts" / "sparsity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plan = json.loads((out / "model" / "pruning.json").read_text())
    assert plan["allocation"]["method"] == "alphapruning"

    again = layerwise(write_pipeline, "again.yaml", mode=mode, sparsity=0.7)
    assert invoke("run", str(again), "--out", str(workdir / "b"), "--quiet").exit_code == 0
    second = json.loads((workdir / "b" / "report.json").read_text())
    assert stages_of(second)["mask"]["detail"]["cache"] == {"alphas": "hit"}
    assert {n: e["alpha"] for n, e in second["sparsity"]["allocation"]["layers"].items()} == {
        n: e["alpha"] for n, e in allocation["layers"].items()}
    rows = json.loads(invoke("plan", str(again), "--json").stdout)["stages"]
    assert {r["stage"]: r["cache"] for r in rows}["allocate-alphas"] == "hit"


def test_owl_in_sequential_mode_reuses_the_dense_statistics(write_pipeline, workdir):
    dense = layerwise(write_pipeline, "dense.yaml", mode="dense", mask_extra={"allocation": "owl"})
    assert invoke("run", str(dense), "--out", str(workdir / "a"), "--quiet").exit_code == 0
    sequential = layerwise(write_pipeline, "seq.yaml", mode="sequential",
                           mask_extra={"allocation": "owl", "owl_lambda": 0.1})
    result = invoke("run", str(sequential), "--out", str(workdir / "b"), "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads((workdir / "b" / "report.json").read_text())
    assert stages_of(report)["mask"]["detail"]["cache"] == {"dense_statistics": "hit"}
    allocation = report["sparsity"]["allocation"]
    assert allocation["method"] == "owl" and allocation["owl_lambda"] == 0.1
    assert all("outlier_ratio" in e for e in allocation["layers"].values())
    first = json.loads((workdir / "a" / "report.json").read_text())["sparsity"]["allocation"]
    assert {n: e["outlier_ratio"] for n, e in first["layers"].items()} == {
        n: e["outlier_ratio"] for n, e in allocation["layers"].items()}


@pytest.mark.parametrize("mode", ["dense", "sequential"])
def test_sparsegpt_pipeline_hit_gives_the_same_weights_as_the_miss(write_pipeline, workdir, mode):
    path = layerwise(write_pipeline, mode=mode, sparsity=0.5, mask_extra={"allocation": "uniform"},
                     method="sparsegpt")
    for out in ("a", "b"):
        result = invoke("run", str(path), "--out", str(workdir / out), "--quiet")
        assert result.exit_code == 0, result.output
    first = json.loads((workdir / "a" / "report.json").read_text())
    second = json.loads((workdir / "b" / "report.json").read_text())
    assert stages_of(first)["calibrate"]["cache"] == "miss"
    assert stages_of(second)["calibrate"]["cache"] == "hit"
    assert stages_of(first)["score"]["detail"]["dampening"] == 0.01
    assert first["sparsity"]["overall"] == pytest.approx(0.5)
    assert (workdir / "a" / "manifest.json").read_text() == (workdir / "b" / "manifest.json").read_text()
