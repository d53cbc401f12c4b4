"""`ism study`: spec validation before any trial, the Optuna study as the state (resume, requeue, fingerprint),
export of the best config, the report section, and end-to-end studies on 2-D data through a real local Ray and MLflow."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from cluster import stop_session
from ism.conf import specs
from ism import study as S
from ism.commands import study as study_cmd
from ism.conf.config import ConfigError, resolve

ROOT = Path(__file__).resolve().parent.parent
optuna.logging.set_verbosity(optuna.logging.WARNING)

# A toy2d study small enough for tests: 4-step shortcut, 20 training steps, evaluations at steps 10 and 20.
TOY = {
    "name": "toy",
    "base": {"preset": "toy2d", "overrides": {
        "shortcut.max_steps_log2": 2, "optim.batch_size": 64, "ema": {"half_life_steps": 2.0, "infer_half_life_steps": 2.0},
        "eval.num_samples": 256, "run": {"steps": 20, "log_every": 10, "checkpoint_every": 10, "progress": False}}},
    "space": {"optim.lr": {"type": "log-float", "low": 1e-6, "high": 1e-2},
              "guidance.label_dropout": {"type": "float", "low": 0.0, "high": 0.3}},
    "objective": {"metric": "energy_distance", "steps": {1: 0.5, 2: 0.5}},
    "n_trials": 3, "parallelism": 1, "resources": {"cpu": 1},
    "sampler": {"seed": 0, "n_startup_trials": 2},
    "pruner": {"type": "median", "every_steps": 10, "n_startup_trials": 1},
}


def write_spec(tmp_path: Path, spec: dict, name: str = "toy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def with_(spec: dict, **changes) -> dict:
    """A copy of a spec with top-level keys replaced (space entries merged)."""
    out = yaml.safe_load(yaml.safe_dump(spec))
    for k, v in changes.items():
        if k == "space":
            out["space"].update(v)
        else:
            out[k] = v
    return out


def toy_plan(tmp_path: Path, spec: dict = TOY, profile: str = "smoke") -> S.StudyPlan:
    return S.plan(S.load_spec(write_spec(tmp_path, spec)), profile)


# ----------------------------------------------------------------------------------------------- validation (fast)
@pytest.mark.parametrize("entry, message", [
    ({"optim.lrr": {"type": "float", "low": 0.1, "high": 0.2}}, "unknown config key 'optim.lrr'"),
    ({"optimizer.lr": {"type": "float", "low": 0.1, "high": 0.2}}, "unknown config key 'optimizer.lr'"),
    ({"optim.weight_decay": {"type": "float", "low": 0.2, "high": 0.2}}, "empty range [0.2, 0.2]"),
    ({"optim.weight_decay": {"type": "float", "low": 0.3, "high": 0.1}}, "empty range [0.3, 0.1]"),
    ({"optim.weight_decay": {"type": "log-float", "low": 0.0, "high": 0.1}}, "a log range must stay above 0"),
    ({"ot.pool_batches": {"type": "int", "low": 0, "high": 8, "log": True}}, "a log range must stay above 0"),
    ({"optim.lr": {"type": "log-float", "low": 1e-4, "high": 2.0}}, "optim.lr: high 2.0 is not allowed"),
    ({"guidance.mode": {"type": "categorical", "choices": ["intrinsic", "cfg_fnest"]}}, "choice 'cfg_fnest' is not allowed"),
    ({"guidance.mode": {"type": "categorical", "choices": []}}, "expected a non-empty list"),
    ({"ot.pool_batches": {"type": "float", "low": 1, "high": 8}}, "is an integer key; use type: int"),
    ({"eval.steps": {"type": "int", "low": 1, "high": 4}}, "search it with type: categorical"),
    ({"run.threads": {"type": "int", "low": 1, "high": 4}}, "does not change what a run computes"),
    ({"optim.lr": {"type": "uniform", "low": 1e-4, "high": 1e-2}}, "type: 'uniform' is not allowed"),
])
def test_bad_search_space_fails_with_clear_error(tmp_path, entry, message):
    with pytest.raises(ConfigError) as e:
        toy_plan(tmp_path, with_(TOY, space=entry))
    assert message in str(e.value)


def test_invalid_corner_of_the_space_is_caught(tmp_path):
    # Each bound alone is valid; together batch 8 x bootstrap 0.1 leaves no self-consistency row.
    spec = with_(TOY, space={"optim.batch_size": {"type": "int", "low": 8, "high": 64},
                             "shortcut.bootstrap_fraction": {"type": "float", "low": 0.1, "high": 0.5}})
    with pytest.raises(ConfigError, match="corner .* gives an invalid config.*no self-consistency row"):
        toy_plan(tmp_path, spec)


@pytest.mark.parametrize("objective, message", [
    ({"metric": "fid", "steps": [1]}, "'fid' is not computed for toy2d data"),
    ({"metric": "energy_distance", "steps": [3]}, "steps: 3 is not allowed; sampling steps must be powers of two"),
    ({"metric": "energy_distance", "steps": [8]}, "8 is not allowed; sampling steps must be powers of two from 1 to 4"),
    ({"metric": "energy_distance"}, "objective.steps: required"),
    ({"metric": "energy_distance_steps_1", "direction": "down"}, "'down' is not allowed"),
])
def test_bad_objective_fails(tmp_path, objective, message):
    with pytest.raises(ConfigError) as e:
        toy_plan(tmp_path, with_(TOY, objective=objective))
    assert message in str(e.value)


def test_objective_forms(tmp_path):
    p = toy_plan(tmp_path, with_(TOY, objective={"metric": "energy_distance_steps_2"}))
    assert dict(p.objective.terms) == {"energy_distance_steps_2": 1.0} and p.base.eval.steps == (2,)
    assert p.objective.label() == "energy_distance@2"
    p = toy_plan(tmp_path, with_(TOY, objective={"metric": "sliced_wasserstein", "steps": [1, 2], "direction": "maximize"}))
    assert p.objective.value({"sliced_wasserstein_steps_1": 1.0, "sliced_wasserstein_steps_2": 3.0}) == 2.0
    assert p.mode == "max" and p.objective.label() == "sliced_wasserstein@1x0.5+2x0.5"
    assert S.plan(S.load_spec(ROOT / "studies" / "wavelet.yaml"), "smoke").objective.label() == "fid@1x0.5+4x0.25+128x0.25"


def test_pruner_needs_intermediate_evaluations(tmp_path):
    with pytest.raises(ConfigError, match="every_steps: required"):
        toy_plan(tmp_path, with_(TOY, pruner={"type": "median"}))
    with pytest.raises(ConfigError, match="leaves no intermediate evaluation"):
        toy_plan(tmp_path, with_(TOY, pruner={"type": "successive_halving", "every_steps": 20}))
    with pytest.raises(ConfigError, match="pruner.type: 'hyperband' is not allowed"):
        toy_plan(tmp_path, with_(TOY, pruner={"type": "hyperband", "every_steps": 10}))


def test_bad_spec_fails_through_the_cli_before_anything_runs(tmp_path, capsys, monkeypatch):
    from ism.cli import main
    monkeypatch.setenv("ISM_STORAGE", str(tmp_path / "store"))
    path = write_spec(tmp_path, with_(TOY, space={"optim.lr": {"type": "log-float", "low": 0, "high": 1e-2}}))
    t = time.time()
    assert main(["study", str(path), "--profile", "smoke"]) == 2
    assert "log range must stay above 0" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()       # no study, no trial dir, no Ray results
    assert time.time() - t < 30


def test_enqueued_points_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="enqueue\\[0\\]: optim.lr=0.5 lies outside the space"):
        toy_plan(tmp_path, with_(TOY, enqueue=[{"optim.lr": 0.5}]))
    with pytest.raises(ConfigError, match="'optim.beta1' is not a searched key"):
        toy_plan(tmp_path, with_(TOY, enqueue=[{"optim.beta1": 0.5}]))


def test_profile_rerange_and_scale_stay_out_of_the_space(tmp_path):
    spec = with_(TOY, profiles={"smoke": {"space": {"optim.lr": {"type": "log-float", "low": 1e-3, "high": 2e-3}}}})
    p = toy_plan(tmp_path, spec)
    assert next(x for x in p.space if x.key == "optim.lr").low == 1e-3
    with pytest.raises(ConfigError, match="may only re-range searched keys"):
        toy_plan(tmp_path, with_(TOY, profiles={"smoke": {"space": {"optim.beta1": {"type": "float", "low": 0.1, "high": 0.2}}}}))
    with pytest.raises(ConfigError, match="fix run.seed, which the space searches"):
        toy_plan(tmp_path, with_(TOY, space={"run.seed": {"type": "int", "low": 0, "high": 3}}))


def test_ablation_variant_base(tmp_path):
    abl = tmp_path / "abl.yaml"
    abl.write_text(yaml.safe_dump({"name": "abl", "base": {"preset": "toy2d", "overrides": {"optim.weight_decay": 0.05}},
                                   "variants": {"a": {"reason": "plain"},
                                                "b": {"reason": "no labels dropped", "overrides": {"guidance.label_dropout": 0.0}}}}))
    base = {"ablation": "abl.yaml", "variant": "b", "overrides": TOY["base"]["overrides"]}
    p = toy_plan(tmp_path, with_(TOY, base=base))
    assert p.preset == "toy2d" and p.base.optim.weight_decay == 0.05 and p.base.guidance.label_dropout == 0.0
    with pytest.raises(ConfigError, match="'c' is not a variant of .*it has a, b"):
        toy_plan(tmp_path, with_(TOY, base={**base, "variant": "c"}))


@pytest.mark.parametrize("name", ["wavelet", "sot", "ema", "guidance", "optim", "sm-guidance"])
def test_shipped_specs_plan_on_every_profile(name):
    from ism.conf.profiles import PROFILES
    spec = S.load_spec(ROOT / "studies" / f"{name}.yaml")
    for profile in PROFILES:
        p = S.plan(spec, profile)
        if p.pruner.get("type", "none") != "none":
            assert p.base.eval.every_steps and p.base.eval.every_steps < p.base.run.steps
        else:  # a grid without pruning evaluates at the end only
            assert p.base.eval.every_steps == 0 and len(p.enqueue) == p.n_trials
        assert set(p.base.eval.steps) == set(p.objective.steps)


# ----------------------------------------------------------------------------------------------- study state (fast)
def test_requeue_gives_the_same_trial_back(tmp_path):
    p = toy_plan(tmp_path)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = S.open_study(p, url)
    t = study.ask(p.distributions())  # a driver asked for a trial, then died
    params = dict(t.params)
    assert S.requeue_stale(study) == [t.number]
    again = study.ask(p.distributions())
    assert again.number == t.number and again.params == params
    assert study.trials[t.number].user_attrs["ism.requeued"] == 1
    assert len(study.trials) == 1


def test_only_a_gone_drivers_trials_are_requeued(tmp_path):
    """Several drivers share a study: a RUNNING trial is put back only when its owner is gone (pid dead on this host,
    or no heartbeat for GRACE_S from another host); a live driver's trials stay its own."""
    import socket
    from ism.study import storage as st
    p = toy_plan(tmp_path)
    study = S.open_study(p, f"sqlite:///{tmp_path / 'optuna.db'}")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now = time.time()
    owners = {"mine": (st.owner(), now), "other host, beating": ({"host": "node-7", "pid": 1}, now - st.GRACE_S / 2),
              "other host, silent": ({"host": "node-7", "pid": 1}, now - st.GRACE_S - 1),
              "dead pid here": ({"host": socket.gethostname(), "pid": dead.pid}, now), "no owner": (None, None)}
    number = {}
    for name, (who, beat) in owners.items():
        t = study.ask(p.distributions())
        if who:
            t.set_user_attr("ism.owner", who)
            t.set_user_attr("ism.beat", beat)
        number[name] = t.number
    assert sorted(S.requeue_stale(study)) == sorted(number[k] for k in ("other host, silent", "dead pid here", "no owner"))
    assert S.requeue_stale(study, mine=True) == [number["mine"]]     # a driver ending puts back only its own
    assert [t.number for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))] == [number["other host, beating"]]


def test_the_heartbeat_keeps_held_trials_alive(tmp_path):
    from ism.study import storage as st
    p = toy_plan(tmp_path)
    study = S.open_study(p, f"sqlite:///{tmp_path / 'optuna.db'}")
    books = S.Bookkeeper(p, study, tmp_path, "", "", "", "", f"sqlite:///{tmp_path / 'optuna.db'}")
    t = study.ask(p.distributions())
    books.claim(t)
    study._storage.set_trial_user_attr(t._trial_id, "ism.beat", time.time() - st.GRACE_S - 1)  # as if long silent
    with books.heartbeat(every_s=0.05):
        time.sleep(0.5)
    beat = study.trials[t.number].user_attrs["ism.beat"]
    assert time.time() - beat < 1 and not st.is_stale(study.trials[t.number])
    assert 3 * st.HEARTBEAT_S <= st.GRACE_S  # a busy driver may miss two beats before its trials look abandoned


def test_changed_space_refuses_the_existing_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    S.open_study(toy_plan(tmp_path), url)
    S.open_study(toy_plan(tmp_path, with_(TOY, n_trials=9)), url)  # the budget may change
    changed = with_(TOY, space={"optim.lr": {"type": "log-float", "low": 1e-5, "high": 1e-2}})
    with pytest.raises(ConfigError, match="different space, objective or base config"):
        S.open_study(toy_plan(tmp_path, changed), url)


def _filled_study(p: S.StudyPlan, url: str, n: int = 6) -> optuna.Study:
    """A study with finished trials written through Optuna's public API (as the driver would tell them)."""
    study = S.open_study(p, url)
    for i in range(n):
        t = study.ask(p.distributions())
        for step in (10, 20):
            t.report(1.0 / (1 + i) + step * 1e-3, step)
        if i == 2:
            study.tell(t, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(t, abs(t.params["optim.lr"] - 3e-3) + t.params["guidance.label_dropout"])
    return study


def test_export_best_loads_with_resolve(tmp_path):
    p = toy_plan(tmp_path)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = _filled_study(p, url)
    out = S.export_best(p, url, tmp_path / "best.yaml")
    cfg = resolve(files=[out])
    best = study.best_trial.params
    assert cfg.optim.lr == pytest.approx(best["optim.lr"]) and cfg.guidance.label_dropout == pytest.approx(best["guidance.label_dropout"])
    assert cfg.data.name == "toy2d" and cfg.shortcut.max_steps_log2 == 2
    assert cfg.eval.every_steps == 0 and cfg.run.device == "auto"   # the study's evaluation and the profile stay out
    text = out.read_text()
    assert text.startswith(f"# Best trial #{study.best_trial.number}") and "preset: toy2d" in text
    # The sections are also valid ablation-base overrides.
    delta = yaml.safe_load(text)
    assert specs.overrides("base.overrides", {k: v for k, v in delta.items() if k != "preset"})


def test_export_best_without_completed_trial_fails(tmp_path):
    p = toy_plan(tmp_path)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    with pytest.raises(ConfigError, match="no study 'toy/smoke'"):
        S.export_best(p, url, tmp_path / "best.yaml")
    S.open_study(p, url)
    with pytest.raises(ConfigError, match="no completed trial yet"):
        S.export_best(p, url, tmp_path / "best.yaml")


def test_dry_run_lists_the_plan_and_creates_nothing(tmp_path, capsys):
    path = write_spec(tmp_path, TOY)
    assert study_cmd.main([str(path), "--profile", "smoke", "--dry-run", "--storage", str(tmp_path / "store")]) == 0
    out = capsys.readouterr().out
    assert "study toy/smoke" in out and "optim.lr" in out and "log-float [1e-06, 0.01]" in out
    assert "minimize 0.5*energy_distance_steps_1 + 0.5*energy_distance_steps_2" in out and "existing study: none" in out
    assert not (tmp_path / "store").exists()


def test_study_section_renders_from_the_study(tmp_path):
    from ism.report.study_section import render_study_section
    p = toy_plan(tmp_path)
    study = _filled_study(p, f"sqlite:///{tmp_path / 'optuna.db'}")
    md, figs = render_study_section(study, tmp_path / "report")
    best = study.best_trial
    assert "## Study toy/smoke" in md and f"| **1** | **#{best.number}** |" in md
    assert "Parameter importances (fANOVA)" in md and "1 trial(s) pruned" in md
    assert {f.name for f in figs} >= {"toy-smoke-optimization_history.png", "toy-smoke-slice.png",
                                      "toy-smoke-parallel_coordinate.png", "toy-smoke-intermediate_values.png"}
    assert all(f.is_file() and f.stat().st_size > 1000 for f in figs)
    assert all(f"]({f.relative_to(tmp_path / 'report').as_posix()})" in md for f in figs)


def test_study_metric_is_named_and_survives_resume(tmp_path):
    p = toy_plan(tmp_path)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = S.open_study(p, url)
    assert study.metric_names == ["energy_distance@1x0.5+2x0.5"]
    study.tell(study.ask(p.distributions()), 0.5)
    again = S.open_study(p, url)                    # resuming: same study, its trial and its name
    assert again.metric_names == ["energy_distance@1x0.5+2x0.5"] and len(again.trials) == 1
    assert optuna.load_study(study_name="toy/smoke", storage=url).metric_names == ["energy_distance@1x0.5+2x0.5"]
    # A study stored before metric names existed gets its name when opened, and keeps its trials.
    old_url = f"sqlite:///{tmp_path / 'old.db'}"
    old = optuna.create_study(storage=old_url, study_name="toy/smoke")
    old.tell(old.ask(p.distributions()), 0.5)
    assert old.metric_names is None
    opened = S.open_study(p, old_url)
    assert opened.metric_names == ["energy_distance@1x0.5+2x0.5"] and len(opened.trials) == 1


def _check_study_report(out: Path, study: optuna.Study, spec_path: Path) -> str:
    """The study report in `out`: its sections, trial counts, command, a figure it links and the PDF."""
    import re
    from collections import Counter
    md = (out / "report.md").read_text()
    name = study.study_name.split("/")[0]
    for section in (f"# ism study report: {name} (profile smoke)", "## Objective", "## Trials", "## Profile and search space",
                    "## Commands", f"## Study {study.study_name}", f"Best trials of {study.study_name}",
                    "Optimisation history", "Parameter importances", "Slices: objective against each parameter"):
        assert section in md, section
    # Importances need two completed trials (the end-to-end study may prune all but one).
    ranked = sum(t.state.name == "COMPLETE" for t in study.trials) >= 2
    assert ("**Parameter importances (fANOVA)**" in md) == ranked
    assert ranked or "*Parameter importances: needs two completed trials with varying parameters.*" in md
    assert "`energy_distance@1x0.5+2x0.5` (minimize) = 0.5 × `energy_distance_steps_1` + 0.5 × `energy_distance_steps_2`" in md
    for state, n in Counter(t.state.name for t in study.trials).items():
        assert f"| {state.lower()} | {n} |" in md
    assert f"| **all** | **{len(study.trials)}** |" in md and "Profile `smoke`: preset `toy2d`" in md
    from ism.system.dburl import shown  # paths outside the working directory without the machine's folders (issue 23)
    assert f"`ism study {shown(spec_path)} --profile smoke" in md and f"--storage {shown(spec_path.parent / 'store')}`" in md
    assert f"`ism report {shown(spec_path)} --profile smoke`" in md and str(spec_path.parent) not in md
    best = study.best_trial
    assert f"| **1** | **#{best.number}** |" in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert any(l.endswith("optimization_history.png") for l in links) and any(l.endswith("slice.png") for l in links)
    assert any(l.endswith("param_importances.png") for l in links) == ranked
    assert all((out / l).is_file() and (out / l).stat().st_size > 1000 for l in links)
    assert (out / "report.pdf").read_bytes()[:4] == b"%PDF"
    assert len((out / "tables" / "trials.csv").read_text().splitlines()) == len(study.trials) + 1
    return md


def test_study_report_is_rebuilt_from_storage(tmp_path, capsys):
    from ism.cli import main
    from ism.report.study_section import report_dir
    p = toy_plan(tmp_path)
    study = _filled_study(p, f"sqlite:///{tmp_path / 'store' / 'optuna.db'}")
    spec = tmp_path / "toy.yaml"
    out = tmp_path / "rep"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "stale.png").write_bytes(b"old")   # a previous report's figure goes
    assert main(["report", str(spec), "--profile", "smoke", "--storage", str(tmp_path / "store"), "--out", str(out)]) == 0
    assert f"wrote {out / 'report.md'}" in capsys.readouterr().out
    _check_study_report(out, study, spec)
    assert not (out / "figures" / "stale.png").exists()
    # Only the embedded profile writes into reports/studies/<name>/; a smoke run never overwrites it.
    assert report_dir(p) == Path("reports/studies/toy-smoke")
    assert report_dir(S.plan(p.spec, "embedded")) == Path("reports/studies/toy")
    assert report_dir(p, tmp_path / "x") == tmp_path / "x"
    # No study stored for this profile: a clear error, nothing written.
    assert main(["report", str(spec), "--profile", "embedded", "--storage", str(tmp_path / "store"),
                 "--out", str(tmp_path / "none")]) == 2
    assert "no study 'toy/embedded'" in capsys.readouterr().err and not (tmp_path / "none").exists()


# ----------------------------------------------------------------------------------------------- end to end (Ray)
@pytest.fixture(scope="module")
def ray_local():
    """One local Ray for the module's studies (run_study reuses an initialised Ray and leaves it running)."""
    from ism.ablation import ray_adapter
    with ray_adapter.ray_session(num_cpus=2):
        yield


def _mlflow_children(uri: str, name: str):
    from mlflow.tracking import MlflowClient
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(f"ism-study/{name}")
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("ism.kind") == "study"]
    return c, parents, [r for r in runs if r.data.tags.get("ism.kind") == "trial"]


@pytest.mark.ray
def test_study_completes_prunes_persists_and_exports(tmp_path, ray_local, capsys):
    # Trial 0 (near-initial net) scores well at step 10; trial 1 (lr 3e-3) is far worse there and must be pruned.
    spec = with_(TOY, enqueue=[{"optim.lr": 1e-6, "guidance.label_dropout": 0.1},
                               {"optim.lr": 3e-3, "guidance.label_dropout": 0.1}])
    path = write_spec(tmp_path, spec)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    report = tmp_path / "report"
    args = [str(path), "--profile", "smoke", "--storage", str(tmp_path / "store"), "--tracking-uri", uri,
            "--report-out", str(report)]
    assert study_cmd.main(args) == 0
    url = f"sqlite:///{tmp_path / 'store' / 'optuna.db'}"
    study = optuna.load_study(study_name="toy/smoke", storage=url)     # persisted in a plain Optuna DB
    states = [t.state.name for t in study.trials]
    assert len(states) == 3 and states[0] == "COMPLETE" and states[1] == "PRUNED"
    assert study.metric_names == ["energy_distance@1x0.5+2x0.5"]       # what optuna-dashboard shows
    # The finished study wrote its report; `ism report` rebuilds the same report from the storage alone.
    md = _check_study_report(report, study, path)
    assert f"{states.count('PRUNED')} trial(s) pruned" in md and "intermediate_values.png)" in md
    from ism.commands.report import main as report_main
    rebuilt = tmp_path / "rebuilt"
    assert report_main([str(path), "--profile", "smoke", "--storage", str(tmp_path / "store"), "--out", str(rebuilt),
                        "--no-log"]) == 0
    assert _check_study_report(rebuilt, study, path).split("\n", 3)[3] == md.split("\n", 3)[3]  # all but the date
    assert len(optuna.load_study(study_name="toy/smoke", storage=url).trials) == 3         # nothing ran
    assert study.trials[1].last_step == 10 and set(study.trials[0].intermediate_values) == {10, 20}
    assert all(s in ("COMPLETE", "PRUNED") for s in states)
    c, parents, children = _mlflow_children(uri, "toy")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {"report/report.md", "report/report.pdf"} <= {a.path for a in c.list_artifacts(parents[0].info.run_id, "report")}
    by_number = {int(r.data.tags["ism.trial_number"]): r for r in children}
    assert sorted(by_number) == [0, 1, 2]
    for t in study.trials:
        r = by_number[t.number]
        assert r.data.tags["ism.trial_state"] == t.state.name and r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert r.info.status == "FINISHED" and float(r.data.params["optim.lr"]) == pytest.approx(t.params["optim.lr"])
    hist = [(m.step, m.value) for m in c.get_metric_history(by_number[0].info.run_id, "objective")]
    assert [s for s, _ in hist] == [10, 20] and hist[-1][1] == pytest.approx(study.trials[0].value)
    # Rerunning a finished study runs nothing and adds no trial; it ends with what to do next.
    capsys.readouterr()
    assert study_cmd.main(args) == 0
    err = capsys.readouterr().err
    assert f"best trial #{study.best_trial.number}:" in err and "--export-best" in err and "workflowType" in err
    assert len(optuna.load_study(study_name="toy/smoke", storage=url).trials) == 3
    assert len(_mlflow_children(uri, "toy")[2]) == 3
    out = tmp_path / "best.yaml"
    assert study_cmd.main(args + ["--export-best", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"best trial #{study.best_trial.number}:" in said and f"ism train -c {out}" in said
    cfg = resolve(files=[out])
    assert cfg.optim.lr == pytest.approx(study.best_params["optim.lr"]) and cfg.data.name == "toy2d"
    _check_dashboard_reads(url, "toy/smoke", ["Complete", "Pruned"])


def _check_dashboard_reads(url: str, name: str, states: list[str]) -> None:
    """optuna-dashboard's own API (its WSGI app, no server) lists the study and its trials."""
    import io
    import json
    dashboard = pytest.importorskip("optuna_dashboard")
    app = dashboard.wsgi(optuna.storages.RDBStorage(url))

    def get(path: str, query: str = "") -> dict:
        status = []
        env = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "127.0.0.1",
               "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr,
               "wsgi.url_scheme": "http"}
        body = b"".join(app(env, lambda st, headers, exc=None: status.append(st)))
        assert status[0].startswith("200"), (path, status, body[:500])
        return json.loads(body)

    sid = next(s["study_id"] for s in get("/api/studies")["study_summaries"] if s["study_name"] == name)
    trials = get(f"/api/studies/{sid}", "after=0")["trials"]
    assert {t["state"] for t in trials} == set(states)
    assert any(t["intermediate_values"] for t in trials)


def _count(db: Path, name: str, state: str) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute("select count(*) from trials t join studies s on t.study_id = s.study_id "
                               "where s.study_name = ? and t.state = ?", (name, state)).fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.ray
def test_study_resumes_after_kill_without_lost_or_duplicated_trials(tmp_path, ray_local):
    spec = with_(TOY, name="toyk", n_trials=3, parallelism=2, pruner={"type": "none"})
    path = write_spec(tmp_path, spec)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    args = [str(path), "--profile", "smoke", "--storage", str(tmp_path / "store"), "--tracking-uri", uri,
            "--report-out", str(tmp_path / "report")]
    db = tmp_path / "store" / "optuna.db"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    # The driver runs in its own session so that every process it starts (its local Ray) can be found and stopped.
    proc = subprocess.Popen([sys.executable, "-m", "ism.cli", "study", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "first.log", "w"), start_new_session=True)
    try:
        deadline = time.time() + 240
        while not (_count(db, "toyk/smoke", "COMPLETE") >= 1 and _count(db, "toyk/smoke", "RUNNING") >= 1):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "no trial finished in time"
            time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)   # the driver dies mid-study: no chance to settle anything
        proc.wait(timeout=30)
    finally:
        stop_session(proc.pid)
    running = _count(db, "toyk/smoke", "RUNNING")
    assert running >= 1
    assert not (tmp_path / "report").exists()      # an interrupted study writes no report; the finishing run does
    assert study_cmd.main(args) == 0
    assert "| complete | 3 |" in (tmp_path / "report" / "report.md").read_text()
    study = optuna.load_study(study_name="toyk/smoke", storage=f"sqlite:///{db}")
    assert [t.number for t in study.trials] == [0, 1, 2]                   # nothing lost, nothing duplicated
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    assert sum(t.user_attrs.get("ism.requeued", 0) for t in study.trials) == running
    _, parents, children = _mlflow_children(uri, "toyk")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"    # the parent run continued
    assert sorted(int(r.data.tags["ism.trial_number"]) for r in children) == [0, 1, 2]
    assert all(r.info.status == "FINISHED" for r in children)
    assert len(list((tmp_path / "store" / "studies" / "toyk" / "smoke" / "trials").iterdir())) == 3


def test_optunas_info_lines_appear_only_with_verbose():
    """'A new study created ...' is an INFO record of optuna.study.study: without --verbose ism drops it at the logger
    (after import, since Optuna resets its level to INFO when it configures its handler), with it keeps it."""
    import logging

    import optuna  # noqa: F401

    from ism.study.storage import quiet_optuna
    where = logging.getLogger("optuna.study.study")
    quiet_optuna(False)
    assert not where.isEnabledFor(logging.INFO) and where.isEnabledFor(logging.WARNING)
    quiet_optuna(True)
    assert where.isEnabledFor(logging.INFO)
    quiet_optuna(False)
