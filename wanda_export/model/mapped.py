"""A checkpoint's weights memory-mapped from its safetensors files: the model skeleton whose
parameters are read-only views of the files, so building something from every weight (the ONNX
model builder) costs page cache, which the kernel can drop, instead of a copy of the model.

The safetensors header (8-byte little-endian length, then JSON: name -> dtype, shape,
data_offsets) is read directly so each tensor is a `numpy.memmap` view with no copy.
"""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wanda_export.errors import ConfigError

# safetensors dtype -> (numpy storage dtype, torch dtype); bfloat16 is stored as its 16 bits
SAFETENSORS_DTYPES = {
    "F64": (np.float64, torch.float64), "F32": (np.float32, torch.float32),
    "F16": (np.float16, torch.float16), "BF16": (np.int16, torch.bfloat16),
    "I64": (np.int64, torch.int64), "I32": (np.int32, torch.int32),
    "I16": (np.int16, torch.int16), "I8": (np.int8, torch.int8), "U8": (np.uint8, torch.uint8),
    "BOOL": (np.bool_, torch.bool),
}


def mapped_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of one safetensors file as a read-only view of the mapped file."""
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
    except (OSError, ValueError, struct.error) as error:
        raise ConfigError(f"{path} is not a readable safetensors file: {error}") from error
    start = 8 + length
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            storage, dtype = SAFETENSORS_DTYPES[entry["dtype"]]
        except KeyError:
            raise ConfigError(f"{path}: tensor {name!r} has dtype {entry.get('dtype')!r}, "
                              f"which is not one of {sorted(SAFETENSORS_DTYPES)}") from None
        begin, end = entry["data_offsets"]
        count = (end - begin) // np.dtype(storage).itemsize
        array = np.memmap(path, dtype=storage, mode="r", offset=start + begin, shape=(count,))
        with warnings.catch_warnings():  # read-only on purpose: nothing may write the file
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.from_numpy(array)
        tensors[name] = tensor.view(dtype).reshape(entry["shape"])
    return tensors


def mapped_model(checkpoint) -> nn.Module:
    """The skeleton of a `StreamedCheckpoint` with every parameter a mapped view of the file
    that holds it (tied weights share one view); buffers computed at construction stay."""
    views: dict[str, torch.Tensor] = {}
    for path in sorted(set(checkpoint.index.values())):
        views.update(mapped_tensors(path))
    model = checkpoint.model
    for name, parameter in list(model.named_parameters(remove_duplicate=False)):
        source = checkpoint.source_name(name)
        if source is None:
            raise ConfigError(f"{checkpoint.directory} has no tensor for parameter {name!r}")
        view = views[source]
        if tuple(view.shape) != tuple(parameter.shape):
            raise ConfigError(f"{checkpoint.directory}: tensor {source!r} has shape "
                              f"{list(view.shape)}, the model's {name!r} expects "
                              f"{list(parameter.shape)}")
        owner, _, leaf = name.rpartition(".")
        model.get_submodule(owner)._parameters[leaf] = nn.Parameter(view, requires_grad=False)
    return model
