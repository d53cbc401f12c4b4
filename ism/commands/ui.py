"""`ism ui`: the MLflow UI on 127.0.0.1 over the project's store, with deep links into the model-training view."""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from ism import procs, tracking
from ism.commands import env
from ism.errors import ConfigError
from ism.dburl import masked


def _answers(url: str, wait_s: float, proc: subprocess.Popen) -> bool:
    """True once the server's /health answers (within wait_s and while the server lives)."""
    end = time.time() + wait_s
    while time.time() < end and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return True
        except OSError:
            time.sleep(0.5)
    return False


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server's whole process group (mlflow, uvicorn and its workers): SIGTERM, then SIGKILL after 10 s."""
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        end = time.time() + wait_s
        try:
            os.killpg(proc.pid, sig)
            while time.time() < end:
                proc.poll()  # reap the leader, or the group never looks empty
                os.killpg(proc.pid, 0)  # raises once no process of the group is left
                time.sleep(0.2)
        except ProcessLookupError:
            return


def _port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port yet (else a /health that answers would be another server's, not ours)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _interrupt(signum, frame) -> None:
    """SIGTERM ends `ism ui` as Ctrl-C does."""
    raise KeyboardInterrupt


def links(uri: str, base_url: str) -> list[str]:
    """One line per ism experiment in the store: its name and its deep link."""
    return [f"  {name:<28} {tracking.ui_link(base_url, eid)}" for eid, name in tracking.ism_experiments(uri)]


def main(argv: list[str] | None = None) -> int:
    """`ism ui`; the exit status (ConfigErrors reach ism.commands.main: status 2)."""
    ap = argparse.ArgumentParser(prog="ism ui", description="The MLflow UI on 127.0.0.1 over the project's store; "
                                 "Ctrl-C or SIGTERM stops the server and all its workers.")
    ap.add_argument("--port", type=env.port, default=env.ui_port(),
                    help="port on 127.0.0.1 (default $ISM_UI_PORT, else 5000)")
    ap.add_argument("--tracking-uri", default=None, help="default $MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlruns/mlflow.db")
    args = ap.parse_args(argv)
    uri = env.tracking_uri(args.tracking_uri)
    if uri.startswith(("http://", "https://")):
        print(f"ism ui: the tracking URI {masked(uri)} is a server already; its experiments:")
        print("\n".join(links(uri, uri)) or "  (none yet)")
        return 0
    if not uri.startswith("sqlite:"):  # a database shared by a team: its server is the team's (README: Cluster storage)
        print(f"ism ui: {masked(uri)} is a database; serve it once for everyone with\n  mlflow server --backend-store-uri "
              f"'{masked(uri)}' --artifacts-destination DIR --host 127.0.0.1 --port {args.port}\nand point "
              "MLFLOW_TRACKING_URI at that server (README: Cluster storage).")
        return 0
    url = f"http://127.0.0.1:{args.port}"
    if not _port_free(args.port):
        raise ConfigError(f"port {args.port} on 127.0.0.1 is in use (another server, perhaps another `ism ui`); pick "
                          "a free one with --port or ISM_UI_PORT")
    # Its own process group: mlflow starts uvicorn and huey consumers, which a plain terminate() would orphan; and
    # should this process be killed (-9 included), the server gets SIGTERM and the watchdog stops its workers.
    procs.reap_descendants_on_exit()
    proc = subprocess.Popen(tracking.server_command(uri, port=args.port), start_new_session=True,
                            preexec_fn=procs.die_with_parent)
    # SIGTERM (kill, a supervisor) ends us like Ctrl-C does, so the finally below stops the group either way.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        print(f"ism ui: starting the MLflow server on {url} (store {masked(uri)})", file=sys.stderr, flush=True)
        waited_s = 0
        while not (_answers(url, 30, proc) and proc.poll() is None):  # our server, not one that took the port
            if proc.poll() is not None:
                print(f"ism ui: the MLflow server exited with status {proc.returncode}", file=sys.stderr)
                return proc.returncode or 1
            waited_s += 30
            print(f"ism ui: no answer from {url} after {waited_s} s; still waiting (Ctrl-C stops it)", file=sys.stderr,
                  flush=True)
        print(f"ism ui: {url}  (Ctrl-C stops it); the experiments in MLflow's training view:\n" +
              ("\n".join(links(uri, url)) or "  none yet: run ism ablate or ism study"), flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(proc)
