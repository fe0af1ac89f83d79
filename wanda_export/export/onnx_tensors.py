"""Initializers of an ONNX file read one at a time: the graph is loaded without its external
data, and each tensor's bytes are read from its own offset and length (or from the proto when
stored inline), so verifying a model never holds more than one of its weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

# ONNX TensorProto.DataType -> (numpy storage dtype, torch dtype); bfloat16 kept as its 16 bits
ONNX_DTYPES = {1: (np.float32, torch.float32), 10: (np.float16, torch.float16),
               16: (np.int16, torch.bfloat16), 11: (np.float64, torch.float64)}


def load_graph(path: Path):
    """The ModelProto of `path` without external tensor data (the weights stay on disk)."""
    import onnx

    return onnx.load(str(path), load_external_data=False)


def _external(init) -> dict[str, str]:
    return {entry.key: entry.value for entry in init.external_data}


def read_initializer(init, base_dir: Path) -> torch.Tensor:
    """One initializer as a CPU tensor in its stored dtype (bfloat16 included), read from its
    external data file by offset and length, or from the proto."""
    from onnx import TensorProto, numpy_helper

    shape = tuple(init.dims)
    if init.data_type not in ONNX_DTYPES:
        return torch.from_numpy(np.array(numpy_helper.to_array(init, str(base_dir))))
    storage, dtype = ONNX_DTYPES[init.data_type]
    count = int(np.prod(shape, dtype=np.int64))
    if init.data_location == TensorProto.EXTERNAL:
        info = _external(init)
        with open(base_dir / info["location"], "rb") as handle:
            handle.seek(int(info.get("offset", 0)))
            array = np.fromfile(handle, dtype=storage, count=count)
    elif init.raw_data:
        array = np.frombuffer(init.raw_data, dtype=storage, count=count).copy()
    elif init.data_type == TensorProto.BFLOAT16 or init.data_type == TensorProto.FLOAT16:
        array = np.asarray(init.int32_data, dtype=np.int32).astype(np.uint16).view(storage)
    else:
        array = np.array(numpy_helper.to_array(init), dtype=storage)
    return torch.from_numpy(array).view(dtype).reshape(shape)
