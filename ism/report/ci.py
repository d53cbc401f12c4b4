"""Confidence intervals over seeds: t-intervals of means, and of differences (paired by seed, else Welch);
for strictly positive metrics (FID) the same on log values: geometric means and ratios, intervals that stay > 0."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean (or a difference of means) with its t-interval; lo/hi are NaN when n < 2."""
    mean: float
    lo: float
    hi: float
    n: int
    method: str = "t"
    df: float = math.nan

    @property
    def half(self) -> float:
        """Half-width of a symmetric interval (NaN when there is none)."""
        return (self.hi - self.lo) / 2

    @property
    def has_ci(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)

    def excludes(self, x: float = 0.0) -> bool:
        """True when the interval lies wholly above or below x."""
        return self.has_ci and (self.lo > x or self.hi < x)


def mean_ci(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean and two-sided t-interval: mean +- t_{(1+level)/2, n-1} * s / sqrt(n) (s with ddof=1)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    m = float(x.mean())
    if n < 2:
        return Interval(m, math.nan, math.nan, 1)
    half = float(stats.t.ppf((1 + level) / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Interval(m, m - half, m + half, n, "t", n - 1)


def delta_ci(a: Mapping[int, float], b: Mapping[int, float], level: float = LEVEL) -> Interval:
    """b - a over seeds: paired t-interval when both hold the same seeds (>= 2), else Welch's interval."""
    a = {k: v for k, v in a.items() if math.isfinite(v)}
    b = {k: v for k, v in b.items() if math.isfinite(v)}
    if not a or not b:
        return Interval(math.nan, math.nan, math.nan, 0, "none")
    if set(a) == set(b):
        seeds = sorted(a)
        d = mean_ci([b[s] - a[s] for s in seeds], level)
        return Interval(d.mean, d.lo, d.hi, d.n, "paired" if d.n >= 2 else "single seed", d.df)
    xa, xb = np.array(list(a.values())), np.array(list(b.values()))
    diff = float(xb.mean() - xa.mean())
    if len(xa) < 2 or len(xb) < 2:
        return Interval(diff, math.nan, math.nan, min(len(xa), len(xb)), "n<2")
    if np.ptp(xa) == 0 and np.ptp(xb) == 0:  # no spread at all: the t statistic is undefined, the interval degenerate
        return Interval(diff, diff, diff, min(len(xa), len(xb)), "Welch", math.nan)
    with warnings.catch_warnings():  # near-identical seeds: scipy warns about precision, the interval is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(xb, xa, equal_var=False)
        ci = res.confidence_interval(level)
    return Interval(diff, float(ci.low), float(ci.high), min(len(xa), len(xb)), "Welch", float(res.df))


# ------------------------------------------------------------------------------------- strictly positive metrics
def positive(values) -> bool:
    """True when there is at least one finite value and every finite value is > 0 (FID; not KID, which can be < 0)."""
    x = [float(v) for v in values if v is not None and math.isfinite(v)]
    return bool(x) and min(x) > 0


def log_mean_ci(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Geometric mean with the t-interval of log(values) back-transformed: [exp(lo), exp(hi)], asymmetric, always > 0.

    For a strictly positive metric (FID) a symmetric interval over few seeds runs below 0; on the log scale it cannot.
    Falls back to the arithmetic mean_ci when any value is <= 0 (method 't' instead of 'log-t').
    """
    x = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not positive(x):
        return mean_ci(x, level)
    if len(x) == 1:  # the value itself (exp(log x) may differ in the last bit), no interval
        return Interval(x[0], math.nan, math.nan, 1, "log-t")
    iv = mean_ci(np.log(x), level)
    return Interval(math.exp(iv.mean), math.exp(iv.lo), math.exp(iv.hi), iv.n, "log-t", iv.df)


def ratio_ci(a: Mapping[int, float], b: Mapping[int, float], level: float = LEVEL) -> Interval:
    """b / a (e.g. a variant's FID over the baseline's) with its interval: delta_ci on log values, back-transformed.

    Paired by seed (the mean of log(b_s / a_s)) when both hold the same seeds (>= 2), else Welch's interval on the logs;
    `mean` is the ratio of geometric means. Every value must be > 0 (ValueError otherwise: use delta_ci).
    """
    a = {k: float(v) for k, v in a.items() if math.isfinite(v)}
    b = {k: float(v) for k, v in b.items() if math.isfinite(v)}
    if (a and not positive(a.values())) or (b and not positive(b.values())):
        raise ValueError("ratio_ci needs values > 0; use delta_ci for a metric that can be <= 0")
    d = delta_ci({k: math.log(v) for k, v in a.items()}, {k: math.log(v) for k, v in b.items()}, level)
    return Interval(math.exp(d.mean), math.exp(d.lo), math.exp(d.hi), d.n, d.method, d.df)
