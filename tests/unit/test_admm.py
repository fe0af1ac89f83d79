"""The ADMM weight update: the exact least-squares optimum for a fixed mask (checked against one
linear solve per row), its place after every mask method, and its settings."""

from __future__ import annotations

import pytest
import torch

from tests.unit.test_sparsegpt import WINDOWS, correlated_inputs
from wanda_export.config.prune_spec import SettingsError
from wanda_export.model.layers import find_targets, weight_out_in
from wanda_export.prune import PruneSpec, prune_model
from wanda_export.sparsity.admm import ADMM_DAMPENING, admm_update
from wanda_export.sparsity.mask import build_mask
from wanda_export.sparsity.pattern import parse_pattern
from wanda_export.sparsity.score import wanda_scores


def problem(rows: int = 6, features: int = 16, seed: int = 0):
    """A dense weight, X^T X of correlated inputs, and Wanda's 2:4 mask of the weight."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, features, generator=generator)
    inputs = correlated_inputs(4 * features, features, seed)
    xtx = inputs.T @ inputs
    pruned = build_mask(wanda_scores(weight, xtx.diagonal()), 0.5, parse_pattern("2:4"), "row")
    return weight, xtx, pruned


def exact_solution(weight, xtx, pruned):
    """Per row, the kept weights minimising (w - w0) H' (w - w0)^T with H' the Hessian plus the
    update's relative ridge: one linear system on the kept inputs."""
    hessian = xtx.double() + ADMM_DAMPENING * torch.diag(xtx.diagonal().double())
    solution = torch.zeros_like(weight, dtype=torch.float64)
    for row in range(weight.shape[0]):
        kept = (~pruned[row]).nonzero().squeeze(1)
        rhs = (weight[row].double() @ hessian)[kept]
        solution[row, kept] = torch.linalg.solve(hessian[kept][:, kept], rhs)
    return solution


def output_error(weight, dense, xtx) -> float:
    """||(W - W0) X^T||^2 from X^T X."""
    delta = (weight - dense).double()
    return float(((delta @ xtx.double()) * delta).sum())


def test_converges_to_the_exact_optimum_of_the_mask():
    weight, xtx, pruned = problem()
    updated = admm_update(weight, xtx, pruned, iterations=300)
    assert torch.allclose(updated.double(), exact_solution(weight, xtx, pruned), atol=1e-4)


def test_keeps_the_mask_the_dtype_and_positive_zeros():
    weight, xtx, pruned = problem(seed=1)
    updated = admm_update(weight.bfloat16(), xtx, pruned, iterations=5)
    assert updated.dtype == torch.bfloat16 and updated.shape == weight.shape
    assert torch.equal(updated == 0, pruned)
    assert not torch.signbit(updated[pruned]).any()


def test_lowers_the_output_error_of_plain_masking_and_more_steps_lower_it_further():
    weight, xtx, pruned = problem(rows=8, features=32, seed=2)
    masked = output_error(weight * ~pruned, weight, xtx)
    errors = [output_error(admm_update(weight, xtx, pruned, steps), weight, xtx)
              for steps in (1, 5, 50)]
    assert masked > errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.7 * masked


def test_inputs_that_never_fire_give_finite_weights():
    weight, xtx, pruned = problem(seed=3)
    xtx[:, 5] = 0.0
    xtx[5, :] = 0.0
    updated = admm_update(weight, xtx, pruned, iterations=10)
    assert torch.isfinite(updated).all() and torch.equal(updated == 0, pruned)


def test_rejects_a_hessian_or_mask_of_the_wrong_shape():
    weight, xtx, pruned = problem()
    with pytest.raises(ValueError, match="Hessian shape"):
        admm_update(weight, xtx[:8, :8], pruned, iterations=1)
    with pytest.raises(ValueError, match="mask shape"):
        admm_update(weight, xtx, pruned[:, :8], iterations=1)


@pytest.mark.parametrize("settings", [
    {"method": "wanda", "pattern": "2:4", "mode": "dense"},
    {"method": "ria", "pattern": "2:4", "permute": True, "refine": "dsnot", "mode": "dense"},
    {"method": "magnitude", "sparsity": 0.6, "mode": "dense"},
    {"method": "sparsegpt", "pattern": "2:4", "block_size": 32, "mode": "dense"},
])
def test_every_mask_method_takes_the_update_and_keeps_its_mask(tiny_model, settings):
    """Dense statistics, so both runs choose the same masks (in sequential mode the update
    changes the next layers' inputs, hence their masks)."""
    plain, updated = tiny_model("llama"), tiny_model("llama")
    without = prune_model(plain, PruneSpec(**settings), WINDOWS)
    spec = PruneSpec(**settings, update="admm", update_iterations=30)
    result = prune_model(updated, spec, WINDOWS)
    assert result.report.valid and result.report.overall == pytest.approx(without.report.overall)
    assert all(entry.xtx is not None for entry in result.stats.values())
    for before, after in zip(find_targets(plain), find_targets(updated), strict=True):
        # the same mask: DSnoT, permutation and the scores saw the same statistics
        assert torch.equal(weight_out_in(before.module) == 0, weight_out_in(after.module) == 0)
    changed = [not torch.equal(weight_out_in(a.module), weight_out_in(b.module))
               for a, b in zip(find_targets(plain), find_targets(updated), strict=True)]
    assert all(changed)


def test_the_update_lowers_each_layers_error_on_its_calibration_inputs(tiny_model):
    weights = {t.name: weight_out_in(t.module).clone() for t in find_targets(tiny_model("qwen2"))}
    settings = {"method": "wanda", "pattern": "2:4", "mode": "dense"}
    stats = prune_model(tiny_model("qwen2"), PruneSpec(**settings, update="admm"), WINDOWS).stats
    masked, updated = tiny_model("qwen2"), tiny_model("qwen2")
    prune_model(masked, PruneSpec(**settings), stats=stats)
    prune_model(updated, PruneSpec(**settings, update="admm"), stats=stats)
    for a, b in zip(find_targets(masked), find_targets(updated), strict=True):
        xtx = stats[a.name].xtx
        assert (output_error(weight_out_in(b.module), weights[b.name], xtx)
                < output_error(weight_out_in(a.module), weights[a.name], xtx))


def test_update_settings_need_the_update():
    with pytest.raises(SettingsError, match="update_iterations"):
        PruneSpec(update_iterations=5)
    with pytest.raises(SettingsError, match="update"):
        PruneSpec(update="newton")
    assert PruneSpec(update="admm").needs_hessian


def test_sequential_calibration_feeds_the_updated_layers_forward(tiny_model):
    """Layer 0's statistics are the same with and without the update; the last layer's differ,
    because it was calibrated on the outputs of the updated earlier layers."""
    result = prune_model(tiny_model("llama"), PruneSpec(pattern="2:4", update="admm"), WINDOWS)
    plain = prune_model(tiny_model("llama"), PruneSpec(pattern="2:4"), WINDOWS)
    assert result.report.valid and all(s.xtx is not None for s in result.stats.values())
    first, last = min(result.stats), max(result.stats)
    assert torch.equal(result.stats[first].sumsq, plain.stats[first].sumsq)
    assert not torch.allclose(result.stats[last].sumsq, plain.stats[last].sumsq)
