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
    """Write `out_path`: `sparse_path` with each verified layer's initializer replaced by its
    dense [out, in] weight, in the layout the file stores it ([in, out] for MatMul)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(sparse_path))
    initializers = {init.name: init for init in model.graph.initializer}
    for name, check in verification.layers.items():
        if check.initializer is None or check.initializer not in initializers:
            raise ValueError(f"{name} has no initializer in {sparse_path}; cannot restore it")
        init = initializers[check.initializer]
        stored = numpy_helper.to_array(init)
        weight = dense_weights[name].detach().to("cpu", torch.float32).numpy()
        array = weight.T if check.layout == "[in, out]" else weight
        if array.shape != stored.shape:
            raise ValueError(f"{name}: dense weight {array.shape} does not fit initializer "
                             f"{check.initializer} {stored.shape}")
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array, stored.dtype), init.name))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    external = model.ByteSize() > EXTERNAL_DATA_THRESHOLD
    onnx.save(model, str(out_path), save_as_external_data=external)
    return out_path
