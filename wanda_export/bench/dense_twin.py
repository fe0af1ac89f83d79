"""The dense twin of a pruned ONNX export: the same graph and file layout with the pruned
initializers restored from the dense weights. Dense and sparse then differ ONLY in the zeros,
so a latency ratio between them measures sparsity and nothing else (no second export, whose
graph could be optimised differently, and seconds instead of a minute)."""

from __future__ import annotations

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
