"""Budgets: the accepted forms, what a budget buys under the adaptive-seed rule (cost per look from the profile's cost
model), the spec's budget: key, and clear errors before anything runs."""
import pytest
import yaml

from ism.ablation import plan as ablate
from ism.ablation import budget as B
from ism.commands import ablate as ablate_cmd
from ism.errors import ConfigError
from ism.conf.profiles import concurrency, estimate_s
from ism.ablation.sequential import Rule


@pytest.mark.parametrize("text, kind, amount", [
    ("60m", "wall_s", 3600.0), ("1.5h", "wall_s", 5400.0), ("90s", "wall_s", 90.0), ("45 min", "wall_s", 2700.0),
    ("40 trials", "trials", 40.0), ("40t", "trials", 40.0), ("3 cpu-h", "cpu_s", 10800.0), ("2 CPU-hours", "cpu_s", 7200.0),
])
def test_budget_forms(text, kind, amount):
    b = B.parse(text)
    assert (b.kind, b.amount) == (kind, amount)


@pytest.mark.parametrize("text", ["60", "60x", "-5m", "0m", "1.5 trials", "an hour", ""])
def test_bad_budgets_name_the_place_and_the_forms(text):
    with pytest.raises(ConfigError, match=r"spec.yaml: budget: .* is not a budget; give a wall time"):
        B.parse(text, "spec.yaml: budget")


def _spec(path, **over):
    spec = {"name": "mini", "base": {"overrides": {"eval.at_end": False}},
            "variants": {"a": {"reason": "baseline"}, "b": {"reason": "wavelets", "overrides": {"wavelet.enabled": True}},
                         "c": {"reason": "intrinsic", "overrides": {"guidance.mode": "intrinsic"}}},
            "seeds": [0, 1, 2, 3, 4, 5]}
    spec.update(over)
    path.write_text(yaml.safe_dump(spec))
    return path


def test_each_look_costs_its_new_seeds_of_every_config_and_finished_trials_are_free(tmp_path):
    p = ablate.plan(ablate.load_spec(_spec(tmp_path / "s.yaml")), "smoke")
    rule = Rule()
    ls = B.looks(p.trials, p.profile, p.resources, rule)
    k = concurrency(p.profile, p.resources)
    per_seed = {s: sum(estimate_s(t.cfg, "smoke") for t in p.trials if t.seed == s) for s in range(6)}
    assert [lk.trials for lk in ls] == [6, 3, 3, 6]  # 3 configs x new seeds (2, 1, 1, 2)
    assert [lk.total_trials for lk in ls] == [6, 9, 12, 18]
    assert ls[0].wall_s == pytest.approx((per_seed[0] + per_seed[1]) / k)
    assert ls[-1].total_wall_s == pytest.approx(sum(per_seed.values()) / k)
    done = {t.run_id for t in p.trials if t.seed == 0}
    again = B.looks(p.trials, p.profile, p.resources, rule, done=done)
    assert again[0].trials == 3 and again[0].wall_s == pytest.approx(per_seed[1] / k)
    assert B.affordable(ls, B.Budget("trials", 12)) == 3
    assert B.affordable(ls, B.Budget("wall_s", ls[1].total_wall_s + 1e-6)) == 2
    assert B.affordable(ls, B.Budget("wall_s", ls[0].total_wall_s * 0.99)) == 0


def test_the_dry_run_shows_what_the_budget_buys_and_the_spec_key_works(tmp_path, capsys):
    spec = _spec(tmp_path / "s.yaml", budget="9 trials", profiles={"embedded": {"budget": "1000h"}})
    assert ablate_cmd.main([str(spec), "--profile", "smoke", "--dry-run", "--storage", str(tmp_path / "st")]) == 0
    out = capsys.readouterr().out
    assert "decisions only at 2, 3, 4, 6 seeds per arm" in out and "alpha 0.05 split over 4 looks" in out
    assert "budget 9 trials: buys the first 3 seeds of every config (9 trials" in out
    assert "left undone: the looks at 4, 6 seeds" in out
    # the flag wins over the spec; the profile's own budget over the spec's
    assert ablate_cmd.main([str(spec), "--profile", "smoke", "--dry-run", "--budget", "18 trials",
                            "--storage", str(tmp_path / "st")]) == 0
    assert "buys the first 6 seeds of every config (18 trials" in capsys.readouterr().out
    assert ablate.load_spec(spec).budget_for("embedded") == "1000h"
    assert ablate.load_spec(spec).budget_for("smoke") == "9 trials"
    assert not (tmp_path / "st").exists()


def test_bad_or_too_small_budgets_fail_before_anything_starts(tmp_path):
    with pytest.raises(ConfigError, match=r"s.yaml: budget: 'lots' is not a budget"):
        ablate.load_spec(_spec(tmp_path / "s.yaml", budget="lots"))
    with pytest.raises(ConfigError, match=r"profiles.smoke.budget: 5 is not a budget"):
        ablate.load_spec(_spec(tmp_path / "s.yaml", profiles={"smoke": {"budget": 5}}))
    spec = _spec(tmp_path / "s.yaml")
    # the headline pair (a, and c: intrinsic + interval guidance) runs first: its first look is 4 trials
    with pytest.raises(ConfigError, match=r"--budget: 3 trials does not cover the first 2 seeds of the baseline `a` "
                                          r"and the full method `c` \(~.* min wall, 4 trials\)"):
        ablate_cmd.main([str(spec), "--profile", "smoke", "--budget", "3 trials", "--storage", str(tmp_path / "st"),
                         "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert not (tmp_path / "st").exists() and not (tmp_path / "m.db").exists()
