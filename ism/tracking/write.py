"""Writing to MLflow: experiments with the trials view, parent runs per sweep, child runs per trial (their MLflow run
id kept in the trial directory, so a resumed trial continues its own run), metrics in batches, statuses."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ism.conf import metric_keys
from ism.system.store import write_json
from ism.tracking.connect import (BATCH, EXPERIMENT_KIND, RUN_IDS_FILE, TERMINAL, TRAINING_KIND, _retry, artifact_root,
                                 client, set_tag)


VIEW_KEY = "ism-trials"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
VIEW_STATE = json.dumps({"runsHiddenMode": "SHOW_ALL",
                         "groupBy": {"aggregateFunction": "average",
                                     "groupByKeys": [{"mode": "tag", "groupByData": "ism.variant"}]},
                         "selectedColumns": ["tags.`ism.seed`"]
                         + [f"metrics.`{metric_keys.key(m, n)}`" for m in ("fid", "kid") for n in (1, 4, 128)]})


def experiment_id(c: MlflowClient, name: str) -> str:
    """Get or create an experiment, marked for MLflow's model-training view; local stores get an explicit artifact
    location beside the database."""
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        for key, value in ((EXPERIMENT_KIND, TRAINING_KIND), (VIEW_TAG, VIEW_STATE)):
            if exp.tags.get(key) != value:  # made by an older ism, or by hand
                _retry(c.set_experiment_tag, exp.experiment_id, key, value)
        return exp.experiment_id
    root = artifact_root(c.tracking_uri)
    loc = f"{root}/{name.replace('/', '_')}" if root else None
    try:
        return c.create_experiment(name, artifact_location=loc,
                                   tags={EXPERIMENT_KIND: TRAINING_KIND, VIEW_TAG: VIEW_STATE})
    except MlflowException:  # created concurrently by another process
        return c.get_experiment_by_name(name).experiment_id


def ui_link(base_url: str, experiment_id: str, run_id: str | None = None) -> str:
    """The deep link into the UI's model-training view (workflowType; without it MLflow 3 may open the GenAI view):
    an experiment's trials with their FIDs (VIEW_STATE), or one run's page."""
    page = f"runs/{run_id}?" if run_id else f"runs?viewStateShareKey={VIEW_KEY}&"
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/{page}workflowType=machine_learning"


def _param_value(v: Any) -> str:
    return json.dumps(list(v)) if isinstance(v, (list, tuple)) else str(v)


def log_params(c: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    """Log params in chunks; re-logging identical values (a resumed run) is a no-op."""
    have = c.get_run(run_id).data.params
    todo = [Param(k, _param_value(v)) for k, v in params.items() if have.get(k) != _param_value(v)]
    for i in range(0, len(todo), BATCH):
        _retry(c.log_batch, run_id, params=todo[i:i + BATCH])


def log_metrics(c: MlflowClient, run_id: str, metrics: Mapping[str, float], step: int, skip: set | None = None) -> None:
    """Log finite numeric metrics at a step; (key, step) pairs in `skip` are left out (already logged)."""
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
             and not (skip and (k, int(step)) in skip)]
    for i in range(0, len(items), BATCH * 10):
        _retry(c.log_batch, run_id, metrics=items[i:i + BATCH * 10])


def logged_steps(c: MlflowClient, run_id: str, keys: Iterable[str]) -> set[tuple[str, int]]:
    """(key, step) pairs already in a run, for the given keys (resumed trials must not log a step twice)."""
    present = set(c.get_run(run_id).data.metrics)
    out = set()
    for k in keys:
        if k in present:
            out |= {(k, m.step) for m in c.get_metric_history(run_id, k)}
    return out


def set_status(c: MlflowClient, run_id: str, status: str, reason: str | None = None) -> None:
    """Move a run to RUNNING / SCHEDULED / FINISHED / FAILED / KILLED; a failure reason goes to tag ism.error."""
    if reason is not None:
        _retry(c.set_tag, run_id, "ism.error", reason[:5000])
    if status in TERMINAL:
        _retry(c.set_terminated, run_id, status=status)
    else:
        _retry(c.update_run, run_id, status=status)


def get_run(c: MlflowClient, run_id: str):
    """The run, or None when it does not exist (or was deleted) in this store."""
    try:
        run = c.get_run(run_id)
    except MlflowException:
        return None
    return None if run.info.lifecycle_stage == "deleted" else run


def status(c: MlflowClient, run_id: str) -> str | None:
    """A run's status, or None when the run does not exist (or was deleted) in this store."""
    run = get_run(c, run_id)
    return run.info.status if run is not None else None


# ----------------------------------------------------------------------------------------------- sweeps and trials
def start_parent(c: MlflowClient, experiment: str, name: str, tags: Mapping[str, str], params: Mapping[str, Any],
                 artifacts: Mapping[str, str], resume_run_id: str | None = None) -> tuple[str, str]:
    """(experiment id, parent run id): the stored parent run if it still exists, else a new one."""
    exp = experiment_id(c, experiment)
    run_id = resume_run_id if resume_run_id and status(c, resume_run_id) else None
    if run_id is None:
        run_id = _retry(c.create_run, exp, run_name=name, tags=dict(tags)).info.run_id
    else:
        for k, v in tags.items():
            _retry(c.set_tag, run_id, k, v)
    set_status(c, run_id, "RUNNING")
    log_params(c, run_id, params)
    for fname, text in artifacts.items():
        _retry(c.log_text, run_id, text, fname)
    return exp, run_id


def child_run(c: MlflowClient, exp: str, parent: str, trial_dir: Path, name: str, tags: Mapping[str, str],
              params: Mapping[str, Any]) -> str:
    """The trial's child run under this parent: reused from the trial dir when it exists, created otherwise."""
    path = Path(trial_dir) / RUN_IDS_FILE
    known = json.loads(path.read_text()) if path.exists() else {}
    rid = known.get(parent)
    if rid is None or status(c, rid) is None:
        rid = _retry(c.create_run, exp, run_name=name, tags={**tags, "mlflow.parentRunId": parent}).info.run_id
        known[parent] = rid
        write_json(path, known)
    else:
        for k, v in tags.items():
            _retry(c.set_tag, rid, k, v)
    log_params(c, rid, params)
    return rid


class TrialLog:
    """Logging of one trial's child run from inside the trial process, safe to re-open when a trial resumes."""

    def __init__(self, uri: str, run_id: str):
        self.c = client(uri)
        self.run_id = run_id
        self.last_step = max((s for _, s in logged_steps(self.c, run_id, ["loss"])), default=-1)

    def running(self) -> None:
        """A new attempt starts: RUNNING, and the previous attempt's final verdict no longer holds."""
        tags = self.c.get_run(self.run_id).data.tags
        for key in ("ism.error", "ism.permanent"):
            if key in tags:
                _retry(self.c.delete_tag, self.run_id, key)
        set_status(self.c, self.run_id, "RUNNING")

    def metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Training metrics at a logged step; steps replayed after a resume are skipped."""
        if step > self.last_step:
            log_metrics(self.c, self.run_id, metrics, step)
            self.last_step = step

    def failures(self) -> int:
        """Failed attempts recorded so far (tag ism.failures)."""
        return int(self.c.get_run(self.run_id).data.tags.get("ism.failures", 0))

    def tag(self, key: str, value: Any) -> None:
        _retry(self.c.set_tag, self.run_id, key, str(value))

    def replay_stats(self, stats_path: Path) -> int:
        """Log stats.jsonl rows not yet in the run (a trial finished elsewhere or killed mid-log); returns rows added."""
        if not Path(stats_path).exists():
            return 0
        rows = [json.loads(ln) for ln in Path(stats_path).read_text().splitlines() if ln.strip()]
        rows = [r for r in rows if r.get("step", 0) > self.last_step]
        for r in rows:
            log_metrics(self.c, self.run_id, {k: v for k, v in r.items() if k not in ("step", "time")}, r["step"])
        if rows:
            self.last_step = rows[-1]["step"]
        return len(rows)

    def eval_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Eval metrics (fid_steps_N, ...) at a train step, each (key, step) once."""
        skip = logged_steps(self.c, self.run_id, metrics)
        log_metrics(self.c, self.run_id, metrics, step, skip)

    def steps_curves(self, metrics: Mapping[str, float], names: Iterable[str] = ("fid", "kid")) -> None:
        """FID/KID against the sampling step count as MLflow series for the UI's charts: `fid/vs_log2_steps` at step
        log2(N), since the UI's step axis is linear and 1, 2, 4, 8 would bunch at its left end (N is a power of two).

        The UI shows one chart section per name prefix, sorted by name, with unprefixed metrics last: the prefixes
        `fid/`, `kid/` put these curves first on a run's metrics tab, above the `ot/` and `wavelet/` internals."""
        curves: dict[str, dict[int, float]] = {}
        for key, value in metrics.items():
            k = metric_keys.parse(key)
            if k is not None and k.w is None and k.metric in names:
                curves.setdefault(f"{k.metric}/vs_log2_steps", {})[int(math.log2(k.steps))] = value
        skip = logged_steps(self.c, self.run_id, curves)
        for name, points in curves.items():
            for n, value in sorted(points.items()):
                log_metrics(self.c, self.run_id, {name: value}, n, skip)
        self.note(metrics, names)

    def note(self, metrics: Mapping[str, float], names: Iterable[str] = ("fid", "kid")) -> None:
        """The final FID/KID by step count as the run's Description, the first thing its Overview shows (the metrics
        table below it lists dozens of keys, the losses first)."""
        by: dict[int, dict[str, float]] = {}
        for key, value in metrics.items():
            k = metric_keys.parse(key)
            if k is not None and k.w is None and k.metric in names and isinstance(value, (int, float)):
                by.setdefault(k.steps, {})[k.metric] = value
        cols = [m for m in names if any(m in row for row in by.values())]
        if not cols:
            return
        md = ["| sampling steps | " + " | ".join(m.upper() for m in cols) + " |", "|---" * (len(cols) + 1) + "|"]
        md += [f"| {n} | " + " | ".join(f"{by[n][m]:.4g}" if m in by[n] else "" for m in cols) + " |" for n in sorted(by)]
        # one line first: the Overview folds a long Description after two or three lines
        line = "; ".join(f"{m.upper()} " + ", ".join(f"{by[n][m]:.4g} at {n}" for n in sorted(by) if m in by[n])
                         for m in cols)
        set_tag(self.c, self.run_id, "mlflow.note.content", f"**{line}** (steps).\n\nFinal evaluation (all rows: "
                "eval/eval.csv in the artifacts):\n\n" + "\n".join(md))

    def artifacts(self, run_dir: Path, names: Iterable[str] = ("config.yaml", "stats.jsonl", "summary.json", "eval",
                                                               "samples")) -> None:
        """Copy the run dir's outputs to the run's artifacts (directories keep their name)."""
        for name in names:
            p = Path(run_dir) / name
            if p.is_dir() and any(p.iterdir()):
                _retry(self.c.log_artifacts, self.run_id, str(p), name)
            elif p.is_file():
                _retry(self.c.log_artifact, self.run_id, str(p))

    def finish(self, status_: str = "FINISHED", reason: str | None = None) -> None:
        set_status(self.c, self.run_id, status_, reason)


def metric_name(text: str) -> str:
    """A string as an MLflow metric-name part: MLflow allows letters, digits, _ - . space : / only ('+' becomes 'plus')."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", text.replace("+", "plus_"))


def log_sweep_summary(c: MlflowClient, parent: str, rows: list[dict[str, Any]], step: int = 0) -> None:
    """The sweep's headline on its parent run: metric `<variant>/<key>` per row value, and the rows as a table
    (summary.json, shown by the UI's artifact view) and as summary.csv."""
    metrics = {f"{metric_name(r['variant'])}/{k}": v for r in rows for k, v in r.items()
               if k not in ("variant", "seeds") and isinstance(v, (int, float))}
    log_metrics(c, parent, metrics, step)
    if rows:
        cols = list(dict.fromkeys(k for r in rows for k in r))
        _retry(c.log_table, parent, {k: [r.get(k) for r in rows] for k in cols}, "summary.json")
        csv = ",".join(cols) + "\n" + "".join(",".join("" if r.get(k) is None else str(r[k]) for k in cols) + "\n"
                                                for r in rows)
        _retry(c.log_text, parent, csv, "summary.csv")
        # the Description on the run's Overview page: the first thing the UI shows of a sweep
        heads = [k for k in cols if k != "variant"]
        md = ["| variant | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
        md += ["| " + " | ".join([str(r["variant"])] + [f"{r[k]:.4g}" if isinstance(r.get(k), float) else
                                                        str(r.get(k, "")) for k in heads]) + " |" for r in rows]
        set_tag(c, parent, "mlflow.note.content", "Per-variant summary (FID: geometric mean over seeds):\n\n"
                + "\n".join(md))


