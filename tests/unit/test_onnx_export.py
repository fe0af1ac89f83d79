"""ONNX export with KV cache on tiny models of every family: names, in-file verification, parity."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from transformers import AutoTokenizer

from wanda_export.evaluate.parity import measure_parity
from wanda_export.export.onnx import convert_to_fp16, export_onnx, input_names, output_names
from wanda_export.export.onnx_verify import matmul_weights, verify_onnx
from wanda_export.model.layers import find_targets
from wanda_export.prune import PruneSpec, prune_model
from wanda_export.sparsity.pattern import Pattern


@pytest.fixture(scope="module")
def exported(tiny_model, tiny_model_dir, tmp_path_factory, request):
    """family -> (model, tokenizer, export) with the model pruned 2:4 by magnitude."""
    cache = {}

    def get(family):
        if family not in cache:
            model = tiny_model(family)
            prune_model(model, PruneSpec(method="magnitude", pattern="2:4"))
            path = tmp_path_factory.mktemp(f"onnx-{family}") / "model.onnx"
            cache[family] = (model, AutoTokenizer.from_pretrained(tiny_model_dir(family)),
                             export_onnx(model, path))
        return cache[family]

    return get


def test_export_verify_and_parity_for_every_family(exported, tiny_family):
    model, tokenizer, result = exported(tiny_family)
    proto = onnx.load(str(result.path))
    assert [i.name for i in proto.graph.input] == input_names(result.layout.layers)
    assert [o.name for o in proto.graph.output] == output_names(result.layout.layers)
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) >= 18
    verification = verify_onnx(result.path, find_targets(model), Pattern(2, 4))
    assert verification.valid, verification.failures
    assert len(verification.layers) == len(find_targets(model))
    parity = measure_parity(model, tokenizer, result.path, result.layout, new_tokens=8)
    assert parity.max_abs_diff <= 1e-4 and parity.generation_match


def test_a_broken_4_group_is_named(exported, tmp_path):
    model, _, result = exported("llama")
    proto = onnx.load(str(result.path))
    targets = find_targets(model)
    stored = matmul_weights(proto)
    verification = verify_onnx(result.path, targets, Pattern(2, 4))
    victim = verification.layers[targets[3].name].initializer
    init = next(i for i in proto.graph.initializer if i.name == victim)
    array = numpy_helper.to_array(init).copy()
    k_axis = stored[victim].k_axis
    group = array[0:4, 0] if k_axis == 0 else array[0, 0:4]  # one group of 4 along K
    group[:] = 1.0
    init.CopyFrom(numpy_helper.from_array(array, victim))
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    after = verify_onnx(broken, targets, Pattern(2, 4))
    assert after.failures == [targets[3].name]
    assert after.layers[targets[3].name].violating_groups == 1
    assert not after.layers[targets[3].name].zeros_kept


def test_fp16_copy_keeps_the_zeros(exported, tmp_path):
    model, _, result = exported("qwen2")
    fp16 = convert_to_fp16(result.path, tmp_path / "model.fp16.onnx")
    verification = verify_onnx(fp16, find_targets(model), Pattern(2, 4))
    assert verification.valid
    weights = matmul_weights(onnx.load(str(fp16)))
    assert {w.array.dtype for w in weights.values()} == {np.dtype(np.float16)}
