"""Adaptive seeds, live (ism.ablation.adaptive): rounds at the rule's looks, seeds only where a comparison is still
undecided, a budget that stops the rounds, and a rerun that takes the same decisions. The oracle: synthetic trial
results with known effects written where the sweep driver writes them (summary.json), so no training runs."""
import dataclasses
import math

import pytest
import yaml

from ism.ablation import adaptive as A
from ism.ablation import plan as ablate
from ism.ablation.budget import Budget
from ism.ablation.sequential import Rule
from ism.system import store



# FID per variant: the baseline a at 10; b at half of it (a large effect: decided early); c equal to a (a null effect:
# never decided, so it gets every look up to the last). Seed noise: a fixed log-normal factor per (variant, seed).
EFFECT = {"a": 1.0, "b": 0.5, "c": 1.0}
NOISE = [0.03, -0.02, 0.05, -0.04, 0.01, -0.03]


def _spec(path, seeds=6):
    spec = {"name": "mini", "base": {"overrides": {"eval.at_end": False}},
            "variants": {"a": {"reason": "baseline"}, "b": {"reason": "wavelets", "overrides": {"wavelet.enabled": True}},
                         "c": {"reason": "intrinsic", "overrides": {"guidance.mode": "intrinsic"}}},
            "seeds": list(range(seeds))}
    path.write_text(yaml.safe_dump(spec))
    return ablate.plan(ablate.load_spec(path), "smoke")


def _fake_round(storage, ran):
    """A run_round that 'trains' every trial in scope not yet finished by writing its summary.json."""
    def run(p):
        for t in p.active:
            d = store.trial_dir(storage, t.run_id)
            if (d / "summary.json").exists():
                continue
            v = t.variants[0]
            k = {"a": 0.0, "b": 0.37, "c": 0.81}[v]  # decorrelate the arms' noise
            noise = lambda s, x: NOISE[(s + int(10 * x)) % 6] + 0.01 * math.sin(7 * s + 3 * x)  # noqa: E731
            fid1 = 10 * EFFECT[v] * math.exp(noise(t.seed, k))
            fid4 = 5 * EFFECT[v] * math.exp(noise(t.seed, k + 0.5))
            store.write_json(d / "summary.json", {"metrics": {"fid_steps_1": fid1, "fid_steps_4": fid4}})
            ran.append(t.label)
        return 0
    return run


def test_seeds_go_only_to_undecided_comparisons_and_a_rerun_takes_the_same_decisions(tmp_path):
    p = _spec(tmp_path / "s.yaml")
    ran: list[str] = []
    out = A.run(p, tmp_path / "st", A.Clock(None), _fake_round(tmp_path / "st", ran), Rule())
    per_variant = {v: sum(lbl.startswith(v + "/") for lbl in ran) for v in "abc"}
    # b against a (half the FID, small noise) is decided before the last look, so b stops early; c against a is a
    # null effect: it and the baseline go on to the rule's maximum of 6 seeds
    assert per_variant["a"] == 6 and per_variant["c"] == 6
    assert 2 <= per_variant["b"] < 6
    assert out.rc == 0 and not out.exhausted
    assert out.stopped == "undecided comparisons are at the rule's last look or the plan's last seed"
    comps = {c.name: c for c in A.comparisons(p, tmp_path / "st", Rule())}
    assert comps["b@1"].decided and comps["b@1"].looks[-1].hi < 0 and not comps["c@1"].decided
    # rerun: nothing new runs, the same rounds are taken
    again: list[str] = []
    out2 = A.run(p, tmp_path / "st", A.Clock(None), _fake_round(tmp_path / "st", again), Rule())
    assert again == [] and [r["seeds"] for r in out2.rounds] == [r["seeds"] for r in out.rounds]


def test_the_first_round_runs_the_headline_pair_first_then_every_config_seed_major(tmp_path):
    p = _spec(tmp_path / "s.yaml")
    assert A.plan_full_method(p) == "c"  # intrinsic + interval guidance: two components, the wavelet variant one
    first = A.wanted(p, {v: 2 for v in p.variants})
    assert [t.label for t in first] == ["a/s0", "c/s0", "a/s1", "c/s1", "b/s0", "b/s1"]
    # a pass launches in the same order whatever order its scope arrives in (the driver gets a set)
    assert [t.label for t in A.launch_order(p, reversed(first))] == [t.label for t in first]


def test_a_budget_below_one_round_still_gives_the_headline_comparison_its_interval(tmp_path):
    """Seed-major order alone would spend four trials on a/s0, b/s0, c/s0, a/s1: the full method c would have one
    seed and the headline ratio no paired interval."""
    p = _spec(tmp_path / "s.yaml")
    ran: list[str] = []
    out = A.run(p, tmp_path / "st", A.Clock(Budget("trials", 4)), _fake_round(tmp_path / "st", ran), Rule())
    assert out.exhausted and sorted(ran) == ["a/s0", "a/s1", "c/s0", "c/s1"]
    comps = {c.name: c for c in A.comparisons(p, tmp_path / "st", Rule())}
    assert [look.seeds for look in comps["c@1"].looks] == [2]


def test_no_full_method_when_no_variant_adds_more_components_than_the_baseline(tmp_path):
    spec = {"name": "flat", "variants": {"a": {"reason": "x"}, "b": {"reason": "y", "overrides": {"optim.lr": 0.002}}},
            "seeds": [0, 1]}
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(spec))
    p = ablate.plan(ablate.load_spec(tmp_path / "f.yaml"), "smoke")
    assert A.plan_full_method(p) is None
    assert [t.label for t in A.wanted(p, {"a": 2, "b": 2})] == ["a/s0", "b/s0", "a/s1", "b/s1"]


def test_a_budget_stops_the_rounds_and_the_record_says_what_it_left_undone(tmp_path):
    p = _spec(tmp_path / "s.yaml")
    ran: list[str] = []
    scoped = []
    rounds = _fake_round(tmp_path / "st", ran)

    def run(sp):
        scoped.append(sp)
        return rounds(sp)
    out = A.run(p, tmp_path / "st", A.Clock(Budget("trials", 8)), run, Rule())
    assert len(ran) == 8 and out.exhausted and out.stopped == "budget exhausted"
    record = scoped[-1].adaptive  # the closing record goes to plan.json and the parent run
    assert record["exhausted"] and record["budget"] == "8 trials"
    assert set(record["not_run"].values()) == {A.NOT_RUN_BUDGET}
    assert len(record["not_run"]) == len(p.trials) - 8
    assert record["rounds"][-1]["left_undone"], "the round the budget cut names the trials it left undone"
    assert scoped[-1].to_json()["adaptive"]["exhausted"] is True


def test_a_wall_budget_pays_for_the_longest_prefix_at_the_profiles_concurrency(tmp_path):
    from ism.conf.profiles import concurrency, estimate_s
    p = _spec(tmp_path / "s.yaml")
    k = concurrency(p.profile, p.resources)
    each = [estimate_s(t.cfg, "smoke") / k for t in p.trials[:4]]
    clock = A.Clock(Budget("wall_s", sum(each[:3]) + 1.0))
    fit = clock.fit(p.trials[:4], p.profile, p.resources, 1.0)
    assert len(fit) == 3
    assert len(clock.fit(p.trials[:4], p.profile, p.resources, 0.5)) == 4  # measured faster than the model: more fit
    assert A.Clock(None).fit(p.trials, p.profile, p.resources, 1.0) == list(p.trials)


def test_the_baseline_is_the_variant_without_a_config_change():
    assert A.baseline_of(["x", "sm"], [(("x",), ["run.seed"]), (("sm",), ["wavelet.enabled"])]) == "x"
    assert A.baseline_of(["x", "sm"], [(("x",), ["a"]), (("sm",), ["b"])]) == "sm"
    assert A.baseline_of(["x", "y"], [(("x",), ["a"]), (("y",), ["b"])]) == "x"


@pytest.mark.ray
@pytest.mark.e2e
def test_one_budget_over_two_specs_runs_what_it_pays_for_and_reports_the_rest_as_not_run(tmp_path):
    """`ism ablate A B --budget "3 trials"` (what `make ablation-all` runs): A's baseline first, three trials in all, B
    not reached; both reports say so (real Ray, MLflow, reports; the replay on rerun: the unit test above)."""
    import subprocess
    import sys

    from ism import tracking
    def spec(name, variants, seeds):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, "base": {"overrides": {"eval.steps": [1, 2],
                                                                              "eval.sweep_steps": [1]}},
                                        "variants": variants, "seeds": seeds}))
        return path
    a = spec("first", {"base": {"reason": "baseline"}, "wav": {"reason": "w", "overrides": {"wavelet.enabled": True}}},
             [0, 1])
    # other seeds, so no trial is shared with the first spec (a shared one would be free, and finished)
    b = spec("second", {"base": {"reason": "baseline"}, "int": {"reason": "i", "overrides": {"guidance.mode": "intrinsic"}}},
             [2, 3])
    uri = f"sqlite:///{tmp_path}/m.db"

    def ablate():
        return subprocess.run([sys.executable, "-m", "ism.cli", "ablate", str(a), str(b), "--profile", "smoke",
                               "--budget", "3 trials", "--storage", str(tmp_path / "st"), "--tracking-uri", uri],
                              capture_output=True, text=True, timeout=900, cwd=tmp_path)
    res = ablate()
    assert res.returncode == 0, res.stderr[-3000:]
    assert "[first/smoke] round 1: 3 trial(s) to run, 1 wait for the budget" in res.stderr
    assert "[first/smoke] round 1: the budget pays for none of its 1 trial(s) left" in res.stderr
    assert "[second/smoke] round 1: the budget pays for none of its 4 trial(s) left" in res.stderr
    first = tracking.child_runs(tracking.find_sweeps("first", "smoke", uri)[0].info.run_id, uri)
    assert sorted((r.data.tags["ism.variant"], r.data.tags["ism.seed"]) for r in first) == \
        [("base", "0"), ("base", "1"), ("wav", "0")], "the headline pair (base, wav: the most components) first"
    assert not tracking.child_runs(tracking.find_sweeps("second", "smoke", uri)[0].info.run_id, uri)
    from ism.report import build_report
    for name, path in (("first", a), ("second", b)):
        build_report(str(path), uri, out=tmp_path / f"rep-{name}", profile="smoke")
    one = (tmp_path / "rep-first" / "report.md").read_text()
    two = (tmp_path / "rep-second" / "report.md").read_text()
    assert "| NOT RUN | not run: budget exhausted |" in one and "stopped: budget exhausted" in one
    assert "**Not run: the budget (3 trials) was spent before this spec's turn**" in two


def test_a_round_the_budget_cannot_pay_at_once_runs_in_passes_rescaled_by_the_trials_just_timed(tmp_path):
    """The first pass admits what the cost model says the budget pays for; once those trials show the machine is
    faster than the model (scale 0.1), the rest of the round runs too, and decisions wait for the whole round."""
    from ism.conf.profiles import concurrency, estimate_s
    p = _spec(tmp_path / "s.yaml")
    k = concurrency(p.profile, p.resources)
    each = estimate_s(p.trials[0].cfg, "smoke") / k
    scales = iter([1.0] + [0.1] * 50)
    ran: list[str] = []
    passes = []
    rounds = _fake_round(tmp_path / "st", ran)

    def run(sp):
        passes.append(len(sp.active))
        return rounds(sp)
    out = A.run(p, tmp_path / "st", A.Clock(Budget("wall_s", 3.5 * each)), run, Rule(), scale=lambda: next(scales))
    assert passes[:2] == [3, 4], "round 1 (the headline pair) in two passes: 3 trials, then the 4th, rescaled"
    assert out.rounds[0]["ran"] == ["a/s0", "c/s0", "a/s1", "c/s1"]
    assert len(out.rounds) >= 2, "the decisions of round 1 were taken once it was whole"


def test_a_failed_trial_is_reported_failed_not_as_not_run_and_the_record_runs_nothing(tmp_path):
    """The closing record goes to the sweep through `record` (no pass runs a failed trial again); a trial that was
    attempted and failed is never listed as 'not run'."""
    p = _spec(tmp_path / "s.yaml")
    ran: list[str] = []
    ok = _fake_round(tmp_path / "st", ran)
    broken = next(t for t in p.trials if t.variants[0] == "c" and t.seed == 0)

    def run(sp):
        sp = dataclasses.replace(sp, scope=frozenset(sp.scope) - {broken.run_id})
        ok(sp)
        return 1 if broken.run_id in {t.run_id for t in p.trials} else 0
    records = []
    out = A.run(p, tmp_path / "st", A.Clock(None), run, Rule(), record=lambda sp: records.append(sp) or True)
    assert out.rc == 1 and out.stopped == "trials failed"
    assert len(records) == 1 and broken.run_id in records[0].scope
    assert broken.run_id not in records[0].adaptive["not_run"]


def test_before_any_trial_is_timed_on_this_machine_a_pass_is_one_wave(tmp_path):
    """The cost model can be far off on an unmeasured machine (1.6x on an AMD EPYC): the first pass is one wave of
    concurrent trials, then the passes are sized by the measured rate. Once calibrated, a pass is what the budget pays."""
    from ism.conf.profiles import concurrency
    p = _spec(tmp_path / "s.yaml")
    k = concurrency(p.profile, p.resources)
    sizes = []
    timed = {"yes": False}

    def run(sp):
        before = len(ran)
        rc = rounds(sp)
        sizes.append(len(ran) - before)
        timed["yes"] = True  # the trials just run are timed
        return rc
    for calibrated, first in ((lambda: timed["yes"], k), (True, 4)):
        ran: list[str] = []
        rounds = _fake_round(tmp_path / f"st{first}", ran)
        sizes.clear()
        A.run(p, tmp_path / f"st{first}", A.Clock(Budget("wall_s", 1e6)), run, Rule(), calibrated=calibrated)
        assert sizes[0] == first and 4 > k  # round 1 wants the headline pair's 2 x 2 seeds
        assert sum(sizes[:2]) == 4 or first == 4  # uncalibrated: the rest of round 1 in the next pass


def test_the_headline_pair_takes_its_next_look_before_any_other_config_starts(tmp_path):
    """c (the full method) against a is undecided at 2 seeds: its 3rd seeds come before b's first, so a budget of 6
    trials reaches the headline's second look (a round over every config first would spend it on b)."""
    p = _spec(tmp_path / "s.yaml")
    ran: list[str] = []
    out = A.run(p, tmp_path / "st", A.Clock(Budget("trials", 6)), _fake_round(tmp_path / "st", ran), Rule())
    assert sorted(ran) == ["a/s0", "a/s1", "a/s2", "c/s0", "c/s1", "c/s2"] and out.exhausted
    comps = {c.name: c for c in A.comparisons(p, tmp_path / "st", Rule())}
    assert [look.seeds for look in comps["c@1"].looks] == [2, 3]


def test_a_wall_budget_pays_for_a_pass_only_if_its_longest_trial_fits():
    """Two at once, a trial of cost c adds c/2 of wall to a full pass, but a lone trial still takes c: a budget of
    0.6 c pays for no trial (it once admitted one and overran), 1.1 c pays for two (one wave)."""
    from ism.conf.profiles import concurrency, estimate_s
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        p = _spec(Path(d) / "s.yaml")
    k = concurrency(p.profile, p.resources)
    c = max(estimate_s(t.cfg, p.profile) for t in p.trials[:k])
    trials = list(p.trials[:k])
    assert A.Clock(Budget("wall_s", 0.6 * c)).fit(trials, p.profile, p.resources, 1.0) == []
    assert len(A.Clock(Budget("wall_s", 1.1 * c)).fit(trials, p.profile, p.resources, 1.0)) == k


def test_a_finished_trial_the_rule_did_not_ask_for_still_goes_into_the_sweep(tmp_path):
    """Another sweep finished c's seed 5; this run's rule never asks for it (a budget of 4 trials), yet it is free, so
    a pass carries it to the sweep (and the report): no result the store holds is left out. The decisions still
    read only the seeds the rule asked for."""
    p = _spec(tmp_path / "s.yaml")
    extra = next(t for t in p.trials if t.variants[0] == "c" and t.seed == 5)
    store.write_json(store.trial_dir(tmp_path / "st", extra.run_id) / "summary.json",
                     {"metrics": {"fid_steps_1": 10.0, "fid_steps_4": 5.0}})
    ran: list[str] = []
    rounds, passes = _fake_round(tmp_path / "st", ran), []

    def run(sp):
        passes.append(sp)
        return rounds(sp)
    out = A.run(p, tmp_path / "st", A.Clock(Budget("trials", 4)), run, Rule(), record=lambda sp: True)
    assert len(ran) == 4 and extra.label not in ran
    assert any(extra.run_id in sp.scope for sp in passes), "the free result reached the sweep"
    assert max(r["seeds"]["c"] for r in out.rounds) < 6, "the rule never asked for it"
