"""model/README.md: a Hugging Face model card that huggingface_hub parses, with the base model,
tags, license, the plan, the metrics, the gates and the config."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import invoke

from wanda_export.report.model_card import base_model_facts, card_metadata, front_matter


def test_every_release_has_a_card_that_huggingface_hub_parses(write_pipeline, workdir):
    from huggingface_hub import ModelCard

    out = workdir / "out"
    assert invoke("run", str(write_pipeline(pattern="2:4")), "--out", str(out),
                  "--quiet").exit_code == 0
    text = (out / "model" / "README.md").read_text()
    card = ModelCard(text)
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert data["tags"] == ["wanda-export", "sparse", "pruned", "wanda", "2:4"]
    assert "base_model" not in data  # a local folder with no card and no hub path: unknown
    report = json.loads((out / "report.json").read_text())
    ppl = report["metrics"]["perplexity"]
    assert f"| perplexity | {ppl['dense']:.6g} | {ppl['pruned']:.6g} |" in card.text
    assert "| sparsity.pattern | passed |" in card.text and "| pattern | 2:4 |" in card.text
    assert "text: calib.txt; 4 windows x 32 tokens, seed 0" in card.text
    assert report["config_digest"] in card.text and report["tool_version"] in card.text
    config = yaml.safe_load(card.text.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert config["stages"][2]["mask"]["pattern"] == "2:4"
    manifest = json.loads((out / "manifest.json").read_text())
    assert "model/README.md" in {a["path"] for a in manifest["artifacts"]}


def test_a_checkpoint_card_gives_base_model_and_license(workdir, tmp_path):
    (workdir / "model" / "README.md").write_text(
        "---\nlicense: mit\nbase_model: org/base\n---\n# base\n")
    facts = base_model_facts({"kind": "dir", "source": str(workdir / "model")})
    assert facts == {"base_model": "org/base", "license": "mit"}
    snapshot = tmp_path / "hub" / "models--Org--Name" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "README.md").write_text("---\nlicense: llama3\n---\n")
    facts = base_model_facts({"kind": "dir", "source": str(snapshot)})
    assert facts == {"base_model": "Org/Name", "license": "llama3"}


def test_the_default_model_and_a_gguf_file(tmp_path):
    assert base_model_facts({"kind": "default", "source": "/cache/x"}) == {
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "apache-2.0"}
    assert base_model_facts({"kind": "gguf", "source": str(tmp_path / "missing.gguf")}) == {
        "base_model": None, "license": None}


def test_a_hub_model_reads_its_license_from_the_hub_cache_only(tmp_path, monkeypatch):
    cache = tmp_path / "hf"
    snapshot = cache / "models--Org--Name" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
    (cache / "models--Org--Name" / "refs").mkdir()
    (cache / "models--Org--Name" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert base_model_facts({"kind": "hub", "source": "Org/Name"}) == {
        "base_model": "Org/Name", "license": "apache-2.0"}
    assert base_model_facts({"kind": "hub", "source": "Org/Other"})["license"] is None


@pytest.mark.parametrize(("text", "expected"), [
    ("---\nlicense: mit\n---\nbody", {"license": "mit"}),
    ("no front matter", {}), ("---\n[unclosed\n---\n", {}), ("---\n- a list\n---\n", {})])
def test_front_matter(text, expected):
    assert front_matter(text) == expected


def test_tags_name_the_allocation_when_layer_wise():
    report = {"plan": {"method": "sparsegpt", "pattern": "unstructured"},
              "sparsity": {"allocation": {"method": "owl"}}}
    assert card_metadata(report, {"base_model": "a/b", "license": None}) == {
        "base_model": "a/b", "library_name": "transformers", "pipeline_tag": "text-generation",
        "tags": ["wanda-export", "sparse", "pruned", "sparsegpt", "unstructured", "owl"]}
