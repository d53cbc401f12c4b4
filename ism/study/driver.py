"""The study driver: trials asked from the Optuna study through the Ray adapter (ism.ablation.ray_adapter.run_search), each
tracked as an MLflow child run and told to the study by the Bookkeeper; rerunning resumes an interrupted study."""
from __future__ import annotations

import json
import math
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ism.system import dburl, store
from ism import tracking
from ism.ablation.plan import components
from ism.conf.config import dump_yaml, flatten, run_id, to_dict
from ism.conf.profiles import PROFILES
from ism.study.plan import StudyPlan, make_sampler
from ism.study.storage import (FINISHED, HEARTBEAT_S, counts, is_stale, open_study, owner, requeue_stale, study_dir,
                               study_lock)


# ----------------------------------------------------------------------------------------------- driver
MLFLOW_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}  # a told trial's MLflow run status


class Bookkeeper:
    """Driver-side records of trials: claims (owner, heartbeat), run dirs, MLflow child runs, Optuna user attrs,
    terminal progress lines."""

    def __init__(self, p: StudyPlan, study: optuna.Study, root: Path, uri: str, parent: str, exp: str, git: str,
                 url: str):
        self.p, self.study, self.root, self.uri, self.parent, self.exp, self.git = p, study, root, uri, parent, exp, git
        self.url = url
        self.start_time = time.time()
        self.held: dict[int, optuna.Trial] = {}  # trials this driver asked and has not told yet: it beats for them
        self._beat_stop = threading.Event()

    @contextmanager
    def slot(self):
        """Hold the study's lock while a trial is asked and claimed; yields False when the study has all its trials
        (this or other drivers asked them): the search then ends. Another trial may be asked while a waiting one is
        there (requeued or enqueued: ask() takes it first) or the study has fewer than n_trials (every trial asked
        ends finished, so this caps the finished total)."""
        with study_lock(self.url, self.p.study_name):
            c = counts(self.study)
            n = sum(c.values())
            free = c["WAITING"] > 0 or n < self.p.n_trials
            if free:  # seeded by the number of the trial asked, not per driver: drivers started together draw apart
                self.study.sampler = make_sampler(self.p, n)
            yield free

    def claim(self, ot: optuna.Trial) -> None:
        """Mark a just-asked trial as this driver's (inside slot(): no other driver may requeue it meanwhile)."""
        ot.set_user_attr("ism.owner", owner())
        ot.set_user_attr("ism.beat", time.time())
        self.held[ot.number] = ot

    def beat(self) -> None:
        """Rewrite the heartbeat of every trial this driver holds (a told trial may refuse the write: ignored)."""
        for ot in list(self.held.values()):
            try:
                ot.set_user_attr("ism.beat", time.time())
            except Exception:  # UpdateFinishedTrialError when the trial was told meanwhile; a storage blip waits a beat
                pass

    @contextmanager
    def heartbeat(self, every_s: float = HEARTBEAT_S):
        """A thread beating for the held trials while the search runs."""
        def loop():
            while not self._beat_stop.wait(every_s):
                self.beat()
        t = threading.Thread(target=loop, name="ism-heartbeat", daemon=True)
        t.start()
        try:
            yield
        finally:
            self._beat_stop.set()
            t.join()

    def client(self):
        return tracking.client(self.uri)

    def start(self, ot: optuna.Trial) -> dict[str, Any]:
        """Meta of a trial about to run: its config, run dir and MLflow child run (reused when the trial resumes)."""
        cfg = self.p.config(ot.params)
        rid = run_id(cfg)
        tdir = study_dir(self.root, self.p) / "trials" / f"{ot.number:04d}-{rid}"
        params = self.p.decode(ot.params)
        tags = {"ism.kind": "trial", "ism.study": self.p.spec.name, "ism.spec": self.p.spec.name,
                "ism.profile": self.p.profile, "ism.variant": f"trial-{ot.number}", "ism.seed": str(cfg.run.seed),
                "ism.run_id": rid, "ism.trial_number": str(ot.number), "ism.git_commit": self.git,
                "ism.optuna_study": self.p.study_name, "ism.trial_state": "RUNNING",
                "ism.params": json.dumps(params), "ism.components": ",".join(
                    k for k, on in components(cfg).items() if on) or "none"}
        child = tracking.child_run(self.client(), self.exp, self.parent, tdir, f"trial-{ot.number:04d}", tags, flatten(cfg))
        tracking.set_status(self.client(), child, "SCHEDULED")
        for k, v in {"ism.run_id": rid, "ism.mlflow_run_id": child, "ism.trial_dir": str(tdir)}.items():
            ot.set_user_attr(k, v)
        again = " (resumed)" if ot.user_attrs.get("ism.requeued") else ""
        self.say(f"start #{ot.number}{again} {short_params(params)}")
        return {"number": ot.number, "cfg": to_dict(cfg),
                "trial_dir": str(tdir), "mlflow_run_id": child}

    def finish(self, ot, state: str, value: float | None, reason: str | None = None, quiet: bool = False) -> None:
        """Settle a trial's MLflow run: COMPLETE/PRUNED finish, FAIL fails, INTERRUPTED is killed (it will resume)."""
        self.held.pop(ot.number, None)
        child = ot.user_attrs.get("ism.mlflow_run_id")
        if child:
            c = self.client()
            tdir = Path(ot.user_attrs.get("ism.trial_dir", ""))
            if state in ("PRUNED", "FAIL") and tdir.is_dir():  # stopped mid-run: keep what it wrote (when visible here)
                log = tracking.TrialLog(self.uri, child)
                log.replay_stats(tdir / "stats.jsonl")
                log.artifacts(tdir)
            tracking.set_tag(c, child, "ism.trial_state", state)
            status = MLFLOW_STATUS.get(state, "KILLED")
            tracking.set_status(c, child, status, reason)
        if quiet:
            return
        now = self._state()
        self.progress(now)
        val = "" if value is None or not math.isfinite(value) else f" objective {value:.5g}"
        self.say(f"{state.lower()} #{ot.number}{val}" + (f": {reason}" if reason else ""), now)

    def reconcile(self) -> int:
        """Settle MLflow runs of trials the study finished while their driver died before (or while) logging it;
        returns how many. A live driver's trials are its own to settle."""
        n = 0
        for t in self.study.get_trials(deepcopy=False, states=FINISHED):
            child = t.user_attrs.get("ism.mlflow_run_id")
            run = tracking.get_run(self.client(), child) if child else None
            if run is None or not is_stale(t):
                continue
            # tag and status both: a driver killed between the two leaves the tag right and the run RUNNING
            if run.data.tags.get("ism.trial_state") != t.state.name or run.info.status != MLFLOW_STATUS[t.state.name]:
                self.finish(t, t.state.name, t.value, None, quiet=True)
                n += 1
        return n

    def _state(self) -> tuple[dict[str, int], int, tuple[float, int] | None]:
        """(trial counts by state, finished trials, (best value, its trial number) or None): one storage read."""
        c = counts(self.study)
        try:
            best = self.study.best_trial
            top = (best.value, best.number)
        except ValueError:
            top = None
        return c, sum(c[s.name] for s in FINISHED), top

    def progress(self, state: tuple | None = None) -> None:
        """The parent run's study metrics: trials finished / pruned / failed and the best objective so far."""
        c, done, top = state or self._state()
        metrics = {"trials_finished": done, "trials_pruned": c["PRUNED"], "trials_failed": c["FAIL"]}
        if top is not None:
            metrics["best_objective"] = top[0]
        tracking.log_metrics(self.client(), self.parent, metrics, step=done)

    # What the search tells the study at a trial's end (ism.ablation.ray_adapter.StudySearch), and MLflow with it.
    def reject(self, ot, reason: str) -> None:
        """A sampled point whose config is invalid: FAIL, and the search draws another."""
        self.study.tell(ot, state=TrialState.FAIL)
        self.finish(ot, "FAIL", None, reason)

    def prune(self, ot, step: int | None) -> None:
        """The study's pruner stopped the trial at `step`."""
        self.study.tell(ot, state=TrialState.PRUNED, skip_if_finished=True)
        self.finish(ot, "PRUNED", None, f"pruned at step {step}")

    def fail(self, ot, reason: str | None) -> None:
        """The trial errored or diverged."""
        self.study.tell(ot, state=TrialState.FAIL, skip_if_finished=True)
        self.finish(ot, "FAIL", None, reason)

    def complete(self, ot, value: float) -> None:
        """The trial finished with its objective value."""
        self.study.tell(ot, value, skip_if_finished=True)
        self.finish(ot, "COMPLETE", value)

    def say(self, event: str, state: tuple | None = None) -> None:
        c, done, top = state or self._state()
        best = f", best {top[0]:.5g} (#{top[1]})" if top is not None else ""
        mins = (time.time() - self.start_time) / 60
        print(f"[{self.p.study_name}] {done}/{self.p.n_trials} done ({c['PRUNED']} pruned, {c['FAIL']} failed), "
              f"{c['RUNNING']} running{best} | {mins:.1f} min | {event}", file=sys.stderr, flush=True)


def short_params(params: dict) -> str:
    """'optim.lr=0.003131, ema.decay=0.9995' for a progress line: floats to 4 significant digits (the full values are in
    the trial's MLflow params and the Optuna storage)."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def run_study(p: StudyPlan, url: str, root: Path, tracking_uri: str, cache_root: Path, train_fn=None) -> int:
    """Run (or continue) a study to p.n_trials finished trials; 0 when done, 1 when trials failed, 130 when interrupted.

    tracking_uri: the MLflow store; cache_root: the evaluation cache, absolute (trials run in Ray's directories)."""
    from ism.ablation import ray_adapter  # Ray (seconds to import) loads only when a study runs, not for --dry-run or reports
    with ExitStack() as stack:
        # One driver per study on a local Ray (a second would start another Ray on the same cores); drivers that join
        # one Ray cluster (RAY_ADDRESS) share a study by design (README: Cluster storage).
        if not ray_adapter.joins_cluster():
            stack.enter_context(store.driver_lock(study_dir(root, p), f"study {p.study_name}"))
        return _run_study(p, url, root, tracking_uri, cache_root, train_fn)


def _run_study(p: StudyPlan, url: str, root: Path, tracking_uri: str, cache_root: Path, train_fn) -> int:
    """run_study under its driver lock."""
    from ism.ablation import ray_adapter
    study = open_study(p, url)
    with study_lock(url, p.study_name):  # other drivers may be asking or claiming trials right now
        back = requeue_stale(study)
    uri = tracking.tracking_uri(tracking_uri)
    c = tracking.client(uri)
    git = tracking.git_commit()
    tags = {"ism.kind": "study", "ism.spec": p.spec.name, "ism.study": p.spec.name, "ism.profile": p.profile,
            "ism.sweep_id": p.fingerprint(), "ism.git_commit": git, "ism.preset": p.preset,
            "ism.optuna_storage": dburl.masked(url), "ism.optuna_study": p.study_name,
            "ism.objective": p.objective.describe()}
    params = {"n_trials": p.n_trials, "parallelism": p.parallelism, "direction": p.objective.direction,
              "objective": json.dumps(dict(p.objective.terms)), "space": json.dumps({x.key: x.describe() for x in p.space}),
              "sampler": json.dumps(dict(p.sampler)), "pruner": json.dumps(dict(p.pruner)),
              "resources": json.dumps(dict(p.resources)), "profile": p.profile, "preset": p.preset}
    with study_lock(url, p.study_name):  # drivers started together share one parent run
        prior = study.user_attrs.get("ism.mlflow_parent") or {}
        exp, parent = tracking.start_parent(c, f"ism-study/{p.spec.name}", p.study_name.replace("/", "-"), tags, params,
                                            {"spec.yaml": p.spec.text, "base_config.yaml": dump_yaml(p.base)},
                                            resume_run_id=prior.get(dburl.masked(uri), prior.get(uri)))
        study.set_user_attr("ism.mlflow_parent", {**{k: v for k, v in prior.items() if k != uri},
                                                 dburl.masked(uri): parent})
    books = Bookkeeper(p, study, root, uri, parent, exp, git, url)
    for n in back:
        books.say(f"#{n} was interrupted: re-queued, it resumes from its last checkpoint")
    if books.reconcile():
        books.progress()
    done = sum(counts(study)[s.name] for s in FINISHED)
    todo = max(0, p.n_trials - done)
    books.say(f"storage {dburl.masked(url)}; MLflow {dburl.masked(uri)} experiment ism-study/{p.spec.name} run "
              f"{parent}; {todo} trial(s) to run")
    if todo == 0:
        books.progress()
        tracking.set_status(c, parent, "FINISHED")
        return 0
    errors, stale, interrupted = [], [], False
    objective = {"terms": dict(p.objective.terms), "metric": p.objective.metric, "steps": list(p.objective.steps),
                 "direction": p.objective.direction}
    try:
        with ray_adapter.ray_session(num_cpus=PROFILES[p.profile].cpus or None), books.heartbeat():
            ray_adapter.check_resources(dict(p.resources))
            errors, stale, interrupted = ray_adapter.run_search(
                study, p.distributions(), p.mode, books, todo, p.parallelism, p.resources, study_dir(root, p) / "ray",
                p.spec.max_failures, dict(tracking_uri=uri, train_fn=train_fn, cache_root=str(cache_root),
                                          objective=objective))
    except KeyboardInterrupt:
        interrupted = True
    requeue_stale(study, mine=True)
    for ot in stale:
        books.finish(ot, "INTERRUPTED", None, "the study was interrupted; rerun to resume this trial")
    interrupted = interrupted or bool(stale)
    for e in errors:
        books.say(f"trial error: {e}")
    c_ = counts(study)
    tracking.set_status(c, parent, "KILLED" if interrupted else "FINISHED")
    books.progress()
    books.say("interrupted: rerun the same command to continue" if interrupted else "study finished")
    return 130 if interrupted else 1 if c_["FAIL"] else 0
