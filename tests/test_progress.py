"""The sweep's terminal progress: counts, latest loss, 'evaluating', FIDs, ETA; a resumed trial shows its step."""
import io
import json
from types import SimpleNamespace

from ism import ablate, progress, trials


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


def test_eta_follows_training_progress_and_skips_adopted_training():
    """The ETA shrinks as a running trial trains; a trial that adopts a finished training has only evaluation left."""
    plan = ablate.plan(ablate.load_spec("ablations/guidance.yaml"), "smoke", seeds=[0])
    a = plan.trials[0]
    steps = a.cfg.run.steps
    etas = []
    for step in (0, steps // 2, steps):
        p = progress.Progress(plan, list(plan.trials), done_before=0, every_s=1e9, out=io.StringIO())
        p.start -= 100.0  # 100 s into the sweep
        p.on_trial_start(0, [], _trial(a.run_id))
        p.on_trial_result(0, [], _trial(a.run_id), {"step": step})
        etas.append(p.eta_s())
    assert etas[0] is None and etas[1] > etas[2] > 0
    reused = progress.Progress(plan, list(plan.trials), done_before=0, every_s=1e9, out=io.StringIO(),
                           reused=frozenset({a.run_id}))
    assert reused.train_share[a.run_id] == 0.0 and reused.work[a.run_id] < p.work[a.run_id]
    reused.on_trial_start(0, [], _trial(a.run_id))
    reused.on_trial_result(0, [], _trial(a.run_id), {"step": steps})
    assert reused.eta_s() is None, "an adopted training is no progress: only its evaluation counts"


def test_trials_finished_by_another_sweep_do_not_speed_up_the_eta():
    """A trial another spec already ran finishes at once here: the ETA must not read that as fast progress."""
    plan = ablate.plan(ablate.load_spec("ablations/guidance.yaml"), "smoke", seeds=[0])
    a, b = plan.trials[:2]
    p = progress.Progress(plan, list(plan.trials), done_before=0, every_s=1e9, out=io.StringIO(),
                      stored=frozenset({a.run_id}))
    p.on_trial_start(0, [], _trial(a.run_id))
    p.on_trial_complete(0, [], _trial(a.run_id, {"done": 1}))
    assert p.done == 1 and p.eta_s() is None
    p.on_trial_start(0, [], _trial(b.run_id))
    p.on_trial_result(0, [], _trial(b.run_id), {"step": b.cfg.run.steps // 2})
    assert p.eta_s() > 0


def test_resumed_trials_do_not_count_as_fast_progress():
    """A trial resumed at 90 % of its training reports that step at once: the ETA must not read it as speed, and a
    trial found finished (summary.json present) completes at no cost."""
    plan = ablate.plan(ablate.load_spec("ablations/guidance.yaml"), "smoke", seeds=[0])
    a, b = plan.trials[:2]
    steps = a.cfg.run.steps
    p = progress.Progress(plan, list(plan.trials), done_before=0, every_s=1e9, out=io.StringIO())
    total = sum(p.work.values())
    p.start -= 100.0
    p.on_trial_start(0, [], _trial(a.run_id))
    p.on_trial_result(0, [], _trial(a.run_id), {"step": steps * 9 // 10, "resumed": 1, "finished_before": 0})
    assert p.eta_s() is None, "nothing was trained in this sweep yet"
    assert sum(p.work.values()) < total, "the resumed trial's remaining work is smaller"
    p.on_trial_result(0, [], _trial(a.run_id), {"step": steps})
    assert p.eta_s() > 0
    p.on_trial_start(0, [], _trial(b.run_id))
    p.on_trial_result(0, [], _trial(b.run_id), {"step": steps, "resumed": 1, "finished_before": 1})
    before = p.finished_work
    p.on_trial_complete(0, [], _trial(b.run_id, {"done": 1}))
    assert p.finished_work == before and p.done == 1
