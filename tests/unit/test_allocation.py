"""Layer-wise allocation math: the Hill estimator and the ratio mappings."""

from __future__ import annotations

import sys

import pytest
import torch

from wanda_export.allocation import allocate, target_groups
from wanda_export.model.layers import find_targets
from wanda_export.prune import PruneSpec, prune_model
from wanda_export.sparsity.allocation import (
    alpha_ratios,
    alphapruning_allocation,
    esd,
    group_outlier_ratio,
    hill_alpha,
    owl_allocation,
    owl_ratios,
    rebalance,
)

WINDOWS = torch.randint(4, 256, (6, 32), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.5])
def test_hill_recovers_alpha_on_power_law_samples(alpha):
    generator = torch.Generator().manual_seed(int(alpha * 10))
    uniform = torch.rand(4000, generator=generator, dtype=torch.float64)
    samples = uniform.pow(-1.0 / (alpha - 1.0))  # Pareto: density ~ x^-alpha, xmin = 1
    assert hill_alpha(samples, "ks") == pytest.approx(alpha, rel=0.05)
    assert hill_alpha(samples, "median") == pytest.approx(alpha, rel=0.05)


def test_esd_is_the_squared_singular_values():
    weight = torch.diag(torch.tensor([3.0, 1.0, 2.0]))
    assert esd(weight).tolist() == pytest.approx([1.0, 4.0, 9.0])
    for shape in ((40, 12), (12, 40)):
        wide = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        expected = torch.linalg.svdvals(wide.double()).square().sort().values
        torch.testing.assert_close(esd(wide), expected)


def _loop_ks_alpha(eigs: torch.Tensor) -> float:
    """The KS search written as the plain loop over candidate xmins, for comparison."""
    eigs = eigs.double().sort().values
    best, best_distance = float("nan"), float("inf")
    for i in range(eigs.numel() - 2):
        tail = eigs[i:]
        n = tail.numel()
        alpha = 1.0 + n / float((tail / eigs[i]).log().sum())
        distance = float((1 - (tail / eigs[i]) ** (1 - alpha) - torch.arange(n) / n).abs().max())
        if distance < best_distance:
            best, best_distance = alpha, distance
    return best


def test_vectorised_ks_search_equals_the_loop():
    weight = torch.randn(300, 90, generator=torch.Generator().manual_seed(5))
    weight = weight @ torch.diag(torch.linspace(0.1, 3.0, 90) ** 2)
    eigs = esd(weight)
    assert hill_alpha(eigs, "ks") == pytest.approx(_loop_ks_alpha(eigs), rel=1e-12)


def test_alpha_ratios_keep_the_weighted_mean_and_the_order():
    alphas, params = [2.1, 3.5, 5.0, 2.8], [100, 300, 50, 550]
    ratios = alpha_ratios(alphas, params, 0.7, epsilon=0.3)
    mean = sum(r * p for r, p in zip(ratios, params)) / sum(params)
    assert mean == pytest.approx(0.7, abs=1e-9)
    assert all(0.0 <= r <= 0.99 for r in ratios)
    order = sorted(range(4), key=lambda i: alphas[i])
    assert [ratios[i] for i in order] == sorted(ratios)  # higher alpha, more pruning


def test_rebalance_respects_the_bounds():
    ratios = rebalance([1.3, 0.95, 0.2], [1, 1, 1], 0.8)
    assert max(ratios) <= 0.99 and min(ratios) >= 0.0
    assert sum(ratios) / 3 == pytest.approx(0.8, abs=1e-9)


def test_owl_prunes_outlier_rich_layers_less():
    params = [10, 10, 10]
    ratios = owl_ratios([0.01, 0.05, 0.03], params, 0.7, lam=0.08)
    assert ratios[1] < ratios[2] < ratios[0]
    assert sum(ratios) / 3 == pytest.approx(0.7, abs=1e-9)
    assert max(ratios) - min(ratios) == pytest.approx(0.16, abs=1e-9)


def test_group_outlier_ratio_of_one_matrix_counts_scores_above_m_times_the_mean():
    scores = torch.tensor([1.0] * 99 + [1000.0])  # mean 10.99; only the spike exceeds 5x
    assert group_outlier_ratio([scores], 5.0) == pytest.approx(0.01)


def test_alphapruning_allocation_shares_one_ratio_per_group():
    alphas = {"a.q": 2.0, "a.k": 4.0, "b.q": 6.0, "b.k": 6.0, "head": 4.5}
    params = {"a.q": 10, "a.k": 10, "b.q": 10, "b.k": 10, "head": 20}
    groups = {"a.q": 0, "a.k": 0, "b.q": 1, "b.k": 1, "head": "head"}
    ratios = alphapruning_allocation(alphas, params, groups, 0.5, epsilon=0.2)
    assert ratios["a.q"] == ratios["a.k"] < ratios["head"] < ratios["b.q"] == ratios["b.k"]
    assert sum(ratios[n] * params[n] for n in ratios) / 60 == pytest.approx(0.5, abs=1e-12)


def test_group_outlier_ratio_pools_the_scores_of_the_group():
    quiet, loud = torch.ones(50), torch.tensor([1.0] * 49 + [500.0])
    assert group_outlier_ratio([quiet, loud], 5.0) == pytest.approx(0.01)
    ratios = owl_allocation({0: 0.0, 1: 0.01}, {"x": 5, "y": 5}, {"x": 0, "y": 1}, 0.6, lam=0.05)
    assert ratios["y"] < ratios["x"] and (ratios["x"] + ratios["y"]) / 2 == pytest.approx(0.6)


@pytest.mark.parametrize("allocation", ["alphapruning", "owl"])
@pytest.mark.parametrize(("method", "mode"), [("wanda", "sequential"), ("wanda", "dense"),
                                              ("magnitude", "dense"), ("sparsegpt", "sequential")])
def test_layerwise_pruning_reaches_the_target_overall(tiny_model, allocation, method, mode):
    model = tiny_model("llama")
    width = {"epsilon": 0.2} if allocation == "alphapruning" else {"owl_lambda": 0.1}
    spec = PruneSpec(method=method, sparsity=0.6, allocation=allocation, mode=mode, **width)
    result = prune_model(model, spec, WINDOWS)
    layers = result.report.layers
    per_block = {i: {layers[n].sparsity for n in layers if f"layers.{i}." in n} for i in (0, 1)}
    assert 0.6 - 1e-9 <= result.report.overall <= 0.6 + 1.0 / 64  # ceil per row of 64
    assert per_block[0] != per_block[1]
    ratios = result.allocation.ratios
    for name, layer in layers.items():  # each layer holds its own ratio, rounded up per row
        assert ratios[name] - 1e-9 <= layer.sparsity <= ratios[name] + 1.0 / 64 + 1e-9
    described = result.allocation.to_dict()
    key = "alpha" if allocation == "alphapruning" else "outlier_ratio"
    assert described["method"] == allocation and all(key in e for e in described["layers"].values())


def test_matrix_granularity_and_precomputed_alphas(tiny_model):
    model = tiny_model("llama")
    targets = find_targets(model)
    assert len(set(target_groups(targets, "matrix").values())) == len(targets)
    spec = PruneSpec(sparsity=0.5, allocation="alphapruning", granularity="matrix")
    measured = allocate(targets, spec)
    again = allocate(targets, spec, alphas=measured.alphas)
    assert again.ratios == measured.ratios and len(set(measured.ratios.values())) > 2


def test_owl_needs_dense_statistics_and_nm_needs_uniform(tiny_model):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="dense model's activation statistics"):
        allocate(find_targets(model), PruneSpec(allocation="owl"))
    with pytest.raises(ValueError, match="same N:M in every layer"):
        PruneSpec(pattern="2:4", allocation="alphapruning")


def test_magnitude_with_owl_needs_one_dense_pass_not_a_sequential_one(tiny_model, monkeypatch):
    dense = tiny_model("llama")
    prune_model(dense, PruneSpec(method="magnitude", sparsity=0.6, allocation="owl",
                                 mode="dense"), WINDOWS)

    def no_sequential(*args, **kwargs):
        raise AssertionError("magnitude scores do not depend on pruned upstream layers")

    monkeypatch.setattr(sys.modules["wanda_export.prune"], "calibrate_sequential", no_sequential)
    sequential = tiny_model("llama")
    prune_model(sequential, PruneSpec(method="magnitude", sparsity=0.6, allocation="owl",
                                      mode="sequential"), WINDOWS)
    for a, b in zip(dense.parameters(), sequential.parameters(), strict=True):
        assert torch.equal(a, b)
