"""The ablation sweep driver: a plan's parent and child MLflow runs (reused on reruns), the trials still to run
(a trial is done when its run dir holds summary.json and its child run is FINISHED), the Tuner through the Ray
adapter, and every run's final MLflow status, never left RUNNING.

Resume is keyed by run id, not by Ray's experiment state: rerunning the command after Ctrl-C, kill -9 or a lost node
starts every unfinished trial again, and train() resumes it from its newest checkpoint.
"""
from __future__ import annotations

import json
import math
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

from ism.system import accounting, dburl, store
from ism.conf import metric_keys
from ism.ablation import adaptive, ray_adapter
from ism import tracking
from ism.ablation.plan import Plan, Trial, components, finished_trials, phases, reused_training, sweep_dir, teacher_of
from ism.conf.config import flatten, to_dict
from ism.conf.profiles import PROFILES
from ism.ablation.progress import Progress


def _trial_tags(plan: Plan, t: Trial, git: str) -> dict[str, str]:
    """MLflow tags of a trial's child run: spec, variants, seed, run id, profile, components."""
    comp = components(t.cfg)
    tags = {"ism.kind": "trial", "ism.spec": plan.spec.name, "ism.variant": t.variants[0],
            "ism.variants": ",".join(t.variants), "ism.seed": str(t.seed), "ism.run_id": t.run_id,
            "ism.profile": plan.profile, "ism.sweep_id": plan.sweep_id, "ism.git_commit": git,
            "ism.components": ",".join(k for k, on in comp.items() if on) or "none"}
    tags.update({f"ism.component.{k}": "on" if on else "off" for k, on in comp.items()})
    return tags


def _open_tracking(plan: Plan, storage: Path, uri: str) -> tuple[Any, str, dict[str, str], list[Trial]]:
    """The sweep's parent run and one child run per trial (reused on reruns); returns the trials still to run."""
    sdir = sweep_dir(storage, plan)
    store.write_json(sdir / "plan.json", plan.to_json())
    c = tracking.client(uri)
    git = tracking.git_commit()
    stored = store.read_json(sdir / "mlflow.json")
    key = dburl.masked(uri)  # the store's URI names the parent run there, never with its password
    parent_tags = {"ism.kind": "sweep", "ism.spec": plan.spec.name, "ism.profile": plan.profile,
                   "ism.sweep_id": plan.sweep_id, "ism.git_commit": git, "ism.preset": plan.preset}
    params = {"spec": plan.spec.name, "profile": plan.profile, "preset": plan.preset, "trials": len(plan.trials),
              "seeds": list(plan.seeds), "variants": list(plan.variants), "resources": json.dumps(dict(plan.resources)),
              "max_failures": plan.max_failures}
    exp, parent = tracking.start_parent(c, f"ism/{plan.spec.name}", f"{plan.spec.name}-{plan.profile}", parent_tags,
                                        params, {"spec.yaml": plan.spec.text,
                                                 "plan.json": json.dumps(plan.to_json(), indent=2),
                                                 "notes.txt": "\n".join(plan.notes) + "\n"},
                                        stored.get(key, stored.get(uri)))
    store.write_json(sdir / "mlflow.json", {**{k: v for k, v in stored.items() if k != uri}, key: parent})
    finished = finished_trials(plan, storage)
    children, pending = {}, []
    for t in plan.active:
        rid = tracking.child_run(c, exp, parent, store.trial_dir(storage, t.run_id), f"{t.label}-{t.run_id}",
                                 _trial_tags(plan, t, git), flatten(t.cfg))
        children[t.run_id] = rid
        if t.run_id in finished and tracking.status(c, rid) == "FINISHED":
            continue
        tracking.set_status(c, rid, "SCHEDULED")  # also clears a RUNNING left behind by a kill -9
        pending.append(t)
    print(f"[{plan.spec.name}/{plan.profile}] sweep {plan.sweep_id}: {len(plan.active)} trials, "
          f"{len(plan.active) - len(pending)} already done, {len(pending)} to run; MLflow {dburl.masked(uri)} "
          f"experiment ism/{plan.spec.name} run {parent}", file=sys.stderr)
    return c, parent, children, pending


def record_plan(plan: Plan, storage: Path, tracking_uri: str) -> bool:
    """Write the plan (with its adaptive record) to the sweep's folder and its parent run, running nothing; False when
    the sweep has no parent run in this store yet."""
    uri = tracking.tracking_uri(tracking_uri)
    sdir = sweep_dir(storage, plan)
    parent = store.read_json(sdir / "mlflow.json").get(dburl.masked(uri))
    c = tracking.client(uri)
    if not parent or tracking.status(c, parent) is None:
        return False
    store.write_json(sdir / "plan.json", plan.to_json())
    tracking._retry(c.log_text, parent, json.dumps(plan.to_json(), indent=2), "plan.json")
    return True


# Over 60 lines on purpose: one ExitStack owns the driver lock, Ray, the MLflow parent and the progress thread for the whole
# sweep; their setup and teardown order is the point.
def run_sweep(plan: Plan, storage: Path, tracking_uri: str, cache_root: Path, crash: tuple[str, int] | None = None,
              train_fn: Callable | None = None, progress_every_s: float = 20.0) -> int:
    """Run (or resume) a sweep; returns 0 when every trial finished, 1 when some failed, 130 when interrupted.

    cache_root: the evaluation cache, absolute (trials run in Ray's working directories); crash: (variant or run id,
    step) for fault-injection tests: that trial crashes once at that step."""
    uri = tracking.tracking_uri(tracking_uri)
    started = time.perf_counter()  # the sweep's wall span, for the machine account
    with ExitStack() as stack:
        # One driver per sweep: a second one would train the same trials in the same run dirs (before Ray starts).
        stack.enter_context(store.driver_lock(sweep_dir(storage, plan), f"sweep {plan.spec.name}/{plan.profile}"))
        def start_ray() -> None:
            if not ray_adapter.is_running():
                stack.enter_context(ray_adapter.ray_session(num_cpus=PROFILES[plan.profile].cpus or None))
            ray_adapter.check_resources(dict(plan.resources))  # before any MLflow run when work is known to be left

        stored = frozenset(finished_trials(plan, storage))  # trials run before this sweep (by any spec)
        if not {t.run_id for t in plan.active} <= stored:
            start_ray()
        c, parent, children, pending = _open_tracking(plan, storage, uri)
        if not pending:
            tracking.log_sweep_summary(c, parent, summary_rows(plan, c, children))
            tracking.set_status(c, parent, "FINISHED")
            return 0
        # The headline pair at every seed, then seed-major: an interrupted or time-boxed pass has decided what the
        # report leads with and covers every variant with its first seeds (the adaptive pass's scope is a set).
        pending = adaptive.launch_order(plan, pending)
        payloads = {t.run_id: {"cfg": to_dict(t.cfg), "trial_dir": str(store.trial_dir(storage, t.run_id)),
                               "tracking_uri": uri, "mlflow_run_id": children[t.run_id], "cache_root": str(cache_root),
                               "storage": str(storage),
                               "crash_at_step": crash[1] if crash and crash[0] in (t.run_id, *t.variants) else None}
                    for t in pending}
        progress = Progress(plan, pending, len(plan.active) - len(pending), every_s=progress_every_s,
                            reused=frozenset(reused_training(plan, storage)), stored=stored, timings=storage)
        errors: dict[str, str] = {}
        interrupted = False
        labels = {t.run_id: f"{t.label.replace('/', '-')}-{t.run_id}" for t in pending}
        try:
            start_ray()
            # Reflow teachers first: one grid per phase, a phase's students only once their teachers finished.
            # Tune returns normally from an interrupted grid, so a teacher neither finished nor failed means the
            # sweep was interrupted: stop there (rerunning resumes in the same order).
            ids = {t.run_id for t in plan.active}
            for phase in phases(pending, plan.active, finished_trials(plan, storage)):
                teachers = {tid for t in phase if (tid := teacher_of(t, ids))}
                # a permanent error (ConfigError, divergence) ends a trial normally, FAILED in MLflow only
                errors.update({tid: "failed" for tid in teachers - set(errors)
                               if tid in children and tracking.status(c, children[tid]) == "FAILED"})
                unfinished = teachers - set(errors) - finished_trials(plan, storage)
                if unfinished:
                    interrupted = True
                    break
                ready = {t.run_id: payloads[t.run_id] for t in phase if teacher_of(t, errors) is None}
                errors.update({t.run_id: f"reflow teacher {teacher_of(t, errors)} failed" for t in phase
                               if t.run_id not in ready})
                if ready:
                    errors.update(ray_adapter.run_grid(ready, labels, plan.resources, sweep_dir(storage, plan) / "ray",
                                                       plan.max_failures, progress, train_fn))
                    left = set(ready) - set(errors) - finished_trials(plan, storage)
                    if any(tracking.status(c, children[r]) != "FAILED" for r in left):
                        interrupted = True  # Tune returned from an interrupt: no later phase may start
                        break
        except KeyboardInterrupt:
            interrupted = True
        except BaseException as e:  # Ray could not start, the cluster vanished, ...: settle MLflow, then re-raise
            reason = f"sweep aborted: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            _finish(plan, c, parent, children, pending, {t.run_id: reason for t in pending}, False, started)
            raise
        return _finish(plan, c, parent, children, pending, errors, interrupted, started)


HEADLINE = tuple(metric_keys.key(m, n) for m in ("fid", "kid") for n in (1, 4, 128))


def summary_rows(plan: Plan, c, children: dict[str, str], keys: tuple[str, ...] = HEADLINE) -> list[dict[str, Any]]:
    """Per variant, over its finished seeds: FID as a geometric mean (as the reports give it), the rest as means."""
    values: dict[str, dict[str, list[float]]] = {}
    seeds: dict[str, int] = {}
    for t in plan.active:
        run = tracking.get_run(c, children[t.run_id])
        if run is None or run.info.status != "FINISHED":
            continue
        for v in t.variants:
            seeds[v] = seeds.get(v, 0) + 1
            for k in keys:
                if k in run.data.metrics:
                    values.setdefault(v, {}).setdefault(k, []).append(run.data.metrics[k])
    rows = []
    for v in plan.variants:
        if v not in seeds:
            continue
        row: dict[str, Any] = {"variant": v, "seeds": seeds[v]}
        for k, xs in values.get(v, {}).items():
            geo = k.startswith("fid") and all(x > 0 for x in xs)
            row[k] = math.exp(sum(map(math.log, xs)) / len(xs)) if geo else sum(xs) / len(xs)
        rows.append(row)
    return rows


def _finish(plan: Plan, c, parent: str, children: dict, pending: list[Trial], errors: dict[str, str],
            interrupted: bool, started: float | None = None) -> int:
    """Settle every trial's MLflow status (never left RUNNING) and the parent's; print failures with their reasons,
    and the machine account of the trials this sweep ran (logged on the parent as machine/* metrics)."""
    failed, killed, accounts = [], [], []
    for t in pending:
        rid = children[t.run_id]
        run = c.get_run(rid)
        st, tags = run.info.status, run.data.tags
        accounts.append(run.data.metrics)
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
    tracking.log_sweep_summary(c, parent, summary_rows(plan, c, children))
    status = "KILLED" if interrupted else "FAILED" if failed else "FINISHED"
    tracking.set_status(c, parent, status, None)
    name = f"[{plan.spec.name}/{plan.profile}]"
    for t, reason in failed:
        print(f"{name} FAILED {' = '.join(t.variants)} seed {t.seed} (run {t.run_id}): {reason}", file=sys.stderr)
    if killed:
        print(f"{name} interrupted: {len(killed)} trial(s) unfinished; rerun the same command to resume", file=sys.stderr)
    if started is not None and pending:
        # cores: the local Ray's (the profile's), else this machine's; on a cluster the figure is per driver machine
        totals = accounting.sweep_totals(accounts, time.perf_counter() - started, PROFILES[plan.profile].cpus or None)
        tracking.log_metrics(c, parent, totals, 0)
        print(f"{name} {accounting.describe(totals)}", file=sys.stderr)
    n_ok = len(plan.active) - len(failed) - len(killed)
    print(f"{name} {n_ok}/{len(plan.active)} trials finished, {len(failed)} failed, {len(killed)} unfinished", file=sys.stderr)
    return 130 if interrupted else 1 if failed else 0
