"""The adaptive-seed rule: its false-decision rate on null effects by simulation (with the Monte-Carlo error), that the
simulation would catch a rule that peeks at 5 % per look, decisions only at pre-set looks, deterministic order."""
import math

import numpy as np
import pytest

from ism.ablation.sequential import Comparison, Rule, next_requests, paired_interval, simulate_false_decisions

REPS = 40000  # Monte-Carlo error of a 5 % rate: ~0.11 percentage points


@pytest.mark.parametrize("df", [None, 3])  # normal differences, and heavy-tailed ones (Student t, 3 df)
def test_false_decisions_on_null_effects_stay_at_the_nominal_level(df):
    rule = Rule()
    rate, se = simulate_false_decisions(rule, effect=0.0, sd=0.3, reps=REPS, seed=1, df=df)
    print(f"false decisions on a null effect ({'normal' if df is None else f't{df}'}): {100 * rate:.2f} % "
          f"+- {100 * se:.2f} % (Monte-Carlo s.e., {REPS} runs); nominal {100 * rule.alpha:g} %")
    assert rate + 3 * se <= rule.alpha, (rate, se)
    assert se < 0.002


def test_the_simulation_catches_a_rule_that_peeks_at_five_percent_per_look():
    """The same looks at 95 % each (alpha not split): optional stopping inflates false decisions well past 5 %."""
    naive = Rule(alpha=0.05 * len(Rule().looks))
    assert naive.level == pytest.approx(0.95)
    rate, se = simulate_false_decisions(naive, reps=REPS, seed=2)
    assert rate - 3 * se > 0.08, (rate, se)


def test_real_effects_are_decided():
    rate, _ = simulate_false_decisions(Rule(), effect=2.0, sd=1.0, reps=REPS, seed=3)
    assert rate > 0.75
    small, _ = simulate_false_decisions(Rule(), effect=0.5, sd=1.0, reps=REPS, seed=3)
    assert small < rate


def _arms(d, base=20.0):
    """Baseline FIDs and a variant's FIDs whose log-ratios are d, seeds 0..len(d)-1."""
    a = {s: base + s for s in range(len(d))}
    return a, {s: a[s] * math.exp(x) for s, x in enumerate(d)}


def test_the_comparison_matches_the_simulation_and_looks_only_at_preset_seed_counts():
    """An independent path (per comparison, scipy's t) gives the simulation's decisions on the same data."""
    rule = Rule()
    g = np.random.default_rng(7)
    for _ in range(200):
        d = list(g.normal(g.choice([0.0, 0.5, 2.0]), 1.0, rule.max_seeds))
        c = Comparison("c", "base", "v", "fid_steps_1")
        for n in range(2, rule.max_seeds + 1):  # seeds arrive one at a time; looks only at 2, 3, 4, 6
            c.assess(*_arms(d[:n]), rule)
        assert [lk.seeds for lk in c.looks] == [k for k in rule.looks if k <= (c.looks[-1].seeds)]
        want = False
        for k in rule.looks:
            m, lo, hi = paired_interval(d[:k], rule.level)
            if lo > 0 or hi < 0:
                want = True
                break
        assert c.decided == want
        if c.decided:
            assert c.looks[-1].seeds == k and c.status(rule) == f"decided at {k} seeds"
        else:
            assert c.status(rule) == "undecided at the maximum of 6 seeds"


def test_five_seeds_are_judged_at_the_four_seed_look_and_resume_gives_the_same_decisions():
    rule = Rule()
    d = [0.02, -0.01, 0.03, 0.0, 0.01]
    c = Comparison("c", "base", "v", "fid_steps_1")
    last = c.assess(*_arms(d), rule)
    assert [lk.seeds for lk in c.looks] == [2, 3, 4] and last.seeds == 4
    again = Comparison("c", "base", "v", "fid_steps_1")  # a resumed run recomputes from the stored seeds
    again.assess(*_arms(d), rule)
    assert again.looks == c.looks
    assert c.status(rule, budget_left=False) == "budget exhausted"


def test_undecided_comparisons_ask_for_their_next_look_nearest_decision_first():
    rule = Rule()
    near = Comparison("near", "base", "a", "fid_steps_1")
    far = Comparison("far", "base", "b", "fid_steps_1")
    done = Comparison("done", "base", "c", "fid_steps_1")
    near.assess(*_arms([0.30, 0.10]), rule)
    far.assess(*_arms([0.30, -0.25]), rule)
    done.assess(*_arms([-0.50, -0.501]), rule)
    assert done.decided and not near.decided and not far.decided
    assert near.urgency() < far.urgency()
    seeds = {"base": 2, "a": 2, "b": 2, "c": 2}
    assert next_requests([far, done, near], seeds, rule) == [("base", 3), ("a", 3), ("b", 3)]
    assert next_requests([far, done, near], seeds, rule) == next_requests([near, far, done], seeds, rule)
    # at the maximum nothing more is asked
    assert next_requests([near], {"base": 6, "a": 6}, rule) == []


def test_bad_rules_are_refused():
    with pytest.raises(ValueError, match="looks"):
        Rule(looks=(1, 2))
    with pytest.raises(ValueError, match="looks"):
        Rule(looks=(3, 2))
    with pytest.raises(ValueError, match="alpha"):
        Rule(alpha=0.0)


def test_the_report_shows_each_comparisons_looks_and_verdict_and_the_machine_account():
    """The report section on an in-memory sweep: a large effect decided at 2 seeds, a null one undecided at 3."""
    from test_report_stats import sweep

    from ism.report.sequential import machine_table, sequential_table
    base = {("fid", s, seed): 20.0 + seed for s in (1, 4) for seed in range(3)}
    full = {("fid", s, seed): (20.0 + seed) * 0.5 * (1 + 0.001 * seed) for s in (1, 4) for seed in range(3)}
    same = {("fid", s, seed): (20.0 + seed) * (1 + 0.05 * (-1) ** seed) for s in (1, 4) for seed in range(3)}
    sw = sweep({"sm": base, "full": full, "wavelet": same}, seeds=(0, 1, 2))
    t = sequential_table(sw, "fid")
    rows = {(r[0], r[1]): r for r in t.rows}
    assert rows[("full", "1")][2] == "3" and rows[("full", "1")][4] == "decided at 2 seeds"
    assert rows[("full", "1")][3].startswith("2: ×0.5")
    assert rows[("wavelet", "4")][4] == "undecided" and rows[("wavelet", "4")][3].count(";") == 1  # looks at 2, 3
    assert sequential_table(sw, "fid", budget_left=False).rows[-1][4] == "budget exhausted"
    assert "alpha 0.05 split over 4 looks" in t.note
    assert machine_table(sw) is None  # no account logged
    sw.parent["metrics"] = {"machine/span_s": 600.0, "machine/trials": 4.0, "machine/cpu_s": 900.0,
                            "machine/cpu_util": 0.75, "machine/cores": 2.0, "machine/idle_core_s": 300.0,
                            "machine/train_s": 700.0, "machine/eval_s": 400.0}
    m = {r[0]: r[1] for r in machine_table(sw).rows}
    assert m["cores busy"] == "75 % of 2 cores" and m["train (trial time)"] == "11.7 min"
    assert m["report (trial time)"] == "0.0 min"
