"""benchmarks/make_random_checkpoint.py in --tiny mode: shards, index, seeded weights, a forward
pass with finite logits, the layer count for a size target, and the --check that can fail."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "make_random_checkpoint.py"
spec = importlib.util.spec_from_file_location("make_random_checkpoint", SCRIPT)
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)


def write(out: Path, tokenizer_from: Path, *extra: str) -> Path:
    script.main([str(out), "--tiny", "--tokenizer-from", str(tokenizer_from), *extra])
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    """One tiny checkpoint (read-only): vocab 49152 x hidden 16 float32 is 3 MiB per embedding."""
    return write(tmp_path_factory.mktemp("random") / "ckpt", smollm2_dir, "--check")


def shard_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("model-*.safetensors"))


def test_tiny_checkpoint_loads_and_gives_finite_logits(tiny: Path):
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    ids = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 49152)
    assert torch.isfinite(logits).all()
    assert model.config.num_hidden_layers == script.TINY["layers"]
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)  # untied
    assert model.model.layers[0].mlp.up_proj.weight.std().item() == pytest.approx(0.02, rel=0.2)
    assert torch.equal(model.model.norm.weight, torch.ones(16))


def test_shards_follow_the_size_limit_and_the_index_covers_every_parameter(tiny: Path):
    # 2 MiB shards: each 3 MiB embedding gets a shard of its own, the layers and norm share one
    shards = shard_files(tiny)
    assert [p.name for p in shards] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tiny / script.INDEX).read_text())
    model = AutoModelForCausalLM.from_pretrained(tiny)
    state = model.state_dict()
    assert set(index["weight_map"]) == set(state)
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    tensor_bytes = sum(t.numel() * t.element_size() for t in state.values())
    assert index["metadata"]["total_size"] == tensor_bytes
    names_per_shard = [[n for n, f in index["weight_map"].items() if f == p.name] for p in shards]
    assert sorted(len(names) for names in names_per_shard)[:2] == [1, 1]
    shared = next(p for p, names in zip(shards, names_per_shard, strict=True) if len(names) > 1)
    assert shared.stat().st_size <= 2 * 2**20


def test_weights_are_seeded(tiny: Path, smollm2_dir: Path, tmp_path: Path):
    again = write(tmp_path / "again", smollm2_dir)
    other = write(tmp_path / "other", smollm2_dir, "--seed", "1")
    first = [p.read_bytes() for p in shard_files(tiny)]
    assert [p.read_bytes() for p in shard_files(again)] == first
    assert [p.read_bytes() for p in shard_files(other)] != first


def test_bfloat16_checkpoint_passes_the_check(smollm2_dir: Path, tmp_path: Path):
    out = write(tmp_path / "bf16", smollm2_dir, "--dtype", "bfloat16", "--check")
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_check_names_missing_misplaced_and_resized_tensors(tiny: Path, tmp_path: Path):
    broken = shutil.copytree(tiny, tmp_path / "broken")
    index = json.loads((broken / script.INDEX).read_text())
    first_shard = index["weight_map"]["model.embed_tokens.weight"]
    del index["weight_map"]["model.norm.weight"]
    index["weight_map"]["lm_head.weight"] = first_shard
    index["weight_map"]["model.extra.weight"] = "model-00009-of-00009.safetensors"
    (broken / script.INDEX).write_text(json.dumps(index))
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "intermediate_size": 48}))
    problems = "\n".join(script.check(broken))
    assert "missing from the index: model.norm.weight" in problems
    assert f"{first_shard} lacks lm_head.weight" in problems
    assert ("model.layers.1.mlp.up_proj.weight is torch.float32 [32, 16], the model wants "
            "torch.float32 [48, 16]") in problems
    assert "unexpected in the index: model.extra.weight" in problems
    assert "model-00009-of-00009.safetensors, which does not exist" in problems
    assert "index total_size 6310208 != " in problems
    assert script.check(tiny) == []


def test_size_target_gives_the_fewest_layers_that_reach_it():
    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=64, tie_word_embeddings=False)
    sizes = []
    for layers in (2, 3):
        config.num_hidden_layers = layers
        sizes.append(script.weights_bytes(config))
    assert script.layers_for_size(config, sizes[0] + 1) == 3
    assert script.layers_for_size(config, sizes[1]) == 3
    assert script.layers_for_size(config, 0) == 1


def test_refuses_a_folder_that_is_not_empty(tmp_path: Path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exited:
        script.parse_args([str(tmp_path), "--tiny"])
    assert exited.value.code == 2
    assert "is not empty" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(("option", "message"), [
    (["--layers", "0"], "--layers must be at least 1, got 0"),
    (["--max-shard-size", "lots"], "--max-shard-size: `size` lots is not in a valid format"),
])
def test_rejects_bad_options(tmp_path: Path, capsys, option, message):
    with pytest.raises(SystemExit) as exited:
        script.parse_args([str(tmp_path / "out"), *option])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
