"""The sweep's terminal progress: counts, latest loss, 'evaluating', FIDs, ETA; a resumed trial shows its step."""
import io
import json
from types import SimpleNamespace

import pytest

from ism.ablation import plan as ablate, progress, trials


def _trial(run_id, result=None):
    return SimpleNamespace(config={"run_id": run_id}, last_result=result or {}, num_failures=0)


def test_progress_lines_follow_the_trials():
    plan = ablate.plan(ablate.load_spec("ablations/guidance.yaml"), "smoke", seeds=[0])
    a, b = plan.trials[:2]
    out = io.StringIO()
    p = progress.Progress(plan, list(plan.trials), done_before=0, every_s=0.0, out=out)
    p.on_trial_start(0, [], _trial(a.run_id))
    p.on_trial_start(0, [], _trial(b.run_id))
    p.on_trial_result(0, [], _trial(a.run_id), {"step": 4, "loss": 0.1234})
    p.on_trial_result(0, [], _trial(b.run_id), {"step": b.cfg.run.steps, "loss": 0.2})
    p.on_step_end(0, [])
    text = out.getvalue()
    assert f"0/{len(plan.trials)} done, 2 running, 0 failed" in text
    assert f"{a.label} step 4/{a.cfg.run.steps} loss 0.1234" in text
    assert f"{b.label} step {b.cfg.run.steps}/{b.cfg.run.steps} loss 0.2000 evaluating" in text
    assert "ETA" in text.splitlines()[-3]  # half of a's training and all of b's are done: an ETA exists
    p.on_trial_complete(0, [], _trial(b.run_id, {"fid_steps_1": 80.0, "fid_steps_128": 20.0}))
    assert f"1/{len(plan.trials)} done" in out.getvalue() and "FID @1 80.0 @128 20.0" in out.getvalue()


def test_resumed_trial_reports_its_last_logged_step(tmp_path):
    stats = tmp_path / "stats.jsonl"
    assert trials.resumed_at(stats) == {}
    stats.write_text(json.dumps({"step": 50, "loss": 0.5}) + "\n" + json.dumps({"step": 100, "loss": 0.25}) + "\n")
    assert trials.resumed_at(stats) == {"step": 100, "loss": 0.25}
    stats.write_text("not json\n")
    assert trials.resumed_at(stats) == {}


class Clock:
    """time.time for Progress, moved by hand."""
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _guidance_plan():
    return ablate.plan(ablate.load_spec("ablations/guidance.yaml"), "smoke", seeds=[0])


def test_eta_shrinks_as_a_trial_runs_and_skips_adopted_training(monkeypatch):
    """Before any trial finished, the ETA is the cost model's; it shrinks as the running trial runs; a trial that adopts
    a finished training has only its evaluation left."""
    clock = Clock()
    monkeypatch.setattr(progress.time, "time", clock)
    plan = _guidance_plan()
    a = plan.trials[0]
    p = progress.Progress(plan, list(plan.trials), done_before=0, every_s=1e9, out=io.StringIO())
    k = p.slots
    total = sum(p.work.values())
    assert total / k <= p.eta_s() <= total and p.eta_source() == "cost model"
    p.on_trial_start(0, [], _trial(a.run_id))
    etas = []
    for _ in range(3):
        etas.append(p.eta_s())
        clock.now += p.work[a.run_id] / 4
    assert etas[0] > etas[1] > etas[2] > 0
    reused = progress.Progress(plan, list(plan.trials), done_before=0, every_s=1e9, out=io.StringIO(),
                               reused=frozenset({a.run_id}))
    assert reused.train_share[a.run_id] == 0.0 and reused.work[a.run_id] < p.work[a.run_id]


def test_eta_comes_from_measured_trial_times_and_never_grows_while_trials_run_normally(monkeypatch, tmp_path):
    """Trials take 10x the cost model (as smoke trials did: Ray workers, imports, evaluation set-up). From the first
    finished trial on, the ETA rests on measured times: it never grows while the rest run, it reaches the real end,
    and the timings it recorded calibrate the next dry run and the next sweep's ETA from its first second."""
    clock = Clock()
    monkeypatch.setattr(progress.time, "time", clock)
    plan = _guidance_plan()
    todo = list(plan.trials)

    def sweep(p):
        """Run every trial, `slots` at a time, each for 10x its estimate; return (time, ETA) seen every second."""
        seen, queue, running = [], list(todo), {}
        t0 = clock.now
        while queue or running:
            while queue and len(running) < p.slots:
                t = queue.pop(0)
                running[t.run_id] = clock.now + 10 * p.work[t.run_id]
                p.on_trial_start(0, [], _trial(t.run_id))
            clock.now += 1.0
            for rid, end in list(running.items()):
                if end <= clock.now:
                    running.pop(rid)
                    p.on_trial_complete(0, [], _trial(rid, {"done": 1}))
            seen.append((clock.now - t0, p.eta_s(), p.measured_trials))
        return seen, clock.now - t0

    seen, wall = sweep(progress.Progress(plan, todo, done_before=0, every_s=1e9, out=io.StringIO(), timings=tmp_path))
    measured = [(t, eta or 0.0) for t, eta, n in seen if n]
    etas = [eta for _, eta in measured]
    assert etas and all(b <= a + 1e-9 for a, b in zip(etas, etas[1:])), "the ETA never grows on measured times"
    first_t, first_eta = measured[0]
    assert first_t + first_eta == pytest.approx(wall, rel=0.25), "it predicts the real end"
    scale, n = progress.measured_scale(tmp_path, "smoke")
    assert n == len(todo) and scale == pytest.approx(10.0, rel=0.15)
    # The next sweep on this machine starts calibrated: right from its first second, and never growing.
    nxt = progress.Progress(plan, todo, done_before=0, every_s=1e9, out=io.StringIO(), timings=tmp_path)
    assert nxt.eta_source().startswith(f"from {n} earlier trial(s)")
    seen2, wall2 = sweep(nxt)
    etas = [seen2[0][1] + 1.0] + [e or 0.0 for _, e, _ in seen2]
    assert all(b <= a + 1e-9 for a, b in zip(etas, etas[1:]))
    assert etas[0] == pytest.approx(wall2, rel=0.25)
    # ... and the dry run's cost
    from ism.commands.ablate import describe_plan
    scale, n = progress.measured_scale(tmp_path, "smoke")
    assert n == 2 * len(todo), "both sweeps timed every trial"
    text = describe_plan(plan, measured=(scale, n))
    assert f"x {scale:.2f}, measured on {n} smoke trial(s)" in text
    from ism.commands.listing import fmt_s
    from ism.conf.profiles import estimate_s
    t = plan.trials[0]
    assert f"run {t.run_id}  est {fmt_s(scale * estimate_s(t.cfg, 'smoke')):>6}" in text


def test_trials_finished_by_another_sweep_do_not_speed_up_the_eta(tmp_path):
    """A trial another spec already ran finishes at once here: the ETA must not read that as fast progress."""
    plan = _guidance_plan()
    a, b = plan.trials[:2]
    p = progress.Progress(plan, list(plan.trials), done_before=0, every_s=1e9, out=io.StringIO(),
                          stored=frozenset({a.run_id}), timings=tmp_path)
    p.on_trial_start(0, [], _trial(a.run_id))
    p.on_trial_complete(0, [], _trial(a.run_id, {"done": 1}))
    assert p.done == 1 and p.measured_trials == 0 and p.scale() == 1.0
    assert progress.measured_scale(tmp_path, "smoke") is None, "nothing timed, nothing recorded"


def test_resumed_trials_do_not_count_as_fast_progress():
    """A trial resumed at 90 % of its training has that much less work left; a trial found finished (summary.json
    present) completes at no cost and times nothing."""
    plan = _guidance_plan()
    a, b = plan.trials[:2]
    steps = a.cfg.run.steps
    p = progress.Progress(plan, list(plan.trials), done_before=0, every_s=1e9, out=io.StringIO())
    total = sum(p.work.values())
    p.on_trial_start(0, [], _trial(a.run_id))
    p.on_trial_result(0, [], _trial(a.run_id), {"step": steps * 9 // 10, "resumed": 1, "finished_before": 0})
    assert sum(p.work.values()) < total, "the resumed trial's remaining work is smaller"
    p.on_trial_start(0, [], _trial(b.run_id))
    p.on_trial_result(0, [], _trial(b.run_id), {"step": steps, "resumed": 1, "finished_before": 1})
    p.on_trial_complete(0, [], _trial(b.run_id, {"done": 1}))
    assert p.done == 1 and p.measured_trials == 0


def test_unchanged_trials_are_repeated_only_as_a_heartbeat_and_an_overdue_eta_is_a_lower_bound(monkeypatch):
    """During a long evaluation nothing changes: the line comes back every HEARTBEAT_S, not every 20 s; a trial past
    its estimate, with nothing else left, makes the ETA 'unknown' and says why, never 'ETA 0.0 min' or 'ETA >= 0.0'."""
    clock = Clock()
    monkeypatch.setattr(progress.time, "time", clock)
    plan = _guidance_plan()
    a = plan.trials[0]
    out = io.StringIO()
    p = progress.Progress(plan, [a], done_before=0, every_s=20.0, out=out)
    p.on_trial_start(0, [], _trial(a.run_id))
    p.on_trial_result(0, [], _trial(a.run_id), {"step": a.cfg.run.steps, "loss": 0.2})   # now evaluating
    clock.now += 20.0
    p.on_step_end(0, [])                                   # the change is printed
    n = out.getvalue().count("\n    ")
    assert out.getvalue().splitlines()[-1].endswith("evaluating")
    for _ in range(int(progress.HEARTBEAT_S // 20) - 1):   # unchanged lines within a heartbeat: silent
        clock.now += 20.0
        p.on_step_end(0, [])
    assert out.getvalue().count("\n    ") == n
    clock.now += 20.0 + p.scale() * p.work[a.run_id]      # a heartbeat later, and past the trial's estimate
    p.on_step_end(0, [])
    last = out.getvalue().splitlines()[-2]
    assert out.getvalue().count("\n    ") == n + 1 and "ETA unknown" in last and "1 trial(s) past their estimate" in last
    assert "0.0 min" not in last
    stored = progress.Progress(plan, [a], done_before=0, every_s=20.0, out=io.StringIO(), stored=frozenset([a.run_id]))
    stored.on_trial_start(0, [], _trial(a.run_id))
    clock.now += 1.0
    assert stored.overdue() == 0, "a trial another sweep finished has no work to be late with"
    p.on_trial_result(0, [], _trial(a.run_id), {"step": a.cfg.run.steps, "loss": 0.2, "fid_steps_1": 50.0})
    clock.now += 20.0
    p.on_step_end(0, [])                                   # changed (a FID arrived): printed at the usual pace
    assert out.getvalue().count("\n    ") == n + 2
