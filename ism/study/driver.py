"""The study driver: Ray Tune trials asked from the Optuna study (an OptunaSearch on our study, a scheduler that
carries out the study's pruner), each tracked as an MLflow child run; rerunning resumes an interrupted study."""
from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ism import ablate
from ism.config import ConfigError, dump_yaml, flatten, from_dict, run_id, to_dict
from ism.study.plan import StudyPlan
from ism.study.spec import Objective
from ism.study.storage import FINISHED, check_driver, counts, open_study, requeue_stale, study_dir

METRIC = "objective"                 # the value trials report to Tune and log to MLflow


# ----------------------------------------------------------------------------------------------- trials (Ray workers)
def run_trial(config: dict, tracking_uri: str, objective: dict, train_fn=None, cache_root: str | None = None) -> None:
    """Body of one study trial: train with intermediate evaluations, report the objective to Tune, log to MLflow."""
    import torch
    from ray import tune as rt
    from ism import tracking
    from ism.evaluate import make_evaluator
    from ism.train import Diverged, train
    meta = config["_ism"]
    cfg = from_dict(meta["cfg"])
    torch.set_num_threads(max(1, cfg.run.threads))
    obj = Objective(objective["terms"], objective["metric"], tuple(objective["steps"]), objective["direction"])
    log = tracking.TrialLog(tracking_uri, meta["mlflow_run_id"])
    log.running()

    def callback(kind: str, ev: dict) -> None:
        if kind == "metrics":
            log.metrics(ev["step"], ev["metrics"])
        elif kind == "eval":
            value = obj.value(ev["metrics"])
            log.eval_metrics(ev["step"], {**ev["metrics"], METRIC: value})
            if ev["step"] < cfg.run.steps:  # the final value is reported once training and logging are done
                rt.report({METRIC: value, "eval_step": ev["step"], "final": 0})

    run_dir = Path(meta["trial_dir"])
    try:
        summary = (train_fn or train)(cfg, run_dir, callback, make_evaluator(cfg, cache_root))
    except Diverged as e:  # a property of the sampled point, not a fault: no retry, the study records a FAIL
        log.tag("ism.error", str(e))
        rt.report({METRIC: float("nan"), "eval_step": e.step, "final": 1, "diverged": 1})
        return
    except BaseException as e:
        log.tag("ism.error", f"{type(e).__name__}: {e}"[:5000])
        raise
    value = obj.value(summary["metrics"])
    log.replay_stats(run_dir / "stats.jsonl")
    log.eval_metrics(summary["steps"], {**summary["metrics"], METRIC: value,
                                        **{k: summary[k] for k in ("wall_time_s", "peak_mem_mb") if k in summary}})
    log.artifacts(run_dir)
    rt.report({METRIC: value, "eval_step": summary["steps"], "final": 1})


# ----------------------------------------------------------------------------------------------- driver
class Bookkeeper:
    """Driver-side records of trials: run dirs, MLflow child runs, Optuna user attrs, terminal progress lines."""

    def __init__(self, p: StudyPlan, study: optuna.Study, root: Path, uri: str, parent: str, exp: str, git: str):
        self.p, self.study, self.root, self.uri, self.parent, self.exp, self.git = p, study, root, uri, parent, exp, git
        self.start_time = time.time()

    def client(self):
        from ism import tracking
        return tracking.client(self.uri)

    def start(self, ot: optuna.Trial) -> dict[str, Any]:
        """Meta of a trial about to run: its config, run dir and MLflow child run (reused when the trial resumes)."""
        from ism import tracking
        cfg = self.p.config(ot.params)
        rid = run_id(cfg)
        tdir = study_dir(self.root, self.p) / "trials" / f"{ot.number:04d}-{rid}"
        params = self.p.decode(ot.params)
        tags = {"ism.kind": "trial", "ism.study": self.p.spec.name, "ism.spec": self.p.spec.name,
                "ism.profile": self.p.profile, "ism.variant": f"trial-{ot.number}", "ism.seed": str(cfg.run.seed),
                "ism.run_id": rid, "ism.trial_number": str(ot.number), "ism.git_commit": self.git,
                "ism.optuna_study": self.p.study_name, "ism.trial_state": "RUNNING",
                "ism.params": json.dumps(params), "ism.components": ",".join(
                    k for k, on in ablate.components(cfg).items() if on) or "none"}
        child = tracking.child_run(self.client(), self.exp, self.parent, tdir, f"trial-{ot.number:04d}", tags, flatten(cfg))
        tracking.set_status(self.client(), child, "SCHEDULED")
        for k, v in {"ism.run_id": rid, "ism.mlflow_run_id": child, "ism.trial_dir": str(tdir)}.items():
            ot.set_user_attr(k, v)
        again = " (resumed)" if ot.user_attrs.get("ism.requeued") else ""
        self.say(f"start #{ot.number}{again} {json.dumps(params)}")
        return {"number": ot.number, "cfg": to_dict(cfg),
                "trial_dir": str(tdir), "mlflow_run_id": child}

    def finish(self, ot, state: str, value: float | None, reason: str | None = None, quiet: bool = False) -> None:
        """Settle a trial's MLflow run: COMPLETE/PRUNED finish, FAIL fails, INTERRUPTED is killed (it will resume)."""
        from ism import tracking
        child = ot.user_attrs.get("ism.mlflow_run_id")
        if child:
            c = self.client()
            tdir = Path(ot.user_attrs.get("ism.trial_dir", ""))
            if state in ("PRUNED", "FAIL") and tdir.is_dir():  # stopped mid-run: keep what it wrote (when visible here)
                log = tracking.TrialLog(self.uri, child)
                log.replay_stats(tdir / "stats.jsonl")
                log.artifacts(tdir)
            tracking._retry(c.set_tag, child, "ism.trial_state", state)
            status = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}.get(state, "KILLED")
            tracking.set_status(c, child, status, reason)
        if quiet:
            return
        now = self._state()
        self.progress(now)
        val = "" if value is None or not math.isfinite(value) else f" objective {value:.5g}"
        self.say(f"{state.lower()} #{ot.number}{val}" + (f": {reason}" if reason else ""), now)

    def reconcile(self) -> int:
        """Settle MLflow runs of trials the study finished while the driver died before logging it; returns how many."""
        from ism import tracking
        n = 0
        for t in self.study.get_trials(deepcopy=False, states=FINISHED):
            child = t.user_attrs.get("ism.mlflow_run_id")
            run = tracking.get_run(self.client(), child) if child else None
            if run is None:
                continue
            if run.data.tags.get("ism.trial_state") != t.state.name:
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
        from ism import tracking
        c, done, top = state or self._state()
        metrics = {"trials_finished": done, "trials_pruned": c["PRUNED"], "trials_failed": c["FAIL"]}
        if top is not None:
            metrics["best_objective"] = top[0]
        tracking.log_metrics(self.client(), self.parent, metrics, step=done)

    def say(self, event: str, state: tuple | None = None) -> None:
        c, done, top = state or self._state()
        best = f", best {top[0]:.5g} (#{top[1]})" if top is not None else ""
        mins = (time.time() - self.start_time) / 60
        print(f"[{self.p.study_name}] {done}/{self.p.n_trials} done ({c['PRUNED']} pruned, {c['FAIL']} failed), "
              f"{c['RUNNING']} running{best} | {mins:.1f} min | {event}", file=sys.stderr, flush=True)


_CLASSES: dict[str, type] = {}


def _tune_classes() -> tuple[type, type]:
    """(StudySearch, PruneScheduler), built on first use: ray.tune takes seconds to import, and --dry-run,
    --export-best and spec checks do not need it."""
    if _CLASSES:
        return _CLASSES["search"], _CLASSES["scheduler"]
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler
    from ray.tune.search.optuna import OptunaSearch

    class StudySearch(OptunaSearch):
        """OptunaSearch on a study we opened: our pruner (OptunaSearch would make one with NopPruner), and trial
        endings told by what happened (OptunaSearch tells COMPLETE with the last intermediate value when Tune stops a
        trial on interrupt, and COMPLETE for an errored trial that had reported)."""

        def __init__(self, study: optuna.Study, p: StudyPlan, books: Bookkeeper):
            self._given, self._books, self._pruned, self._requeue, self._step = study, books, set(), [], {}
            super().__init__(space=p.distributions(), metric=METRIC, mode=p.mode, sampler=study.sampler,
                             study_name=study.study_name)

        def _setup_study(self, mode):
            self._ot_study = self._given

        def suggest(self, trial_id: str):
            for _ in range(20):  # a sampled point whose config is invalid (a cross-key rule) fails and is redrawn
                params = super().suggest(trial_id)
                ot = self._ot_trials[trial_id]
                try:
                    return {**params, "_ism": self._books.start(ot)}
                except ConfigError as e:
                    self._ot_study.tell(ot, state=TrialState.FAIL)
                    self._books.finish(ot, "FAIL", None, f"invalid config: {e}")
                    del self._ot_trials[trial_id]
            raise ConfigError(f"{self._given.study_name}: 20 sampled points in a row gave invalid configs; narrow the space")

        def on_trial_result(self, trial_id: str, result: dict):
            pass  # intermediate values reach Optuna through the scheduler, which sees results first and may stop the trial

        def report(self, trial_id: str, result: dict) -> bool:
            """Store an intermediate value in the study; True when the study's pruner prunes the trial."""
            ot = self._ot_trials.get(trial_id)
            if ot is None or result.get("final") or METRIC not in result:
                return False
            ot.report(float(result[METRIC]), int(result["eval_step"]))
            self._step[trial_id] = int(result["eval_step"])
            if ot.should_prune():
                self._pruned.add(trial_id)
                return True
            return False

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
            ot = self._ot_trials.get(trial_id)
            if ot is None or trial_id in self._completed_trials:
                return
            self._completed_trials.add(trial_id)
            if trial_id in self._pruned:
                self._ot_study.tell(ot, state=TrialState.PRUNED, skip_if_finished=True)
                self._books.finish(ot, "PRUNED", None, f"pruned at step {self._step.get(trial_id)}")
            elif error:
                self._ot_study.tell(ot, state=TrialState.FAIL, skip_if_finished=True)
                self._books.finish(ot, "FAIL", None)
            elif result and result.get("final"):
                value = float(result[METRIC])
                if math.isfinite(value):
                    ot.report(value, int(result["eval_step"]))
                    self._ot_study.tell(ot, value, skip_if_finished=True)
                    self._books.finish(ot, "COMPLETE", value)
                else:
                    self._ot_study.tell(ot, state=TrialState.FAIL, skip_if_finished=True)
                    self._books.finish(ot, "FAIL", None, f"diverged at step {result.get('eval_step')}")
            else:  # stopped by an interrupt before its final result: it resumes on the next run
                self._requeue.append(ot)

        def unfinished(self) -> list:
            """Trials asked from the study but never told (interrupted)."""
            return [ot for tid, ot in self._ot_trials.items() if tid not in self._completed_trials] + self._requeue

        # The Optuna storage is the state; Ray never restores this searcher, so its checkpoint is only a note.
        def save(self, checkpoint_path: str):
            Path(checkpoint_path).write_text(json.dumps({"study": self._given.study_name, "state": "optuna storage"}))

        def restore(self, checkpoint_path: str):
            raise NotImplementedError("a study resumes by rerunning `ism study` (state lives in the Optuna storage)")

        def __getstate__(self):  # Tune pickles its config (tuner.pkl); the study, MLflow client and trials stay here
            return {"_metric": self._metric, "_mode": self._mode, "study_name": self._given.study_name}

    class PruneScheduler(FIFOScheduler):
        """Stops a trial when the study's pruner says so (Tune schedulers keep their state in memory; Optuna's
        pruners read the intermediate values stored in the study, so decisions hold across restarts)."""

        def __init__(self, search: StudySearch):
            super().__init__()
            self.search = search

        def on_trial_result(self, tune_controller, trial, result):
            return TrialScheduler.STOP if self.search.report(trial.trial_id, result) else TrialScheduler.CONTINUE

        def __getstate__(self):
            return {}

    _CLASSES.update(search=StudySearch, scheduler=PruneScheduler)
    return StudySearch, PruneScheduler


def run_study(p: StudyPlan, url: str, root: Path, tracking_uri: str | None = None, train_fn=None) -> int:
    """Run (or continue) a study to p.n_trials finished trials; 0 when done, 1 when trials failed, 130 when interrupted."""
    from ray import tune as rt
    from ray.tune.logger import JsonLoggerCallback
    from ism import tracking, tune
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    study = open_study(p, url)
    check_driver(study)
    study.set_user_attr("ism.driver", {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()})
    back = requeue_stale(study)
    uri = tracking.tracking_uri(tracking_uri)
    c = tracking.client(uri)
    git = tune.git_commit()
    tags = {"ism.kind": "study", "ism.spec": p.spec.name, "ism.study": p.spec.name, "ism.profile": p.profile,
            "ism.sweep_id": p.fingerprint(), "ism.git_commit": git, "ism.preset": p.preset,
            "ism.optuna_storage": url, "ism.optuna_study": p.study_name, "ism.objective": p.objective.describe()}
    params = {"n_trials": p.n_trials, "parallelism": p.parallelism, "direction": p.objective.direction,
              "objective": json.dumps(dict(p.objective.terms)), "space": json.dumps({x.key: x.describe() for x in p.space}),
              "sampler": json.dumps(dict(p.sampler)), "pruner": json.dumps(dict(p.pruner)),
              "resources": json.dumps(dict(p.resources)), "profile": p.profile, "preset": p.preset}
    prior = study.user_attrs.get("ism.mlflow_parent") or {}
    exp, parent = tracking.start_parent(c, f"ism-study/{p.spec.name}", p.study_name.replace("/", "-"), tags, params,
                                        {"spec.yaml": p.spec.text, "base_config.yaml": dump_yaml(p.base)},
                                        resume_run_id=prior.get(uri))
    study.set_user_attr("ism.mlflow_parent", {**prior, uri: parent})
    books = Bookkeeper(p, study, root, uri, parent, exp, git)
    for n in back:
        books.say(f"#{n} was interrupted: re-queued, it resumes from its last checkpoint")
    if books.reconcile():
        books.progress()
    done = sum(counts(study)[s.name] for s in FINISHED)
    todo = max(0, p.n_trials - done)
    books.say(f"storage {url}; MLflow {uri} experiment ism-study/{p.spec.name} run {parent}; {todo} trial(s) to run")
    if todo == 0:
        books.progress()
        tracking.set_status(c, parent, "FINISHED")
        return 0
    StudySearch, PruneScheduler = _tune_classes()
    search = StudySearch(study, p, books)
    interrupted = False
    errors: list[str] = []
    sdir = study_dir(root, p)
    try:
        with tune.ray_session(num_cpus=ablate.PROFILES[p.profile].cpus or None):
            tune.check_resources(dict(p.resources))
            trainable = rt.with_resources(
                rt.with_parameters(run_trial, tracking_uri=uri, train_fn=train_fn, cache_root=tune.eval_cache_root(),
                                   objective={"terms": dict(p.objective.terms), "metric": p.objective.metric,
                                              "steps": list(p.objective.steps), "direction": p.objective.direction}),
                {k: v for k, v in p.resources.items() if v})
            tuner = rt.Tuner(trainable, param_space={}, tune_config=rt.TuneConfig(
                search_alg=search, scheduler=PruneScheduler(search), num_samples=todo,
                max_concurrent_trials=p.parallelism, reuse_actors=True,
                trial_name_creator=lambda t: f"trial-{t.config['_ism']['number']:04d}",
                trial_dirname_creator=lambda t: f"trial-{t.config['_ism']['number']:04d}-{t.trial_id}"),
                run_config=rt.RunConfig(name=f"ray-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=str(sdir / "ray"),
                                        verbose=0, callbacks=[JsonLoggerCallback()],
                                        failure_config=rt.FailureConfig(max_failures=p.spec.max_failures)))
            results = tuner.fit()
            errors = [tune._short_error(r.error) for r in results if r.error is not None]
    except KeyboardInterrupt:
        interrupted = True
    stale = search.unfinished()
    requeue_stale(study)
    for ot in stale:
        books.finish(ot, "INTERRUPTED", None, "the study was interrupted; rerun to resume this trial")
    interrupted = interrupted or bool(stale)
    for e in errors:
        books.say(f"trial error: {e}")
    c_ = counts(study)
    tracking.set_status(c, parent, "KILLED" if interrupted else "FINISHED")
    study.set_user_attr("ism.driver", {})
    books.progress()
    books.say("interrupted: rerun the same command to continue" if interrupted else "study finished")
    return 130 if interrupted else 1 if c_["FAIL"] else 0
