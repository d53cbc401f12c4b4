"""A sweep's terminal progress: trials done / running / failed, each running trial's step, loss and FIDs, and an ETA
from the cost model (ism.conf.profiles) scaled by measured trial times: this sweep's finished trials, else the trials this
machine ran before (<storage>/timings.json), else the model as it is."""
from __future__ import annotations

import heapq
import sys
import time
from pathlib import Path

from ism.conf import metric_keys
from ism.ablation.plan import Plan, Trial
from ism.conf.profiles import concurrency, estimate_parts
from ism.system import store


# The cost model's rates are a machine's; the trials a sweep has run on this machine say how far off they are here.
# Each finished trial adds (measured wall s, estimated s) under its profile in <storage>/timings.json; the dry run and
# the live ETA scale the model by measured / estimated (a ratio of sums: long trials weigh more, as in a sweep's wall).
TIMINGS = "timings.json"
HEARTBEAT_S = 120.0      # an unchanged progress line is repeated at most this often (it shows the sweep is alive)


def record_timing(storage: str | Path, profile: str, measured_s: float, estimated_s: float) -> None:
    """Add one finished trial's measured and estimated seconds to the storage's timings (the sweep driver only)."""
    if estimated_s <= 0 or measured_s <= 0:
        return
    path = Path(storage) / TIMINGS
    data = store.read_json(path)
    row = data.setdefault(profile, {"measured_s": 0.0, "estimated_s": 0.0, "trials": 0})
    row["measured_s"] += measured_s
    row["estimated_s"] += estimated_s
    row["trials"] += 1
    store.write_json(path, data)


def measured_scale(storage: str | Path, profile: str) -> tuple[float, int] | None:
    """(measured / estimated seconds, trials) over the profile's trials timed in this storage, None before any."""
    try:
        row = store.read_json(Path(storage) / TIMINGS).get(profile)
    except (OSError, ValueError):  # unreadable timings only lose the calibration
        return None
    if not row or row.get("estimated_s", 0) <= 0 or row.get("trials", 0) < 1:
        return None
    return row["measured_s"] / row["estimated_s"], int(row["trials"])



def _fids(result: dict) -> str:
    """' FID@1 85.2 @4 40.1 @128 20.3' from a trial's latest result (empty before its evaluation)."""
    keys = {k: metric_keys.parse(k) for k in result}
    fids = sorted((mk.steps, result[k]) for k, mk in keys.items() if mk and mk.metric == "fid" and mk.w is None)
    return (" FID " + " ".join(f"@{n} {v:.1f}" for n, v in fids if n in (1, 4, 128) or len(fids) <= 3)) if fids else ""


class Progress:
    """Compact terminal progress: trials done / running / failed, latest loss and FID per running trial, ETA.

    Its on_* methods take Tune's callback arguments; the Ray adapter forwards a sweep's trial events to them."""

    def __init__(self, plan: Plan, pending: list[Trial], done_before: int, every_s: float = 20.0, out=sys.stderr,
                 reused: frozenset[str] = frozenset(), stored: frozenset[str] = frozenset(),
                 timings: Path | None = None):
        self.plan, self.out, self.every = plan, out, every_s
        self.by_id = {t.run_id: t for t in pending}
        self.total = len(plan.active)
        self.done, self.failed, self.retries = done_before, 0, 0
        self.running: dict[str, dict] = {}
        self.start = time.time()
        self.last_print = 0.0
        self.last_body: list[str] | None = None
        # A trial finished by another spec's sweep is only logged here: no work, so it cannot speed up the ETA's
        # rate; an adopted training leaves only the evaluation.
        parts = {t.run_id: (0.0, 0.0, 0.0) if t.run_id in stored else
                 (0.0, *estimate_parts(t.cfg, plan.profile)[1:]) if t.run_id in reused else
                 estimate_parts(t.cfg, plan.profile) for t in pending}
        self.work = {rid: sum(p) for rid, p in parts.items()}
        # share of a trial's estimated time spent training (evaluation follows; a guidance sweep makes it long)
        self.train_share = {rid: p[0] / max(sum(p), 1e-9) for rid, p in parts.items()}
        self.base: dict[str, int] = {}  # run id -> the step a resumed trial picked up at
        # The ETA: estimated work left times measured seconds per estimated second, spread over the trials at once.
        self.timings = timings  # the storage root whose timings.json calibrates the model and records each trial
        prior = measured_scale(timings, plan.profile) if timings else None
        self.prior, self.prior_trials = prior if prior else (1.0, 0)
        self.measured_s = self.measured_work = 0.0
        self.measured_trials = 0
        self.started: dict[str, float] = {}
        self.retries_of: dict[str, int] = {}
        self.closed: set[str] = set()
        self.slots = concurrency(plan.profile, plan.resources)

    def _label(self, trial) -> str:
        t = self.by_id.get(trial.config.get("run_id"))
        return t.label if t else str(trial)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running[trial.config["run_id"]] = {}
        self.started[trial.config["run_id"]] = time.time()
        self._print(force=True, event=f"start {self._label(trial)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        rid = trial.config["run_id"]
        if result.get("resumed") and rid not in self.base:
            self._resumed(rid, result)
        self.running[rid] = result

    def _resumed(self, rid: str, result: dict) -> None:
        """A trial picked up at step s0 (or already finished): only the work left counts toward the ETA's rate."""
        t = self.by_id.get(rid)
        if t is None or not t.cfg.run.steps:
            return
        w, share = self.work[rid], self.train_share[rid]
        s0 = min(int(result.get("step", 0)), t.cfg.run.steps)
        train_left = w * share * (1 - s0 / t.cfg.run.steps)
        self.work[rid] = train_left + w * (1 - share)
        self.train_share[rid] = train_left / max(self.work[rid], 1e-9)
        self.base[rid] = s0
        if result.get("finished_before"):  # trained and evaluated already: it completes at once, at no cost
            self.work[rid] = 0.0

    def on_trial_complete(self, iteration, trials, trial, **info):
        rid = trial.config["run_id"]
        self.running.pop(rid, None)
        self.closed.add(rid)
        if (trial.last_result or {}).get("failed"):
            self.failed += 1
            self._print(force=True, event=f"FAILED {self._label(trial)} (not retried: the same error would recur)")
            return
        self.done += 1
        self._measured(rid)
        self._print(force=True, event=f"done {self._label(trial)}{_fids(trial.last_result or {})}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.retries += 1
        self.retries_of[trial.config["run_id"]] = self.retries_of.get(trial.config["run_id"], 0) + 1
        self.running.pop(trial.config["run_id"], None)
        self._print(force=True, event=f"retry {self._label(trial)} (failure {trial.num_failures} of at most "
                                      f"{self.plan.max_failures}; resumes from its last checkpoint)")

    def on_trial_error(self, iteration, trials, trial, **info):
        rid = trial.config["run_id"]
        self.running.pop(rid, None)
        self.closed.add(rid)
        self.failed += 1
        self._print(force=True, event=f"FAILED {self._label(trial)}")

    def on_step_end(self, iteration, trials, **info):
        self._print()

    def _measured(self, rid: str) -> None:
        """A trial that ran here to its end: its wall time against its estimate calibrates the ETA (and this
        machine's timings, which the next dry run reads). Trials that did no work here (stored, finished before,
        retried after a failure) say nothing about speed."""
        work, began = self.work.get(rid, 0.0), self.started.get(rid)
        if work <= 0 or began is None or self.retries_of.get(rid):
            return
        took = time.time() - began
        self.measured_s += took
        self.measured_work += work
        self.measured_trials += 1
        if self.timings is not None:
            record_timing(self.timings, self.plan.profile, took, work)

    def scale(self) -> float:
        """Measured seconds per estimated second: this sweep's finished trials, else this machine's earlier ones,
        else 1 (the cost model as it is)."""
        return self.measured_s / self.measured_work if self.measured_work > 0 else self.prior

    def eta_source(self) -> str:
        """What the ETA's scale rests on, in a few words."""
        if self.measured_trials:
            return f"from {self.measured_trials} trial(s) timed here"
        if self.prior_trials:
            return f"from {self.prior_trials} earlier trial(s) on this machine"
        return "cost model"

    def eta_s(self) -> float | None:
        """Remaining wall seconds: the running trials' scaled estimates less the time each has run (never below 0, so
        a trial running long stalls the ETA rather than growing it), then the waiting trials in order, each on the
        first slot to free up; None when nothing is left. Starting a waiting trial leaves this schedule as it was."""
        now, r = time.time(), self.scale()
        running = [max(r * self.work[rid] - (now - self.started.get(rid, now)), 0.0)
                   for rid in self.running if rid in self.work]
        waiting = [r * w for rid, w in self.work.items() if rid not in self.running and rid not in self.closed]
        if not running and not waiting:
            return None
        slots = running + [0.0] * max(self.slots - len(running), 0)
        heapq.heapify(slots)
        for w in waiting:
            heapq.heappush(slots, heapq.heappop(slots) + w)
        return max(slots)

    def overdue(self) -> int:
        """Running trials past their scaled estimate (the ETA then counts them as ending now: a lower bound)."""
        now, r = time.time(), self.scale()
        return sum(1 for rid in self.running  # a stored trial (no work) only passes through: never late
                   if self.work.get(rid, 0.0) > 0 and now - self.started.get(rid, now) > r * self.work[rid])

    def _eta_text(self) -> str:
        """', ETA 4.2 min (source)', a lower bound ('ETA >= ...') while a trial runs past its estimate, 'ETA unknown'
        when only such trials are left."""
        eta = self.eta_s()
        if eta is None:
            return ""
        late = self.overdue()
        if late and eta < 3.0:  # only overdue trials left: 'ETA >= 0.0 min' reads as a bug, and says nothing
            return f", ETA unknown ({self.eta_source()}; {late} trial(s) past their estimate)"
        return (f", ETA {'>= ' if late else ''}{eta / 60:.1f} min ({self.eta_source()}"
                + (f"; {late} trial(s) past their estimate" if late else "") + ")")

    def _print(self, force: bool = False, event: str = "") -> None:
        now = time.time()
        if not force and now - self.last_print < self.every:
            return
        body = self._trial_lines()
        # Unchanged trial lines are repeated only as a heartbeat (every HEARTBEAT_S), so a long evaluation does not
        # fill the terminal with identical lines.
        if not force and body == self.last_body and now - self.last_print < max(self.every, HEARTBEAT_S):
            return
        self.last_print, self.last_body = now, body
        head = (f"[{self.plan.spec.name}/{self.plan.profile}] {self.done}/{self.total} done, {len(self.running)} running, "
                f"{self.failed} failed" + (f", {self.retries} retried" if self.retries else "")
                + f" | {(now - self.start) / 60:.1f} min" + self._eta_text())
        print(head + (f" | {event}" if event else "") + ("\n    " + "\n    ".join(body) if body else ""),
              file=self.out, flush=True)

    def _trial_lines(self) -> list[str]:
        """One line per running trial: its step, latest loss and FIDs, or 'evaluating'."""
        parts = []
        for rid, res in self.running.items():
            t = self.by_id.get(rid)
            if not t:
                continue
            s = f"{t.label} step {res.get('step', 0)}/{t.cfg.run.steps}"
            if "loss" in res:
                s += f" loss {res['loss']:.4f}"
            fids = _fids(res)
            if not fids and res.get("step") == t.cfg.run.steps and t.cfg.eval.at_end:
                fids = " evaluating"
            parts.append(s + fids)
        return parts
