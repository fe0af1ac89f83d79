"""Verify sparsity in the exported ONNX file itself, in the layout each weight is stored in.

MatMul keeps a linear's weight transposed, [in, out], so the reduction dimension K is axis 0;
Gemm with transB=1 (or a Transpose feeding MatMul) keeps [out, in], K on axis 1. Each pruned
linear is mapped to its initializer by the module scope the exporter records on the consuming
node (`pkg.torch.onnx.name_scopes`), else by parameter name, else by content, and checked: its
zeros are still there (no folding, fusion or fp16 cast removed them) and N:M holds along K.
"""

from __future__ import annotations

import ast
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from wanda_export.model.layers import Target, weight_out_in
from wanda_export.sparsity.pattern import Pattern
from wanda_export.sparsity.verify import nm_violations


@dataclass(frozen=True)
class StoredWeight:
    """An initializer used as a matmul weight, with the axis that is its reduction dimension."""

    name: str
    array: np.ndarray
    k_axis: int
    scopes: tuple[str, ...] = ()  # torch module paths enclosing the consuming node

    def as_out_in(self) -> np.ndarray:
        return self.array.T if self.k_axis == 0 else self.array


@dataclass
class OnnxLayerCheck:
    """One pruned linear as found in the ONNX file."""

    initializer: str | None
    layout: str | None  # "[in, out]" or "[out, in]"
    sparsity: float = 0.0
    zeros_kept: bool = False
    violating_groups: int = 0
    valid: bool = False


@dataclass
class OnnxVerification:
    """Per-layer results; `valid` only when every pruned linear was found and passed."""

    layers: dict[str, OnnxLayerCheck] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return bool(self.layers) and all(layer.valid for layer in self.layers.values())

    @property
    def failures(self) -> list[str]:
        return [name for name, layer in self.layers.items() if not layer.valid]

    def to_dict(self) -> dict:
        return {"valid": self.valid, "failures": self.failures,
                "layers": {name: asdict(layer) for name, layer in self.layers.items()}}


def matmul_weights(model_proto) -> dict[str, StoredWeight]:
    """Every 2-D initializer consumed as the weight of a MatMul or Gemm, with its K axis."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in model_proto.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model_proto.graph.node:
        for index, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, index))
    found: dict[str, StoredWeight] = {}
    for name, init in initializers.items():
        if len(init.dims) != 2:
            continue
        k_axis, scopes = None, ()
        for node, index in consumers.get(name, []):
            if node.op_type == "MatMul" and index == 1:
                k_axis, scopes = 0, _module_scopes(node)
            elif node.op_type == "Gemm" and index == 1:
                trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
                k_axis, scopes = (1 if trans_b else 0), _module_scopes(node)
            elif node.op_type == "Transpose":
                perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
                matmuls = [n for n, i in consumers.get(node.output[0], [])
                           if n.op_type == "MatMul" and i == 1]
                if perm == [1, 0] and matmuls:
                    k_axis, scopes = 1, _module_scopes(matmuls[0])
        if k_axis is not None:
            found[name] = StoredWeight(name, numpy_helper.to_array(init), k_axis, scopes)
    return found


def _module_scopes(node) -> tuple[str, ...]:
    """The torch module paths the dynamo exporter recorded around `node` (outermost first)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                return tuple(ast.literal_eval(prop.value))
            except (ValueError, SyntaxError):
                return ()
    return ()


def _match(target: Target, stored: dict[str, StoredWeight], used: set[str]) -> StoredWeight | None:
    """The initializer holding `target`'s weight: by module scope, parameter name or content."""
    for name, weight in stored.items():
        if name not in used and any(scope == target.name or scope.endswith("." + target.name)
                                    for scope in weight.scopes):
            return weight
    suffix = f"{target.name}.weight"
    for name, weight in stored.items():
        if name not in used and (name == suffix or name.endswith("." + suffix)):
            return weight
    reference = weight_out_in(target.module).detach().float().cpu().numpy()
    for name, weight in stored.items():
        if name in used or weight.as_out_in().shape != reference.shape:
            continue
        if np.array_equal(weight.as_out_in().astype(np.float32), reference.astype(np.float32)):
            return weight
    return None


def verify_onnx(path: Path, targets: list[Target], pattern: Pattern) -> OnnxVerification:
    """Check every pruned target's initializer in the ONNX file at `path`."""
    import onnx

    model_proto = onnx.load(str(path))
    stored = matmul_weights(model_proto)
    result = OnnxVerification()
    used: set[str] = set()
    for target in targets:
        weight = _match(target, stored, used)
        if weight is None:
            result.layers[target.name] = OnnxLayerCheck(initializer=None, layout=None)
            continue
        used.add(weight.name)
        out_in = torch.from_numpy(np.array(weight.as_out_in()))  # a writable copy
        reference_zeros = weight_out_in(target.module).detach().cpu() == 0
        zeros_kept = out_in.shape == reference_zeros.shape and bool(
            (out_in[reference_zeros] == 0).all())
        violating = nm_violations(out_in, pattern.n, pattern.m) if pattern.structured else 0
        result.layers[target.name] = OnnxLayerCheck(
            initializer=weight.name,
            layout="[in, out]" if weight.k_axis == 0 else "[out, in]",
            sparsity=float((out_in == 0).float().mean()),
            zeros_kept=zeros_kept,
            violating_groups=violating,
            valid=zeros_kept and violating == 0,
        )
    return result
