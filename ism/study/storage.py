"""The Optuna storage of studies: where it lives, opening a plan's study (fingerprint check), requeueing trials a
dead driver left RUNNING, and several drivers on one study (trial owners, heartbeats, a lock for asking)."""
from __future__ import annotations

import hashlib
import os
import socket
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from ism.system import dburl, store
from ism.conf.config import ConfigError
from ism.study.plan import StudyPlan, make_pruner, make_sampler, plan
from ism.study.spec import _encode, load_spec

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def quiet_optuna(verbose: bool) -> None:
    """Optuna's INFO lines ("A new study created in RDB ...", "Using an existing study ...") only with --verbose: ism
    says what happened in its own words. Optuna resets its logger to INFO when imported, so this runs after."""
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)


def storage_url(url: str | None, root: Path) -> str:
    """The Optuna storage: an RDB URL (a relative sqlite path made absolute, postgresql:// given the pinned driver),
    else a sqlite file under the storage root (the commands read --optuna-storage and $OPTUNA_STORAGE)."""
    if url:
        url = dburl.normalize(url)
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            url = "sqlite:///" + str(Path(url[len("sqlite:///"):]).resolve())
        return url
    return f"sqlite:///{root / 'optuna.db'}"


def check_url(url: str) -> str:
    """A user-given Optuna storage URL, normalized, checked before any work: sqlite, or a server database that
    accepts a connection (ConfigError otherwise)."""
    url = dburl.normalize(url)
    kind = dburl.scheme(url)
    if kind in dburl.DB_SCHEMES:
        dburl.check(url, "Optuna storage")
    elif kind != "sqlite" or not url.startswith("sqlite:///"):
        raise ConfigError(f"Optuna storage {dburl.masked(url)}: expected sqlite:///path/optuna.db (one machine) or "
                          "postgresql+psycopg://user:password@host:5432/db (many drivers and workers)")
    return url


def rdb(url: str) -> optuna.storages.RDBStorage:
    # A sqlite file shared with readers (dashboard, reports) needs a lock timeout longer than sqlite's 5 s default.
    kw = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kw)


def study_dir(root: Path, p: StudyPlan) -> Path:
    return store.under(root, root / "studies" / store.check_name("study", p.spec.name) / p.profile)


def open_study(p: StudyPlan, url: str, create: bool = True, strict: bool = True) -> optuna.Study:
    """Load (or create) the plan's study; refuse a study made from a different space, objective or base (strict; a
    report reads it anyway: a per-block study's best values are carried into the preset, which moves the base)."""
    if url.startswith("sqlite:///"):
        db = Path(url[len("sqlite:///"):])
        if not db.exists() and not create:
            raise ConfigError(f"no study '{p.study_name}' in {dburl.masked(url)} (no such file); run `ism study {p.spec.path} "
                              f"--profile {p.profile}` first")
        db.parent.mkdir(parents=True, exist_ok=True)
    # Drivers started together on a fresh database would race creating Optuna's tables (PostgreSQL: "duplicate key
    # value violates unique constraint pg_type_typname_nsp_index", seen with three drivers) and enqueueing the
    # spec's points twice: one opens at a time.
    with study_lock(url, "ism.open"):
        return _open(p, url, create, strict)


def _open(p: StudyPlan, url: str, create: bool, strict: bool) -> optuna.Study:
    storage = rdb(url)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if p.study_name not in names and not create:
        raise ConfigError(f"no study '{p.study_name}' in {dburl.masked(url)}; run `ism study {p.spec.path} --profile {p.profile}` first")
    n = len(storage.get_all_trials(storage.get_study_id_from_name(p.study_name), deepcopy=False)) if p.study_name in names else 0
    if p.study_name in names:  # load_study, not create_study(load_if_exists): no "Using an existing study" line
        study = optuna.load_study(storage=storage, study_name=p.study_name, sampler=make_sampler(p, n),
                                  pruner=make_pruner(p))
    else:
        study = optuna.create_study(storage=storage, study_name=p.study_name, direction=p.objective.direction,
                                    sampler=make_sampler(p, n), pruner=make_pruner(p), load_if_exists=True)
    if study.direction.name.lower() != p.objective.direction:
        raise ConfigError(f"study '{p.study_name}' in {dburl.masked(url)} was created to {study.direction.name.lower()}; the spec says "
                          f"{p.objective.direction}. Rename the study (name:) or delete it")
    name_metric(study, p)
    fp = study.user_attrs.get("ism.fingerprint")
    if fp is None:
        for k, v in {"ism.fingerprint": p.fingerprint(), "ism.spec": p.spec.name, "ism.profile": p.profile,
                     "ism.objective": p.objective.describe(), "ism.preset": p.preset,
                     "ism.space": {x.key: x.describe() for x in p.space}}.items():
            study.set_user_attr(k, v)
        for point in p.enqueue:
            study.enqueue_trial({k: _encode(v) for k, v in point.items()}, skip_if_exists=True)
    elif fp != p.fingerprint() and strict:
        raise ConfigError(f"study '{p.study_name}' in {dburl.masked(url)} was made from a different space, objective or base config "
                          f"(fingerprint {fp}, the spec now gives {p.fingerprint()}); give the study a new name: "
                          f"or delete it: optuna delete-study --storage {dburl.masked(url)} --study-name '{p.study_name}'")
    return study


def name_metric(study: optuna.Study, p: StudyPlan) -> None:
    """Name the study's objective (optuna-dashboard shows it), e.g. fid@1x0.5+4x0.25+128x0.25. Written only when
    it differs, so opening a study to resume it, or read it for a report, changes nothing."""
    names = [p.objective.label()]
    if study.metric_names != names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)


def requeue_stale(study: optuna.Study, mine: bool = False) -> list[int]:
    """RUNNING trials whose driver is gone go back to WAITING: ask() hands them out again, same number and params.
    mine: only this process's own (a driver ending after an interrupt), never a live driver's on another host."""
    storage = study._storage  # the RDB storage create_study was given; Study exposes no public accessor
    sid = storage.get_study_id_from_name(study.study_name)
    back = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not (is_mine(t) if mine else is_stale(t)):
            continue
        tid = storage.get_trial_id_from_study_id_trial_number(sid, t.number)
        storage.set_trial_state_values(tid, TrialState.WAITING)
        storage.set_trial_user_attr(tid, "ism.requeued", int(t.user_attrs.get("ism.requeued", 0)) + 1)
        back.append(t.number)
    return back


# ----------------------------------------------------------------------------------------------- many drivers
# Several `ism study` drivers may run one study at once (Optuna's distributed pattern: one per machine). A driver
# marks each trial it asks with its owner (host, pid) and rewrites the trial's heartbeat every HEARTBEAT_S; a RUNNING
# trial is requeued only when its driver is gone: its pid is dead on this host, or its heartbeat is older than
# GRACE_S (a driver on another host; needs clocks within seconds of each other, as NTP keeps them).
HEARTBEAT_S = 10.0
GRACE_S = 60.0


def owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def is_mine(t: FrozenTrial) -> bool:
    return t.user_attrs.get("ism.owner") == owner()


def is_stale(t: FrozenTrial, now: float | None = None) -> bool:
    """A RUNNING trial nobody runs: no owner (a driver died between ask and claim, or a study made before owners),
    its owner's process gone from this host, or its heartbeat older than GRACE_S."""
    o = t.user_attrs.get("ism.owner")
    if not o:
        return True
    if o.get("host") == socket.gethostname() and not _alive(int(o["pid"])):
        return True
    return (now or time.time()) - float(t.user_attrs.get("ism.beat", 0)) > GRACE_S


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@contextmanager
def study_lock(url: str, name: str) -> Iterator[None]:
    """One driver at a time asks a trial of the study (and claims it) or requeues: with the trial count checked under
    the lock, several drivers stop at exactly n_trials. PostgreSQL: a session advisory lock (released by the server
    if the driver dies); sqlite: a lock file beside the database (one host); other databases: no lock, so the total
    may overshoot by up to one trial per extra driver."""
    kind = dburl.scheme(url)
    if kind == "postgresql":
        import sqlalchemy
        key = int.from_bytes(hashlib.sha1(f"ism.study:{name}".encode()).digest()[:8], "big", signed=True)
        with _lock_engine(url).connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    elif kind == "sqlite":
        import fcntl
        with open(url[len("sqlite:///"):] + ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    else:
        yield


_ENGINES: dict[str, Any] = {}


def _lock_engine(url: str):
    """One engine per URL and process for the advisory lock: a pooled connection takes and drops the lock in 0.3 ms,
    a new connection costs 14 ms (medians of 20 on 127.0.0.1, this machine under load)."""
    if url not in _ENGINES:
        import sqlalchemy
        _ENGINES[url] = sqlalchemy.create_engine(url, pool_size=1, max_overflow=0, pool_pre_ping=True)
    return _ENGINES[url]


def overview(url: str) -> list[dict]:
    """Every study in an Optuna storage: name, trials by state, best value and its trial (nothing is created)."""
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        return []
    storage = rdb(url)
    out = []
    for summ in optuna.get_all_study_summaries(storage, include_best_trial=True):
        trials = storage.get_all_trials(storage.get_study_id_from_name(summ.study_name), deepcopy=False)
        by: dict[str, int] = {}
        for t in trials:
            by[t.state.name] = by.get(t.state.name, 0) + 1
        best = summ.best_trial
        out.append({"name": summ.study_name, "trials": by, "direction": summ.direction.name.lower(),
                    "best": (best.value, best.number) if best is not None else None,
                    "objective": (summ.user_attrs or {}).get("ism.objective", "")})
    return sorted(out, key=lambda r: r["name"])


def counts(study: optuna.Study) -> dict[str, int]:
    out = {s.name: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] += 1
    return out


def load_study(spec_path: str | Path, profile: str, url: str | None, storage: Path) -> optuna.Study:
    """The stored study of a spec and profile (report generator entry point)."""
    p = plan(load_spec(spec_path), profile)
    return open_study(p, storage_url(url, storage), create=False)
