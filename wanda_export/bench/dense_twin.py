"""The dense twin of a pruned ONNX export: the same graph and file layout with the pruned
initializers restored from the dense weights. Dense and sparse then differ ONLY in the zeros,
so a latency ratio between them measures sparsity and nothing else (no second export, whose
graph could be optimised differently, and seconds instead of a minute)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wanda_export.export.onnx import EXTERNAL_DATA_THRESHOLD
from wanda_export.export.onnx_verify import OnnxVerification


def write_dense_twin(sparse_path: Path, verification: OnnxVerification,
                     dense_weights: dict[str, torch.Tensor], out_path: Path) -> Path:
    """Write `out_path`: `sparse_path` with each verified layer's stored pieces replaced by its
    dense [out, in] rows, in the layout the file stores them ([in, out] for MatMul; a packed
    q/k/v weight gets each linear's columns)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(sparse_path))
    initializers = {init.name: init for init in model.graph.initializer}
    arrays: dict[str, np.ndarray] = {}
    for name, check in verification.layers.items():
        if check.initializer is None or any(p.initializer not in initializers
                                            for p in check.pieces):
            raise ValueError(f"{name} has no initializer in {sparse_path}; cannot restore it")
        weight = dense_weights[name].detach().to("cpu", torch.float32).numpy()
        row = 0
        for piece in check.pieces:
            if piece.initializer not in arrays:
                arrays[piece.initializer] = numpy_helper.to_array(
                    initializers[piece.initializer]).copy()
            stored = arrays[piece.initializer]
            out_in = stored.T if check.layout == "[in, out]" else stored  # a view
            target = out_in if piece.start is None else out_in[piece.start:piece.stop]
            rows = weight[row:row + target.shape[0]]
            if rows.shape != target.shape:
                raise ValueError(f"{name}: dense weight {weight.shape} does not fit initializer "
                                 f"{piece.initializer} {stored.shape}")
            target[...] = rows
            row += target.shape[0]
    for name, array in arrays.items():
        initializers[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), name))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    external = model.ByteSize() > EXTERNAL_DATA_THRESHOLD
    onnx.save(model, str(out_path), save_as_external_data=external)
    return out_path


# --- the dense twin of an onnxruntime-genai folder -----------------------------------------
# The genai model builder packs q/k/v (and sometimes gate/up) into one MatMul initializer
# [in, q_out + k_out + v_out] and writes every initializer to external data. Each pruned linear
# is found by content: its [in, out] bytes, in the stored dtype, as a column slice of one such
# initializer. The twin is a copy of the folder whose external data has exactly those slices
# overwritten with the dense weights, in place: same graph, same file layout, one tensor read at
# a time.

_TORCH_DTYPES = {1: torch.float32, 10: torch.float16, 16: torch.bfloat16}  # onnx elem types


@dataclass(frozen=True)
class ExternalMatrix:
    """A 2-D initializer in external data: [k, n] elements of `itemsize` bytes at `offset`."""

    name: str
    location: str
    offset: int
    k: int
    n: int
    data_type: int

    def view(self, folder: Path, mode: str = "r") -> np.memmap:
        """Its bytes as [k, n, itemsize], mapped from the data file (`mode` "r+" writes)."""
        itemsize = torch.empty((), dtype=_TORCH_DTYPES[self.data_type]).element_size()
        return np.memmap(folder / self.location, np.uint8, mode, offset=self.offset,
                         shape=(self.k, self.n, itemsize))


def _stored_bytes(weight: torch.Tensor, data_type: int) -> np.ndarray:
    """A [out, in] weight as MatMul stores it, [in, out] in the stored dtype, as bytes
    [in, out, itemsize]."""
    stored = weight.detach().to("cpu", _TORCH_DTYPES[data_type]).T.contiguous()
    return stored.view(torch.uint8).numpy().reshape(*stored.shape, stored.element_size())


def _external_matrices(model, k_dims: set[int]) -> list[ExternalMatrix]:
    """The 2-D float initializers in external data whose first dim (K, for MatMul) is in
    `k_dims`."""
    found = []
    for init in model.graph.initializer:
        if len(init.dims) != 2 or init.data_type not in _TORCH_DTYPES or init.dims[0] not in k_dims:
            continue
        info = {entry.key: entry.value for entry in init.external_data}
        if "location" in info:
            found.append(ExternalMatrix(init.name, info["location"],
                                        int(info.get("offset", 0)), int(init.dims[0]),
                                        int(init.dims[1]), init.data_type))
    return found


def _column_index(folder: Path, matrices: list[ExternalMatrix]) -> dict[tuple[int, int], list]:
    """(dtype, hash of one column's bytes) -> [(matrix, column)], one matrix read at a time."""
    index: dict[tuple[int, int], list] = {}
    for matrix in matrices:
        columns = np.ascontiguousarray(matrix.view(folder).transpose(1, 0, 2))
        for column, values in enumerate(columns.reshape(matrix.n, -1)):
            index.setdefault((matrix.data_type, hash(values.tobytes())), []).append(
                (matrix, column))
    return index


def locate_in_genai_folder(folder: Path, model_file: str,
                           pruned: dict[str, torch.Tensor]) -> dict[str, tuple[ExternalMatrix, int]]:
    """Where each pruned [out, in] weight lies in `folder`/`model_file`: the initializer and
    the first column of its [in, out] slice; ValueError naming a weight found nowhere or twice."""
    import onnx

    path = Path(folder) / model_file
    model = onnx.load(str(path), load_external_data=False)
    matrices = _external_matrices(model, {int(w.shape[1]) for w in pruned.values()})
    index = _column_index(Path(folder), matrices)
    located = {}
    for name, weight in pruned.items():
        matches = []
        for data_type in {matrix.data_type for matrix in matrices}:
            stored = _stored_bytes(weight, data_type)
            key = (data_type, hash(stored[:, 0, :].tobytes()))
            for matrix, column in index.get(key, []):
                width = stored.shape[1]
                if column + width <= matrix.n and np.array_equal(
                        matrix.view(folder)[:, column:column + width], stored):
                    matches.append((matrix, column))
        if len(matches) != 1:
            how = "nowhere" if not matches else f"{len(matches)} times"
            raise ValueError(f"{name}: its pruned weight is found {how} in {path} as an "
                             "[in, out] initializer in external data (or a column slice of one)")
        located[name] = matches[0]
    return located


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


def write_dense_genai_twin(folder: Path, model_file: str, pruned: dict[str, torch.Tensor],
                           dense: dict[str, torch.Tensor], out: Path) -> Path:
    """Copy the onnxruntime-genai folder `folder` to `out` (which must not exist) with each
    pruned weight's slice of `model_file`'s external data overwritten by its dense weight (the
    files it leaves alone are hard links where the file system allows)."""
    located = locate_in_genai_folder(folder, model_file, pruned)
    shutil.copytree(folder, out, copy_function=_link_or_copy)  # files only read: linked
    for location in {matrix.location for matrix, _ in located.values()}:
        fresh = Path(out) / f"{location}.copy"  # a real copy: never write through a link
        shutil.copyfile(Path(folder) / location, fresh)
        os.replace(fresh, Path(out) / location)
    for name, (matrix, column) in located.items():
        stored = _stored_bytes(dense[name], matrix.data_type)
        view = matrix.view(Path(out), mode="r+")
        view[:, column:column + stored.shape[1]] = stored
        view.flush()
    return Path(out)
