"""Equal-budget tuning (a spec's tune: block): shape checks, equal budgets, held-out seed, the record's provenance,
tuned values changing run identity, and one end-to-end tuning + sweep on the smoke profile (real Ray, Optuna, MLflow)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ism.ablation import plan as ablate
from ism.ablation import tuning as TU
from ism.conf.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent

TUNE = {"budget": 2, "seed": 100, "objective": {"metric": "fid", "steps": [1]},
        "arms": {"a": {"space": {"ema.half_life_steps": [0.5, 5.0]}, "applies_to": ["c"]},
                 "b": {"points": [{"ema.target_half_life_steps": 0.5}, {"ema.target_half_life_steps": 4.0}]}}}


def write(path: Path, tune=TUNE, **over) -> Path:
    spec = {"name": "tuned", "base": {"overrides": {"eval.steps": [1, 2], "eval.sweep_steps": [1]}},
            "variants": {"a": {"reason": "baseline, single EMA"},
                         "b": {"reason": "twin EMA", "overrides": {"ema.twin": True}},
                         "c": {"reason": "a with intrinsic guidance", "overrides": {"guidance.mode": "intrinsic"}}},
            "seeds": [0, 1], "tune": tune, **over}
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("tune, match", [
    ({**TUNE, "budget": 3}, r"arms\.a: 2 grid point\(s\), but every arm gets exactly budget=3"),
    ({**TUNE, "arms": {"zz": {"space": {"ema.half_life_steps": [1.0, 2.0]}}}}, r"arms\.zz: 'zz' is not a variant"),
    ({**TUNE, "arms": {"a": {"space": {"ema.half_life_steps": [1.0, 2.0]}, "applies_to": ["b"]},
                       "b": {"space": {"ema.target_half_life_steps": [1.0, 2.0]}}}}, r"'b' already carries"),
    ({**TUNE, "arms": {"a": {"space": {"x": [1]}, "points": [{"x": 1}]}}}, r"either 'space'.*or 'points'"),
    ({**TUNE, "objective": None}, r"tune\.objective: required"),
    ({**TUNE, "bugdet": 2}, r"unknown key 'bugdet'.*Did you mean 'budget'"),
])
def test_bad_tune_blocks_fail_at_load(tmp_path, tune, match):
    with pytest.raises(ConfigError, match=match):
        ablate.load_spec(write(tmp_path / "s.yaml", tune))


def test_tuning_on_a_reported_seed_is_refused(tmp_path):
    spec = ablate.load_spec(write(tmp_path / "s.yaml", {**TUNE, "seed": 1}))
    with pytest.raises(ConfigError, match=r"tune.seed 1 is one of the sweep's seeds"):
        ablate.plan(spec, "smoke")


def test_every_arm_gets_the_same_budget_and_carriers_follow_their_arm(tmp_path):
    t = ablate.load_spec(write(tmp_path / "s.yaml")).tune("smoke")
    assert {a.variant: len(a.points) for a in t.arms} == {"a": 2, "b": 2}
    assert t.carriers() == {"a": "a", "c": "a", "b": "b"}


def test_tuned_values_reach_the_carriers_and_change_their_run_identity(tmp_path):
    spec = ablate.load_spec(write(tmp_path / "s.yaml"))
    plain = ablate.plan(spec, "smoke")
    record = {"a": {"values": {"ema.half_life_steps": 7.0}}, "b": {"values": {"ema.target_half_life_steps": 4.0}}}
    tuned = ablate.plan(spec, "smoke", tuning=record)
    cfg = {t.variants[0]: t.cfg for t in tuned.trials if t.seed == 0}
    assert cfg["a"].ema.half_life_steps == 7.0 and cfg["c"].ema.half_life_steps == 7.0
    assert cfg["b"].ema.target_half_life_steps == 4.0 and cfg["b"].ema.half_life_steps != 7.0
    assert not {t.run_id for t in plain.trials} & {t.run_id for t in tuned.trials}
    assert tuned.to_json()["tuning"] == {"a": {**record["a"], "carried_by": ["c"]}, "b": {**record["b"], "carried_by": []}}


def test_a_record_is_reused_only_while_its_provenance_matches():
    entry = {"values": {"k": 1}, "provenance": {"fingerprint": "f1", "budget": 4, "trials": 4}}
    assert TU.is_current(entry, "f1", 4)
    assert not TU.is_current(entry, "f2", 4)            # the arm's config, grid or objective moved
    assert not TU.is_current(entry, "f1", 8)            # another budget
    assert not TU.is_current({**entry, "provenance": {**entry["provenance"], "trials": 3}}, "f1", 4)  # unfinished
    assert not TU.is_current(None, "f1", 4)


def test_a_changed_default_makes_the_recorded_tuning_stale(tmp_path):
    from ism.study import tune as ST
    spec = ablate.load_spec(write(tmp_path / "s.yaml"))
    t = spec.tune("smoke")
    now = {a.arm.variant: a.fingerprint for a in ST.status(spec, t, "smoke", {})}
    old_spec = ablate.load_spec(write(tmp_path / "o.yaml", base={"overrides": {
        "eval.steps": [1, 2], "eval.sweep_steps": [1], "shortcut.level_allocation": "cycle"}}))
    before = {a.arm.variant: a.fingerprint for a in ST.status(old_spec, t, "smoke", {})}
    assert all(now[k] != before[k] for k in now)
    record = {k: {"values": {}, "provenance": {"fingerprint": before[k], "budget": 2, "trials": 2}} for k in before}
    assert not any(a.current for a in ST.status(spec, t, "smoke", record))


def test_the_record_of_a_non_default_profile_stays_out_of_the_checkout(tmp_path):
    spec = ROOT / "ablations" / "components.yaml"
    assert TU.record_path(spec, "components", "embedded", tmp_path, "embedded") == ROOT / "ablations/tuned/components.embedded.yaml"
    assert TU.record_path(spec, "components", "smoke", tmp_path, "embedded") == tmp_path / "tuned" / "components.smoke.yaml"


@pytest.mark.ray
@pytest.mark.e2e
def test_ism_ablate_tunes_each_arm_then_sweeps_with_the_tuned_values_and_reuses_the_record(tmp_path):
    one_arm = {**TUNE, "arms": {"a": TUNE["arms"]["a"]}}
    spec = write(tmp_path / "tuned.yaml", tune=one_arm, seeds=[0], variants={
        "a": {"reason": "baseline, single EMA"},
        "c": {"reason": "a with interval 0", "overrides": {"guidance.t_interval": 0.0}}})
    st, uri = tmp_path / "st", f"sqlite:///{tmp_path}/mlruns/mlflow.db"

    def run(*extra):
        return subprocess.run([sys.executable, "-m", "ism.cli", "ablate", str(spec), "--profile", "smoke", "--storage",
                               str(st), "--tracking-uri", uri, *extra], capture_output=True, text=True, cwd=tmp_path,
                              env=os.environ, timeout=900)

    dry = run("--dry-run")
    assert dry.returncode == 0 and "arm a: ema.half_life_steps over 2 points; carried by c; not tuned yet" in dry.stdout
    res = run("--tune-only")
    assert res.returncode == 0 and "tuned values recorded" in res.stderr, res.stderr[-4000:]
    record = TU.read_record(st / "tuned" / "tuned.smoke.yaml")
    p = ablate.plan(ablate.load_spec(spec), "smoke", tuning=record)
    assert not any((st / "trials" / t.run_id).exists() for t in p.trials)   # stopped before the sweep
    res = run()
    assert res.returncode == 0 and "every arm reuses its recorded values" in res.stderr, res.stderr[-4000:]
    assert set(record) == {"a"}
    e = record["a"]
    assert e["provenance"]["budget"] == e["provenance"]["trials"] == 2 and e["provenance"]["seed"] == 100
    assert sorted(t["values"]["ema.half_life_steps"] for t in e["trials"]) == [0.5, 5.0] and e["carried_by"] == ["c"]
    best = min(e["trials"], key=lambda t: t["objective_value"])
    assert e["values"] == best["values"] and e["objective_value"] == best["objective_value"]
    for t in p.trials:   # the sweep trained the tuned configs, carrier included
        assert t.cfg.ema.half_life_steps == e["values"]["ema.half_life_steps"]
        assert (st / "trials" / t.run_id / "summary.json").is_file()
    again = run("--dry-run")
    assert again.returncode == 0 and "(record current)" in again.stdout


def test_a_spec_reuses_another_specs_record_only_for_identical_arms(tmp_path, monkeypatch, capsys):
    """methods.yaml borrows components' record (tune.record): its SM and iSM arms are the same studies there, so the
    committed values apply unchanged; a borrowed record whose arm is not current is refused before any work (exit 2),
    naming the command that tunes it, instead of re-tuning into the other spec's record."""
    from ism import cli
    from ism.study import tune as ST
    spec = ablate.load_spec(ROOT / "ablations/methods.yaml")
    t, own = spec.tune("embedded").parts()
    assert t.record == "components" and own.record is None and {a.variant for a in own.arms} == {"meanflow", "ct"}
    record = TU.read_record(TU.record_path(spec.path, t.record, "embedded", tmp_path, "embedded"))
    arms = ST.status(spec, t, "embedded", record)
    assert {a.arm.variant for a in arms} == {"sm", "sm+twin_ema", "ism"} and all(a.current for a in arms)
    p = ablate.plan(spec, "embedded", tuning={a.arm.variant: a.entry for a in arms})
    cfg = {t.variants[0]: t.cfg for t in p.trials if t.seed == 0}
    assert cfg["sm"].ema.half_life_steps == record["sm"]["values"]["ema.half_life_steps"] == cfg["sm+sot"].ema.half_life_steps
    assert cfg["ism"].guidance.w_max == record["ism"]["values"]["guidance.w_max"]
    assert cfg["meanflow"].ema.half_life_steps != cfg["sm"].ema.half_life_steps   # its own arm not applied here
    # the plan (and its report) names this spec's carriers, not the lender's
    assert {a: e["carried_by"] for a, e in p.to_json()["tuning"].items()} == {
        "sm": ["sm+wavelet", "sm+sot"], "sm+twin_ema": [], "ism": []}
    # a borrowed arm that is not the same study there: refused, nothing run
    mine = write(tmp_path / "borrow.yaml", {**TUNE, "record": "components"})
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["ablate", str(mine), "--profile", "embedded", "--storage", str(tmp_path / "st"), "--dry-run"])
    assert rc == 2 and not (tmp_path / "st" / "runs").exists()
    assert not (tmp_path / "tuned").exists()   # nothing written into the borrowed record's place
    # the lender earlier in the same run (make ablation-all on a fresh smoke store) will tune them first: accepted
    both = [str(ROOT / "ablations/components.yaml"), str(ROOT / "ablations/methods.yaml")]
    assert cli.main(["ablate", *both, "--profile", "smoke", "--storage", str(tmp_path / "st"), "--dry-run"]) == 0
    assert "wait for" in capsys.readouterr().err
    assert cli.main(["ablate", *both[::-1], "--profile", "smoke", "--storage", str(tmp_path / "st"), "--dry-run"]) == 2
    with pytest.raises(ConfigError, match=r"tune\.record: name '\.\./x' is not allowed"):
        ablate.load_spec(write(tmp_path / "bad.yaml", {**TUNE, "record": "../x"}))


def test_own_arms_tune_into_this_specs_record_beside_borrowed_ones(tmp_path, monkeypatch, capsys):
    """With tune.record, an arm marked own: true is tuned by this spec into its own record while the others are read
    from the lender's; without the mark the same arm, absent from the lender's record, is refused (exit 2)."""
    from ism import cli
    from ism.study import tune as ST
    lend = ablate.load_spec(write(tmp_path / "lend.yaml", {**TUNE, "arms": {"a": TUNE["arms"]["a"]}}, name="lend"))
    lt = lend.tune("embedded")
    st = ST.status(lend, lt, "embedded", {})[0]
    entry = {"values": {"ema.half_life_steps": 5.0}, "objective_value": 1.0, "carried_by": ["c"], "trials": [],
             "provenance": {"budget": 2, "trials": 2, "seed": 100, "fingerprint": st.fingerprint}}
    TU.write_record(TU.record_path(lend.path, "lend", "embedded", tmp_path, "embedded"), "lend", "embedded", {"a": entry})
    monkeypatch.chdir(tmp_path)
    mixed = {**TUNE, "record": "lend", "arms": {"a": TUNE["arms"]["a"], "b": {**TUNE["arms"]["b"], "own": True}}}
    spec = ablate.load_spec(write(tmp_path / "mixed.yaml", mixed, name="mixed"))
    lent, own = spec.tune("embedded").parts()
    assert [a.variant for a in lent.arms] == ["a"] and [a.variant for a in own.arms] == ["b"] and own.record is None
    args = ["--profile", "embedded", "--storage", str(tmp_path / "st"), "--dry-run"]
    assert cli.main(["ablate", str(tmp_path / "mixed.yaml"), *args]) == 0
    out = capsys.readouterr().out
    assert "tuned/lend.embedded.yaml" in out and "tuned/mixed.embedded.yaml" in out
    assert "arm a: ema.half_life_steps over 2 points; carried by c; tuned {'ema.half_life_steps': 5.0}" in out
    assert "arm b: ema.target_half_life_steps over 2 points; not tuned yet" in out
    del mixed["arms"]["b"]["own"]   # the same arm borrowed: the lender never tuned it
    assert cli.main(["ablate", str(write(tmp_path / "mixed.yaml", mixed, name="mixed")), *args]) == 2
    assert "arm(s) b not current" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"'own: true' only means something beside tune\.record"):
        ablate.load_spec(write(tmp_path / "bad.yaml", {**TUNE, "arms": {"b": {**TUNE["arms"]["b"], "own": True}}}))
