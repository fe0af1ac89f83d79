"""The one-call API `wanda_export.prune` on the tiny llama: in memory from a folder, text or
token windows, a model object, a release folder through the runner, settings refused with the
CLI's messages, and a lazy `import wanda_export`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import invoke
from pipelines import TEXT, pipeline_data, write_data_files, write_pipeline_file

import wanda_export
from wanda_export import ConfigError, PruneSpec, SettingsError, prune
from wanda_export.model.loading import load_model

SIZES = {"nsamples": 4, "seqlen": 32}


def test_in_memory_from_a_folder_with_text_and_files(tiny_model_dir, tmp_path, isolated_cache):
    folder = tiny_model_dir("llama")
    from_text = prune(str(folder), sparsity=0.5, pattern="2:4", calibration=TEXT, **SIZES)
    assert from_text.sparsity == pytest.approx(0.5) and from_text.out is None
    assert from_text.report["plan"]["pattern"] == "2:4"
    assert all(layer["valid"] for layer in from_text.report["sparsity"]["layers"].values())
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(TEXT[: len(TEXT) // 2])
    (docs / "b.txt").write_text(TEXT[len(TEXT) // 2:][::-1])
    from_files = prune(folder, sparsity=0.5, pattern="2:4", mode="dense", **SIZES,
                       calibration=[docs / "a.txt", docs / "b.txt"])
    from_folder = prune(folder, sparsity=0.5, pattern="2:4", mode="dense", calibration=docs,
                        **SIZES)
    for name, weight in from_folder.model.state_dict().items():  # the same documents
        assert torch.equal(weight, from_files.model.state_dict()[name]), name
    pruned = "model.layers.0.mlp.down_proj.weight"  # other text: another mask
    assert not torch.equal(from_files.model.state_dict()[pruned],
                           from_text.model.state_dict()[pruned])
    saved = from_files.save(tmp_path / "saved")
    assert json.loads((saved / "pruning.json").read_text())["pattern"] == "2:4"
    with pytest.raises(ConfigError, match="not empty"):
        from_files.save(saved)


def test_a_model_object_with_windows_or_its_tokenizer(tiny_model_dir, isolated_cache):
    loaded = load_model(str(tiny_model_dir("llama")), dtype="float32", device="cpu")
    windows = torch.randint(4, 200, (4, 32), generator=torch.Generator().manual_seed(0))
    result = prune(loaded.model, method="wanda", sparsity=0.6, calibration=windows)
    assert result.model is loaded.model and 0.6 <= result.sparsity < 0.62
    with pytest.raises(SettingsError, match="needs its tokenizer="):
        prune(load_model(str(tiny_model_dir("llama"))).model, sparsity=0.5)
    fresh = load_model(str(tiny_model_dir("llama")), dtype="float32", device="cpu")
    assert prune(fresh.model, tokenizer=fresh.tokenizer, calibration=TEXT, **SIZES).sparsity \
        == pytest.approx(0.5)
    with pytest.raises(SettingsError, match="out= writes a release from a model path"):
        prune(fresh.model, calibration=windows, out="release")


def test_out_writes_the_release_the_cli_writes(tiny_model_dir, tmp_path, isolated_cache):
    folder = tiny_model_dir("llama")
    result = prune(folder, method="magnitude", sparsity=0.5, out=tmp_path / "api")
    assert result.model is None and result.out == tmp_path / "api"
    assert json.loads((tmp_path / "api" / "report.json").read_text()) == result.report
    assert [stage["name"] for stage in result.report["stages"]] == [
        "load", "score", "mask", "verify", "export"]
    with pytest.raises(ConfigError, match="nothing to save"):
        result.save(tmp_path / "again")
    write_data_files(tmp_path)
    path = write_pipeline_file(tmp_path / "p.yaml", _magnitude_pipeline(folder))
    assert invoke("run", str(path), "--out", str(tmp_path / "cli"), "-q").exit_code == 0
    cli = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert cli["sparsity"] == result.report["sparsity"]


def _magnitude_pipeline(folder: Path) -> dict:
    """The pipeline file `prune(folder, method="magnitude", sparsity=0.5, out=...)` stands for."""
    return {"version": 1, "model": {"path": str(folder)},
            "stages": {"score": {"method": "magnitude"}, "mask": {"sparsity": 0.5},
                       "verify": {}, "export": {"formats": ["safetensors"]}}}


def test_settings_are_refused_with_the_cli_message(write_cli_pipeline) -> None:
    message = ("pattern 2:4 means sparsity 0.5 ((M-N)/M), not 0.6; set sparsity: 0.5 or leave "
               "it out")
    for call in (lambda: PruneSpec(pattern="2:4", sparsity=0.6),
                 lambda: prune(pattern="2:4", sparsity=0.6)):
        with pytest.raises(SettingsError) as caught:
            call()
        assert isinstance(caught.value, ValueError) and caught.value.exit_code == 2
        assert f"sparsity: {message}" in str(caught.value)
    result = invoke("validate", str(write_cli_pipeline), "--set", "mask.sparsity=0.6")
    assert result.exit_code == 2 and f"--set mask.sparsity: {message}" in result.stderr
    with pytest.raises(SettingsError, match="did you mean 'sparsity'"):
        prune(sparsty=0.5)
    with pytest.raises(SettingsError, match="calibration is text, a path"):
        prune(calibration=42)


@pytest.fixture
def write_cli_pipeline(tmp_path: Path, tiny_model_dir) -> Path:
    write_data_files(tmp_path)
    return write_pipeline_file(tmp_path / "p.yaml", pipeline_data(
        model={"path": str(tiny_model_dir("llama"))}, pattern="2:4"))


def test_import_is_lazy_and_exports_the_api() -> None:
    code = ("import sys, wanda_export; assert 'torch' not in sys.modules; "
            "from wanda_export.prune import prune_model; "
            "from wanda_export import prune, load_model, PruneSpec; print(prune.__module__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "wanda_export.api"
    assert set(wanda_export.__all__) <= set(dir(wanda_export))
    assert wanda_export.prune is prune
