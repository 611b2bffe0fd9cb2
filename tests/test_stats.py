"""Intervals and verdicts on made-up numbers, against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from advfeat.stats import (FAILS, HOLDS, INCONCLUSIVE, Interval, bootstrap_mean, bootstrap_p,
                           bootstrap_paired_difference, combine, correlation_interval, holm, leave_one_out,
                           mean_interval, ols_slope, p_from_t_interval, paired_difference_interval,
                           percentile_interval, prediction_interval, seed_replicates, shift, spearman_exact_test,
                           t_test_p, two_level_replicates, verdict, wilson_interval)


def test_t_interval_by_hand():
    # Three seeds 0.18, 0.20, 0.22: mean 0.20, sd 0.02, t(0.975, 2) = 4.3027
    i = mean_interval([0.18, 0.20, 0.22])
    half = 4.302652729911275 * 0.02 / math.sqrt(3)
    assert i.estimate == pytest.approx(0.20)
    assert (i.low, i.high) == pytest.approx((0.20 - half, 0.20 + half))
    assert i.n == 3 and "t interval" in i.method


def test_t_interval_covers_the_mean_at_its_level():
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(2000):
        i = mean_interval(rng.normal(1.0, 2.0, size=4))
        covered += i.low <= 1.0 <= i.high
    assert 0.93 < covered / 2000 < 0.97


def test_wilson_interval_matches_the_closed_form_and_stays_in_0_1():
    i = wilson_interval(190, 1000)
    lo, hi = sps.binomtest(190, 1000).proportion_ci(confidence_level=0.95, method="wilson")
    assert (i.low, i.high) == pytest.approx((lo, hi))
    edge = wilson_interval(0, 50)
    assert edge.low == pytest.approx(0.0, abs=1e-12) and 0 < edge.high < 0.1


def test_paired_interval_uses_the_per_image_differences():
    a = np.array([1, 1, 0, 1, 0, 1, 1, 0] * 50)
    b = np.array([1, 0, 0, 1, 0, 0, 1, 0] * 50)
    i = paired_difference_interval(a, b)
    d = a - b
    half = 1.959963984540054 * d.std(ddof=1) / math.sqrt(len(d))
    assert i.estimate == pytest.approx(0.25) and (i.high - i.low) / 2 == pytest.approx(half)
    # Pairing matters: identical models give a zero-width interval at zero.
    same = paired_difference_interval(a, a)
    assert same.low == same.high == 0.0


def test_correlation_interval_agrees_with_fisher_and_detects_a_trend():
    x = np.array([10.0, 20, 30, 40, 50, 60])
    y = 0.8 * x + np.array([1.0, -2, 0.5, 2, -1, 0])
    i = correlation_interval(x, y)
    r = np.corrcoef(x, y)[0, 1]
    z, half = math.atanh(r), 1.959963984540054 / math.sqrt(6 - 3)
    assert i.estimate == pytest.approx(r)
    assert (i.low, i.high) == pytest.approx((math.tanh(z - half), math.tanh(z + half)))
    assert verdict(i, "above", 0.0) == HOLDS
    flat = correlation_interval(x, np.array([3.0, 1, 4, 1, 5, 9]))
    assert verdict(flat, "above", 0.0) == INCONCLUSIVE


@pytest.mark.parametrize("low,high,direction,margin,expected", [
    (0.06, 0.12, "above", 0.05, HOLDS),
    (0.01, 0.12, "above", 0.05, INCONCLUSIVE),
    (-0.03, 0.04, "above", 0.05, FAILS),
    (-0.10, -0.02, "below", 0.0, HOLDS),
    (0.01, 0.03, "below", 0.0, FAILS),
    (-0.04, 0.06, "within", 0.10, HOLDS),
    (-0.04, 0.16, "within", 0.10, INCONCLUSIVE),
    (0.12, 0.30, "within", 0.10, FAILS),
    (-0.30, -0.12, "within", 0.10, FAILS),
])
def test_verdict_rule(low, high, direction, margin, expected):
    assert verdict(Interval((low + high) / 2, low, high, 3, "made up"), direction, margin) == expected


def test_shift_and_combine():
    accuracy = Interval(0.19, 0.15, 0.23, 3, "made up")
    above_chance = shift(accuracy, 0.10)
    assert (above_chance.low, above_chance.high) == pytest.approx((0.05, 0.13))
    assert verdict(above_chance, "above", 0.05) == INCONCLUSIVE  # 0.05 is not > 0.05
    assert combine([HOLDS, HOLDS]) == HOLDS
    assert combine([HOLDS, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine([HOLDS, FAILS, INCONCLUSIVE]) == FAILS
    assert combine([]) == INCONCLUSIVE


def test_bad_input():
    with pytest.raises(ValueError):
        mean_interval([0.5])
    with pytest.raises(ValueError):
        wilson_interval(1, 0)
    with pytest.raises(ValueError):
        correlation_interval([1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError):
        verdict(Interval(0, 0, 0, 1, ""), "sideways", 0)


# --- The two-level bootstrap (seeds, then test images) -----------------------------------------

def test_zero_within_seed_variance_is_the_seed_level_bootstrap():
    # Every image of a seed has the same outcome: image draws change nothing, and the seed draws
    # come from the same stream, so the intervals agree exactly.
    per_seed = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    correct = np.repeat(per_seed[:, None], 40, axis=1).astype(bool)
    two_level = bootstrap_mean(correct)
    seed_level = percentile_interval(seed_replicates(per_seed), per_seed.mean(), "seeds", 5)
    assert two_level.estimate == pytest.approx(0.6)
    assert (two_level.low, two_level.high) == (seed_level.low, seed_level.high)
    assert seed_level.low < seed_level.high  # the seeds do differ


def test_identical_seeds_and_equal_images_give_a_zero_width_interval():
    correct = np.ones((3, 50), dtype=bool)
    i = bootstrap_mean(correct)
    assert i.low == i.high == i.estimate == 1.0
    a = np.tile(np.arange(50) % 3 == 0, (3, 1))
    same = bootstrap_paired_difference(a, a)
    assert same.low == same.high == same.estimate == 0.0


def test_two_level_variance_matches_its_closed_form():
    # A replicate is the mean of S draws, each a drawn seed's image-bootstrap mean, so its variance
    # is (Var over seeds of the seed means + mean over seeds of the within-seed variance / N) / S
    # (population variances).
    rng = np.random.default_rng(1)
    p_seed = np.array([0.3, 0.5, 0.6, 0.8])
    correct = rng.random((4, 60)) < p_seed[:, None]
    means, within = correct.mean(1), correct.var(1)
    expected = (means.var() + within.mean() / 60) / 4
    replicates = two_level_replicates(correct, n_boot=20000)[:, 0]
    assert replicates.var() == pytest.approx(expected, rel=0.04)


def test_one_seed_agrees_with_the_paired_normal_interval():
    rng = np.random.default_rng(2)
    a = rng.random(2000) < 0.6
    b = np.where(rng.random(2000) < 0.8, a, rng.random(2000) < 0.4)  # b agrees with a on most images
    boot = bootstrap_paired_difference(a[None], b[None], n_boot=4000)
    normal = paired_difference_interval(a, b)
    assert boot.estimate == pytest.approx(normal.estimate)
    assert boot.high - boot.low == pytest.approx(normal.high - normal.low, rel=0.08)


def test_paired_difference_shares_every_draw_between_the_two_models():
    rng = np.random.default_rng(3)
    a, b = rng.random((3, 100)) < 0.7, rng.random((3, 100)) < 0.5
    both = two_level_replicates(np.stack([a, b]), n_boot=500)
    of_difference = two_level_replicates(a.astype(float) - b, n_boot=500)[:, 0]
    np.testing.assert_allclose(both[:, 0] - both[:, 1], of_difference, atol=1e-12)
    # Pairing narrows the interval when the models agree on most images.
    b_close = np.where(rng.random((3, 100)) < 0.9, a, ~a)
    paired = bootstrap_paired_difference(a, b_close)
    apart = (two_level_replicates(a, n_boot=2000, seed=5)[:, 0]
             - two_level_replicates(b_close, n_boot=2000, seed=6)[:, 0])
    assert paired.high - paired.low < 0.7 * (np.quantile(apart, 0.975) - np.quantile(apart, 0.025))


def test_bootstrap_is_deterministic_and_rejects_bad_shapes():
    correct = np.random.default_rng(4).random((3, 30)) < 0.5
    assert bootstrap_mean(correct) == bootstrap_mean(correct)
    assert not np.array_equal(two_level_replicates(correct, seed=1), two_level_replicates(correct))
    with pytest.raises(ValueError):
        bootstrap_mean(np.ones(5))


# --- p-values and Holm ---------------------------------------------------------------------------

def test_t_test_p_agrees_with_scipy_and_with_the_t_interval():
    values = np.array([0.12, 0.08, 0.15, 0.10])
    for margin in (0.0, 0.05, 0.09, 0.2):
        expected = sps.ttest_1samp(values - margin, 0.0, alternative="greater").pvalue
        assert t_test_p(values, margin) == pytest.approx(expected)
        assert t_test_p(values, margin, "below") == pytest.approx(1 - expected)
        # Duality: p < 0.025 exactly when the 95% t interval lies above the margin.
        assert (t_test_p(values, margin) < 0.025) == (mean_interval(values).low > margin)
    assert t_test_p([0.1, 0.1], 0.05) == 0.0 and t_test_p([0.1, 0.1], 0.2) == 1.0


def test_bootstrap_p_is_the_dual_of_the_percentile_interval():
    replicates = np.linspace(0.0, 1.0, 1001)
    interval = percentile_interval(replicates, 0.5, "made up", 3)
    assert bootstrap_p(replicates, interval.low - 1e-6) < 0.025 < bootstrap_p(replicates, interval.low + 0.01)
    assert bootstrap_p(replicates, 0.5) == pytest.approx(501 / 1001)  # ties count against
    assert bootstrap_p(replicates, 0.9, "below") == pytest.approx(0.1, abs=0.001)


def test_holm_on_the_textbook_example():
    # Holm (1979) as in the usual worked example: p = 0.01, 0.04, 0.03, 0.005 at alpha 0.05.
    # Sorted: 0.005 * 4 = 0.02 (reject), 0.01 * 3 = 0.03 (reject), 0.03 * 2 = 0.06 (stop).
    adjusted, rejected = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert rejected == [True, False, False, True]


def test_holm_against_brute_force_step_down():
    rng = np.random.default_rng(5)
    for _ in range(200):
        p = rng.random(6) ** 3
        adjusted, rejected = holm(p, alpha=0.05)
        # Brute force: walk the sorted p-values, reject while p_(i) <= alpha / (m - i).
        expected, stopped = [False] * 6, False
        for i, j in enumerate(np.argsort(p)):
            stopped = stopped or p[j] > 0.05 / (6 - i)
            expected[j] = not stopped
        assert rejected == expected
        assert all(a >= q for a, q in zip(adjusted, p)) and max(adjusted) <= 1.0


# --- Figure 3's trend over architecture means ----------------------------------------------------

def test_exact_spearman_p_for_a_perfectly_monotone_trend():
    rho, p = spearman_exact_test([1, 2, 3, 4, 5, 6], [0.1, 0.3, 0.35, 0.5, 0.8, 0.9])
    assert rho == pytest.approx(1.0) and p == pytest.approx(1 / 720)
    rho, p = spearman_exact_test([1, 2, 3, 4, 5, 6], [0.9, 0.8, 0.5, 0.35, 0.3, 0.1])
    assert rho == pytest.approx(-1.0) and p == pytest.approx(1.0)
    assert spearman_exact_test([1, 2, 3], [4, 5, 6])[1] == pytest.approx(1 / 6)  # 3 points cannot reach 0.05


@pytest.mark.parametrize("k", [4, 6])
def test_exact_spearman_agrees_with_scipy_permutation_test(k):
    rng = np.random.default_rng(k)
    x, y = rng.random(k), rng.random(k) + np.linspace(0, 0.5, k)
    rho, p = spearman_exact_test(x, y)
    ref = sps.permutation_test((x,), lambda a: sps.spearmanr(a, y).statistic, permutation_type="pairings",
                               alternative="greater", n_resamples=np.inf, vectorized=False)
    assert rho == pytest.approx(sps.spearmanr(x, y).statistic)
    assert p == pytest.approx(ref.pvalue)


def test_ols_slope_on_exactly_linear_and_noisy_data():
    x = np.array([0.1, 0.2, 0.35, 0.5, 0.7, 0.9])
    exact = ols_slope(x, 2 * x + 1)
    assert exact.estimate == pytest.approx(2.0)
    assert exact.high - exact.low == pytest.approx(0.0, abs=1e-9)
    y = 2 * x + 1 + np.array([0.05, -0.03, 0.02, -0.04, 0.01, 0.0])
    fit = sps.linregress(x, y)
    noisy = ols_slope(x, y)
    half = sps.t.ppf(0.975, 4) * fit.stderr
    assert (noisy.estimate, noisy.low, noisy.high) == pytest.approx((fit.slope, fit.slope - half, fit.slope + half))


def test_leave_one_out_finds_the_point_a_trend_rests_on():
    x = [1, 2, 3, 4, 5, 6]
    y = [0.5, 0.4, 0.45, 0.35, 0.42, 2.0]  # falling, except one far point that makes the fit rise
    assert ols_slope(x, y).estimate > 0
    drops = {d["dropped"]: d for d in leave_one_out(x, y, list("abcdef"))}
    assert drops["f"]["slope"] < 0 and drops["f"]["rho"] < 0
    assert all(drops[n]["slope"] > 0 for n in "abcde")
    with pytest.raises(ValueError):
        leave_one_out([1, 2, 3], [1, 2, 3], list("abc"))


def test_p_from_a_t_interval_is_the_t_test_p():
    values = [0.12, 0.08, 0.15, 0.10]
    for margin, direction in ((0.05, "above"), (0.2, "below"), (0.11, "above")):
        assert p_from_t_interval(mean_interval(values), margin, direction) == pytest.approx(
            t_test_p(values, margin, direction))
    x = np.array([0.1, 0.2, 0.35, 0.5, 0.7, 0.9])
    y = 2 * x + np.array([0.05, -0.03, 0.02, -0.04, 0.01, 0.0])
    slope = ols_slope(x, y)
    expected = sps.linregress(x, y, alternative="greater").pvalue
    assert p_from_t_interval(slope, 0.0, "above", dof=4) == pytest.approx(expected)


def test_prediction_interval_on_a_line_and_its_coverage():
    x = np.array([0.1, 0.2, 0.35, 0.5, 0.7, 0.9])
    exact = prediction_interval(x, 2 * x + 1, 0.3)
    assert exact.estimate == pytest.approx(1.6) and exact.high - exact.low == pytest.approx(0.0, abs=1e-9)
    rng = np.random.default_rng(6)
    covered = 0
    for _ in range(2000):
        y = 2 * x + 1 + rng.normal(0, 0.1, len(x))
        band = prediction_interval(x, y, 0.05)  # outside the data, where the band is widest
        covered += band.low <= 2 * 0.05 + 1 + rng.normal(0, 0.1) <= band.high
    assert 0.93 < covered / 2000 < 0.97
