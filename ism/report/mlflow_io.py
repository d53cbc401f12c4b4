"""The report's MLflow calls, kept in one thin layer over `ism.tracking` (the only module that imports mlflow).

TO MOVE INTO ism/tracking.py: every function here only calls methods of the client that `tracking.client(uri)`
returns, so this file imports nothing from mlflow; the lead may move them into tracking.py as read-side helpers
(`get_run`, `metric_history`, `download`, `log_report`) without changing their signatures.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ism import tracking

# mlflow draws a tqdm bar per downloaded file; a report downloads dozens, so keep the terminal readable.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def resolve_uri(uri: str | None) -> str:
    """The tracking URI the report reads (explicit > $MLFLOW_TRACKING_URI > ./mlruns sqlite)."""
    return tracking.tracking_uri(uri)


def find_sweeps(spec: str, profile: str | None, uri: str) -> list:
    """Parent runs of a spec or experiment, newest first."""
    return tracking.find_sweeps(spec, profile, uri)


def child_runs(parent_id: str, uri: str) -> list:
    """Every trial run of a sweep, whatever its status."""
    return tracking.child_runs(parent_id, uri)


def get_run(run_id: str, uri: str):
    """One run (info, data.params / metrics / tags)."""
    return tracking.client(uri).get_run(run_id)


def experiment_name(experiment_id: str, uri: str) -> str:
    """The name of an experiment."""
    return tracking.client(uri).get_experiment(experiment_id).name


def metric_history(run_id: str, key: str, uri: str) -> list[tuple[int, float, int]]:
    """(step, value, timestamp ms) of every logged value of one metric, in step order."""
    hist = tracking.client(uri).get_metric_history(run_id, key)
    return sorted((int(m.step), float(m.value), int(m.timestamp)) for m in hist)


def list_artifacts(run_id: str, path: str, uri: str) -> list[str]:
    """Artifact paths directly under `path` of a run ([] when there is none)."""
    try:
        return [f.path for f in tracking.client(uri).list_artifacts(run_id, path)]
    except Exception:  # a run without that folder: stores raise different errors, all meaning "nothing there"
        return []


def download(run_id: str, path: str, dst: Path, uri: str) -> Path | None:
    """Download one artifact (file or folder) of a run into dst; None when the run does not hold it."""
    dst.mkdir(parents=True, exist_ok=True)
    try:
        return Path(tracking.client(uri).download_artifacts(run_id, path, str(dst)))
    except Exception:  # missing artifact: the report says so instead of failing
        return None


def log_report(parent_id: str, folder: Path, uri: str, artifact_path: str = "report") -> None:
    """Log the report folder (report.md, report.pdf, figures, tables) as artifacts of the sweep's parent run."""
    tracking._retry(tracking.client(uri).log_artifacts, parent_id, str(folder), artifact_path)


def run_summary(run: Any) -> dict[str, Any]:
    """The plain fields of an MLflow run the report uses."""
    i = run.info
    return {"mlflow_id": i.run_id, "name": i.run_name, "status": i.status, "start_time": i.start_time,
            "end_time": i.end_time, "experiment_id": i.experiment_id, "tags": dict(run.data.tags),
            "params": dict(run.data.params), "metrics": dict(run.data.metrics)}
