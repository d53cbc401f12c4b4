"""Long-running helper processes of the cluster tests (Ray nodes, MLflow servers): each in its own session so that it
and everything it spawns stop together by its pid."""
import os
import signal
import subprocess
import time
from pathlib import Path


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    """A long-running process in its own session, so that it and all it spawns stop together by its pid."""
    fh = open(log, "w")
    return subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def stop_session(sid: int) -> None:
    """Stop what a killed process left in its session (Ray's agents outlive a SIGKILLed driver), by pid."""
    out = subprocess.run(["ps", "-s", str(sid), "-o", "pid="], capture_output=True, text=True).stdout.split()
    for pid in map(int, out):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_until(cond, procs, timeout: float, what: str) -> None:
    t0 = time.time()
    while not cond():
        for p in procs:
            assert p.poll() is None, f"{p.args[:3]} exited while waiting for {what}"
        assert time.time() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(1)


def started(log: Path) -> bool:
    """`ray start` prints this once its node has registered with the head."""
    return log.exists() and "Ray runtime started" in log.read_text()


def http_ok(url: str) -> bool:
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False
