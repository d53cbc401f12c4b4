"""MLflow's side of the store: the tracking URI policy and its health check, the client with retries, the git
commit a run records, and the `mlflow server` command `ism ui` starts."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import mlflow
from mlflow.tracking import MlflowClient

from ism.errors import ConfigError
from ism.system import dburl


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


def _template() -> Path:
    """An empty sqlite store migrated by this mlflow version, made once per machine and user (temp dir)."""
    path = Path(tempfile.gettempdir()) / f"ism-mlflow-{mlflow.__version__}-{os.getuid()}.db"
    if not path.is_file():
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        MlflowClient(tracking_uri="sqlite:///" + str(tmp)).search_experiments(max_results=1)
        os.replace(tmp, path)   # whole or absent: a concurrent maker's file is as good as ours
    return path


def seed_store(uri: str) -> None:
    """Create a new sqlite store as a copy of the migrated template instead of letting mlflow migrate it.

    Why: mlflow runs its ~50 schema migrations on every new store (seconds on 2 cores:
    docs/results.md#wall-time-of-the-commands), once per test store and per fresh sweep store; and two processes
    opening one new store at once raced on that migration. The copy is linked into place without clobbering (the
    first process wins), and its Default experiment points where mlflow would have put it (<cwd>/mlruns/0). Any
    failure leaves the store absent, and mlflow creates it as before."""
    if not uri.startswith("sqlite:///"):
        return
    db = Path(unquote(uri[len("sqlite:///"):]))
    if db.exists() or not db.parent.is_dir():
        return
    tmp = db.with_name(f".{db.name}.{os.getpid()}.seed")
    try:
        shutil.copyfile(_template(), tmp)
        with sqlite3.connect(tmp) as con:
            con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                        (str(Path.cwd().resolve() / STORE_DIR / "0"),))
        con.close()
        os.link(tmp, db)
    except Exception:  # noqa: BLE001  (a store another process linked first, or no template: mlflow creates it)
        pass
    finally:
        tmp.unlink(missing_ok=True)


def client(uri: str | None = None) -> MlflowClient:
    """A client bound to the project's tracking URI (one per URI and process)."""
    uri = tracking_uri(uri)
    if uri not in _CLIENTS:
        artifact_root(uri)  # rejects file stores early with a clear message
        seed_store(uri)
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
# ----------------------------------------------------------------------------------------------- ism ui
# The server's job runner (GenAI scorers, trace rollups: nothing ism logs) starts eight more processes that each
# import mlflow, competing with the server's own start-up on a small machine.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def server_command(uri: str, host: str = "127.0.0.1", port: int = 5000, workers: int = 1) -> list[str]:
    """`mlflow server` over a sqlite store with its artifact root beside it, bound to one host."""
    root = artifact_root(uri)
    if root is None:
        raise ValueError(f"{dburl.masked(uri)} is already a tracking server; open it in a browser instead")
    seed_store(uri)
    return [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", str(workers),
            "--backend-store-uri", uri, "--default-artifact-root", root]
