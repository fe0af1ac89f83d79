"""The genai export's weights: the mapped checkpoint's pages really leave the process when
released, and the block writer writes the bytes the builder itself writes."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from wanda_export.errors import ConfigError
from wanda_export.export import genai_weights, onnx_genai
from wanda_export.export.genai_weights import block_writer, write_rows, write_transposed
from wanda_export.export.onnx_genai import export_genai
from wanda_export.model.mapped import MappedFile

MIB = 2**20


def _rss_file() -> int:
    """This process's resident file-backed memory (mapped files, libraries), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssFile in /proc/self/status")


def test_release_drops_the_mapped_pages_and_the_views_still_read(tmp_path):
    tensors = {f"w{index}": torch.randn(1024, 1024) for index in range(12)}  # 48 MiB
    save_file(tensors, tmp_path / "model.safetensors")
    mapped = MappedFile(tmp_path / "model.safetensors")
    before = _rss_file()
    assert sum(float(view.sum()) for view in mapped.tensors.values()) != 0.0  # every page read
    read = _rss_file()
    mapped.release()
    released = _rss_file()
    assert read - before > 40 * MIB, (before, read)
    assert read - released > 40 * MIB, (read, released)
    for name, tensor in tensors.items():  # read again from the page cache
        assert torch.equal(mapped.tensors[name], tensor)


def test_a_truncated_file_names_the_tensor(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"weight": torch.ones(64, 64)}, path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ConfigError, match=r"tensor 'weight' ends at byte .* it is truncated"):
        MappedFile(path)


@pytest.mark.parametrize("source, target", [
    (torch.float32, torch.float32), (torch.float32, torch.float16),
    (torch.bfloat16, torch.bfloat16), (torch.float32, torch.bfloat16)])
def test_blocks_are_the_cast_transposed_concatenation(tmp_path, monkeypatch, source, target):
    monkeypatch.setattr(genai_weights, "BLOCK_BYTES", 1000)  # several chunks per part
    parts = [torch.randn(rows, 24).to(source) for rows in (40, 8, 8)]  # q, k, v
    released = []
    with open(tmp_path / "data", "wb") as file:
        file.write(b"head")
        write_transposed(parts, target, file, lambda: released.append(True))
        file.write(b"tail")
    expected = torch.cat(parts).T.to(target).contiguous().view(torch.uint8).numpy().tobytes()
    assert (tmp_path / "data").read_bytes() == b"head" + expected + b"tail"
    step = 1000 // (24 * max(source.itemsize, target.itemsize))
    assert len(released) == sum(math.ceil(rows / step) for rows in (40, 8, 8)) > len(parts)


@pytest.mark.parametrize("source, target", [
    (torch.float32, torch.float32), (torch.float32, torch.float16),
    (torch.bfloat16, torch.float32)])
def test_rows_are_written_cast_in_chunks(tmp_path, monkeypatch, source, target):
    monkeypatch.setattr(genai_weights, "BLOCK_BYTES", 1000)
    tensor = torch.randn(50, 2, 12).to(source)
    released = []
    with open(tmp_path / "data", "wb") as file:
        write_rows(tensor, target, file, lambda: released.append(True))
    expected = tensor.to(target).view(torch.uint8).numpy().tobytes()
    assert (tmp_path / "data").read_bytes() == expected
    step = 1000 // (24 * max(source.itemsize, target.itemsize))
    assert len(released) == math.ceil(50 / step) > 1


def test_which_writer_writes_a_tensor():
    weight = torch.randn(6, 4)
    transposed, rows = block_writer(weight.T), block_writer(weight)
    assert transposed.func is write_transposed and rows.func is write_rows
    (part,) = transposed.args[0]
    assert part.data_ptr() == weight.data_ptr() and torch.equal(part, weight)  # a view, no copy
    assert block_writer(torch.randn(4, 6)[:, :3]) is None  # neither layout
    assert block_writer(torch.tensor(1.0)) is None and block_writer([1.0, 2.0]) is None
    stacked = genai_weights.Stacked([weight, weight[:2]])
    assert stacked.shape == (8, 4) and stacked.T.shape == (4, 8)
    assert block_writer(stacked.T).args[0] == stacked.parts


@pytest.mark.parametrize("family, precision", [("llama", "fp32"), ("qwen2", "fp32"),
                                               ("qwen3", "fp16")])
def test_the_export_writes_the_builders_own_bytes(tiny_model_dir, tmp_path, monkeypatch,
                                                  family, precision):
    """The same files as the builder's own lazy tensors and q/k/v concatenation write (qwen2:
    packed biases; fp16: a cast), with blocks small enough to split every weight."""
    monkeypatch.setattr(genai_weights, "BLOCK_BYTES", 4096)
    ours = export_genai(tiny_model_dir(family), tmp_path / "ours", precision).path
    monkeypatch.setattr(onnx_genai, "builder_writes_blocks",
                        lambda *_args: contextlib.nullcontext())
    theirs = export_genai(tiny_model_dir(family), tmp_path / "theirs", precision).path
    for name in (ours.name, f"{ours.name}.data"):
        assert (ours.parent / name).read_bytes() == (theirs.parent / name).read_bytes(), name
