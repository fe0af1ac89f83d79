"""`wanda-export sweep`: every variant of a grid through the one runner, calibration computed
once through the cache, a comparison of the variants, the worst exit code, and an interrupt
that keeps what finished."""

from __future__ import annotations

import json

import pytest
from helpers import invoke

GRID = ["--grid", "mask.sparsity=0.5,0.6,0.7", "--grid", "score.method=wanda,sparsegpt"]


def _sweep(path, out, *args):
    return invoke("sweep", str(path), *GRID, "--out", str(out), "--quiet", *args)


def test_a_grid_runs_every_variant_and_calibrates_once(write_pipeline, workdir):
    out = workdir / "sweep"
    result = _sweep(write_pipeline(gate_min=0.5), out, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    names = [row["name"] for row in data["variants"]]
    assert names == [f"sparsity-{s}_method-{m}" for s in ("0.5", "0.6", "0.7")
                     for m in ("wanda", "sparsegpt")]
    reports = {name: json.loads((out / name / "report.json").read_text()) for name in names}
    calibrate = {name: next(s for s in report["stages"] if s["name"] == "calibrate")
                 for name, report in reports.items()}
    misses = [name for name, stage in calibrate.items() if stage["cache"] == "miss"]
    assert len(misses) == 1 and "sparsegpt" in misses[0]  # X^T X first: it serves Wanda too
    assert all(stage["cache"] == "hit" for name, stage in calibrate.items() if name not in misses)
    assert all(calibrate[name]["detail"]["served_by"] == calibrate[misses[0]]["detail"]["key"]
               for name in names if "wanda" in name)
    for name, report in reports.items():
        assert report["plan"]["sparsity"] == pytest.approx(float(name.split("_")[0][9:]))
        assert report["plan"]["method"] == name.rsplit("-", 1)[1]
        assert report["sparsity"]["overall"] == pytest.approx(report["plan"]["sparsity"], abs=0.01)
    assert data["calibration"]["computed"] == 1
    assert data["calibration"]["computed_by"] == misses
    assert sorted(data["calibration"]["from_cache"]) == sorted(set(names) - set(misses))
    assert "calibration computed once" in data["calibration"]["text"]
    assert json.loads((out / "report.json").read_text()) == data
    summary = (out / "summary.md").read_text()
    assert "calibration computed once" in summary and all(name in summary for name in names)
    assert (out / "charts" / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_wanda_from_the_sparsegpt_entry_prunes_as_from_its_own(write_pipeline, workdir):
    pipeline = write_pipeline()
    alone = workdir / "alone"
    assert invoke("run", str(pipeline), "--out", str(alone), "--quiet").exit_code == 0
    swept = workdir / "sweep"
    result = invoke("sweep", str(pipeline), "--grid", "score.method=sparsegpt,wanda",
                    "--out", str(swept), "--quiet", "--cache-dir", str(workdir / "other-cache"))
    assert result.exit_code == 0, result.output
    mine = json.loads((swept / "method-wanda" / "report.json").read_text())
    calibrate = next(s for s in mine["stages"] if s["name"] == "calibrate")
    assert calibrate["cache"] == "hit"
    plan = invoke("plan", str(pipeline), "--json", "--cache-dir", str(workdir / "other-cache"))
    rows = {row["stage"]: row["cache"] for row in json.loads(plan.stdout)["stages"]}
    assert rows["calibrate"] == "hit"  # served by the sparsegpt entry: plan agrees with the run
    entries = workdir / "other-cache" / "calibration"
    assert not list(entries.glob(f"*/{calibrate['detail']['key']}"))  # Wanda wrote no entry
    assert list(entries.glob(f"*/{calibrate['detail']['served_by']}"))
    reference = json.loads((alone / "report.json").read_text())
    assert mine["metrics"]["perplexity"] == reference["metrics"]["perplexity"]
    assert ((swept / "method-wanda" / "model" / "model.safetensors").read_bytes()
            == (alone / "model" / "model.safetensors").read_bytes())


def test_one_failing_variant_does_not_stop_the_others_and_the_worst_code_wins(
        write_pipeline, workdir):
    out = workdir / "sweep"
    # 1.5 is refused (exit 2); the 0.5 variant misses the gate's 0.55 (exit 3); 0.75 passes
    result = invoke("sweep", str(write_pipeline(gate_min=0.55)), "--grid",
                    "mask.sparsity=1.5,0.5,0.75", "--out", str(out), "--quiet", "--json")
    data = json.loads(result.stdout)
    assert [row["exit_code"] for row in data["variants"]] == [2, 3, 0]
    assert result.exit_code == 2 and data["error"]["exit_code"] == 2
    assert "less than 1" in data["variants"][0]["message"]
    assert data["variants"][1]["failed_gates"] == ["sparsity.min"]
    assert (out / "sparsity-0.75" / "model").is_dir() and (out / "sparsity-0.5").is_dir()
    assert not (out / "sparsity-1.5").exists()
    assert "sparsity-1.5" in (out / "summary.md").read_text()


def test_the_worst_exit_code_is_documented_order():
    from wanda_export.sweep import EXIT_SEVERITY, worst_exit

    assert EXIT_SEVERITY == (1, 4, 2, 3, 0)
    assert worst_exit([0, 3, 2]) == 2 and worst_exit([3, 4, 2]) == 4
    assert worst_exit([2, 1, 4]) == 1 and worst_exit([0, 0]) == 0 and worst_exit([]) == 0


def test_an_internal_error_in_a_variant_is_exit_1_and_the_rest_still_run(
        write_pipeline, workdir, monkeypatch):
    from wanda_export.pipeline import stages

    real = stages.STAGES["export"]

    def broken_at_60(ctx):
        if ctx.spec.sparsity == 0.6:
            raise RuntimeError("boom")
        return real(ctx)

    monkeypatch.setitem(stages.STAGES, "export", broken_at_60)
    out = workdir / "sweep"
    result = invoke("sweep", str(write_pipeline()), "--grid", "mask.sparsity=0.5,0.6,0.7",
                    "--out", str(out), "--quiet", "--json")
    data = json.loads(result.stdout)
    assert [row["exit_code"] for row in data["variants"]] == [0, 1, 0]
    assert result.exit_code == 1 and "boom" in data["variants"][1]["message"]


def test_an_interrupt_stops_the_sweep_with_130_and_keeps_finished_variants(
        write_pipeline, workdir, monkeypatch):
    from wanda_export.pipeline import stages

    real = stages.STAGES["export"]

    def interrupted_at_60(ctx):
        if ctx.spec.sparsity == 0.6:
            raise KeyboardInterrupt
        return real(ctx)

    monkeypatch.setitem(stages.STAGES, "export", interrupted_at_60)
    out = workdir / "sweep"
    result = invoke("sweep", str(write_pipeline()), "--grid", "mask.sparsity=0.5,0.6,0.7",
                    "--out", str(out), "--quiet")
    assert result.exit_code == 130
    assert "finished variant(s)" in result.stderr
    assert (out / "sparsity-0.5" / "report.json").is_file()
    assert not (out / "sparsity-0.6").exists() and not (out / "sparsity-0.7").exists()
    data = json.loads((out / "report.json").read_text())
    assert data["status"] == "interrupted"
    assert [row["status"] for row in data["variants"]] == ["passed", "pending", "pending"]
    assert not list(out.glob(".sparsity-0.6.partial-*"))
    # the folder is a sweep of this tool: a rerun may write into it
    assert invoke("sweep", str(write_pipeline()), "--grid", "mask.sparsity=0.5",
                  "--out", str(out), "--quiet").exit_code == 0


def test_a_sweep_does_not_write_into_a_run_release(write_pipeline, workdir):
    out = workdir / "release"
    assert invoke("run", str(write_pipeline()), "--out", str(out), "--quiet").exit_code == 0
    before = sorted(path.name for path in out.iterdir())
    result = invoke("sweep", str(write_pipeline()), "--grid", "mask.sparsity=0.5", "--out",
                    str(out), "--quiet")
    assert result.exit_code == 2 and "holds the release of a run" in result.stderr
    assert sorted(path.name for path in out.iterdir()) == before


@pytest.mark.parametrize(("args", "phrase"), [
    (["--grid", "mask.sparsity"], "is not KEY=V1,V2"),
    (["--grid", "mask.sparsity=0.5,,0.6"], "an empty value"),
    (["--grid", "mask.sparsity=0.5,0.5"], "given more than once"),
    (["--grid", "mask.sparsity=0.5", "--grid", "mask.sparsity=0.6"], "given more than once"),
    (["--grid", "maks.sparsity=0.5"], "did you mean 'mask'"),
    (["--grid", "benchmark.iterations=1,2"], "has no 'benchmark' stage"),
    (["--grid", "mask.sparsity=1.5"], "every variant of the sweep is refused"),
    (["--grid", "mask.sparsity=0.5", "--set", "mask"], "expected KEY=VALUE"),
])
def test_bad_grids_exit_2_and_write_nothing(write_pipeline, workdir, args, phrase):
    out = workdir / "sweep"
    result = invoke("sweep", str(write_pipeline()), *args, "--out", str(out), "--quiet")
    assert result.exit_code == 2, result.output
    assert phrase in result.stderr
    assert not out.exists()
