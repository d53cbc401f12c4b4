"""Adaptive seeds, live: a sweep runs in rounds at the rule's looks, and a budget is spent where a comparison the spec
cares about is still undecided (the rule and its error rate: ism.ablation.sequential).

- The headline pair comes first: the baseline and the full method (the variant with the most iSM components) take
  their rounds alone, at the rule's looks, until their comparison is decided or at its last look. On a machine where
  a trial costs 7 minutes of the budget, a round over every config (26 trials on components) would spend the whole
  hour before the pair's second look, and the comparison the report leads with would stay undecided.
- Then a round gives every other config its first `rule.looks[0]` seeds (2: the least a paired interval needs),
  seed-major: a budget too small for the round still covers every config with a first seed.
- After each round every comparison (each variant against the baseline, FID as a ratio at 1 and 4 steps) is assessed
  on the finished seeds. The undecided ones ask both their arms for the next look (`next_requests`: nearest to a
  decision first), and the next round runs those trials, in that order.
- It stops when every comparison is decided, has reached the rule's last look or the plan's last seed, or the budget
  cannot pay for the next trial (the cost model scaled by this machine's measured trial times).

Decisions read only stored results through the pre-set looks, so rerunning the command takes the same decisions and
runs nothing twice. Every round is one Ray Tune grid in the job's Ray session; on a cluster a round's trials run as
resources free up. The plan's record (plan.json, `adaptive`) says per trial left out why it was not run.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from ism.ablation.budget import Budget
from ism.ablation.plan import Plan, Trial, components, finished_trials, teacher_of
from ism.ablation.sequential import Comparison, Rule, next_requests
from ism.conf import metric_keys
from ism.conf.profiles import concurrency, estimate_s
from ism.system import store

METRIC = "fid"
STEPS = (1, 4)  # the comparisons a spec decides: every variant against the baseline at 1 and 4 sampling steps

NOT_RUN_DECIDED = "not run: the comparisons it serves were decided (or at their last look) before it"
NOT_RUN_BUDGET = "not run: budget exhausted"


def baseline_of(variants: Sequence[str], trials: Iterable[tuple[Sequence[str], Iterable[str]]]) -> str:
    """The variant every delta is taken against: the first whose trial differs from the base in no key but the seed,
    else one named sm / baseline / base, else the first. trials: (variants, changed keys) per trial."""
    for names, keys in trials:
        if not {k for k in keys if k != "run.seed"}:
            return list(names)[0]
    for name in ("sm", "baseline", "base"):
        if name in variants:
            return name
    return variants[0] if variants else ""


def plan_baseline(p: Plan) -> str:
    return baseline_of(p.variants, ((t.variants, t.diff) for t in p.trials))


def plan_full_method(p: Plan) -> str | None:
    """The variant with the most iSM components on, if more than the baseline's (first in spec order): the report's
    headline compares it with the baseline (ism.report.fairness.full_method reads the same tags back)."""
    count = {v: sum(components(t.cfg).values()) for t in p.trials for v in t.variants}
    base = plan_baseline(p)
    cands = [v for v in p.variants if v != base and v in count]
    if not cands:
        return None
    best = max(cands, key=lambda v: (count[v], -p.variants.index(v)))
    return best if count[best] > count.get(base, 0) else None


@dataclass
class Clock:
    """A job's budget as it is spent: wall seconds since `started`, or trials run, against the Budget (None: none)."""
    budget: Budget | None
    started: float = field(default_factory=time.monotonic)
    trials_run: int = 0

    def left(self) -> float:
        """What is left in the budget's units (inf without one)."""
        if self.budget is None:
            return math.inf
        if self.budget.kind == "trials":
            return self.budget.amount - self.trials_run
        spent = time.monotonic() - self.started
        return self.budget.amount - (spent * _cores() if self.budget.kind == "cpu_s" else spent)

    def fit(self, trials: Sequence[Trial], profile: str, resources: Mapping[str, float], scale: float) -> list[Trial]:
        """The longest prefix of `trials` the budget still pays for (costs: the cost model x `scale`)."""
        left = self.left()
        if math.isinf(left):
            return list(trials)
        if self.budget.kind == "trials":
            return list(trials)[:max(0, int(left))]
        k = concurrency(profile, resources)
        out, cost, longest = [], 0.0, 0.0
        for t in trials:
            c = estimate_s(t.cfg, profile) * scale
            cost += c if self.budget.kind == "cpu_s" else c / k
            longest = max(longest, c)
            # wall: a pass lasts at least its longest trial (a lone trial does not run k times faster; seen on
            # 2026-12-07, when 8 min of budget admitted a 13 min trial)
            if (cost if self.budget.kind == "cpu_s" else max(cost, longest)) > left:
                break
            out.append(t)
        return out


def _cores() -> int:
    import os
    return os.cpu_count() or 1


def results(p: Plan, storage: Path, keys: Iterable[str], want: Mapping[str, int] | None = None
            ) -> dict[str, dict[str, dict[int, float]]]:
    """{key: {variant: {seed: value}}} from the summary.json of the plan's finished trials; with `want`, only each
    variant's first want[variant] seeds (a round decides on what it asked for, so a rerun replays the same rounds)."""
    out: dict[str, dict[str, dict[int, float]]] = {k: {} for k in keys}
    done = finished_trials(p, storage)
    rank = _rank(p)
    for t in p.trials:
        if t.run_id not in done:
            continue
        metrics = store.read_json(store.trial_dir(storage, t.run_id) / "summary.json").get("metrics") or {}
        for k in out:
            v = metrics.get(k)
            if isinstance(v, (int, float)) and math.isfinite(v) and v > 0:
                for name in t.variants:
                    if want is None or rank[t.run_id] < want.get(name, 0):
                        out[k].setdefault(name, {})[t.seed] = float(v)
    return out


def comparisons(p: Plan, storage: Path, rule: Rule, steps: Sequence[int] = STEPS,
                want: Mapping[str, int] | None = None) -> list[Comparison]:
    """Every variant against the baseline at `steps`, assessed at the looks its finished seeds allow (with `want`:
    only the seeds each variant was given so far)."""
    base = plan_baseline(p)
    keys = {s: metric_keys.key(METRIC, s) for s in steps}
    vals = results(p, storage, keys.values(), want)
    out = []
    for s, key in keys.items():
        for v in p.variants:
            if v == base:
                continue
            c = Comparison(f"{v}@{s}", base, v, key, log=True)
            c.assess(vals[key].get(base, {}), vals[key].get(v, {}), rule)
            out.append(c)
    return out


def _rank(p: Plan) -> dict[str, int]:
    """Each trial's seed rank among the plan's seeds (0 = first seed)."""
    order = sorted(p.seeds)
    return {t.run_id: order.index(t.seed) for t in p.trials}


def wanted(p: Plan, want: Mapping[str, int]) -> list[Trial]:
    """The trials with fewer than want[variant] seeds before them for any of their variants, plus their reflow
    teachers; the headline pair (baseline, full method) first at every wanted seed, then seed-major in the plan's
    order, baseline first."""
    rank = _rank(p)
    ids = {t.run_id for t in p.trials if any(rank[t.run_id] < want.get(v, 0) for v in t.variants)}
    by_id = {t.run_id: t for t in p.trials}
    todo = list(ids)
    while todo:  # a student's teacher runs in the same round (phases() orders them)
        tid = teacher_of(by_id[todo.pop()], by_id)
        if tid and tid not in ids:
            ids.add(tid)
            todo.append(tid)
    return launch_order(p, [t for t in p.trials if t.run_id in ids])


def headline_trials(p: Plan) -> tuple[list[Trial], str]:
    """The trials a budgeted spec runs first (the headline pair's; every trial without a full method), and who."""
    full = plan_full_method(p)
    if full is None:
        return list(p.trials), "every config"
    base = plan_baseline(p)
    return [t for t in p.trials if {base, full} & set(t.variants)], f"the baseline `{base}` and the full method `{full}`"


def launch_order(p: Plan, trials: Iterable[Trial]) -> list[Trial]:
    """Trials in the order a pass launches them: the headline pair (baseline, full method) at every seed, then
    seed-major in the plan's order, baseline first (an interrupted pass has decided what the report leads with)."""
    rank = _rank(p)
    base = plan_baseline(p)
    full = plan_full_method(p)
    pair = {base, full} if full else set()  # no full method: no headline pair, seed-major from the baseline
    return sorted(trials, key=lambda t: (pair.isdisjoint(t.variants), rank[t.run_id], base not in t.variants))


@dataclass
class Outcome:
    """What the adaptive sweep did: status (0 / 1 / 130), rounds (the trials each added), why it stopped."""
    rc: int
    rounds: list[dict]
    stopped: str
    exhausted: bool


# Over 60 lines on purpose: one loop whose order (headline rounds, passes under the budget, looks, the closing record)
# is what makes a rerun take the same decisions; split, each piece would need the whole loop state.
def run(p: Plan, storage: Path, clock: Clock, run_round: Callable[[Plan], int], rule: Rule | None = None,
        scale: float | Callable[[], float] = 1.0, say: Callable[[str], None] = lambda m: None,
        record: Callable[[Plan], bool] | None = None, calibrated: bool | Callable[[], bool] = True) -> Outcome:
    """Run a plan in rounds (module doc); run_round(plan with its scope) runs one pass and returns its status.

    A round the budget cannot pay for at once runs in passes: the trials it pays for now, then, with the cost model
    rescaled by the trials just timed (`scale`: a number, or a function read before each pass), as many of the rest
    as it still pays for; the budget is exhausted only when it pays for none. Until trials have been timed on this
    machine (`calibrated`: False, or a function), a pass is one wave (as many trials as run at once): a machine
    slower than the cost model would otherwise overrun the budget by a whole pass (1.6x on 2026-12-07's AMD EPYC,
    docs/results.md "Wall time of the commands"). Decisions wait for a whole round.
    Every pass's plan carries the record so far, so an interrupted job leaves a truthful plan.json. At the end the
    record goes to the sweep without running anything (`record(plan)`: False when the sweep has no parent run yet,
    as for a spec the budget never reached; then one empty pass opens it)."""
    rule = rule or Rule()
    n_seeds = len(p.seeds)
    first = min(rule.looks[0], n_seeds)
    full = plan_full_method(p)
    head = {plan_baseline(p), full} if full else set()  # the headline pair's looks come first (module doc)
    want = {v: first if (not head or v in head) else 0 for v in p.variants}
    rounds: list[dict] = []
    attempted: set[str] = set()
    carried: set[str] = set()   # run ids some pass of this run logged to the sweep
    rc, exhausted, stopped = 0, False, ""
    while True:
        done = finished_trials(p, storage)
        todo = wanted(p, want)
        new = [t for t in todo if t.run_id not in done]
        if not rounds or rounds[-1]["seeds"] != {v: want[v] for v in p.variants}:
            rounds.append({"seeds": {v: want[v] for v in p.variants}, "ran": [], "left_undone": []})
        if new:  # a pass of this round
            fit = clock.fit(new, p.profile, p.resources, scale() if callable(scale) else scale)
            wave = (clock.budget is not None and clock.budget.kind != "trials"
                    and not (calibrated() if callable(calibrated) else calibrated))
            if wave:
                fit = fit[:concurrency(p.profile, p.resources)]  # one wave, then the measured rate sizes the passes
            rounds[-1]["left_undone"] = [t.label for t in new[len(fit):]]
            if not fit:
                exhausted, stopped = True, "budget exhausted"
                say(f"round {len(rounds)}: the budget pays for none of its {len(new)} trial(s) left")
                break
            rounds[-1]["ran"] += [t.label for t in fit]
            attempted |= {t.run_id for t in fit}
            # Every finished trial of the plan is free (another sweep or spec ran it): each pass carries all of them,
            # so the sweep and its report hold every result the store has. Decisions still read only the seeds the
            # rule asked for (_seeds_have caps them at `want`).
            scope = frozenset(done) | {t.run_id for t in fit}
            say(f"round {len(rounds)}: {len(fit)} trial(s) to run" + (
                "" if len(fit) == len(new) else f", {len(new) - len(fit)} wait for the budget"
                + (" (sized once these are timed on this machine)" if wave else "")))
            carried |= scope
            rc = run_round(_scoped(p, scope, rule, clock, rounds, False, ""))
            clock.trials_run += len(fit)
            if rc != 0:
                stopped = "interrupted" if rc == 130 else "trials failed"
                break
            continue  # the rest of the round, if the budget still pays for it
        comps = comparisons(p, storage, rule, want=want)
        heading = any(want[v] == 0 for v in p.variants)  # still the headline pair's rounds
        have = {v: min(n, want.get(v, 0)) for v, n in _seeds_have(p, storage).items()}
        grow = {arm: k for arm, k in next_requests([c for c in comps if not heading or c.variant == full], have, rule)
                if k <= n_seeds and k > want.get(arm, 0)}
        if not grow and heading:  # the headline is decided or at its last look: every other config's first seeds
            want.update({v: first for v in p.variants if want[v] == 0})
            continue
        if not grow:
            stopped = ("every comparison decided" if all(c.decided for c in comps) else
                       "undecided comparisons are at the rule's last look or the plan's last seed")
            break
        want.update(grow)
    finished = frozenset(finished_trials(p, storage))
    final = _scoped(p, finished | attempted, rule, clock, rounds, exhausted, stopped)  # a failed trial is not 'not run'
    # what ran and why the rest did not (plan.json, parent); a pass when a free finished trial is not in the sweep yet
    if rc != 130 and (finished - carried or record is None or not record(final)):
        run_round(dataclasses.replace(final, scope=finished))
    return Outcome(rc, rounds, stopped, exhausted)


def _seeds_have(p: Plan, storage: Path) -> dict[str, int]:
    """Per variant, how many of its seeds have finished."""
    done = finished_trials(p, storage)
    have: dict[str, int] = {}
    for t in p.trials:
        if t.run_id in done:
            for v in t.variants:
                have[v] = have.get(v, 0) + 1
    return have


def _scoped(p: Plan, scope: frozenset[str], rule: Rule, clock: Clock, rounds: list[dict], exhausted: bool,
            stopped: str) -> Plan:
    """The plan restricted to `scope`, carrying the adaptive record (plan.json's `adaptive`)."""
    not_run = {t.run_id: (NOT_RUN_BUDGET if exhausted else NOT_RUN_DECIDED) for t in p.trials if t.run_id not in scope}
    record = {"rule": rule.describe(), "looks": list(rule.looks), "alpha": rule.alpha,
              "budget": clock.budget.describe() if clock.budget else None, "rounds": rounds, "stopped": stopped,
              "exhausted": exhausted, "not_run": not_run}
    return dataclasses.replace(p, scope=scope, adaptive=record)
