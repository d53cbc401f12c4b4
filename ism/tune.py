"""Ray Tune adapter (the only module importing ray): one trial per resolved config, calling ism.train.train.

Resume is keyed by run id, not by Ray's experiment state: a trial is done when its run dir holds summary.json and
its MLflow child run is FINISHED; every other trial is (re)started and train() resumes from the newest checkpoint
in its run dir (or from the copy Ray persisted, when the run dir lost it). This survives Ctrl-C, kill -9 and
lost nodes alike, which Tuner.restore does not promise for a killed driver. Failures are retried by Ray
(FailureConfig.max_failures) and each retry resumes from the last checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable

import ray
from ray import tune as rt
from ray.tune.logger import JsonLoggerCallback

from ism import tracking
from ism.ablate import (Plan, Trial, components, estimate_parts, finished_trials, reused_training, sweep_dir, trained_donor,
                        trial_dir, unstarted)
from ism.config import ConfigError, cache_dir, flatten, from_dict, to_dict

CRASH_ENV = "ISM_INJECT_CRASH"  # "<variant or run id>@<step>": that trial crashes once at that step (tests)
TRAIN_CRASH_ENV = "ISM_INJECT_CRASH_AT_STEP"  # what ism.train reads


# ----------------------------------------------------------------------------------------------- Ray session
@contextmanager
def ray_session(num_cpus: int | None = None):
    """Join the cluster at $RAY_ADDRESS, or start a local Ray on 127.0.0.1 without the dashboard; stop what we started."""
    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network calls from a machine without internet
    # Ray runs workers at nice 15 by default; trials are the work here, and plain `ism train` runs at nice 0.
    os.environ.setdefault("RAY_worker_niceness", "0")
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
        ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", **common)
    try:
        yield
    finally:
        ray.shutdown()


def check_resources(resources: dict[str, float]) -> None:
    """Fail before any trial when no node of the cluster can ever hold one trial."""
    have = ray.cluster_resources()
    short = [f"{key}={resources[key]:g} (cluster: {have.get(ray_key, 0):g})"
             for key, ray_key in (("cpu", "CPU"), ("gpu", "GPU"), ("memory", "memory"))
             if resources.get(key, 0) and have.get(ray_key, 0) < resources[key]]
    if short:
        raise ConfigError(f"resources: a trial needs {', '.join(short)}; join a bigger cluster with "
                          "RAY_ADDRESS=<head>:6379 or pick another --profile")


def _ray_resources(resources: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in resources.items() if v}


# ----------------------------------------------------------------------------------------------- trainable
def _restore_from_ray(run_dir: Path) -> None:
    """Copy the checkpoint Ray persisted into the run dir when it is newer than the run dir's own (lost node)."""
    from ism import checkpoint as ckpt
    saved = rt.get_checkpoint()
    if saved is None:
        return
    have = ckpt.list_checkpoints(run_dir)
    with saved.as_directory() as d:
        found = ckpt.list_checkpoints(Path(d))
        if found and (not have or found[-1][0] > have[-1][0]):
            dst = ckpt.checkpoint_path(run_dir, found[-1][0])
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(found[-1][1], dst)


def hardware(cfg) -> str:
    """What the trial ran on: GPU name when it trains on CUDA, CPU model, cores and torch threads."""
    import platform
    import torch
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
    except OSError:
        cpu = ""
    out = f"{cpu or platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    if torch.cuda.is_available() and cfg.run.device != "cpu":
        out = f"{torch.cuda.get_device_name()}; {out}"
    return out


def _report_checkpoint(metrics: dict, path: str) -> None:
    """Report a checkpoint file to Ray (persisted under the sweep's storage) without copying it twice."""
    with tempfile.TemporaryDirectory(prefix="ism-ckpt-") as tmp:
        dst = Path(tmp) / "checkpoints" / Path(path).name
        dst.parent.mkdir()
        try:
            os.link(path, dst)
        except OSError:
            shutil.copy2(path, dst)
        rt.report(metrics, checkpoint=rt.Checkpoint.from_directory(tmp))


def eval_cache_root() -> str:
    """The evaluation cache (domain classifier, reference statistics) as an absolute path fixed by the driver.

    Ray runs each trial in its own working directory, where the default relative cache would retrain the classifier
    and recompute the reference statistics in every trial; on a cluster the path is per node (set ISM_CACHE to a
    shared disk to train the classifier once).
    """
    return str(cache_dir().resolve())  # from config, not extractors: that import (torch, torchvision) costs ~5 s


def _resumed_at(stats: Path) -> dict[str, float]:
    """{step, loss} of the last stats.jsonl line of an interrupted trial; {} for a fresh one."""
    try:
        last = json.loads(stats.read_text().strip().splitlines()[-1])
        return {"step": int(last["step"]), "loss": float(last.get("loss", float("nan")))}
    except (OSError, IndexError, ValueError, KeyError, TypeError):
        return {}


def _adopt(cfg, run_dir: Path, storage: str | None) -> str | None:
    """Adopt a finished training of the same training config from the storage (see ablate.trained_donors), once;
    returns the donor's run id (also on later attempts), or None."""
    from ism.train import adopt_training
    if storage and unstarted(run_dir):
        donor = trained_donor(cfg, Path(storage))
        if donor is not None:
            adopt_training(run_dir, donor, cfg.run.steps)
    return Path(_read_json(run_dir / "training_from.json").get("run_dir", "")).name or None


def run_trial(payload: dict[str, Any], train_fn: Callable | None = None) -> None:
    """Body of one Tune trial: train (resuming), report to Tune, log to the trial's MLflow child run."""
    import torch
    from ism.train import train as default_train
    from ism.train import Diverged
    train_fn = train_fn or default_train
    permanent = (Diverged, ConfigError)  # deterministic: a retry resumes from the same checkpoint and fails alike
    cfg = from_dict(payload["cfg"])
    torch.set_num_threads(max(1, cfg.run.threads))
    run_dir = Path(payload["trial_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    _restore_from_ray(run_dir)
    donor = _adopt(cfg, run_dir, payload.get("storage"))
    log = tracking.TrialLog(payload["tracking_uri"], payload["mlflow_run_id"])
    log.running()
    log.tag("ism.started_at", f"{time.time():.3f}")  # the run's start_time is its creation, when it was queued
    node = ray.get_runtime_context().get_node_id()
    log.tag("ism.node_id", node)
    log.tag("ism.node_ip", next((n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node), "unknown"))
    log.tag("ism.hardware", hardware(cfg))
    if donor:
        log.tag("ism.training_from", donor)  # trained once by that trial; this one only evaluates
    latest: dict[str, float] = _resumed_at(run_dir / "stats.jsonl")
    if latest:
        rt.report(dict(latest))  # the progress line shows where a resumed trial picks up, not step 0
    evaluated: set[int] = set()

    def callback(kind: str, ev: dict) -> None:
        if kind == "metrics":
            log.metrics(ev["step"], ev["metrics"])
            latest.update(step=ev["step"], loss=ev["metrics"].get("loss", float("nan")))
            rt.report(dict(latest))
        elif kind == "checkpoint":
            _report_checkpoint({**latest, "step": ev["step"]}, ev["path"])
        elif kind == "eval":
            log.eval_metrics(ev["step"], ev["metrics"])
            evaluated.add(ev["step"])
            latest.update({k: v for k, v in ev["metrics"].items() if isinstance(v, (int, float))})
            rt.report(dict(latest))

    evaluator = None
    if cfg.eval.at_end or cfg.eval.every_steps:
        from ism.evaluate import make_evaluator
        evaluator = make_evaluator(cfg, cache_root=payload.get("cache_root"))
    crash = payload.get("crash_at_step")
    if crash is not None:
        os.environ[TRAIN_CRASH_ENV] = str(crash)
    else:
        os.environ.pop(TRAIN_CRASH_ENV, None)
    try:
        summary = train_fn(cfg, run_dir, callback, evaluator)
    except permanent as e:
        reason = f"{type(e).__name__}: {e}"
        log.tag("ism.permanent", "1")
        log.finish("FAILED", reason)
        rt.report({**latest, "failed": 1})
        return
    except BaseException as e:
        log.tag("ism.last_error", f"{type(e).__name__}: {e}"[:5000])
        log.tag("ism.failures", log.failures() + 1)
        log.finish("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")  # the driver records the final reason
        raise
    log.replay_stats(run_dir / "stats.jsonl")   # a run finished by another sweep, or killed while logging
    final_metrics = {k: summary[k] for k in ("wall_time_s", "peak_mem_mb", "final_loss", "params") if k in summary}
    if summary["steps"] not in evaluated:  # finished before this process (another sweep, or killed after eval)
        final_metrics.update(summary.get("metrics", {}))
    log.eval_metrics(summary["steps"], final_metrics)
    log.steps_curves(summary.get("metrics", {}))
    log.artifacts(run_dir)
    log.finish("FINISHED")
    final = {**latest, **{k: v for k, v in summary.get("metrics", {}).items() if isinstance(v, (int, float))},
             "step": summary["steps"], "done": 1}
    rt.report(final)


def _trainable(config: dict, payloads: dict, train_fn=None) -> None:
    """The Tune function trainable: one trial per run id."""
    run_trial(payloads[config["run_id"]], train_fn)


# ----------------------------------------------------------------------------------------------- progress
def _fids(result: dict) -> str:
    """' FID@1 85.2 @4 40.1 @128 20.3' from a trial's latest result (empty before its evaluation)."""
    fids = sorted((int(k.split("_")[2]), v) for k, v in result.items() if k.startswith("fid_steps_") and k.count("_") == 2)
    return (" FID " + " ".join(f"@{n} {v:.1f}" for n, v in fids if n in (1, 4, 128) or len(fids) <= 3)) if fids else ""


class Progress(rt.Callback):
    """Compact terminal progress: trials done / running / failed, latest loss and FID per running trial, ETA."""

    def __init__(self, plan: Plan, pending: list[Trial], done_before: int, every_s: float = 20.0, out=sys.stderr,
                 reused: frozenset[str] = frozenset(), stored: frozenset[str] = frozenset()):
        self.plan, self.out, self.every = plan, out, every_s
        self.by_id = {t.run_id: t for t in pending}
        self.total = len(plan.trials)
        self.done, self.failed, self.retries = done_before, 0, 0
        self.running: dict[str, dict] = {}
        self.start = time.time()
        self.last_print = 0.0
        # A trial finished by another spec's sweep is only logged here: no work, so it cannot speed up the ETA's
        # rate; an adopted training leaves only the evaluation.
        parts = {t.run_id: (0.0, 0.0, 0.0) if t.run_id in stored else
                 (0.0, *estimate_parts(t.cfg, plan.profile)[1:]) if t.run_id in reused else
                 estimate_parts(t.cfg, plan.profile) for t in pending}
        self.work = {rid: sum(p) for rid, p in parts.items()}
        # share of a trial's estimated time spent training (evaluation follows; a guidance sweep makes it long)
        self.train_share = {rid: p[0] / max(sum(p), 1e-9) for rid, p in parts.items()}
        self.finished_work = 0.0

    def _label(self, trial) -> str:
        t = self.by_id.get(trial.config.get("run_id"))
        return t.label if t else str(trial)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running[trial.config["run_id"]] = {}
        self._print(force=True, event=f"start {self._label(trial)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.running[trial.config["run_id"]] = result

    def on_trial_complete(self, iteration, trials, trial, **info):
        rid = trial.config["run_id"]
        self.running.pop(rid, None)
        self.finished_work += self.work.get(rid, 0.0)
        if (trial.last_result or {}).get("failed"):
            self.failed += 1
            self._print(force=True, event=f"FAILED {self._label(trial)} (not retried: the same error would recur)")
            return
        self.done += 1
        self._print(force=True, event=f"done {self._label(trial)}{_fids(trial.last_result or {})}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.retries += 1
        self.running.pop(trial.config["run_id"], None)
        self._print(force=True, event=f"retry {self._label(trial)} (failure {trial.num_failures} of at most "
                                      f"{self.plan.max_failures}; resumes from its last checkpoint)")

    def on_trial_error(self, iteration, trials, trial, **info):
        rid = trial.config["run_id"]
        self.running.pop(rid, None)
        self.failed += 1
        self.finished_work += self.work.get(rid, 0.0)
        self._print(force=True, event=f"FAILED {self._label(trial)}")

    def on_step_end(self, iteration, trials, **info):
        self._print()

    def eta_s(self) -> float | None:
        """Remaining seconds: estimated work left scaled by how fast estimated work has been getting done."""
        part = 0.0
        for rid, res in self.running.items():
            t = self.by_id.get(rid)
            if t and res.get("step") and t.cfg.run.steps:
                part += self.work[rid] * self.train_share[rid] * min(1.0, res["step"] / t.cfg.run.steps)
        done_work = self.finished_work + part
        left = sum(self.work.values()) - done_work
        if done_work <= 0:
            return None
        return left * (time.time() - self.start) / done_work

    def _print(self, force: bool = False, event: str = "") -> None:
        now = time.time()
        if not force and now - self.last_print < self.every:
            return
        self.last_print = now
        eta = self.eta_s()
        head = (f"[{self.plan.spec.name}/{self.plan.profile}] {self.done}/{self.total} done, {len(self.running)} running, "
                f"{self.failed} failed" + (f", {self.retries} retried" if self.retries else "")
                + f" | {(now - self.start) / 60:.1f} min" + (f", ETA {eta / 60:.1f} min" if eta is not None else ""))
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
        print(head + (f" | {event}" if event else "") + ("\n    " + "\n    ".join(parts) if parts else ""),
              file=self.out, flush=True)


# ----------------------------------------------------------------------------------------------- sweep
def _trial_tags(plan: Plan, t: Trial, git: str) -> dict[str, str]:
    comp = components(t.cfg)
    tags = {"ism.kind": "trial", "ism.spec": plan.spec.name, "ism.variant": t.variants[0],
            "ism.variants": ",".join(t.variants), "ism.seed": str(t.seed), "ism.run_id": t.run_id,
            "ism.profile": plan.profile, "ism.sweep_id": plan.sweep_id, "ism.git_commit": git,
            "ism.components": ",".join(k for k, on in comp.items() if on) or "none"}
    tags.update({f"ism.component.{k}": "on" if on else "off" for k, on in comp.items()})
    return tags


def git_commit() -> str:
    """The project's commit (with '+dirty' when tracked files changed), or 'unknown' outside git."""
    import subprocess
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _crash_target(plan: Plan) -> tuple[str, int] | None:
    spec = os.environ.get(CRASH_ENV, "")
    if not spec:
        return None
    who, _, step = spec.rpartition("@")
    if not who or not step.isdigit():
        raise ConfigError(f"{CRASH_ENV}={spec!r}: expected <variant or run id>@<step>, e.g. sm@4")
    return who, int(step)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _open_tracking(plan: Plan, storage: Path, uri: str) -> tuple[Any, str, dict[str, str], list[Trial]]:
    """The sweep's parent run and one child run per trial (reused on reruns); returns the trials still to run."""
    sdir = sweep_dir(storage, plan)
    _write_json(sdir / "plan.json", plan.to_json())
    c = tracking.client(uri)
    git = git_commit()
    stored = _read_json(sdir / "mlflow.json")
    parent_tags = {"ism.kind": "sweep", "ism.spec": plan.spec.name, "ism.profile": plan.profile,
                   "ism.sweep_id": plan.sweep_id, "ism.git_commit": git, "ism.preset": plan.preset}
    params = {"spec": plan.spec.name, "profile": plan.profile, "preset": plan.preset, "trials": len(plan.trials),
              "seeds": list(plan.seeds), "variants": list(plan.variants), "resources": json.dumps(dict(plan.resources)),
              "max_failures": plan.max_failures}
    exp, parent = tracking.start_parent(c, f"ism/{plan.spec.name}", f"{plan.spec.name}-{plan.profile}", parent_tags,
                                        params, {"spec.yaml": plan.spec.text,
                                                 "plan.json": json.dumps(plan.to_json(), indent=2),
                                                 "notes.txt": "\n".join(plan.notes) + "\n"},
                                        stored.get(uri))
    _write_json(sdir / "mlflow.json", {**stored, uri: parent})
    finished = finished_trials(plan, storage)
    children, pending = {}, []
    for t in plan.trials:
        rid = tracking.child_run(c, exp, parent, trial_dir(storage, t.run_id), f"{t.label}-{t.run_id}",
                                 _trial_tags(plan, t, git), flatten(t.cfg))
        children[t.run_id] = rid
        if t.run_id in finished and tracking.status(c, rid) == "FINISHED":
            continue
        tracking.set_status(c, rid, "SCHEDULED")  # also clears a RUNNING left behind by a kill -9
        pending.append(t)
    print(f"[{plan.spec.name}/{plan.profile}] sweep {plan.sweep_id}: {len(plan.trials)} trials, "
          f"{len(plan.trials) - len(pending)} already done, {len(pending)} to run; MLflow {uri} experiment "
          f"ism/{plan.spec.name} run {parent}", file=sys.stderr)
    return c, parent, children, pending


def run_sweep(plan: Plan, storage: Path, tracking_uri: str | None = None, train_fn: Callable | None = None,
              progress_every_s: float = 20.0) -> int:
    """Run (or resume) a sweep; returns 0 when every trial finished, 1 when some failed, 130 when interrupted."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # MLflow holds the results; skip CSV/TBX copies
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ray warns when checkpoints come faster than every 5 s (smoke runs); the snapshots are cheap here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    uri = tracking.tracking_uri(tracking_uri)
    crash = _crash_target(plan)
    with ExitStack() as stack:
        def start_ray() -> None:
            if not ray.is_initialized():
                stack.enter_context(ray_session(num_cpus=_local_cpus(plan)))
            check_resources(dict(plan.resources))  # before any MLflow run when work is known to be left

        stored = frozenset(finished_trials(plan, storage))  # trials run before this sweep (by any spec)
        if stored != {t.run_id for t in plan.trials}:
            start_ray()
        c, parent, children, pending = _open_tracking(plan, storage, uri)
        if not pending:
            tracking.set_status(c, parent, "FINISHED")
            return 0
        # Seed-major order: an interrupted or time-boxed sweep still covers every variant with its first seeds.
        pending = sorted(pending, key=lambda t: t.seed)
        cache = eval_cache_root()
        payloads = {t.run_id: {"cfg": to_dict(t.cfg), "trial_dir": str(trial_dir(storage, t.run_id)),
                               "tracking_uri": uri, "mlflow_run_id": children[t.run_id], "label": t.label,
                               "cache_root": cache, "storage": str(storage),
                               "crash_at_step": crash[1] if crash and crash[0] in (t.run_id, *t.variants) else None}
                    for t in pending}
        progress = Progress(plan, pending, len(plan.trials) - len(pending), every_s=progress_every_s,
                            reused=frozenset(reused_training(plan, storage)),
                            stored=stored)
        errors: dict[str, str] = {}
        interrupted = False
        labels = {t.run_id: f"{t.label.replace('/', '-')}-{t.run_id}" for t in pending}
        # Ray's own advice on interruption (Tuner.restore) does not apply: rerunning the command resumes.
        logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
        try:
            start_ray()
            trainable = rt.with_resources(rt.with_parameters(_trainable, payloads=payloads, train_fn=train_fn),
                                          _ray_resources(dict(plan.resources)))
            tuner = rt.Tuner(
                trainable,
                param_space={"run_id": rt.grid_search([t.run_id for t in pending])},
                tune_config=rt.TuneConfig(trial_name_creator=lambda tr: labels[tr.config["run_id"]],
                                          trial_dirname_creator=lambda tr: labels[tr.config["run_id"]],
                                          reuse_actors=True),  # keeps worker imports (torch, mlflow) warm
                run_config=rt.RunConfig(name=f"ray-{time.strftime('%Y%m%d-%H%M%S')}",
                                        storage_path=str(sweep_dir(storage, plan) / "ray"),
                                        verbose=0, callbacks=[progress, JsonLoggerCallback()],
                                        failure_config=rt.FailureConfig(max_failures=plan.max_failures),
                                        checkpoint_config=rt.CheckpointConfig(num_to_keep=1)))
            for r in tuner.fit():  # fit() does not raise for failed trials: each result carries its error
                if r.error is not None:
                    errors[r.config["run_id"]] = _short_error(r.error)
        except KeyboardInterrupt:
            interrupted = True
        except BaseException as e:  # Ray could not start, the cluster vanished, ...: settle MLflow, then re-raise
            reason = f"sweep aborted: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            _finish(plan, c, parent, children, pending, {t.run_id: reason for t in pending}, False)
            raise
        return _finish(plan, c, parent, children, pending, errors, interrupted)


def _local_cpus(plan: Plan) -> int | None:
    from ism.ablate import PROFILES
    return PROFILES[plan.profile].cpus or None


def _short_error(err: BaseException) -> str:
    """The last meaningful line of a (Ray-wrapped) trial error."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[-1][:2000] if lines else type(err).__name__


def _finish(plan: Plan, c, parent: str, children: dict, pending: list[Trial], errors: dict[str, str],
            interrupted: bool) -> int:
    """Settle every trial's MLflow status (never left RUNNING) and the parent's; print failures with their reasons."""
    failed, killed = [], []
    for t in pending:
        rid = children[t.run_id]
        run = c.get_run(rid)
        st, tags = run.info.status, run.data.tags
        if st == "FINISHED":
            continue
        if t.run_id in errors or (st == "FAILED" and tags.get("ism.permanent")):
            reason = tags.get("ism.error") or tags.get("ism.last_error") or errors[t.run_id]
            if st != "FAILED" or "ism.error" not in tags:
                tracking.set_status(c, rid, "FAILED", reason)
            failed.append((t, reason))
        else:
            tracking.set_status(c, rid, "KILLED", "sweep interrupted before this trial finished; rerun to resume")
            killed.append(t)
    if failed or killed:
        interrupted = interrupted or bool(killed)
    status = "KILLED" if interrupted else "FAILED" if failed else "FINISHED"
    tracking.set_status(c, parent, status, None)
    name = f"[{plan.spec.name}/{plan.profile}]"
    for t, reason in failed:
        print(f"{name} FAILED {' = '.join(t.variants)} seed {t.seed} (run {t.run_id}): {reason}", file=sys.stderr)
    if killed:
        print(f"{name} interrupted: {len(killed)} trial(s) unfinished; rerun the same command to resume", file=sys.stderr)
    n_ok = len(plan.trials) - len(failed) - len(killed)
    print(f"{name} {n_ok}/{len(plan.trials)} trials finished, {len(failed)} failed, {len(killed)} unfinished", file=sys.stderr)
    return 130 if interrupted else 1 if failed else 0
