"""How the onnxruntime-genai builder's weights reach the external-data file: block by block from
the memory-mapped checkpoint, its pages released as they are written, so the export holds about
one block at a time instead of copies of whole tensors and the pages of the whole model.

Left alone, the builder (onnxruntime-genai 0.18, `builders/base.py`)
- stores each linear's weight transposed ([in, out]) as a lazy tensor that `onnx_ir.save`
  materializes whole (`weight.T.contiguous()`): the largest weight, the LM head (tied to the
  embedding: 49152 x 576 on SmolLM2, 128256 x 4096 on Llama 3), costs a copy of itself plus the
  mapped pages it was read from;
- concatenates each layer's q, k and v weights while it builds the graph and holds the copies
  until they are saved (an eighth to a quarter of a Llama's weights);
- leaves every mapped page it read in the process until the end.

`builder_writes_blocks` replaces, for the duration of one export, the two builder methods that
make those tensors (`make_packed_matmul_float_class`, `make_initializer`: every weight it
casts lazily is written in blocks, transposed ones and the others, such as an untied
embedding) and wraps `onnx_ir.save` so the mapped pages are released before each tensor is
written. The bytes written are those the builder writes (the same cast of the same values at
the same offsets); tests/unit/test_genai_weights.py compares both files with the builder's
own, so a builder release that changes these methods fails there, not in a user's export.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from functools import partial
from types import SimpleNamespace
from unittest import mock

import torch

# Bytes of one block (one chunk of checkpoint rows, transposed and cast) written at a time.
BLOCK_BYTES = 16 * 2**20


class Stacked:
    """Weights stacked along their rows (q, k, v) without a copy: what the builder's packed
    MatMul reads of its weight (`shape`, `T`) until `make_initializer` writes it in blocks."""

    def __init__(self, parts: list[torch.Tensor]) -> None:
        self.parts = parts
        self.shape = torch.Size((sum(part.shape[0] for part in parts), parts[0].shape[1]))

    @property
    def T(self) -> Transposed:  # the attribute the builder reads
        return Transposed(self.parts)


class Transposed:
    """`torch.cat(parts).T`, not computed."""

    def __init__(self, parts: list[torch.Tensor]) -> None:
        self.parts = parts
        self.shape = torch.Size((parts[0].shape[1], sum(part.shape[0] for part in parts)))


def block_writer(tensor) -> Callable | None:
    """How a tensor the builder registers is written in blocks, `writer(dtype, file, release)`:
    a transposed weight (a view of the row-major [out, in] weight, or the packed q/k/v) by
    `write_transposed`, any other contiguous tensor by `write_rows`; None for anything else
    (the builder's own lazy tensor writes it)."""
    if isinstance(tensor, Transposed):
        return partial(write_transposed, tensor.parts)
    if not isinstance(tensor, torch.Tensor) or tensor.dim() == 0:
        return None
    if tensor.dim() == 2 and tensor.T.is_contiguous() and not tensor.is_contiguous():
        return partial(write_transposed, [tensor.T])
    return partial(write_rows, tensor) if tensor.is_contiguous() else None


def _rows_per_block(row_elements: int, *dtypes: torch.dtype) -> int:
    itemsize = max(torch.empty((), dtype=dtype).element_size() for dtype in dtypes)
    return max(1, BLOCK_BYTES // (row_elements * itemsize))


def write_rows(tensor: torch.Tensor, dtype: torch.dtype, file,
               release: Callable[[], None]) -> None:
    """Write the contiguous `tensor` cast to `dtype` at `file`'s position, a chunk of rows at a
    time (no copy when the dtype is the same), calling `release` after each chunk."""
    rows = tensor.reshape(tensor.shape[0], -1)
    step = _rows_per_block(rows.shape[1], tensor.dtype, dtype)
    for first in range(0, rows.shape[0], step):
        file.write(rows[first:first + step].to(dtype).contiguous().view(torch.uint8).numpy())
        release()


def write_transposed(parts: list[torch.Tensor], dtype: torch.dtype, file,
                     release: Callable[[], None]) -> None:
    """Write `torch.cat(parts).T` cast to `dtype`, row-major, at `file`'s position, reading
    each part in chunks of whole rows (contiguous in the checkpoint, read once) and calling
    `release` after each chunk; the file is left positioned after the tensor."""
    base = file.tell()
    rows = parts[0].shape[1]
    columns = sum(part.shape[0] for part in parts)
    itemsize = torch.empty((), dtype=dtype).element_size()
    start = 0
    for part in parts:
        step = _rows_per_block(rows, part.dtype, dtype)
        for first in range(0, part.shape[0], step):
            chunk = part[first:first + step]
            block = torch.empty((rows, chunk.shape[0]), dtype=dtype)
            block.copy_(chunk.T)
            release()
            data = block.view(torch.uint8).numpy()  # [rows, chunk rows * itemsize]
            if chunk.shape[0] == columns:
                file.write(data)
            else:  # each output row holds this chunk's columns at `start`
                for row in range(rows):
                    file.seek(base + (row * columns + start) * itemsize)
                    file.write(data[row])
            start += chunk.shape[0]
    file.seek(base + rows * columns * itemsize)


def _blocks_tensor(lazy, tensor, writer: Callable, release: Callable[[], None]):
    """In place of the builder's lazy tensor `lazy` of `tensor` (same name, dtype, shape and
    values): one that `onnx_ir.save` writes with `writer` (whole only if something asks for its
    values)."""
    import onnx_ir
    from onnx_ir.tensor_adapters import TorchTensor, to_torch_dtype

    dtype = to_torch_dtype(lazy.dtype)

    class BlocksTensor(onnx_ir.LazyTensor):
        def tofile(self, file) -> None:
            writer(dtype, file, release)

    def whole():
        values = torch.cat(tensor.parts).T if isinstance(tensor, Transposed) else tensor
        return TorchTensor(values.to(dtype), name=lazy.name)

    return BlocksTensor(whole, dtype=lazy.dtype, shape=lazy.shape, name=lazy.name)


def _releasing_save(save, release: Callable[[], None]):
    """`onnx_ir.save` that calls `release` before each tensor it writes (its callback runs
    before each write; the caller's callback still runs) and once at the end."""
    def releasing_save(*args, callback=None, **kwargs):
        def each(tensor, info) -> None:
            release()
            if callback is not None:
                callback(tensor, info)
        try:
            return save(*args, callback=each, **kwargs)
        finally:
            release()
    return releasing_save


@contextlib.contextmanager
def builder_writes_blocks(model_class, release: Callable[[], None]) -> Iterator[None]:
    """For the duration: the builder's `model_class` (its `builders.base.Model`) packs q, k, v
    as a `Stacked` view and registers every lazily cast weight as a block-written tensor, and
    `onnx_ir.save` (which the builder calls by attribute) releases the mapped pages as it goes.
    `release` drops the pages of the mapped checkpoint read so far."""
    import onnx_ir

    make_initializer = model_class.make_initializer

    def packed_class(_self, q_matmul, k_matmul, v_matmul, **_kwargs):
        return SimpleNamespace(weight=Stacked([q_matmul.weight, k_matmul.weight,
                                               v_matmul.weight]))

    def initializer(self, tensor, /, name, *, to=None, raw=False):
        make_initializer(self, tensor, name, to=to, raw=raw)
        writer = block_writer(tensor)
        if to is not None and not raw and writer is not None:
            value = self.model.graph.initializers[name]
            value.const_value = _blocks_tensor(value.const_value, tensor, writer, release)

    with mock.patch.object(model_class, "make_packed_matmul_float_class", packed_class), \
            mock.patch.object(model_class, "make_initializer", initializer), \
            mock.patch.object(onnx_ir, "save", _releasing_save(onnx_ir.save, release)):
        yield
