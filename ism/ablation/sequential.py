"""Adaptive seeds that keep the statistics honest: a group-sequential rule for paired comparisons over seeds.

A comparison is a variant against its baseline on one metric at one step count, paired by seed: d_s = log(b_s / a_s)
for a strictly positive metric (FID: the ratio's interval), b_s - a_s otherwise. The rule (stated in every report):

- Seeds come in pre-set looks (LOOKS: 2, 3, 4 and 6 seeds per arm). Decisions are made only at a look, never in
  between, and never after the last look: the maximum is fixed before any seed runs.
- At each look the paired t-interval of the mean difference is taken at level 1 - alpha / len(looks) (Bonferroni's
  split of alpha over the looks). The comparison is decided when that interval excludes the threshold (0: no
  difference; log(r) for a ratio threshold r), and then gets no more seeds.
- By the union bound, on a null effect the chance of a false decision at any look is at most alpha, however the
  looks depend on each other and whenever the seeds stop (the budget, a per-arm maximum): stopping early only
  removes looks. A Pocock boundary (one level for every look, tuned by simulation to spend alpha exactly) would be
  tighter; Bonferroni needs no tuning and holds for any number of looks actually taken. tests/test_sequential.py
  measures the false-decision rate by simulation, with its Monte-Carlo error.
- Undecided comparisons receive seeds in a deterministic order: the nearest to a decision first (the smallest ratio of
  the interval's half-width to the distance of its mean from the threshold), then by name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

LOOKS = (2, 3, 4, 6)  # seeds per arm at which a comparison may be decided; the last is the fixed maximum
ALPHA = 0.05  # the family-wise false-decision rate per comparison, split over the looks


@dataclass(frozen=True)
class Rule:
    """The stopping rule: looks (seeds per arm, increasing, >= 2) and the error rate alpha split over them."""
    looks: tuple[int, ...] = LOOKS
    alpha: float = ALPHA

    def __post_init__(self):
        if not self.looks or list(self.looks) != sorted(set(self.looks)) or self.looks[0] < 2:
            raise ValueError(f"Rule.looks: increasing seed counts >= 2, got {self.looks}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"Rule.alpha: between 0 and 1, got {self.alpha}")

    @property
    def level(self) -> float:
        """Confidence level of each look's interval: 1 - alpha / looks."""
        return 1 - self.alpha / len(self.looks)

    @property
    def max_seeds(self) -> int:
        return self.looks[-1]

    def next_look(self, n: int) -> int | None:
        """The first look above n seeds, None after the last."""
        return next((k for k in self.looks if k > n), None)

    def describe(self) -> str:
        return (f"decisions only at {', '.join(map(str, self.looks))} seeds per arm (at most {self.max_seeds}); "
                f"paired t-intervals at {100 * self.level:.2f} % each (alpha {self.alpha:g} split over "
                f"{len(self.looks)} looks, Bonferroni): at most {100 * self.alpha:g} % false decisions on a null effect")


@dataclass(frozen=True)
class Look:
    """One look at a comparison: seeds, mean difference, its interval at the rule's level, decided or not."""
    seeds: int
    mean: float
    lo: float
    hi: float
    decided: bool


def paired_interval(d: Sequence[float], level: float) -> tuple[float, float, float]:
    """(mean, lo, hi): the two-sided t-interval of the mean of paired differences d (NaN bounds below 2 values)."""
    import numpy as np  # here, not at import: `ism ablate --help` loads this module
    x = np.asarray(d, dtype=float)
    m = float(x.mean()) if len(x) else math.nan
    if len(x) < 2:
        return m, math.nan, math.nan
    from scipy import stats
    half = float(stats.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return m, m - half, m + half


def differences(a: Mapping[int, float], b: Mapping[int, float], log: bool) -> list[float]:
    """Paired differences over the seeds both arms hold, in seed order: log(b/a) or b - a."""
    seeds = sorted(s for s in set(a) & set(b) if math.isfinite(a[s]) and math.isfinite(b[s]))
    return [math.log(b[s] / a[s]) if log else b[s] - a[s] for s in seeds]


@dataclass
class Comparison:
    """A variant against its baseline on one metric key; `log`: compare ratios (a metric > 0, like FID)."""
    name: str
    baseline: str
    variant: str
    metric: str
    log: bool = True
    threshold: float = 0.0  # on the difference scale (log of a ratio threshold when log)
    looks: list[Look] = field(default_factory=list)

    def assess(self, a: Mapping[int, float], b: Mapping[int, float], rule: Rule) -> Look | None:
        """Take the looks the paired seeds now allow (in order, stopping at a decision); the latest look or None."""
        d = differences(a, b, self.log)
        for k in rule.looks:
            if self.decided or k > len(d) or any(lk.seeds == k for lk in self.looks):
                continue
            m, lo, hi = paired_interval(d[:k], rule.level)  # the first k seeds: the look as it was pre-set
            self.looks.append(Look(k, m, lo, hi, bool(lo > self.threshold or hi < self.threshold)))
        return self.looks[-1] if self.looks else None

    @property
    def decided(self) -> bool:
        return bool(self.looks) and self.looks[-1].decided

    def urgency(self) -> float:
        """Half-width over the distance of the mean from the threshold at the latest look: lower is nearer a
        decision (inf without a look)."""
        if not self.looks:
            return math.inf
        lk = self.looks[-1]
        gap = abs(lk.mean - self.threshold)
        return (lk.hi - lk.lo) / 2 / gap if gap > 0 else math.inf

    def status(self, rule: Rule, budget_left: bool = True) -> str:
        """Why it stopped (or that it goes on): decided, maximum reached, budget exhausted, or undecided."""
        if self.decided:
            return f"decided at {self.looks[-1].seeds} seeds"
        if self.looks and self.looks[-1].seeds >= rule.max_seeds:
            return f"undecided at the maximum of {rule.max_seeds} seeds"
        return "undecided" if budget_left else "budget exhausted"


def next_requests(comparisons: Sequence[Comparison], seeds: Mapping[str, int], rule: Rule) -> list[tuple[str, int]]:
    """The (arm, seeds wanted) requests of the undecided comparisons, most informative first: each asks both of its
    arms to reach its next look; an arm asked by several keeps the most urgent comparison's request."""
    todo = [c for c in comparisons if not c.decided]
    todo.sort(key=lambda c: (c.urgency(), c.name))
    out: list[tuple[str, int]] = []
    asked: set[str] = set()
    for c in todo:
        n = min(seeds.get(c.baseline, 0), seeds.get(c.variant, 0))
        k = rule.next_look(n) if n >= rule.looks[0] else rule.looks[0]
        if k is None:
            continue
        for arm in (c.baseline, c.variant):
            if arm not in asked and seeds.get(arm, 0) < k:
                out.append((arm, k))
                asked.add(arm)
    return out


def simulate_false_decisions(rule: Rule, effect: float = 0.0, sd: float = 1.0, reps: int = 20000, seed: int = 0,
                             df: float | None = None) -> tuple[float, float]:
    """(share of runs decided, its Monte-Carlo standard error) for paired differences with mean `effect` and spread
    `sd` (normal; Student t with `df` degrees of freedom, scaled to sd, when df is given), seeds added look by look up
    to the rule's maximum. With effect 0 every decision is false."""
    import numpy as np
    from scipy import stats
    g = np.random.default_rng(seed)
    n = rule.max_seeds
    z = g.standard_t(df, (reps, n)) * math.sqrt((df - 2) / df) if df else g.standard_normal((reps, n))
    d = effect + sd * z
    decided = np.zeros(reps, dtype=bool)
    for k in rule.looks:
        x = d[:, :k]
        half = stats.t.ppf((1 + rule.level) / 2, k - 1) * x.std(axis=1, ddof=1) / math.sqrt(k)
        m = x.mean(axis=1)
        decided |= (m - half > 0) | (m + half < 0)
    p = float(decided.mean())
    return p, math.sqrt(p * (1 - p) / reps)
