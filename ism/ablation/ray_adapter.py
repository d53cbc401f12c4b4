"""The Ray adapter, the only module importing ray, for ablations and studies alike: the session (join $RAY_ADDRESS or
start a local Ray), the resource check, the Tuner for a grid of run ids (sweeps) or for an Optuna search (studies),
the trainables that run ism.ablation.trials' bodies with Ray's report/checkpoint hooks, and the results.

Resume is ism's, not Ray's: the sweep driver (ism.ablation.driver) and the study driver (ism.study.driver) decide what is left
from run dirs, MLflow and the Optuna storage, and each trial resumes from the newest checkpoint in its run dir (or
from the copy Ray persisted, when the run dir lost it); Ray retries failures (FailureConfig.max_failures).
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Mapping

import ray
from ray import tune as rt
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from ism.system import procs, store
from ism.conf.config import ConfigError
from ism.ablation.trial_objective import METRIC


def _quiet_env() -> None:
    """Ray and Tune settings of this project, unless the user set them: no usage stats (machines without internet),
    workers at nice 0 (trials are the work here, as plain `ism train` runs at nice 0), no CSV/TensorBoard copies of
    results (MLflow holds them), the classic output, and no warning about frequent checkpoints (cheap here)."""
    for key, value in (("RAY_USAGE_STATS_ENABLED", "0"), ("RAY_worker_niceness", "0"),
                       ("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1"), ("RAY_AIR_NEW_OUTPUT", "0"),
                       ("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")):
        os.environ.setdefault(key, value)


# ----------------------------------------------------------------------------------------------- session
@contextmanager
def ray_session(num_cpus: int | None = None):
    """Join the cluster at $RAY_ADDRESS, or start a local Ray on 127.0.0.1 without the dashboard; stop what we started."""
    if ray.is_initialized():
        yield
        return
    _quiet_env()
    address = os.environ.get("RAY_ADDRESS")
    common = dict(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    if address:
        local = any(h in address for h in ("127.0.0.1", "localhost"))
        try:
            ray.init(address=address, **common, **({"_node_ip_address": "127.0.0.1"} if local else {}))
        except (ConnectionError, ray.exceptions.AuthenticationError) as e:
            # Ray 2.60 turns token auth on for `ray start --head` but never for an explicit address: every node and
            # the driver need the same RAY_AUTH_MODE (and the head's ~/.ray/auth_token or RAY_AUTH_TOKEN).
            raise ConfigError(f"RAY_ADDRESS={address}: could not join the Ray cluster ({str(e).splitlines()[0]}). "
                              "If the head uses token authentication (Ray's default), set RAY_AUTH_MODE=token here and "
                              "on every node, with the head's ~/.ray/auth_token copied or RAY_AUTH_TOKEN set") from None
    else:
        procs.reap_descendants_on_exit()  # Ray's daemons, agents and workers die with this driver, kill -9 included
        ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", **common)
    try:
        yield
    finally:
        ray.shutdown()


def joins_cluster() -> bool:
    """A session joins the Ray cluster at $RAY_ADDRESS rather than starting a local Ray."""
    return bool(os.environ.get("RAY_ADDRESS"))


def is_running() -> bool:
    """A Ray session is up in this process."""
    return ray.is_initialized()


def check_resources(resources: Mapping[str, float]) -> None:
    """Fail before any trial when no node of the cluster can ever hold one trial."""
    have = ray.cluster_resources()
    short = [f"{key}={resources[key]:g} (cluster: {have.get(ray_key, 0):g})"
             for key, ray_key in (("cpu", "CPU"), ("gpu", "GPU"), ("memory", "memory"))
             if resources.get(key, 0) and have.get(ray_key, 0) < resources[key]]
    if short:
        raise ConfigError(f"resources: a trial needs {', '.join(short)}; join a bigger cluster with "
                          "RAY_ADDRESS=<head>:6379 or pick another --profile")


def short_error(err: BaseException) -> str:
    """The last meaningful line of a (Ray-wrapped) trial error."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[-1][:2000] if lines else type(err).__name__


# ----------------------------------------------------------------------------------------------- trainables
class RayHooks:
    """What a trial body (ism.ablation.trials) needs from Ray inside a worker."""

    def report(self, metrics: dict) -> None:
        rt.report(metrics)

    def report_checkpoint(self, metrics: dict, path: str) -> None:
        """Report a checkpoint file (persisted under the sweep's storage) without copying it twice."""
        with tempfile.TemporaryDirectory(prefix="ism-ckpt-") as tmp:
            dst = Path(tmp) / "checkpoints" / Path(path).name
            dst.parent.mkdir()
            try:
                os.link(path, dst)
            except OSError:
                shutil.copy2(path, dst)
            rt.report(metrics, checkpoint=rt.Checkpoint.from_directory(tmp))

    def restore(self, run_dir: Path) -> None:
        """Copy the checkpoint Ray persisted into the run dir when it is newer than the run dir's own (lost node)."""
        saved = rt.get_checkpoint()
        if saved is None:
            return
        with saved.as_directory() as d:
            store.adopt_newer_checkpoint(run_dir, Path(d))

    def node(self) -> tuple[str, str]:
        node = ray.get_runtime_context().get_node_id()
        return node, next((n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node), "unknown")


# The trial bodies import torch, torchvision and mlflow: loaded in the workers only, never in the driver (~5 s).
def _sweep_trainable(config: dict, payloads: dict, train_fn=None) -> None:
    """Tune's function trainable of a sweep: the ablation trial of this run id."""
    from ism.ablation.trials import ablation_trial
    ablation_trial(payloads[config["run_id"]], RayHooks(), train_fn)


def _study_trainable(config: dict, tracking_uri: str, objective: dict, train_fn=None, cache_root: str | None = None) -> None:
    """Tune's function trainable of a study: the trial the search asked for."""
    from ism.ablation.trials import study_trial
    study_trial(config["_ism"], RayHooks(), tracking_uri, objective, train_fn, cache_root)


class _Forward(rt.Callback):
    """Tune's trial events forwarded to a plain observer (ism.ablation.progress.Progress)."""

    def __init__(self, observer):
        self.observer = observer

    def on_trial_start(self, iteration, trials, trial, **info):
        self.observer.on_trial_start(iteration, trials, trial, **info)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.observer.on_trial_result(iteration, trials, trial, result, **info)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.observer.on_trial_complete(iteration, trials, trial, **info)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.observer.on_trial_recover(iteration, trials, trial, **info)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.observer.on_trial_error(iteration, trials, trial, **info)

    def on_step_end(self, iteration, trials, **info):
        self.observer.on_step_end(iteration, trials, **info)


def _run_config(storage_path: Path, max_failures: int, callbacks: list, **kw) -> rt.RunConfig:
    """Tune's run config: storage, quiet output, JSON results, retries."""
    return rt.RunConfig(name=f"ray-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=str(storage_path), verbose=0,
                        callbacks=[*callbacks, JsonLoggerCallback()],
                        failure_config=rt.FailureConfig(max_failures=max_failures), **kw)


def run_grid(payloads: Mapping[str, dict], labels: Mapping[str, str], resources: Mapping[str, float],
             storage_path: Path, max_failures: int, observer, train_fn: Callable | None = None) -> dict[str, str]:
    """One trial per run id (payloads: run id -> ism.ablation.trials.ablation_trial payload, in launch order); returns
    {run id: error} of the failed ones. Needs a running session (ray_session)."""
    # Ray's own advice on interruption (Tuner.restore) does not apply: rerunning the command resumes.
    logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
    trainable = rt.with_resources(rt.with_parameters(_sweep_trainable, payloads=dict(payloads), train_fn=train_fn),
                                  {k: v for k, v in resources.items() if v})
    tuner = rt.Tuner(
        trainable, param_space={"run_id": rt.grid_search(list(payloads))},
        tune_config=rt.TuneConfig(trial_name_creator=lambda tr: labels[tr.config["run_id"]],
                                  trial_dirname_creator=lambda tr: labels[tr.config["run_id"]],
                                  reuse_actors=True),  # keeps worker imports (torch, mlflow) warm
        run_config=_run_config(storage_path, max_failures, [_Forward(observer)],
                               checkpoint_config=rt.CheckpointConfig(num_to_keep=1)))
    errors = {}
    for r in tuner.fit():  # fit() does not raise for failed trials: each result carries its error
        if r.error is not None:
            errors[r.config["run_id"]] = short_error(r.error)
    return errors


# ----------------------------------------------------------------------------------------------- studies
class StudySearch(OptunaSearch):
    """OptunaSearch on a study we opened: our pruner (OptunaSearch would make one with NopPruner), and trial endings
    told by what happened (OptunaSearch tells COMPLETE with the last intermediate value when Tune stops a trial on
    interrupt, and COMPLETE for an errored trial that had reported). `books` (ism.study.driver.Bookkeeper) tells the
    study and settles MLflow: slot() -> may a trial be asked (under the study's lock), claim(ot), start(ot) -> trial
    meta, reject / prune / fail / complete(ot, ...). The search ends when the study holds all its trials, so several
    drivers of one study stop at exactly n_trials."""

    def __init__(self, study, space: dict, mode: str, books):
        self._given, self._books, self._pruned, self._requeue, self._step = study, books, set(), [], {}
        super().__init__(space=space, metric=METRIC, mode=mode, sampler=study.sampler, study_name=study.study_name)

    def _setup_study(self, mode):
        self._ot_study = self._given

    def suggest(self, trial_id: str):
        for _ in range(20):  # a sampled point whose config is invalid (a cross-key rule) fails and is redrawn
            with self._books.slot() as free:  # other drivers of the study may be asking too
                if not free:
                    return Searcher.FINISHED
                params = super().suggest(trial_id)
                ot = self._ot_trials[trial_id]
                self._books.claim(ot)
            try:
                return {**params, "_ism": self._books.start(ot)}
            except ConfigError as e:
                self._books.reject(ot, f"invalid config: {e}")
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
            self._books.prune(ot, self._step.get(trial_id))
        elif error:
            self._books.fail(ot, None)
        elif result and result.get("final"):
            value = float(result[METRIC])
            if math.isfinite(value):
                ot.report(value, int(result["eval_step"]))
                self._books.complete(ot, value)
            else:
                self._books.fail(ot, f"diverged at step {result.get('eval_step')}")
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
    """Stops a trial when the study's pruner says so (Tune schedulers keep their state in memory; Optuna's pruners
    read the intermediate values stored in the study, so decisions hold across restarts)."""

    def __init__(self, search: StudySearch):
        super().__init__()
        self.search = search

    def on_trial_result(self, tune_controller, trial, result):
        return TrialScheduler.STOP if self.search.report(trial.trial_id, result) else TrialScheduler.CONTINUE

    def __getstate__(self):
        return {}


def run_search(study, space: dict, mode: str, books, todo: int, parallelism: int, resources: Mapping[str, float],
               storage_path: Path, max_failures: int, trainable_kw: dict[str, Any]) -> tuple[list[str], list, bool]:
    """Ask `todo` trials of the Optuna study through Tune; returns (trial errors, trials asked but never told,
    interrupted by Ctrl-C). Needs a running session (ray_session)."""
    search = StudySearch(study, space, mode, books)
    errors: list[str] = []
    interrupted = False
    try:
        trainable = rt.with_resources(rt.with_parameters(_study_trainable, **trainable_kw),
                                      {k: v for k, v in resources.items() if v})
        tuner = rt.Tuner(trainable, param_space={}, tune_config=rt.TuneConfig(
            search_alg=search, scheduler=PruneScheduler(search), num_samples=todo,
            max_concurrent_trials=parallelism, reuse_actors=True,
            trial_name_creator=lambda t: f"trial-{t.config['_ism']['number']:04d}",
            trial_dirname_creator=lambda t: f"trial-{t.config['_ism']['number']:04d}-{t.trial_id}"),
            run_config=_run_config(storage_path, max_failures, []))
        errors = [short_error(r.error) for r in tuner.fit() if r.error is not None]
    except KeyboardInterrupt:
        interrupted = True
    return errors, search.unfinished(), interrupted
