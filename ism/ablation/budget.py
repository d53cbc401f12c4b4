"""Budgets for ablation sweeps: parsing (`--budget 60m`, a spec's `budget:` key) and what a budget buys under the
adaptive-seed rule (ism.ablation.sequential), for the dry run.

A budget is wall time (60m, 1.5h, 5400s), trials (40 trials), or CPU-hours (3 cpu-h). Its cost model is the profile's
(ism.conf.profiles.estimate_parts: training steps, sampling passes, start-up), the same the dry run prints; trials another
spec already ran, or that several specs share, cost nothing and are counted once.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from ism.errors import ConfigError
from ism.conf.profiles import concurrency, estimate_parts
from ism.ablation.sequential import Rule

UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0}
FORMS = "a wall time (90s, 60m, 1.5h), a trial count (40 trials) or CPU-hours (3 cpu-h)"


@dataclass(frozen=True)
class Budget:
    """How much a sweep may spend: `kind` wall_s | trials | cpu_s, and the amount in those units."""
    kind: str
    amount: float

    def describe(self) -> str:
        if self.kind == "trials":
            return f"{self.amount:g} trials"
        if self.kind == "cpu_s":
            return f"{self.amount / 3600:g} CPU-hours"
        return f"{self.amount / 60:g} min wall"


def parse(text: str | int | float, where: str = "--budget") -> Budget:
    """A Budget from text like '60m', '1.5h', '40 trials', '3 cpu-h'; a ConfigError naming `where` otherwise."""
    s = str(text).strip().lower()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z\- ]*)", s)
    unit = m.group(2).strip() if m else ""
    amount = float(m.group(1)) if m else math.nan
    if m and amount > 0:
        if unit in UNITS:
            return Budget("wall_s", amount * UNITS[unit])
        if unit in ("t", "trial", "trials") and amount == int(amount):
            return Budget("trials", amount)
        if unit in ("cpu-h", "cpuh", "cpu-hours", "cpu hours", "cpu-hour"):
            return Budget("cpu_s", amount * 3600)
    raise ConfigError(f"{where}: {text!r} is not a budget; give {FORMS}, a positive amount")


@dataclass(frozen=True)
class Look:
    """One look of the rule over a sweep: seeds per arm, the trials it adds, their cost, and the running totals."""
    seeds: int
    trials: int
    cost_s: float      # trial-seconds (CPU seconds on CPU profiles: one core per trial)
    wall_s: float      # at the profile's concurrency
    total_wall_s: float
    total_cost_s: float
    total_trials: int


def looks(trials: Sequence, profile: str, resources: Mapping[str, float], rule: Rule,
          done: Iterable[str] = (), reused: Iterable[str] = ()) -> list[Look]:
    """The cost of each look if every comparison stayed undecided (the most a budget can be asked for): the trials
    whose seed is among the first `look` seeds of their config. trials: the plan's (run_id, variants, seed, cfg);
    done: run ids already finished (free); reused: run ids that only evaluate an adopted training."""
    done, reused = set(done), set(reused)
    k = concurrency(profile, resources)
    share = resources.get("gpu") or resources.get("cpu", 1) or 1
    seeds_of: dict[tuple, list[int]] = {}
    for t in trials:
        seeds_of.setdefault(tuple(t.variants), []).append(t.seed)
    rank = {(tuple(t.variants), t.seed): sorted(seeds_of[tuple(t.variants)]).index(t.seed) for t in trials}
    out: list[Look] = []
    seen: set[str] = set()
    tw = tc = 0.0
    tn = 0
    for n in rule.looks:
        new = [t for t in trials if rank[(tuple(t.variants), t.seed)] < n and t.run_id not in seen]
        seen |= {t.run_id for t in new}
        cost = 0.0
        for t in new:
            if t.run_id in done:
                continue
            parts = estimate_parts(t.cfg, profile)
            cost += sum(parts[1:]) if t.run_id in reused else sum(parts)
        wall = cost / k
        tw, tc, tn = tw + wall, tc + cost * share, tn + sum(t.run_id not in done for t in new)
        out.append(Look(n, sum(t.run_id not in done for t in new), cost * share, wall, tw, tc, tn))
    return out


def affordable(ls: Sequence[Look], budget: Budget) -> int:
    """How many of the looks fit the budget if every comparison stayed undecided (0: not even the first)."""
    used = {"wall_s": lambda lk: lk.total_wall_s, "trials": lambda lk: lk.total_trials,
            "cpu_s": lambda lk: lk.total_cost_s}[budget.kind]
    return sum(1 for lk in ls if used(lk) <= budget.amount)


def describe(ls: Sequence[Look], budget: Budget | None, rule: Rule, seeds_available: int, partial: bool = False) -> str:
    """The dry run's budget section: each look's cost, and what the budget buys: the looks every config gets.
    partial: the part of a first look the budget pays for runs (a job's budget, or one spec's that covers the
    headline pair's first look; below that, one spec alone refuses)."""
    fmt = lambda s: f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"  # noqa: E731
    lines = [f"adaptive seeds: {rule.describe()}"]
    for lk in ls:
        if lk.seeds <= seeds_available:
            lines.append(f"  look at {lk.seeds} seeds: +{lk.trials} trials, ~{fmt(lk.wall_s)} wall "
                         f"(cumulative {lk.total_trials} trials, ~{fmt(lk.total_wall_s)} wall)")
    if seeds_available < rule.max_seeds:
        lines.append(f"  the plan lists {seeds_available} seeds per config: the looks beyond need more "
                     f"(--seeds 0,...,{rule.max_seeds - 1} or the spec's seeds)")
    if budget is not None:
        n = affordable([lk for lk in ls if lk.seeds <= seeds_available], budget)
        if n == 0:
            lines.append(f"budget {budget.describe()}: not enough for the first look ({rule.looks[0]} seeds per "
                         f"config, ~{fmt(ls[0].total_wall_s)} wall, {ls[0].total_trials} trials); "
                         + ("the trials it pays for run: the baseline and the full method first, at their looks "
                            "until their comparison is decided, then the other configs' first seeds; the rest are "
                            "reported as not run" if partial else "nothing would run"))
        else:
            lk = ls[n - 1]
            left = [k.seeds for k in ls[n:] if k.seeds <= seeds_available]
            lines.append(f"budget {budget.describe()}: buys the first {lk.seeds} seeds of every config "
                         f"({lk.total_trials} trials, ~{fmt(lk.total_wall_s)} wall)"
                         + (f"; left undone: the looks at {', '.join(map(str, left))} seeds" if left else
                            "; every listed seed"))
    return "\n".join(lines)
