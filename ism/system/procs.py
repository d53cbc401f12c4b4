"""No orphans: the processes ism starts (the MLflow server of `ism ui`, a local Ray's daemons and workers) die with
the ism process that started them, kill -9 included.

Two mechanisms, Linux only (elsewhere both are no-ops): a child started with `die_with_parent` gets
PR_SET_PDEATHSIG, so the kernel signals it the moment its parent dies; and `reap_descendants_on_exit` starts a small
watchdog process that notes the parent's descendants every REAP_POLL_S and, once the parent is gone, sends them
SIGTERM, then SIGKILL (what PDEATHSIG cannot reach: grandchildren such as uvicorn workers or Ray's agents and
workers, which otherwise linger until they notice on their own).
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1      # <linux/prctl.h>
REAP_POLL_S = 0.5         # how often the watchdog notes the descendants; a process younger than this may be missed
TERM_GRACE_S = 5.0        # from SIGTERM to SIGKILL


def linux() -> bool:
    return sys.platform.startswith("linux") and Path("/proc/self/stat").exists()


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a child between fork and exec (Popen's preexec_fn): the kernel sends `sig` when the parent dies."""
    if linux():
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else (int(fields[1]), int(fields[19]))


def descendants(root: int) -> dict[int, int]:
    """{pid: start time} of every live descendant of `root` (one pass over /proc)."""
    kids: dict[int, list[int]] = {}
    start: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (st := _stat(int(d))) is not None:
            kids.setdefault(st[0], []).append(int(d))
            start[int(d)] = st[1]
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        for c in kids.get(todo.pop(), ()):
            if c not in found:
                found[c] = start[c]
                todo.append(c)
    return found


def _signal_all(procs: dict[int, int], sig: int) -> dict[int, int]:
    """Send `sig` to those of `procs` still alive as the same process (start time checked: pids are reused)."""
    alive = {}
    for pid, t0 in procs.items():
        st = _stat(pid)
        if st is not None and st[1] == t0:
            try:
                os.kill(pid, sig)
                alive[pid] = t0
            except ProcessLookupError:
                pass
    return alive


def watch(parent: int) -> None:
    """The watchdog's loop: note the parent's descendants until the parent is gone, then stop them."""
    me = os.getpid()
    st = _stat(parent)
    if st is None:
        return
    born = st[1]
    seen: dict[int, int] = {}
    while (cur := _stat(parent)) is not None and cur[1] == born:
        seen.update({p: t for p, t in descendants(parent).items() if p != me})
        time.sleep(REAP_POLL_S)
    left = _signal_all(seen, signal.SIGTERM)
    end = time.time() + TERM_GRACE_S
    while left and time.time() < end:
        time.sleep(0.1)
        left = {p: t for p, t in left.items() if (s := _stat(p)) is not None and s[1] == t}
    _signal_all(left, signal.SIGKILL)


def _alive_child(pid: int) -> bool:
    """Whether our child `pid` still runs (reaps it when it has exited)."""
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return False


def reap_descendants_on_exit() -> int | None:
    """Start the watchdog of this process (once per process) and return its pid; None where the platform has no /proc."""
    global _WATCHDOG
    if not linux():
        return None
    if _WATCHDOG is None or not _alive_child(_WATCHDOG):
        # posix_spawn, not Popen: the watchdog outlives this process by design, and a Popen object still running at
        # exit warns "subprocess N is still running" (a warning filter did not hold once Ray or MLflow reset the
        # filters). setsid: a Ctrl-C or a killpg aimed at this process's group must not stop the watchdog first.
        null = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
        _WATCHDOG = os.posix_spawn(sys.executable, [sys.executable, "-m", "ism.system.procs", str(os.getpid())],
                                   os.environ, file_actions=null, setsid=True)
    return _WATCHDOG


_WATCHDOG: int | None = None

if __name__ == "__main__":
    watch(int(sys.argv[1]))
