"""The on-disk layout (torch-free): one atomic write, checkpoint names, a run dir's state, the sweep storage tree.

<run dir>/config.yaml, stats.jsonl, checkpoints/ckpt-XXXXXXXX.pt, summary.json (written last: its presence means
done), training_from.json (adopted training), eval/, samples/.
<storage>/trials/<run id>/                      a trial's run dir, shared by every sweep and spec
<storage>/sweeps/<spec>/<profile>-<sweep id>/   plan.json, mlflow.json (parent run ids), Ray's experiment dirs
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Mapping

from ism.conf.config import ConfigError, from_dict, load_yaml, run_id, training_id

CHECKPOINT = re.compile(r"ckpt-(\d{8})\.pt$")
# Spec, study and variant names become folder names, MLflow experiment names and Tune trial dirs: identifiers only.
NAME = re.compile(r"[A-Za-z0-9_.+-]{1,100}")
NAME_RULE = "1 to 100 letters, digits and . _ + - (no path separator, not '.' or '..')"
SUMMARY = "summary.json"
TRAINING_FROM = "training_from.json"


def atomic_write(path: str | Path, content: str | bytes | Callable[[IO[bytes]], None]) -> Path:
    """Write text, bytes or what `content(fh)` writes to path.tmp<pid>, fsync, then rename: readers never see half a
    file, and concurrent writers (trials, a driver) never share a temporary name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            if callable(content):
                content(fh)
            else:
                fh.write(content.encode() if isinstance(content, str) else content)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left when the write failed
    return path


def place(src: str | Path, dst: str | Path) -> Path:
    """Put a hard link to src (a copy across file systems) at dst atomically. Only for files that are replaced,
    never modified in place (checkpoints), so sharing the inode is safe."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def write_json(path: str | Path, data: Any) -> Path:
    """A JSON file, written atomically."""
    return atomic_write(path, json.dumps(data, indent=2))


def read_json(path: str | Path) -> dict:
    """A JSON file's content, {} when it does not exist."""
    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else {}


def check_name(where: str, name: object) -> str:
    """A spec, study or variant name that is an identifier (NAME), else a ConfigError naming `where`."""
    s = str(name)
    if not NAME.fullmatch(s) or s in (".", ".."):
        raise ConfigError(f"{where}: name {s!r} is not allowed; a name is {NAME_RULE}")
    return s


def under(root: str | Path, path: str | Path) -> Path:
    """`path`, checked to stay under `root` once resolved (names are checked, but a path is where it would leak)."""
    r, p = Path(root).resolve(), Path(path).resolve()
    if p != r and r not in p.parents:
        raise ConfigError(f"{path}: outside {root}; names may not climb out of their folder")
    return Path(path)


# ----------------------------------------------------------------------------------------------- checkpoints
def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """Where the checkpoint after `step` completed steps lives."""
    return Path(run_dir) / "checkpoints" / f"ckpt-{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of complete checkpoints, oldest first."""
    d = Path(run_dir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in d.glob("ckpt-*.pt") if (m := CHECKPOINT.search(p.name))] if d.is_dir() else []
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def prune(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints."""
    for _, p in list_checkpoints(run_dir)[:-keep]:
        p.unlink(missing_ok=True)


def run_dir_of(path: str | Path) -> Path:
    """The run dir of a run dir or of a checkpoint file in it."""
    p = Path(path)
    return p if p.is_dir() else p.parent.parent


def unstarted(run_dir: str | Path) -> bool:
    """No checkpoint and no summary yet: a run dir that may still adopt a finished training."""
    return not (Path(run_dir) / SUMMARY).exists() and not list_checkpoints(run_dir)


# ----------------------------------------------------------------------------------------------- sweep storage
def storage_root(path: str | Path) -> Path:
    """Absolute storage root (Ray needs absolute paths)."""
    return Path(path).resolve()


def trial_dir(storage: str | Path, rid: str) -> Path:
    """Run directory of one trial, keyed by its run id."""
    return under(storage, Path(storage) / "trials" / check_name("run id", rid))


def sweep_dir(storage: str | Path, spec: str, profile: str, sweep_id: str) -> Path:
    """Directory of one sweep (spec x profile x trial set)."""
    d = Path(storage) / "sweeps" / check_name("spec", spec) / check_name("sweep", f"{profile}-{sweep_id}")
    return under(storage, d)


def adopt_newer_checkpoint(run_dir: Path, saved: Path) -> Path | None:
    """Copy the newest checkpoint of `saved` (a folder the scheduler persisted, e.g. Ray's copy of a trial's last
    reported checkpoint) into run_dir when it is newer than run_dir's own: a lost node, or a bad newest checkpoint the
    caller has moved aside first (ism.training.checkpoint.newest_valid). Returns the copy, None when none was needed."""
    have = list_checkpoints(run_dir)
    found = list_checkpoints(saved)
    if not found or (have and found[-1][0] <= have[-1][0]):
        return None
    dst = checkpoint_path(run_dir, found[-1][0])
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(found[-1][1], dst)
    return dst


def finished(storage: str | Path, run_ids) -> set[str]:
    """The run ids whose training and evaluation finished (summary.json is written last)."""
    return {rid for rid in run_ids if (trial_dir(storage, rid) / SUMMARY).exists()}


def trained_donors(storage: str | Path) -> dict[str, Path]:
    """{training id: run dir} of stored trials whose training finished (the final checkpoint is on disk).

    A trial whose config differs from one of them only in evaluation settings (the guidance spec's sweeps over
    components' trials) adopts that training and only evaluates. Unreadable or outdated run dirs are skipped.
    """
    found: dict[str, Path] = {}
    root = Path(storage) / "trials"
    for d in sorted(root.iterdir()) if root.is_dir() else ():
        try:
            cfg = from_dict(load_yaml(d / "config.yaml"))
        except (OSError, ConfigError):
            continue
        if checkpoint_path(d, cfg.run.steps).is_file():
            found.setdefault(training_id(cfg), d)
    return found


def trained_donor(cfg, storage: str | Path, donors: Mapping[str, Path] | None = None) -> Path | None:
    """Run dir of another stored trial with the same training as cfg, finished; None when there is none."""
    d = (trained_donors(storage) if donors is None else donors).get(training_id(cfg))
    return d if d is not None and d.name != run_id(cfg) else None


def check_writable(folder: str | Path, what: str) -> Path:
    """Make `folder` (and its parents) and write a probe file in it, else a ConfigError naming `what`: a read-only
    storage or cache fails before any work, not after Ray started or training ended."""
    p = Path(folder)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"{what} {p}: not writable ({e.strerror or e}); point it at a folder you can write") from None
    return p


# ----------------------------------------------------------------------------------------------- driver locks
LOCK = "driver.lock"


@contextmanager
def driver_lock(folder: str | Path, what: str) -> Iterator[Path]:
    """Hold `folder`/driver.lock while one driver runs `what` (a sweep, a study): a second driver is a ConfigError
    naming the holder (host, pid, since). An flock, so the kernel drops it when its holder dies, kill -9 included:
    a dead holder never blocks the next driver. The file stays; its content names the newest holder."""
    path = Path(folder) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            try:
                h = json.loads(fh.read() or "{}")
            except ValueError:
                h = {}
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["since"])) if "since" in h else "?"
            raise ConfigError(f"{what} is being run by another driver: pid {h.get('pid', '?')} on host "
                              f"{h.get('host', '?')} since {since} (lock {path}); wait for it to finish or stop it, "
                              "then rerun this command to continue") from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}))
        fh.flush()
        yield path
    finally:
        fh.close()  # releases the flock
