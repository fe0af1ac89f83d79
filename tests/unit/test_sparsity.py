"""Hand-computed checks of scoring, masking, N:M and verification."""

from __future__ import annotations

import math

import pytest
import torch

from wanda_export.sparsity.dsnot import dsnot_refine
from wanda_export.sparsity.mask import (
    apply_mask_,
    build_mask,
    nm_mask,
    pruned_count,
    unstructured_mask,
)
from wanda_export.sparsity.pattern import Pattern, parse_pattern
from wanda_export.sparsity.score import compute_scores, magnitude_scores, ria_scores, wanda_scores
from wanda_export.sparsity.verify import nm_violations, verify_layer

# The example of the Wanda paper's slides: a 3x4 weight and the input-feature norms ||X_j||.
SLIDE_W = torch.tensor([[4.0, 0, 1, -1], [3, -2, -1, -3], [-3, 1, 0, 2]])
SLIDE_NORMS = torch.tensor([1.0, 2, 8, 3])


def test_wanda_scores_on_the_slide_example():
    scores = wanda_scores(SLIDE_W, SLIDE_NORMS.square())
    assert torch.equal(scores, torch.tensor([[4.0, 0, 8, 3], [3, 4, 8, 9], [3, 2, 0, 6]]))


def test_wanda_per_output_50_percent_on_the_slide_example():
    weight = SLIDE_W.clone()
    apply_mask_(weight, unstructured_mask(wanda_scores(weight, SLIDE_NORMS.square()), 0.5, "row"))
    assert torch.equal(weight, torch.tensor([[4.0, 0, 1, 0], [0, 0, -1, -3], [-3, 0, 0, 2]]))


def test_magnitude_per_layer_50_percent_on_the_slide_example():
    weight = SLIDE_W.clone()
    apply_mask_(weight, unstructured_mask(magnitude_scores(weight), 0.5, "layer"))
    # |W| ascending: the two zeros, then the four ones (ties broken by flat index).
    assert torch.equal(weight, torch.tensor([[4.0, 0, 0, 0], [3, -2, 0, -3], [-3, 0, 0, 2]]))


def test_wanda_and_magnitude_disagree_where_activations_matter():
    # Magnitude keeps the large weights in row 1; Wanda keeps the weight on the loud channel 2.
    wanda = unstructured_mask(wanda_scores(SLIDE_W, SLIDE_NORMS.square()), 0.5, "row")
    magnitude = unstructured_mask(magnitude_scores(SLIDE_W), 0.5, "row")
    assert not torch.equal(wanda, magnitude)
    assert not wanda[1, 2] and magnitude[1, 2]


def test_2_4_on_one_row_of_eight():
    scores = torch.tensor([[5.0, 1, 3, 2, 0.5, 0.1, 9, 8]])
    mask = nm_mask(scores, 2, 4)
    # group 1 [5,1,3,2] keeps 5,3; group 2 [0.5,0.1,9,8] keeps 9,8
    assert mask.tolist() == [[False, True, False, True, True, True, False, False]]


def test_unstructured_differs_from_2_4_on_the_same_row():
    scores = torch.tensor([[5.0, 1, 3, 2, 0.5, 0.1, 9, 8]])
    # the four lowest overall (0.1, 0.5, 1, 2) happen to sit two in each group
    assert unstructured_mask(scores, 0.5, "row").tolist() == [[False, True, False, True, True, True, False, False]]
    scores2 = torch.tensor([[0.1, 0.2, 0.3, 0.4, 5, 6, 7, 8]])
    assert unstructured_mask(scores2, 0.5, "row").tolist() == [[True] * 4 + [False] * 4]
    assert nm_mask(scores2, 2, 4).tolist() == [[True, True, False, False, True, True, False, False]]


def test_4_8_and_1_4_patterns():
    scores = torch.arange(16, dtype=torch.float32).reshape(1, 16)
    assert nm_mask(scores, 4, 8).sum() == 8
    assert nm_mask(scores, 1, 4).tolist() == [[True, True, True, False] * 4]


def test_ties_prune_the_lowest_index_first():
    scores = torch.ones(2, 6)
    assert unstructured_mask(scores, 0.5, "row").tolist() == [[True] * 3 + [False] * 3] * 2
    assert nm_mask(torch.ones(1, 4), 2, 4).tolist() == [[True, True, False, False]]
    assert unstructured_mask(torch.ones(2, 2), 0.5, "layer").tolist() == [[True, True], [False, False]]


def test_exact_ratio_per_row_on_random_scores():
    torch.manual_seed(0)
    scores = torch.randn(64, 100).abs()
    for sparsity in (0.0, 0.25, 0.5, 0.7, 0.9):
        mask = unstructured_mask(scores, sparsity, "row")
        assert (mask.sum(dim=1) == round(100 * sparsity)).all()
        # every pruned score is <= every kept score in its row
        pruned_max = torch.where(mask, scores, -math.inf).max(dim=1).values
        kept_min = torch.where(~mask, scores, math.inf).min(dim=1).values
        assert (pruned_max <= kept_min).all()


def test_exact_ratio_per_layer_with_many_ties():
    scores = torch.randint(0, 3, (10, 10)).float()
    mask = unstructured_mask(scores, 0.37, "layer")
    assert int(mask.sum()) == 37


def test_nm_needs_divisible_in_features():
    with pytest.raises(ValueError, match="divisible by 4"):
        nm_mask(torch.ones(2, 6), 2, 4)


def test_apply_mask_writes_positive_zeros():
    weight = torch.tensor([[-1.0, -0.0, 2.0, -3.0]])
    apply_mask_(weight, torch.tensor([[True, False, False, False]]))
    zeros = weight[weight == 0]
    assert torch.all(torch.signbit(zeros) == 0)
    assert weight.tolist() == [[0.0, 0.0, 2.0, -3.0]]


def test_conv1d_layout_view_is_written_through():
    stored = SLIDE_W.t().contiguous()  # GPT-2 Conv1D keeps [in, out]
    apply_mask_(stored.t(), unstructured_mask(wanda_scores(stored.t(), SLIDE_NORMS.square()), 0.5, "row"))
    assert torch.equal(stored.t(), torch.tensor([[4.0, 0, 1, 0], [0, 0, -1, -3], [-3, 0, 0, 2]]))


def test_parse_pattern():
    assert parse_pattern("2:4") == Pattern(2, 4)
    assert parse_pattern("unstructured") == Pattern()
    assert Pattern(2, 4).sparsity == 0.5 and str(Pattern(4, 8)) == "4:8"
    for bad in ("5:4", "4:4", "0:4", "2-4", "half"):
        with pytest.raises(ValueError):
            parse_pattern(bad)


def test_verify_counts_violating_groups():
    weight = torch.tensor([[1.0, 0, 2, 0, 1, 1, 1, 0]])
    assert nm_violations(weight, 2, 4) == 1
    report = verify_layer(weight, Pattern(2, 4))
    assert not report.valid and report.violating_groups == 1
    assert report.zeros == 3 and report.sparsity == 3 / 8
    fixed = weight.clone()
    fixed[0, 5] = 0
    assert verify_layer(fixed, Pattern(2, 4)).valid
    assert nm_violations(torch.zeros(1, 6), 2, 4) == -1
    assert not verify_layer(torch.zeros(1, 6), Pattern(2, 4)).valid


def test_score_dispatch_errors():
    with pytest.raises(ValueError, match="unknown scoring method"):
        compute_scores("sparsegpt-ish", SLIDE_W, None)
    with pytest.raises(ValueError, match="needs activation"):
        compute_scores("wanda", SLIDE_W, None)
    with pytest.raises(ValueError, match="expected \\[4\\]"):
        wanda_scores(SLIDE_W, torch.ones(3))


def test_build_mask_chooses_by_pattern():
    scores = torch.tensor([[0.1, 0.2, 0.3, 0.4, 5, 6, 7, 8]])
    assert torch.equal(build_mask(scores, 0.5, Pattern(2, 4), "row"), nm_mask(scores, 2, 4))
    assert torch.equal(build_mask(scores, 0.5, Pattern(), "row"), unstructured_mask(scores, 0.5, "row"))


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (3, 8), (8, 16)])
def test_nm_rank_path_matches_a_stable_sort(n, m):
    torch.manual_seed(n * 100 + m)
    scores = torch.randint(0, 4, (32, 4 * m)).float()  # many ties on purpose
    groups = scores.reshape(-1, m)
    order = torch.argsort(groups, dim=1, stable=True)[:, : m - n]
    expected = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, order, True)
    assert torch.equal(nm_mask(scores, n, m), expected.reshape(scores.shape))


def test_non_whole_ratios_round_up_so_every_group_reaches_the_target():
    assert pruned_count(576, 0.6) == 346 and 346 / 576 >= 0.6
    assert pruned_count(1000, 0.7) == 700  # 0.7 * 1000 is 700.0000000000001 in floats
    assert pruned_count(64, 0.5) == 32 and pruned_count(3, 0.99) == 3
    mask = unstructured_mask(torch.rand(4, 576), 0.6, "row")
    assert (mask.sum(dim=1) == 346).all()


def test_ria_scores_on_the_slide_example():
    # |W| row sums 6, 9, 6; column sums 10, 3, 2, 6; ||X||^0.5 = sqrt([1, 2, 8, 3]).
    relative = torch.tensor([[4 / 6 + 4 / 10, 0, 1 / 6 + 1 / 2, 1 / 6 + 1 / 6],
                             [3 / 9 + 3 / 10, 2 / 9 + 2 / 3, 1 / 9 + 1 / 2, 3 / 9 + 3 / 6],
                             [3 / 6 + 3 / 10, 1 / 6 + 1 / 3, 0, 2 / 6 + 2 / 6]])
    expected = relative * SLIDE_NORMS.sqrt()
    scores = ria_scores(SLIDE_W, SLIDE_NORMS.square(), exponent=0.5)
    assert torch.allclose(scores, expected)
    assert torch.allclose(compute_scores("ria", SLIDE_W, SLIDE_NORMS.square(), exponent=0.5),
                          expected)
    # exponent 0: relative importance alone; an all-zero column scores 0, not NaN
    with_zero = SLIDE_W.clone()
    with_zero[:, 1] = 0
    plain = ria_scores(with_zero, SLIDE_NORMS.square(), exponent=0.0)
    assert torch.isfinite(plain).all() and (plain[:, 1] == 0).all()


def test_ria_per_layer_50_percent_on_the_slide_example():
    # Sorted scores: 0 (0,1), 0 (2,2), 0.577 (0,3), 0.633 (1,0), 0.707 (2,1), 0.8 (2,0): pruned.
    # Unlike Wanda per row (which empties row 1's first two inputs), row 1 keeps three weights.
    weight = SLIDE_W.clone()
    scores = ria_scores(weight, SLIDE_NORMS.square(), exponent=0.5)
    apply_mask_(weight, unstructured_mask(scores, 0.5, "layer"))
    assert torch.equal(weight, torch.tensor([[4.0, 0, 1, 0], [0, -2, -1, -3], [0, 0, 0, 2]]))


ONES = torch.ones(8)


def test_dsnot_unstructured_swaps_to_cancel_the_expected_error():
    # Pruned inputs 2, 3 leave eps = 0.6 + 0.5 = 1.1 (E[x] = 1). Grow the largest positive
    # contribution (input 2, 0.6), prune the least important kept negative one (input 1, -1):
    # eps = 1.1 - 1 - 0.6 = -0.5. No pruned input has a negative contribution to grow next,
    # so the row stops.
    weight = torch.tensor([[2.0, -1.0, 0.6, 0.5]])
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    mask = unstructured_mask(scores, 0.5, "row")
    refined = dsnot_refine(weight, mask, scores, ONES[:4], ONES[:4], pattern=Pattern(None, None),
                           iterations=50, threshold=0.1, variance_power=1.0)
    assert refined.tolist() == [[False, True, False, True]]
    assert refined.sum() == mask.sum()
    # an error already under the threshold: nothing moves
    unchanged = dsnot_refine(weight, mask, scores, ONES[:4], ONES[:4], pattern=Pattern(None, None),
                             iterations=50, threshold=2.0, variance_power=1.0)
    assert torch.equal(unchanged, mask)


def test_dsnot_growth_prefers_steady_inputs():
    # Same row, but input 2 varies 100x more than input 3: input 3 is grown instead
    # (0.5 / 1 > 0.6 / 100) and the kept negative input 1 pruned: eps = 1.1 - 1 - 0.5 = -0.4.
    weight = torch.tensor([[2.0, -1.0, 0.6, 0.5]])
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    variance = torch.tensor([1.0, 1.0, 100.0, 1.0])
    refined = dsnot_refine(weight, unstructured_mask(scores, 0.5, "row"), scores, ONES[:4],
                           variance, pattern=Pattern(None, None), iterations=50, threshold=0.1,
                           variance_power=1.0)
    assert refined.tolist() == [[False, True, True, False]]


def test_dsnot_n_m_swaps_stay_in_the_group():
    # 2:4 prunes inputs 2, 3 and 6, 7: eps = 0.6 + 0.5 + 0.9 + 0.8 = 2.8. Grow input 6 (0.9),
    # prune its group's least important kept input 5 (0.1): eps = 2.0. Growing input 7 would
    # prune input 4 (+1): eps = 2.2, no better: skipped. Grow input 2 (0.6), prune input 1
    # (-1): eps = 0.4. Growing input 3 would prune input 0 (+2): 1.9, skipped; then the pruned
    # inputs with a positive contribution are used up.
    weight = torch.tensor([[2.0, -1.0, 0.6, 0.5, 1.0, 0.1, 0.9, 0.8]])
    scores = torch.tensor([[4.0, 3, 2, 1, 4, 3, 2, 1]])
    refined = dsnot_refine(weight, nm_mask(scores, 2, 4), scores, ONES, ONES,
                           pattern=Pattern(2, 4), iterations=50, threshold=0.1,
                           variance_power=1.0)
    assert refined.tolist() == [[False, True, False, True, False, True, False, True]]
    assert nm_violations(refined.logical_not().float(), 2, 4) == 0


@pytest.mark.parametrize("pattern", [Pattern(None, None), Pattern(2, 4)])
def test_dsnot_never_grows_a_rows_expected_error_and_keeps_its_counts(pattern):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 256, generator=generator)
    mean = torch.randn(256, generator=generator) * 0.5
    variance = torch.rand(256, generator=generator) + 0.1
    scores = wanda_scores(weight, (variance + mean.square()) * 100)
    mask = build_mask(scores, 0.5, pattern, "row")
    refined = dsnot_refine(weight, mask, scores, mean, variance, pattern=pattern, iterations=50,
                           threshold=0.0, variance_power=1.0)

    def error(m):
        return ((weight * mean) * m).sum(dim=1).abs()

    assert torch.all(error(refined) <= error(mask) + 1e-5)
    assert (error(refined) < error(mask) * 0.5).float().mean() > 0.5
    assert torch.equal(refined.sum(dim=1), mask.sum(dim=1))
    if pattern.structured:
        assert nm_violations(refined.logical_not().float(), 2, 4) == 0
