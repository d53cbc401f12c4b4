"""MLflow tracking (the only module importing mlflow): store location, sweep parent runs, trial child runs, `ism ui`.

Layout (docs/architecture.md, "MLflow layout"): experiment `ism/<spec>`; a parent run per sweep; a child run per
trial whose MLflow run id is kept in the trial directory so a resumed trial continues its own run. Everything goes
through an explicit MlflowClient (no global active run), so several trials can log from one process or many.
`ism ui` (ism.commands.ui) serves the store through `server_command`.
"""
from __future__ import annotations

import json
import re
import math

import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import unquote, urlparse

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ism import dburl, metric_keys
from ism.errors import ConfigError
from ism.store import write_json

STORE_DIR = "mlruns"               # default store: <cwd>/mlruns/mlflow.db with artifacts in <cwd>/mlruns/artifacts
DB_NAME = "mlflow.db"
RUN_IDS_FILE = "mlflow_runs.json"  # in a trial dir: {parent run id: child run id}
BATCH = 100                        # MLflow's limit of params per log_batch call; metrics are chunked alike
TERMINAL = ("FINISHED", "FAILED", "KILLED")


# ----------------------------------------------------------------------------------------------- store
def tracking_uri(uri: str | None = None) -> str:
    """The tracking URI made absolute: the given one, else the sqlite store under ./mlruns (the commands read
    $MLFLOW_TRACKING_URI); postgresql:// gets the pinned driver (postgresql+psycopg://)."""
    if uri:
        uri = dburl.normalize(uri)
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            uri = "sqlite:///" + str(Path(unquote(uri[len("sqlite:///"):])).resolve())
        return uri
    return "sqlite:///" + str((Path.cwd() / STORE_DIR / DB_NAME).resolve())


SERVER_TIMEOUT_S = 5.0


def check_uri(uri: str) -> None:
    """A user-given tracking URI that MLflow can use, checked before any work starts (a ConfigError naming it):
    sqlite in an existing folder (never created silently), a database that accepts a connection, or an http(s)
    server that answers."""
    scheme = urlparse(uri).scheme.split("+")[0]
    allowed = ("sqlite:////abs/path/mlflow.db, http(s)://host:port (an MLflow server), "
               "postgresql+psycopg://user:password@host:5432/db, mysql://, mssql://")
    if scheme == "sqlite":
        # The store's own folder (e.g. mlruns/) is made on demand, but only inside a folder that exists: a mistyped
        # path fails here instead of growing a directory tree somewhere.
        folder = Path(unquote(uri[len("sqlite:///"):])).parent
        if not uri.startswith("sqlite:///") or not (folder.is_dir() or folder.parent.is_dir()):
            raise ConfigError(f"tracking URI {dburl.masked(uri)}: the folder {folder.parent} does not exist; create it first (a "
                              "store is never created in a folder tree you did not make)")
    elif scheme == "file" or scheme == "":
        raise ConfigError(f"tracking URI {dburl.masked(uri)}: MLflow {mlflow_version()}'s file store is in maintenance mode and "
                          f"ism does not use it; allowed: {allowed}")
    elif scheme in ("http", "https"):
        import urllib.request
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=SERVER_TIMEOUT_S).close()
        except Exception as e:  # refused, unreachable, timed out, or not an MLflow server
            raise ConfigError(f"tracking URI {dburl.masked(uri)}: no MLflow server answered at {dburl.masked(uri.rstrip('/'))}/health within "
                              f"{SERVER_TIMEOUT_S:g} s ({type(e).__name__}: {e}); start one (mlflow server --host "
                              "127.0.0.1 --port N) or fix the URI") from None
    elif scheme in dburl.DB_SCHEMES:
        dburl.check(uri, "tracking URI")
    else:
        raise ConfigError(f"tracking URI {dburl.masked(uri)}: scheme '{scheme}' is not allowed; allowed: {allowed}")


def mlflow_version() -> str:
    import mlflow
    return mlflow.__version__


def artifact_root(uri: str) -> str | None:
    """Artifact root beside a sqlite store (mlflow would pick ./mlruns of the current dir); servers choose their own."""
    if uri.startswith("sqlite:///"):
        db = Path(unquote(uri[len("sqlite:///"):]))
        return (db.parent / "artifacts").resolve().as_uri()
    if urlparse(uri).scheme in ("", "file"):
        raise ValueError(f"tracking URI {dburl.masked(uri)!r}: the plain file store is refused by mlflow 3; use sqlite:///PATH or http://HOST:PORT")
    return None


_CLIENTS: dict[str, MlflowClient] = {}  # per process: opening a sqlite store costs ~1 s (schema check)


def client(uri: str | None = None) -> MlflowClient:
    """A client bound to the project's tracking URI (one per URI and process)."""
    uri = tracking_uri(uri)
    if uri not in _CLIENTS:
        artifact_root(uri)  # rejects file stores early with a clear message
        _CLIENTS[uri] = MlflowClient(tracking_uri=uri)
    return _CLIENTS[uri]


def _retry(fn, *args, tries: int = 8, **kw):
    """Call an MLflow write, retrying briefly: several trial processes share one sqlite file (locks are transient)."""
    for i in range(tries):
        try:
            return fn(*args, **kw)
        except Exception as e:  # sqlite 'database is locked' and transient HTTP errors surface as several types
            msg = str(e).lower()
            if i == tries - 1 or not any(s in msg for s in ("locked", "busy", "timed out", "connection", "503", "502")):
                raise
            time.sleep(0.2 * 2 ** i)


def set_tag(c: MlflowClient, run_id: str, key: str, value: Any) -> None:
    """Set one tag of a run (retried like every write)."""
    _retry(c.set_tag, run_id, key, str(value))


def git_commit() -> str:
    """The project's commit (with '+dirty' when tracked files changed), or 'unknown' outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# MLflow 3's UI reads this experiment tag to pick its view; without it, it guesses (and guessed GenAI for ism's
# experiments: traces, token usage, runs labelled "Evaluations"). "custom_model_development" is the training view.
EXPERIMENT_KIND, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
# The view ism's links open, stored as the UI's shared view state (an experiment tag read for ?viewStateShareKey=).
# MLflow 3.17's runs table folds child runs under their collapsed parent, and a shared view cannot unfold them
# (runsExpanded is left out of what it shares; a search filter still fetches the parent). Grouped by variant, the
# trials show as rows under open groups (the parent run under "Additional runs"), with FID and KID at 1, 4 and 128
# steps as columns and each group's mean beside its name; every trial is drawn in the charts.
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


# ----------------------------------------------------------------------------------------------- readers
def find_sweeps(spec: str, profile: str | None = None, uri: str | None = None, kind: str = "sweep") -> list:
    """Parent runs of a spec (newest first), optionally of one profile: what `ism report` starts from."""
    c = client(uri)
    exp = c.get_experiment_by_name(spec if "/" in spec else f"ism/{spec}")
    if exp is None:
        return []
    flt = f"tags.`ism.kind` = '{kind}'" + (f" and tags.`ism.profile` = '{profile}'" if profile else "")
    return c.search_runs([exp.experiment_id], flt, order_by=["attributes.start_time DESC"], max_results=1000)


def child_runs(parent_run_id: str, uri: str | None = None) -> list:
    """The trial runs of a sweep (every status), one per trial; tag ism.variants lists all names a trial stands for."""
    c = client(uri)
    parent = c.get_run(parent_run_id)
    return c.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                         max_results=5000)


def sweeps_overview(uri: str | None = None, kind: str = "sweep") -> list[dict[str, Any]]:
    """Every ism sweep (or study) parent run in the store: spec, profile, status, start, and child runs by status."""
    c = client(uri)
    ids = [eid for eid, _ in ism_experiments(uri)]
    if not ids:
        return []
    parents = c.search_runs(ids, filter_string=f"tags.`ism.kind` = '{kind}'", max_results=1000)
    out = []
    for p in parents:
        kids = c.search_runs([p.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{p.info.run_id}'",
                             max_results=10000)
        by: dict[str, int] = {}
        for k in kids:
            by[k.info.status] = by.get(k.info.status, 0) + 1
        t = p.data.tags
        out.append({"spec": t.get("ism.spec", "?"), "profile": t.get("ism.profile", "?"), "status": p.info.status,
                    "sweep_id": t.get("ism.sweep_id", ""), "run_id": p.info.run_id, "start_ms": p.info.start_time,
                    "children": by, "experiment": p.info.experiment_id})
    return sorted(out, key=lambda r: (r["spec"], r["profile"], r["start_ms"] or 0))


def ism_experiments(uri: str | None = None) -> list[tuple[str, str]]:
    """(id, name) of the store's ism experiments (ism/<spec>, ism-study/<spec>), by name."""
    exps = client(uri).search_experiments(filter_string="name LIKE 'ism%'")
    return sorted(((e.experiment_id, e.name) for e in exps), key=lambda x: x[1])


def trial_runs(experiment_id: str, uri: str | None = None) -> list[dict[str, Any]]:
    """The trials (child runs) of an experiment, by variant and seed: run id, name, status and FID by step count."""
    runs = client(uri).search_runs([experiment_id], "tags.`ism.kind` = 'trial'", max_results=5000)
    out = []
    for r in runs:
        keys = {k: metric_keys.parse(k) for k in r.data.metrics}
        fid = {mk.steps: r.data.metrics[k] for k, mk in keys.items() if mk and mk.metric == "fid" and mk.w is None}
        seed = r.data.tags.get("ism.seed", "")
        out.append({"run_id": r.info.run_id, "name": r.info.run_name, "status": r.info.status, "fid": fid,
                    "variant": r.data.tags.get("ism.variant", "?"), "seed": int(seed) if seed.isdigit() else -1})
    return sorted(out, key=lambda t: (t["variant"], t["seed"]))


def experiment_name(experiment_id: str, uri: str | None = None) -> str:
    """The name of an experiment."""
    return client(uri).get_experiment(experiment_id).name


def metric_history(run_id: str, key: str, uri: str | None = None) -> list[tuple[int, float, int]]:
    """(step, value, timestamp ms) of every logged value of one metric, in step order."""
    return sorted((int(m.step), float(m.value), int(m.timestamp)) for m in client(uri).get_metric_history(run_id, key))


def list_artifacts(run_id: str, path: str, uri: str | None = None) -> list[str]:
    """Artifact paths directly under `path` of a run ([] when there is none)."""
    try:
        return [f.path for f in client(uri).list_artifacts(run_id, path)]
    except Exception:  # a run without that folder: stores raise different errors, all meaning "nothing there"
        return []


def download(run_id: str, path: str, dst: Path, uri: str | None = None) -> Path | None:
    """Download one artifact (file or folder) of a run into dst; None when the run does not hold it."""
    dst.mkdir(parents=True, exist_ok=True)
    try:
        return Path(client(uri).download_artifacts(run_id, path, str(dst)))
    except Exception:  # missing artifact: the report says so instead of failing
        return None


def log_folder(run_id: str, folder: Path, artifact_path: str, uri: str | None = None) -> None:
    """Log a folder (e.g. the report: report.md, report.pdf, figures, tables) as artifacts of a run."""
    _retry(client(uri).log_artifacts, run_id, str(folder), artifact_path)


def run_summary(run: Any) -> dict[str, Any]:
    """The plain fields of an MLflow run."""
    i = run.info
    return {"mlflow_id": i.run_id, "name": i.run_name, "status": i.status, "start_time": i.start_time,
            "end_time": i.end_time, "experiment_id": i.experiment_id, "tags": dict(run.data.tags),
            "params": dict(run.data.params), "metrics": dict(run.data.metrics)}


# ----------------------------------------------------------------------------------------------- ism ui
# The server's job runner (GenAI scorers, trace rollups: nothing ism logs) starts eight more processes that each
# import mlflow, competing with the server's own start-up on a small machine.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def server_command(uri: str, host: str = "127.0.0.1", port: int = 5000, workers: int = 1) -> list[str]:
    """`mlflow server` over a sqlite store with its artifact root beside it, bound to one host."""
    root = artifact_root(uri)
    if root is None:
        raise ValueError(f"{dburl.masked(uri)} is already a tracking server; open it in a browser instead")
    return [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", str(workers),
            "--backend-store-uri", uri, "--default-artifact-root", root]
