"""A checkpoint's weights memory-mapped from its safetensors files: the model skeleton whose
parameters are read-only views of the files, so building something from every weight (the ONNX
model builder) costs page cache, which the kernel can drop, instead of a copy of the model.

The safetensors header (8-byte little-endian length, then JSON: name -> dtype, shape,
data_offsets) is read directly; each file is mapped once and each tensor is a view of that
mapping with no copy. Pages a reader touched stay in the process's resident set (file-backed,
`RssFile`) until unmapped; `release` drops them (`MADV_DONTNEED`: for a read-only file mapping
this only unmaps; the page cache keeps the data and a later read faults it back in), so a
reader that releases as it goes holds the pages of what it is reading, not of the whole model.
"""

from __future__ import annotations

import json
import mmap
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


class MappedFile:
    """One safetensors file mapped read-only: `tensors` are views of the mapping (name ->
    tensor), `release` drops the pages read so far from this process's resident set."""

    def __init__(self, path: Path) -> None:
        try:
            with open(path, "rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(length))
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError, struct.error) as error:
            raise ConfigError(f"{path} is not a readable safetensors file: {error}") from error
        self.path = path
        self.tensors = {name: self._view(name, entry, 8 + length)
                        for name, entry in header.items() if name != "__metadata__"}

    def _view(self, name: str, entry: dict, start: int) -> torch.Tensor:
        try:
            storage, dtype = SAFETENSORS_DTYPES[entry["dtype"]]
        except KeyError:
            raise ConfigError(f"{self.path}: tensor {name!r} has dtype {entry.get('dtype')!r}, "
                              f"which is not one of {sorted(SAFETENSORS_DTYPES)}") from None
        begin, end = entry["data_offsets"]
        if start + end > len(self._map):
            raise ConfigError(f"{self.path}: tensor {name!r} ends at byte {start + end}, past "
                              f"the end of the file ({len(self._map)} bytes); it is truncated")
        count = (end - begin) // np.dtype(storage).itemsize
        array = np.frombuffer(self._map, dtype=storage, count=count, offset=start + begin)
        with warnings.catch_warnings():  # read-only on purpose: nothing may write the file
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.from_numpy(array)
        return tensor.view(dtype).reshape(entry["shape"])

    def release(self) -> None:
        """Unmap the pages read so far (they stay in the page cache); the views stay valid."""
        self._map.madvise(mmap.MADV_DONTNEED)


class MappedModel:
    """The skeleton of a `StreamedCheckpoint` with every parameter a mapped view of the file
    that holds it (tied weights share one view); buffers computed at construction stay.
    `release` drops the pages read so far from every file."""

    def __init__(self, checkpoint) -> None:
        self.files = [MappedFile(path) for path in sorted(set(checkpoint.index.values()))]
        views = {name: view for file in self.files for name, view in file.tensors.items()}
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
        self.model = model

    def release(self) -> None:
        """Drop the pages read so far from every mapped file of the checkpoint."""
        for file in self.files:
            file.release()
