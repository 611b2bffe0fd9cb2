"""Intervals and verdicts on made-up numbers, against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from advfeat.stats import (FAILS, HOLDS, INCONCLUSIVE, Interval, combine, correlation_interval, mean_interval,
                           paired_difference_interval, shift, verdict, wilson_interval)


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
