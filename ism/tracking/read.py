"""Reading MLflow back: sweeps and their child runs, experiments, metric histories and artifacts, for reports and
`ism ls`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ism.conf import metric_keys
from ism.tracking.connect import _retry, client


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


