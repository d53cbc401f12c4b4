"""The environment, read here and in the Ray adapter only: one function and one default per variable.

ISM_CACHE            caches: evaluation (domain classifier, reference statistics) and data/ (preprocessed
                     datasets): <cwd>/.ism/cache
ISM_STORAGE          root of trial dirs and Ray results: the command's --storage default (runs/ablate, runs/study)
MLFLOW_TRACKING_URI  MLflow store: sqlite under <cwd>/mlruns
OPTUNA_STORAGE       Optuna RDB (postgresql+psycopg://... for many drivers): sqlite <storage>/optuna.db
PROFILE              the profile of ablate / study / report: embedded
ISM_UI_PORT          port of `ism ui`: 5000
ISM_INJECT_CRASH     fault injection for tests, "<variant or run id>@<step>": unset
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ism.errors import ConfigError
from ism.conf.profiles import DEFAULT_PROFILE
from ism.system.store import storage_root

CRASH_ENV = "ISM_INJECT_CRASH"


def eval_cache_root() -> Path:
    """$ISM_CACHE, else .ism/cache under the working directory, as an absolute path (trials run elsewhere)."""
    return Path(os.environ.get("ISM_CACHE") or Path.cwd() / ".ism" / "cache").resolve()


def data_cache_root() -> Path:
    """The preprocessed-dataset cache: data/ under the cache root ($ISM_CACHE)."""
    return eval_cache_root() / "data"


def storage(flag: str | None, default: str) -> Path:
    """--storage, else $ISM_STORAGE, else the command's default folder; absolute."""
    return storage_root(flag or os.environ.get("ISM_STORAGE") or default)


# Library lines that say nothing a user of ism needs (ism prints what happened in its own words); --verbose keeps them.
# Ray 2.60 warns on every local start that it turned token authentication on (it stays on: the local Ray is ours).
QUIET_LOGGERS = ("ray._private.authentication.authentication_token_setup",
                 "ray.tune.analysis.experiment_analysis")  # "Failed to fetch metrics" of trials interrupted or skipped
QUIET_ENV = (("MLFLOW_LOGGING_LEVEL", "WARNING"),                  # "Creating initial MLflow database tables", ...
             ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"))    # tqdm's "Downloading artifacts" bars


def quiet_libraries(verbose: bool) -> None:
    """Unless --verbose: MLflow logs warnings only and draws no download bars (set in the environment, which Ray's
    workers inherit, before mlflow is imported), and Ray's token-auth notice is dropped. A user's own setting wins."""
    if verbose:
        return
    for key, value in QUIET_ENV:
        os.environ.setdefault(key, value)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def tracking_uri(flag: str | None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the sqlite store under ./mlruns."""
    from ism import tracking  # mlflow (a second to import) loads only for the commands that track
    given = flag or os.environ.get("MLFLOW_TRACKING_URI")
    uri = tracking.tracking_uri(given)
    if given:  # the default store under ./mlruns is made on demand; a URI someone typed is checked first
        tracking.check_uri(uri)
    return uri


def optuna_url(flag: str | None) -> str | None:
    """--optuna-storage, else $OPTUNA_STORAGE (a server database is checked to answer), else None (the sqlite file
    under the study storage)."""
    given = flag or os.environ.get("OPTUNA_STORAGE") or None
    if given:
        from ism.study.storage import check_url  # optuna loads only for the commands of studies
        return check_url(given)
    return None


def profile() -> str:
    """$PROFILE, else the embedded profile."""
    return os.environ.get("PROFILE") or DEFAULT_PROFILE


def report_profile() -> str | None:
    """$PROFILE for `ism report`, else None (the newest sweep of any profile)."""
    return os.environ.get("PROFILE") or None


def port(value: str | int, what: str = "--port") -> int:
    """A TCP port number, 1 to 65535, else a ConfigError naming `what`."""
    try:
        n = int(str(value).strip())
    except ValueError:
        n = 0
    if not 1 <= n <= 65535:
        raise ConfigError(f"{what}: {value!r} is not a port; expected a whole number from 1 to 65535")
    return n


def ui_port() -> int:
    """$ISM_UI_PORT, else 5000."""
    return port(os.environ.get("ISM_UI_PORT", 5000), "ISM_UI_PORT")


def crash_target() -> tuple[str, int] | None:
    """$ISM_INJECT_CRASH as (variant or run id, step): that trial crashes once at that step (tests)."""
    spec = os.environ.get(CRASH_ENV, "")
    if not spec:
        return None
    who, _, step = spec.rpartition("@")
    if not who or not step.isdigit():
        raise ConfigError(f"{CRASH_ENV}={spec!r}: expected <variant or run id>@<step>, e.g. sm@4")
    return who, int(step)
