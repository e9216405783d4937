"""Rank statistics against their textbook definitions, written out here by brute force, and hand-worked cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from nas.stats import bootstrap_interval, kendall_tau_b, permutation_p, spearman_rho, top_k_overlap


def brute_tau_b(x, y) -> float:
    """Kendall's tau-b as defined: C, D, and the pairs tied in x (t_x) and in y (t_y), counted pair by pair.
    tau_b = (C - D) / sqrt((n0 - t_x) * (n0 - t_y)), n0 = n(n-1)/2; a pair tied in both is in t_x and t_y."""
    n = len(x)
    c = d = tx = ty = 0
    for i, j in itertools.combinations(range(n), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        if dx == 0:
            tx += 1
        if dy == 0:
            ty += 1
        if dx * dy > 0:
            c += 1
        elif dx * dy < 0:
            d += 1
    n0 = n * (n - 1) // 2
    den = math.sqrt((n0 - tx) * (n0 - ty))
    return (c - d) / den if den else math.nan


def brute_ranks(a) -> list[float]:
    """Average rank of each value: 1 + #smaller + (#equal - 1) / 2."""
    return [1 + sum(b < v for b in a) + (sum(b == v for b in a) - 1) / 2 for v in a]


def brute_pearson(a, b) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((p - ma) * (q - mb) for p, q in zip(a, b))
    return cov / math.sqrt(sum((p - ma) ** 2 for p in a) * sum((q - mb) ** 2 for q in b))


# ---------------------------------------------------------------- Kendall tau-b

def test_tau_perfect_and_reversed_order():
    assert kendall_tau_b([1, 2, 3, 4, 5], [10, 20, 30, 40, 50]) == 1.0
    assert kendall_tau_b([1, 2, 3, 4, 5], [50, 40, 30, 20, 10]) == -1.0


def test_tau_hand_worked_without_ties():
    # x = 1 2 3 4, y = 1 3 2 4: of the 6 pairs only (2,3) is discordant -> (5 - 1) / 6 = 2/3
    assert kendall_tau_b([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(2 / 3, abs=1e-15)


def test_tau_hand_worked_with_ties_in_both():
    # x = 1 1 2 3, y = 1 2 2 3. Pairs (i<j): (0,1) tied in x; (0,2) C; (0,3) C; (1,2) tied in y; (1,3) C; (2,3) C.
    # C = 4, D = 0, n0 = 6, t_x = 1, t_y = 1 -> tau_b = 4 / sqrt(5 * 5) = 0.8 (tau-a would be 4/6).
    assert kendall_tau_b([1, 1, 2, 3], [1, 2, 2, 3]) == pytest.approx(0.8, abs=1e-15)
    # a pair tied in both: x = 1 1 2, y = 5 5 6 -> C = 2, t_x = t_y = 1 -> 2 / sqrt(2 * 2) = 1
    assert kendall_tau_b([1, 1, 2], [5, 5, 6]) == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("seed", range(8))
def test_tau_matches_the_pair_counting_definition(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 40))
    x = rng.integers(0, 6, n).tolist()  # few distinct values: many ties
    y = (rng.integers(0, 4, n) + (np.array(x) if seed % 2 else 0)).tolist()
    expected = brute_tau_b(x, y)
    if math.isnan(expected):
        assert math.isnan(kendall_tau_b(x, y))
    else:
        assert kendall_tau_b(x, y) == pytest.approx(expected, abs=1e-12)


def test_tau_and_rho_are_symmetric_and_flip_sign_with_a_reversed_reference():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=30), rng.normal(size=30) + rng.normal(size=30)
    for stat in (kendall_tau_b, spearman_rho):
        assert stat(x, y) == pytest.approx(stat(y, x), abs=1e-12)
        assert stat(x, -y) == pytest.approx(-stat(x, y), abs=1e-12)


def test_ranks_are_invariant_to_monotone_transforms():
    rng = np.random.default_rng(1)
    x = rng.normal(size=50)
    y = x + rng.normal(size=50)
    for stat in (kendall_tau_b, spearman_rho):
        base = stat(x, y)
        assert stat(np.exp(3 * x), y) == pytest.approx(base, abs=1e-12)
        assert stat(x, np.arctan(y) * 7 - 2) == pytest.approx(base, abs=1e-12)
    # a non-monotone transform does change them (the invariance check could fail)
    assert kendall_tau_b(x ** 2, y) != pytest.approx(kendall_tau_b(x, y), abs=1e-3)


def test_infinities_are_ordered_and_tie_with_each_other():
    # -inf twice is one tie (not NaN from inf - inf): x = -inf -inf 0 1 vs y = 0 0 1 2 is perfect agreement
    assert kendall_tau_b([-math.inf, -math.inf, 0.0, 1.0], [0, 0, 1, 2]) == pytest.approx(1.0)
    assert spearman_rho([-math.inf, -math.inf, 0.0, 1.0], [0, 0, 1, 2]) == pytest.approx(1.0)


# ---------------------------------------------------------------- Spearman rho

@pytest.mark.parametrize("seed", range(5))
def test_rho_without_ties_is_the_closed_form(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 60))
    x, y = rng.permutation(n).astype(float), rng.permutation(n).astype(float)
    d = x - y  # x and y are already ranks 0..n-1: d is the rank difference
    assert spearman_rho(x, y) == pytest.approx(1 - 6 * float((d ** 2).sum()) / (n * (n * n - 1)), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_rho_with_ties_is_pearson_of_average_ranks(seed):
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 5, 25).tolist(), rng.integers(0, 3, 25).tolist()
    assert spearman_rho(x, y) == pytest.approx(brute_pearson(brute_ranks(x), brute_ranks(y)), abs=1e-12)


def test_rho_hand_worked_tie():
    # x = 1 2 2 3 -> ranks 1 2.5 2.5 4; y = 1 2 3 4. Centered: (-1.5, 0, 0, 1.5) and (-1.5, -.5, .5, 1.5):
    # cov = 4.5, var_x = 4.5, var_y = 5 -> rho = 4.5 / sqrt(22.5) = sqrt(0.9)
    assert spearman_rho([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(math.sqrt(0.9), abs=1e-15)


# ---------------------------------------------------------------- undefined cases and bad input

@pytest.mark.parametrize("stat", [kendall_tau_b, spearman_rho])
@pytest.mark.parametrize("x, y", [([], []), ([1.0], [2.0]), ([3, 3, 3], [1, 2, 3]), ([1, 2, 3], [0, 0, 0])])
def test_undefined_statistics_are_nan(stat, x, y):
    assert math.isnan(stat(x, y))


@pytest.mark.parametrize("stat", [kendall_tau_b, spearman_rho])
def test_bad_input_raises(stat):
    with pytest.raises(ValueError, match="equal length"):
        stat([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        stat([1, math.nan, 3], [1, 2, 3])


# ---------------------------------------------------------------- top-k overlap

def test_top_k_overlap_constructed_cases():
    ref = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    assert top_k_overlap([6, 5, 4, 3, 2, 1], ref, 3) == 3  # same order
    assert top_k_overlap([1, 2, 3, 4, 5, 6], ref, 3) == 0  # reversed: the top 3 are the reference's bottom 3
    assert top_k_overlap([6, 1, 5, 2, 4, 3], ref, 2) == 1  # score's top 2 = {0, 2}, reference's = {0, 1}
    assert top_k_overlap([6, 1, 5, 2, 4, 3], ref, 3) == 2  # {0, 2, 4} vs {0, 1, 2}
    assert top_k_overlap([6, 1, 5, 2, 4, 3], ref, 6) == 6  # k = n: everything overlaps
    assert top_k_overlap([1, 2, 3, 4, 5, 6], ref, 1) == 0


def test_top_k_ties_break_by_position_and_bad_k_raises():
    # score ties 3-way at the top; the first two listed (0 and 1) are its top 2, and so are the reference's
    assert top_k_overlap([1, 1, 1, 0], [4, 3, 2, 1], 2) == 2
    assert top_k_overlap([1, 1, 1, 0], [1, 2, 3, 4], 2) == 0  # reference's top 2 are 3 and 2
    for k in (0, 5):
        with pytest.raises(ValueError, match="between 1 and"):
            top_k_overlap([1, 2, 3, 4], [1, 2, 3, 4], k)


# ---------------------------------------------------------------- bootstrap and permutation

def _correlated(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return x, x + 0.3 * rng.normal(size=n)


@pytest.mark.parametrize("stat", [kendall_tau_b, spearman_rho])
def test_bootstrap_contains_the_estimate_and_narrows_with_more_data(stat):
    x, y = _correlated(20)
    lo, hi = bootstrap_interval(stat, x, y, resamples=500)
    assert lo <= stat(x, y) <= hi and lo > 0.3
    x2, y2 = _correlated(200)
    lo2, hi2 = bootstrap_interval(stat, x2, y2, resamples=500)
    assert lo2 <= stat(x2, y2) <= hi2
    assert hi2 - lo2 < 0.6 * (hi - lo)  # width shrinks roughly as 1/sqrt(n): sqrt(20/200) ~ 0.32


def test_bootstrap_level_seed_and_nan_resamples():
    x, y = _correlated(15)
    lo90, hi90 = bootstrap_interval(kendall_tau_b, x, y, level=0.90, resamples=400, seed=1)
    lo50, hi50 = bootstrap_interval(kendall_tau_b, x, y, level=0.50, resamples=400, seed=1)
    assert lo90 < lo50 < hi50 < hi90
    assert bootstrap_interval(kendall_tau_b, x, y, resamples=400, seed=1) == (lo90, hi90)  # seeded
    # two architectures: half the resamples draw one of them twice (constant -> NaN) and are skipped
    assert bootstrap_interval(kendall_tau_b, [1, 2], [1, 2], resamples=100) == (1.0, 1.0)
    assert all(math.isnan(v) for v in bootstrap_interval(kendall_tau_b, [1, 1, 1], [1, 2, 3], resamples=50))
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval(kendall_tau_b, x, y, level=90)


def test_permutation_p_small_for_real_association_and_not_for_noise():
    x, y = _correlated(30)
    assert permutation_p(x, y, resamples=500) == pytest.approx(1 / 501)  # no shuffle reaches tau ~ 0.8
    rng = np.random.default_rng(5)
    assert permutation_p(rng.normal(size=30), rng.normal(size=30), resamples=500) > 0.05
    assert permutation_p(x, -y, resamples=500) > 0.99  # one-sided: a negative ranking is not significant
    assert permutation_p(x, y, spearman_rho, resamples=200, seed=3) == permutation_p(x, y, spearman_rho, 200, 3)
    assert math.isnan(permutation_p([1, 1, 1], [1, 2, 3], resamples=10))


def test_permutation_p_of_three_is_exact_enumeration():
    # n = 3, x = y = 1 2 3: of the 6 orders of y only the identity reaches tau = 1 -> p -> 1/6
    p = permutation_p([1, 2, 3], [1, 2, 3], resamples=6000, seed=0)
    assert p == pytest.approx(1 / 6, abs=0.02)


def test_quantile_is_numpys_linear_interpolation():
    from nas.stats import quantile

    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 40):
        values = list(rng.normal(size=n))
        for q in (0.0, 0.05, 0.25, 0.5, 0.9, 1.0):
            assert quantile(values, q) == pytest.approx(float(np.quantile(values, q)), abs=1e-12)
    assert quantile([3, 1, 2], 0.25) == 1.5  # between the first and second order statistics
