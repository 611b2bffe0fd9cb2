"""Intervals and verdicts: how the report turns measurements into judged claims.

Every number the report judges is an *effect*: a difference between two accuracies (or an
accuracy minus chance), with a 95% interval.
- Over seeds (n >= 2): the mean and Student's t interval of the per-seed effects. When the
  effect compares two models of the same seed, the seeds pair them.
- One seed: an interval over test images. A single accuracy gets the Wilson score interval;
  a difference of two models on the same images gets the normal interval of the per-image
  differences (paired, like McNemar's test).
- A correlation (Figure 3) gets Fisher's z interval.
- Seeds and test images together: a two-level bootstrap (`two_level_replicates`) redraws seeds,
  then test images within each drawn seed, the same draws for every model (so differences and
  ratios are paired by seed and image); percentile intervals, generator seed fixed (BOOT_SEED).
- Figure 3 over k architecture means: Spearman's rho with an exact permutation p-value (all k!
  orderings, k <= 8), the OLS slope with its t interval, and leave-one-architecture-out.
- A family of judged parts: one-sided p-values (`t_test_p` over seeds, `bootstrap_p` from
  replicates) for "effect > margin", and Holm's step-down over them (`holm`).

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


# --------------------------------------------------------------------------- two-level bootstrap

N_BOOT = 2000
BOOT_SEED = 0  # the generator seed of every bootstrap: the same data give the same interval


def _generators(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Two independent streams from one seed: seed draws, then image draws. Seeds are drawn from
    their own stream so a two-level bootstrap picks exactly the seeds a seed-level one picks."""
    seeds_ss, images_ss = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(seeds_ss), np.random.default_rng(images_ss)


def _per_image(values) -> np.ndarray:
    """values as float [M, S, N]: M models (or one [S, N] array), S seeds, N test images."""
    v = np.asarray(values, dtype=float)
    v = v[None] if v.ndim == 2 else v
    if v.ndim != 3 or v.shape[1] < 1 or v.shape[2] < 1:
        raise ValueError(f"per-image outcomes need shape [seeds, images] or [models, seeds, images], got {v.shape}")
    return v


def two_level_replicates(values, n_boot: int = N_BOOT, seed: int = BOOT_SEED, chunk: int = 100) -> np.ndarray:
    """Bootstrap replicates [n_boot, M] of each model's mean accuracy, resampling at two levels.

    values: per-image outcomes (0/1 or any number), [S, N] or [M, S, N] for M models evaluated
    on the same N test images in each of S seeds. A replicate draws S seeds with replacement,
    then, within each drawn seed, N image indices with replacement, and averages. The M models
    share every draw, so replicates of differences and ratios across models are paired by seed
    and by image. (Davison & Hinkley 1997, sec. 3.8: resampling both stages of a two-stage
    design; here the images are the same set in every seed, redrawn independently per drawn seed.)
    """
    v = _per_image(values)
    m, s, n = v.shape
    seed_rng, image_rng = _generators(seed)
    picked_seeds = seed_rng.integers(0, s, size=(n_boot, s))
    out = np.empty((n_boot, m))
    for start in range(0, n_boot, chunk):  # chunks bound the [chunk, S, N] index array
        seeds = picked_seeds[start:start + chunk]
        images = image_rng.integers(0, n, size=(len(seeds), s, n), dtype=np.int32)  # int32: half the draw time
        drawn = v[:, seeds[:, :, None], images]  # [M, chunk, S, N]
        out[start:start + chunk] = drawn.mean(axis=(2, 3)).T
    return out


def seed_replicates(per_seed, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> np.ndarray:
    """Bootstrap replicates [n_boot] of the mean of per-seed values [S], resampling seeds only
    (the seed level of two_level_replicates, drawn from the same stream)."""
    v = np.asarray(per_seed, dtype=float)
    picked = _generators(seed)[0].integers(0, len(v), size=(n_boot, len(v)))
    return v[picked].mean(axis=1)


def percentile_interval(replicates, estimate: float, method: str, n: int, level: float = LEVEL) -> Interval:
    """The percentile interval of bootstrap replicates (Efron & Tibshirani 1993, ch. 13)."""
    low, high = np.quantile(np.asarray(replicates, dtype=float), [0.5 - level / 2, 0.5 + level / 2])
    return Interval(float(estimate), float(low), float(high), n, method)


def _two_level_method(s: int, n: int) -> str:
    return f"{s} seeds x {n} test images, two-level bootstrap (percentile)"


def bootstrap_mean(correct, n_boot: int = N_BOOT, seed: int = BOOT_SEED, level: float = LEVEL) -> Interval:
    """Mean accuracy of per-image correctness [S, N] (bool), with its two-level bootstrap interval."""
    v = _per_image(correct)[0]
    reps = two_level_replicates(v, n_boot, seed)[:, 0]
    return percentile_interval(reps, v.mean(), _two_level_method(*v.shape), v.shape[0], level)


def bootstrap_paired_difference(a, b, n_boot: int = N_BOOT, seed: int = BOOT_SEED, level: float = LEVEL) -> Interval:
    """mean(a) - mean(b) for two models' per-image correctness [S, N] on the same images of the
    same seeds, with the paired two-level bootstrap interval (the same draws for both)."""
    v = _per_image(np.stack([np.asarray(a, dtype=float), np.asarray(b, dtype=float)]))
    reps = two_level_replicates(v, n_boot, seed)
    return percentile_interval(reps[:, 0] - reps[:, 1], v[0].mean() - v[1].mean(), _two_level_method(*v.shape[1:]),
                               v.shape[1], level)


# --------------------------------------------------------------------------- p-values and Holm

def t_test_p(values, margin: float, direction: str = "above") -> float:
    """One-sided p-value of Student's t test over per-seed values [S] (S >= 2) for the rule
    "mean > margin" (direction "above") or "mean < margin" ("below"). With the t interval of
    mean_interval at level L, p < (1 - L) / 2 exactly when the interval lies on the claimed side."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        raise ValueError("a t test needs at least 2 values")
    se = v.std(ddof=1) / math.sqrt(len(v))
    if se == 0:  # no spread: the rule is met or not, with certainty
        met = v.mean() > margin if direction == "above" else v.mean() < margin
        return 0.0 if met else 1.0
    t = (v.mean() - margin) / se
    return float(sps.t.sf(t, len(v) - 1) if direction == "above" else sps.t.cdf(t, len(v) - 1))


def p_from_t_interval(interval: Interval, margin: float, direction: str = "above", dof: int | None = None,
                      level: float = LEVEL) -> float:
    """One-sided p for "effect > margin" (or "< margin") recovered from a symmetric t interval:
    se = half-width / t(level, dof), t = (estimate - margin) / se. dof: n - 1 for mean_interval
    (the default), n - 2 for ols_slope. Equals t_test_p on the values behind a mean_interval."""
    dof = interval.n - 1 if dof is None else dof
    half = (interval.high - interval.low) / 2
    if half == 0:
        met = interval.estimate > margin if direction == "above" else interval.estimate < margin
        return 0.0 if met else 1.0
    t = (interval.estimate - margin) / (half / sps.t.ppf(0.5 + level / 2, dof))
    return float(sps.t.sf(t, dof) if direction == "above" else sps.t.cdf(t, dof))


def bootstrap_p(replicates, margin: float, direction: str = "above") -> float:
    """One-sided bootstrap p-value for "effect > margin" ("above") or "< margin" ("below"): the
    share of replicates on the wrong side of the margin, counting ties (the percentile method's
    dual: p < (1 - L) / 2 when the level-L percentile interval lies wholly on the claimed side).
    p = 0 means no replicate fell on the wrong side: p < 1 / n_boot."""
    r = np.asarray(replicates, dtype=float)
    wrong = r <= margin if direction == "above" else r >= margin
    return float(wrong.mean())


def holm(pvalues, alpha: float = 0.05) -> tuple[list[float], list[bool]]:
    """Holm's step-down (Holm 1979) over a family of p-values: (adjusted p-values, rejected).

    Sort p ascending; the i-th smallest (i = 0..m-1) is adjusted to max over j <= i of
    min(1, (m - j) p_(j)); a hypothesis is rejected when its adjusted p <= alpha. This controls
    the family-wise error rate at alpha under any dependence between the tests.
    """
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted_sorted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    adjusted = np.empty(m)
    adjusted[order] = adjusted_sorted
    return adjusted.tolist(), (adjusted <= alpha).tolist()


# --------------------------------------------------------------------------- trends over architectures

MAX_EXACT_K = 8  # 8! = 40,320 permutations


def spearman_rho(x, y) -> float:
    """Spearman's rank correlation: Pearson's r of the ranks (ties get their average rank)."""
    rx, ry = sps.rankdata(x), sps.rankdata(y)
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def spearman_exact_test(x, y) -> tuple[float, float]:
    """(rho, one-sided p) for a positive monotone trend over k points (3 <= k <= 8), by
    enumerating all k! orderings of y against x: p is the share of orderings whose rho is at
    least the observed one (the observed ordering included). A perfectly monotone k = 6 gives
    1/720; k = 3 can give no p below 1/6."""
    import itertools

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    k = len(x)
    if len(y) != k or not 3 <= k <= MAX_EXACT_K:
        raise ValueError(f"the exact test needs 3 to {MAX_EXACT_K} paired points, got {len(x)} and {len(y)}")
    rx, ry = sps.rankdata(x), sps.rankdata(y)
    rho = spearman_rho(x, y)
    if math.isnan(rho):
        return rho, 1.0
    # rho is affine in sum(rx * ry_permuted) for fixed rank sets, so compare that sum.
    observed = float(rx @ ry)
    perms = np.array(list(itertools.permutations(ry)))
    return rho, float(np.mean(perms @ rx >= observed - 1e-9))


def ols_slope(x, y, level: float = LEVEL) -> Interval:
    """Least-squares slope of y on x with its t interval (n - 2 degrees of freedom, n >= 3)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0:
        raise ValueError("a slope interval needs at least 3 points with distinct x")
    sxx = float(((x - x.mean()) ** 2).sum())
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / sxx)
    residuals = y - y.mean() - slope * (x - x.mean())
    se = math.sqrt(float((residuals ** 2).sum()) / (len(x) - 2) / sxx)
    half = sps.t.ppf(0.5 + level / 2, len(x) - 2) * se
    return Interval(slope, slope - half, slope + half, len(x), f"{len(x)} points, OLS slope, t interval")


def prediction_interval(x, y, x0: float, level: float = LEVEL) -> Interval:
    """The OLS line's prediction at x0 with the t prediction interval for one new point:
    fit +- t(level, n - 2) * s * sqrt(1 + 1/n + (x0 - mean x)^2 / Sxx), s the residual sd."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    slope = ols_slope(x, y, level).estimate
    fit = float(y.mean() + slope * (x0 - x.mean()))
    residuals = y - y.mean() - slope * (x - x.mean())
    s = math.sqrt(float((residuals ** 2).sum()) / (len(x) - 2))
    se = s * math.sqrt(1 + 1 / len(x) + (x0 - x.mean()) ** 2 / float(((x - x.mean()) ** 2).sum()))
    half = sps.t.ppf(0.5 + level / 2, len(x) - 2) * se
    return Interval(fit, fit - half, fit + half, len(x), f"OLS over {len(x)} points, t prediction interval")


def leave_one_out(x, y, names) -> list[dict]:
    """For each point (an architecture), rho and the OLS slope of the others: does the trend
    rest on one architecture? Needs at least 4 points (3 remain)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 4:
        raise ValueError("leave-one-out needs at least 4 points")
    out = []
    for i, name in enumerate(names):
        keep = np.arange(len(x)) != i
        out.append({"dropped": name, "rho": spearman_rho(x[keep], y[keep]),
                    "slope": ols_slope(x[keep], y[keep]).estimate})
    return out
