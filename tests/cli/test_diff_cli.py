"""`wanda-export diff`: two real releases compared on stdout, as Markdown and as JSON."""

from __future__ import annotations

import json

from helpers import invoke


def test_diff_of_two_releases_prints_the_deltas(write_pipeline, workdir):
    old, new = workdir / "old", workdir / "new"
    assert invoke("run", str(write_pipeline()), "--out", str(old), "--quiet").exit_code == 0
    assert invoke("run", str(write_pipeline(sparsity=0.75, gate_min=0.75)), "--out", str(new),
                  "--quiet").exit_code == 0
    reports = [json.loads((path / "report.json").read_text()) for path in (old, new)]
    ppl = [report["metrics"]["perplexity"]["pruned"] for report in reports]

    table = invoke("diff", str(old), str(new))
    assert table.exit_code == 0, table.output
    assert "perplexity.pruned" in table.stdout and "sparsity.overall" in table.stdout
    assert f"{ppl[1] - ppl[0]:+.6g}" in table.stdout

    data = json.loads(invoke("diff", str(old / "report.json"), str(new), "--json").stdout)
    row = next(r for r in data["metrics"] if r["name"] == "perplexity.pruned")
    assert (row["old"], row["new"], row["delta"]) == (ppl[0], ppl[1], ppl[1] - ppl[0])
    assert {r["name"]: (r["old"], r["new"]) for r in data["plan"]}["sparsity"] == (0.5, 0.75)
    assert {r["name"] for r in data["gates"]} >= {"sparsity.min", "perplexity.max"}

    md = invoke("diff", str(old), str(new), "--md").stdout
    assert md.startswith("## wanda-export diff") and "| sparsity | 0.5 | 0.75 | changed |" in md


def test_diff_of_a_missing_release_exits_2_with_json(workdir):
    result = invoke("diff", str(workdir), str(workdir / "nope"), "--json")
    assert result.exit_code == 2
    assert "holds no report.json" in json.loads(result.stdout)["error"]["message"]
