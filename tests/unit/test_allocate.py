"""Layer-wise allocation math: the Hill estimator and the ratio mappings."""

from __future__ import annotations

import pytest
import torch

from wanda_export.sparsity.allocate import (
    alpha_ratios,
    esd,
    hill_alpha,
    outlier_ratio,
    owl_ratios,
    rebalance,
)


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


def test_outlier_ratio_counts_scores_above_m_times_the_mean():
    scores = torch.tensor([1.0] * 99 + [1000.0])  # mean 10.99; only the spike exceeds 5x
    assert outlier_ratio(scores, 5.0) == pytest.approx(0.01)
