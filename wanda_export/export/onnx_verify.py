"""Verify sparsity in the exported ONNX file itself, in the layout each weight is stored in.

MatMul keeps a linear's weight transposed, [in, out], so the reduction dimension K is axis 0;
Gemm with transB=1 (or a Transpose feeding MatMul) keeps [out, in], K on axis 1. Each pruned
linear is mapped to the stored pieces that hold it, and checked: its zeros are still there (no
folding, fusion or cast removed them) and N:M holds along K.

- onnxruntime-genai's builder names each weight after its module (`model.layers.{i}.attn.
  qkv_proj.MatMul.weight`) and packs q/k/v into one MatMul: q, k and v are column slices of it
  (along the output axis, so every group of M along K is one linear's); Phi-3's fused qkv and
  gate_up linears map to the builder's packed or split weights the same way.
- torch.onnx: by the module scope the exporter records on the consuming node
  (`pkg.torch.onnx.name_scopes`), else by parameter name, else by content.

The graph is read without its external data and each initializer on its own (`onnx_tensors`).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from wanda_export.export.onnx_tensors import load_graph, read_initializer
from wanda_export.model.layers import Target, weight_out_in
from wanda_export.sparsity.pattern import Pattern
from wanda_export.sparsity.verify import nm_violations

# a linear inside a decoder layer: layer index, block (self_attn | mlp), projection
_LAYER_LINEAR = re.compile(r"layers\.(\d+)\.(self_attn|mlp)\.(\w+)$")
# packed initializer -> the linears it holds, in column order
_PACKED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}

Reference = Callable[[Target], torch.Tensor]


@dataclass
class StoredWeight:
    """An initializer used as a matmul weight, with the axis that is its reduction dimension;
    its data is read on demand."""

    name: str
    shape: tuple[int, ...]
    k_axis: int
    scopes: tuple[str, ...] = ()  # torch module paths enclosing the consuming node
    init: object = None  # the TensorProto (external data not loaded)
    base_dir: Path = Path()

    def read(self) -> torch.Tensor:
        """The stored tensor, in its stored layout and dtype."""
        return read_initializer(self.init, self.base_dir)

    def as_out_in(self, array: torch.Tensor | None = None) -> torch.Tensor:
        """`array` (default: the stored tensor) in [out, in] layout."""
        array = self.read() if array is None else array
        return array.T if self.k_axis == 0 else array


@dataclass(frozen=True)
class Piece:
    """Part of a pruned linear's rows held by one initializer: its output columns
    [start, stop) in that initializer (None: all of it)."""

    initializer: str
    start: int | None = None
    stop: int | None = None


@dataclass
class OnnxLayerCheck:
    """One pruned linear as found in the ONNX file."""

    initializer: str | None
    layout: str | None  # "[in, out]" or "[out, in]"
    sparsity: float = 0.0
    zeros_kept: bool = False
    violating_groups: int = 0
    valid: bool = False
    pieces: list[Piece] = field(default_factory=list)  # where its rows are stored, in order


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


def matmul_weights(model_proto, base_dir: Path = Path()) -> dict[str, StoredWeight]:
    """Every 2-D initializer consumed as the weight of a MatMul or Gemm, with its K axis."""
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
            found[name] = StoredWeight(name, tuple(init.dims), k_axis, scopes, init, base_dir)
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


def genai_weight_name(layer: int, block: str, projection: str) -> str:
    """The initializer onnxruntime-genai's builder writes for one linear of a decoder layer."""
    return f"model.layers.{layer}.{'attn' if block == 'self_attn' else block}.{projection}" \
           ".MatMul.weight"


def _genai_pieces(target: Target, stored: dict[str, StoredWeight],
                  out_features: dict[str, int]) -> list[Piece] | None:
    """Where the builder put `target`: its own weight, a column slice of a packed one, or
    (a fused linear such as Phi-3's qkv_proj) the builder's split weights in row order."""
    match = _LAYER_LINEAR.search(target.name)
    if match is None:
        return None
    layer, block, projection = int(match[1]), match[2], match[3]
    own = genai_weight_name(layer, block, projection)
    if own in stored:
        return [Piece(own)]
    prefix = target.name[:-len(projection)]
    for packed, parts in _PACKED.items():
        packed_name = genai_weight_name(layer, block, packed)
        if projection in parts and packed_name in stored:
            start = sum(out_features.get(prefix + part, 0)
                        for part in parts[:parts.index(projection)])
            return [Piece(packed_name, start, start + out_features[target.name])]
        split = [genai_weight_name(layer, block, part) for part in parts]
        if projection == packed and all(name in stored for name in split):
            return [Piece(name) for name in split]
    return None


def _torch_pieces(target: Target, stored: dict[str, StoredWeight], used: set[str],
                  reference: Reference) -> list[Piece] | None:
    """The initializer holding `target` in a torch.onnx export: by module scope, parameter name
    or content."""
    for name, weight in stored.items():
        if name not in used and any(scope == target.name or scope.endswith("." + target.name)
                                    for scope in weight.scopes):
            return [Piece(name)]
    suffix = f"{target.name}.weight"
    for name in stored:
        if name not in used and (name == suffix or name.endswith("." + suffix)):
            return [Piece(name)]
    expected = reference(target).float().cpu()
    for name, weight in stored.items():
        shape = weight.shape[::-1] if weight.k_axis == 0 else weight.shape
        if name in used or tuple(shape) != tuple(expected.shape):
            continue
        if torch.equal(weight.as_out_in().float(), expected):
            return [Piece(name)]
    return None


def module_weight(target: Target) -> torch.Tensor:
    """A target's weight, [out, in], from its in-memory module."""
    return weight_out_in(target.module).detach()


class _Reader:
    """Reads stored weights, keeping the last one (q, k and v share one packed weight)."""

    def __init__(self, stored: dict[str, StoredWeight]) -> None:
        self.stored = stored
        self.name: str | None = None
        self.tensor: torch.Tensor | None = None

    def rows(self, piece: Piece) -> torch.Tensor:
        """The piece's [out, in] rows."""
        weight = self.stored[piece.initializer]
        if self.name != piece.initializer:
            self.name, self.tensor = piece.initializer, weight.as_out_in(weight.read())
        rows = self.tensor
        return rows if piece.start is None else rows[piece.start:piece.stop]


def verify_onnx(path: Path, targets: list[Target], pattern: Pattern,
                reference: Reference = module_weight) -> OnnxVerification:
    """Check every pruned target's stored weight in the ONNX file at `path`, one initializer
    read at a time. `reference(target)` gives the pruned weight [out, in] whose zeros must be
    found in the file (default: the in-memory module's)."""
    stored = matmul_weights(load_graph(path), Path(path).parent)
    out_features = {t.name: int(weight_out_in(t.module).shape[0]) for t in targets}
    reader, result, used = _Reader(stored), OnnxVerification(), set()
    for target in targets:
        pieces = (_genai_pieces(target, stored, out_features)
                  or _torch_pieces(target, stored, used, reference))
        if pieces is None:
            result.layers[target.name] = OnnxLayerCheck(initializer=None, layout=None)
            continue
        used.update(piece.initializer for piece in pieces)
        out_in = torch.cat([reader.rows(piece) for piece in pieces])
        reference_zeros = reference(target).cpu() == 0
        zeros_kept = out_in.shape == reference_zeros.shape and bool(
            (out_in[reference_zeros] == 0).all())
        violating = nm_violations(out_in, pattern.n, pattern.m) if pattern.structured else 0
        first = stored[pieces[0].initializer]
        result.layers[target.name] = OnnxLayerCheck(
            initializer=first.name,
            layout="[in, out]" if first.k_axis == 0 else "[out, in]",
            sparsity=float((out_in == 0).float().mean()),
            zeros_kept=zeros_kept,
            violating_groups=violating,
            valid=zeros_kept and violating == 0,
            pieces=pieces,
        )
    return result
