"""The Optuna storage of studies: where it lives, opening a plan's study (fingerprint check), requeueing trials an
interrupted driver left RUNNING, and one driver per study."""
from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ism.config import ConfigError
from ism.study.plan import StudyPlan, make_pruner, make_sampler, plan
from ism.study.spec import _encode, load_spec

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def storage_url(url: str | None, root: Path) -> str:
    """The Optuna storage: an RDB URL (a relative sqlite path made absolute), else a sqlite file under the storage
    root (the commands read --optuna-storage and $OPTUNA_STORAGE)."""
    if url:
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            url = "sqlite:///" + str(Path(url[len("sqlite:///"):]).resolve())
        return url
    return f"sqlite:///{root / 'optuna.db'}"


def rdb(url: str) -> optuna.storages.RDBStorage:
    # A sqlite file shared with readers (dashboard, reports) needs a lock timeout longer than sqlite's 5 s default.
    kw = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kw)


def study_dir(root: Path, p: StudyPlan) -> Path:
    return root / "studies" / p.spec.name / p.profile


def open_study(p: StudyPlan, url: str, create: bool = True, strict: bool = True) -> optuna.Study:
    """Load (or create) the plan's study; refuse a study made from a different space, objective or base (strict; a
    report reads it anyway: a per-block study's best values are carried into the preset, which moves the base)."""
    if url.startswith("sqlite:///"):
        db = Path(url[len("sqlite:///"):])
        if not db.exists() and not create:
            raise ConfigError(f"no study '{p.study_name}' in {url} (no such file); run `ism study {p.spec.path} "
                              f"--profile {p.profile}` first")
        db.parent.mkdir(parents=True, exist_ok=True)
    storage = rdb(url)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if p.study_name not in names and not create:
        raise ConfigError(f"no study '{p.study_name}' in {url}; run `ism study {p.spec.path} --profile {p.profile}` first")
    n = len(storage.get_all_trials(storage.get_study_id_from_name(p.study_name), deepcopy=False)) if p.study_name in names else 0
    study = optuna.create_study(storage=storage, study_name=p.study_name, direction=p.objective.direction,
                                sampler=make_sampler(p, n), pruner=make_pruner(p), load_if_exists=True)
    if study.direction.name.lower() != p.objective.direction:
        raise ConfigError(f"study '{p.study_name}' in {url} was created to {study.direction.name.lower()}; the spec says "
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
        raise ConfigError(f"study '{p.study_name}' in {url} was made from a different space, objective or base config "
                          f"(fingerprint {fp}, the spec now gives {p.fingerprint()}); give the study a new name: "
                          f"or delete it: optuna delete-study --storage {url} --study-name '{p.study_name}'")
    return study


def name_metric(study: optuna.Study, p: StudyPlan) -> None:
    """Name the study's objective (optuna-dashboard shows it), e.g. fid@1x0.5+4x0.25+128x0.25. Written only when
    it differs, so opening a study to resume it, or read it for a report, changes nothing."""
    names = [p.objective.label()]
    if study.metric_names != names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)


def requeue_stale(study: optuna.Study) -> list[int]:
    """Trials left RUNNING by an interrupted driver go back to WAITING: ask() hands them out again, same number and params."""
    storage = study._storage  # the RDB storage create_study was given; Study exposes no public accessor
    sid = storage.get_study_id_from_name(study.study_name)
    back = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tid = storage.get_trial_id_from_study_id_trial_number(sid, t.number)
        storage.set_trial_state_values(tid, TrialState.WAITING)
        storage.set_trial_user_attr(tid, "ism.requeued", int(t.user_attrs.get("ism.requeued", 0)) + 1)
        back.append(t.number)
    return back


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


def check_driver(study: optuna.Study) -> None:
    """One driver per study: refuse when another live `ism study` on this host holds it."""
    d = study.user_attrs.get("ism.driver") or {}
    if d.get("host") == socket.gethostname() and d.get("pid") not in (None, os.getpid()):
        try:
            os.kill(int(d["pid"]), 0)
        except OSError:
            return
        raise ConfigError(f"study '{study.study_name}' is being run by another `ism study` (pid {d['pid']}); "
                          "wait for it or stop it first")


def load_study(spec_path: str | Path, profile: str, url: str | None, storage: Path) -> optuna.Study:
    """The stored study of a spec and profile (report generator entry point)."""
    p = plan(load_spec(spec_path), profile)
    return open_study(p, storage_url(url, storage), create=False)
