"""Accounting for the machine: a trial's phases add up to its wall time, the CPU share follows what ran, a trial logs
its account to its MLflow run, and a sweep's totals compare CPU seconds with every core busy for the span."""
import os
import time

import pytest

from ism.system import accounting
from ism import tracking
from ism.system.accounting import PREFIX, PhaseClock, sweep_totals
from ism.conf.config import from_dict, to_dict


def _spin(seconds: float) -> None:
    """Keep one core busy for `seconds` of this thread's CPU time (so at least that much wall time passes; the
    process's CPU clock also counts other threads, which under a second test worker made the wall shorter)."""
    c0 = time.thread_time()
    while time.thread_time() - c0 < seconds:
        sum(i * i for i in range(1000))


def test_nested_phases_add_up_to_the_wall_time_and_idle_phases_use_no_cpu():
    clock = PhaseClock(cores=2)
    t0 = time.perf_counter()
    with clock.phase("train"):
        _spin(0.2)
        with clock.phase("eval"):
            time.sleep(0.3)
            with clock.phase("report"):
                _spin(0.1)
        _spin(0.1)
    time.sleep(0.1)  # outside every phase: overhead
    m = clock.metrics()
    wall = time.perf_counter() - t0
    assert m[PREFIX + "wall_s"] == pytest.approx(sum(m[f"{PREFIX}{p}_s"] for p in accounting.PHASES))
    assert m[PREFIX + "wall_s"] <= wall + 0.05
    # the inner phases are not charged to the outer one: train spun 0.3 s of CPU, eval slept 0.3 s
    assert clock.cpu["train"] >= 0.29 and clock.cpu["report"] >= 0.09
    assert clock.wall["eval"] >= 0.3 and clock.cpu["eval"] < 0.5 * clock.wall["eval"]
    assert clock.wall["overhead"] >= 0.1
    # utilisation: CPU / wall / cores; a busy single thread is at most one of the two cores
    assert m[PREFIX + "cpu_util"] == pytest.approx(m[PREFIX + "cpu_s"] / m[PREFIX + "wall_s"] / 2)
    assert m[PREFIX + "train_cpu_util"] <= 0.5 + 0.05
    assert m[PREFIX + "eval_cpu_util"] < m[PREFIX + "train_cpu_util"]
    with pytest.raises(ValueError, match="not one of"):
        with clock.phase("sampling"):
            pass


def test_sweep_totals_against_every_core_busy():
    trials = [{PREFIX + "wall_s": 100.0, PREFIX + "cpu_s": 90.0, PREFIX + "train_s": 60.0, PREFIX + "eval_s": 35.0,
               PREFIX + "report_s": 3.0, PREFIX + "overhead_s": 2.0},
              {PREFIX + "wall_s": 50.0, PREFIX + "cpu_s": 40.0, PREFIX + "train_s": 30.0, PREFIX + "eval_s": 15.0,
               PREFIX + "report_s": 4.0, PREFIX + "overhead_s": 1.0},
              {"loss": 1.0}]  # a trial with no account (failed before it logged one) is left out
    t = sweep_totals(trials, span_s=100.0, cores=2)
    assert t[PREFIX + "trials"] == 2 and t[PREFIX + "trial_wall_s"] == 150.0
    assert (t[PREFIX + "train_s"], t[PREFIX + "eval_s"], t[PREFIX + "report_s"], t[PREFIX + "overhead_s"]) == \
        (90.0, 50.0, 7.0, 3.0)
    assert t[PREFIX + "cpu_util"] == pytest.approx(130.0 / 200.0)
    assert t[PREFIX + "idle_core_s"] == pytest.approx(70.0)
    line = accounting.describe(t)
    assert "2 trial(s)" in line and "65 % of all cores" in line and "idle 1.2 core-min" in line
    # interrupted before any trial finished: its cores were busy with unfinished trials, not idle
    none = accounting.describe(sweep_totals([], span_s=564.0, cores=2))
    assert "no trial finished in these 9.4 min" in none and "idle" not in none and "%" not in none


class _Hooks:
    def __init__(self):
        self.reports = []

    def report(self, metrics):
        self.reports.append(metrics)

    def report_checkpoint(self, metrics, path):
        self.reports.append(metrics)

    def restore(self, run_dir):
        pass

    def node(self):
        return "node", "127.0.0.1"


def test_a_trial_logs_its_machine_account_to_its_run(tmp_path):
    """The real trial body on a real MLflow store; the training is a stand-in that spins, and reports through the
    callback (MLflow logging: the report phase)."""
    from ism.ablation.trials import ablation_trial
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    c = tracking.client(uri)
    exp, parent = tracking.start_parent(c, "ism/acct", "acct-smoke", {"ism.kind": "sweep"}, {"trials": 1}, {}, None)
    cfg = from_dict({"run": {"steps": 2}, "eval": {"at_end": False}})
    rid = tracking.child_run(c, exp, parent, tmp_path / "t", "t", {}, {})

    def fake_train(cfg_, run_dir, callback, evaluator, crash_at_step=None, cache_root=None):
        assert evaluator is None
        _spin(0.3)
        callback("metrics", {"step": 2, "metrics": {"loss": 0.5}})
        return {"steps": 2, "wall_time_s": 0.3, "metrics": {}}

    payload = {"cfg": to_dict(cfg), "trial_dir": str(tmp_path / "t"), "tracking_uri": uri, "mlflow_run_id": rid,
               "cache_root": str(tmp_path / "cache"), "storage": None}
    ablation_trial(payload, _Hooks(), train_fn=fake_train)
    m = c.get_run(rid).data.metrics
    phases = [m[f"{PREFIX}{p}_s"] for p in accounting.PHASES]
    assert m[PREFIX + "wall_s"] == pytest.approx(sum(phases))
    assert m[PREFIX + "train_s"] >= 0.3 * 0.9 and m[PREFIX + "report_s"] > 0 and m[PREFIX + "eval_s"] == 0
    assert m[PREFIX + "cores"] == os.cpu_count()
    assert 0 < m[PREFIX + "train_cpu_util"] <= 1.0
    assert m["loss"] == 0.5 and c.get_run(rid).info.status == "FINISHED"
