"""Intervals and verdicts: how the report turns measurements into judged claims.

Every number the report judges is an *effect*: a difference between two accuracies (or an
accuracy minus chance), with a 95% interval.
- Over seeds (n >= 2): the mean and Student's t interval of the per-seed effects. When the
  effect compares two models of the same seed, the seeds pair them.
- One seed: an interval over test images. A single accuracy gets the Wilson score interval;
  a difference of two models on the same images gets the normal interval of the per-image
  differences (paired, like McNemar's test).
- A correlation (Figure 3) gets Fisher's z interval.

A claim states which side of a margin the effect must lie on. The verdict follows from the
interval alone (`verdict`): "holds" if the whole interval lies on the claimed side of the
margin, "does not hold" if it lies wholly on the other side, "inconclusive" otherwise. For a
claim of closeness (|effect| <= margin) "holds" needs the interval inside [-margin, margin]
and "does not hold" needs it wholly outside.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

LEVEL = 0.95
HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
DIRECTIONS = ("above", "below", "within")


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    n: int  # seeds, images or points behind it
    method: str  # how it was computed, as the report states it

    def to_dict(self) -> dict:
        return asdict(self)


def mean_interval(values, level: float = LEVEL) -> Interval:
    """Mean of per-seed values with Student's t interval (n >= 2)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        raise ValueError("a t interval needs at least 2 values")
    half = sps.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return Interval(float(v.mean()), float(v.mean() - half), float(v.mean() + half), len(v),
                    f"mean of {len(v)} seeds, t interval")


def wilson_interval(successes: int, n: int, level: float = LEVEL) -> Interval:
    """A proportion over n independent trials (test images) with the Wilson score interval."""
    if n < 1:
        raise ValueError("a proportion needs at least one trial")
    z = sps.norm.ppf(0.5 + level / 2)
    p = successes / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Interval(p, center - half, center + half, n, f"{n} test images, Wilson interval")


def paired_difference_interval(a, b, level: float = LEVEL) -> Interval:
    """mean(a - b) for per-image outcomes (0/1) of two models on the same images, with the
    normal interval of the per-image differences."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(d) < 2:
        raise ValueError("a paired interval needs at least 2 images")
    z = sps.norm.ppf(0.5 + level / 2)
    half = z * d.std(ddof=1) / math.sqrt(len(d))
    return Interval(float(d.mean()), float(d.mean() - half), float(d.mean() + half), len(d),
                    f"{len(d)} test images, paired normal interval")


def correlation_interval(x, y, level: float = LEVEL) -> Interval:
    """Pearson's r with Fisher's z interval (needs n >= 4 points)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 4:
        raise ValueError("Fisher's interval needs at least 4 points")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return Interval(float("nan"), -1.0, 1.0, len(x), f"{len(x)} points: constant, no correlation")
    r = float(np.clip(np.corrcoef(x, y)[0, 1], -0.999999, 0.999999))
    z, half = math.atanh(r), sps.norm.ppf(0.5 + level / 2) / math.sqrt(len(x) - 3)
    return Interval(r, math.tanh(z - half), math.tanh(z + half), len(x), f"{len(x)} points, Fisher z interval")


def shift(interval: Interval, by: float) -> Interval:
    """The interval of (effect - by): an accuracy minus chance, say."""
    return Interval(interval.estimate - by, interval.low - by, interval.high - by, interval.n, interval.method)


def verdict(interval: Interval, direction: str, margin: float) -> str:
    """The stated rule (module docstring): the interval against the margin."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    low, high = interval.low, interval.high
    if math.isnan(low) or math.isnan(high):
        return INCONCLUSIVE
    if direction == "above":
        return HOLDS if low > margin else FAILS if high < margin else INCONCLUSIVE
    if direction == "below":
        return HOLDS if high < margin else FAILS if low > margin else INCONCLUSIVE
    if -margin <= low and high <= margin:
        return HOLDS
    return FAILS if high < -margin or low > margin else INCONCLUSIVE


def combine(verdicts: list[str]) -> str:
    """A claim made of parts holds if every part holds, fails if any part fails."""
    if any(v == FAILS for v in verdicts):
        return FAILS
    return HOLDS if verdicts and all(v == HOLDS for v in verdicts) else INCONCLUSIVE
