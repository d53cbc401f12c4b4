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

from ism.system import procs
from ism.commands import env, options
from ism.errors import ConfigError
from ism.system.dburl import masked


def _answers(url: str, wait_s: float, proc: subprocess.Popen) -> bool:
    """True once the server's /health answers (within wait_s and while the server lives)."""
    end = time.time() + wait_s
    while time.time() < end and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return True
        except OSError:
            time.sleep(0.25)
    return False


def why_slow(waited_s: float) -> str:
    """Why the server has not answered yet, in the machine's own figures."""
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    busy = f"; the machine is busy (load {load:.1f} on {cpus} CPUs), which slows it" if load > cpus else ""
    return (f"ism ui: no answer yet after {waited_s:.0f} s: the server is still starting (it imports MLflow and "
            f"opens the store){busy}. Still waiting; Ctrl-C stops it")


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


def links(uri: str, base_url: str, runs: bool = False) -> list[str]:
    """One line per ism experiment in the store: its name and its deep link; runs: then one line per trial, with its
    FID at 1, 4 and 128 steps (those it has) and the link to its run page."""
    from ism import tracking
    lines = []
    for eid, name in tracking.ism_experiments(uri):
        lines.append(f"  {name:<28} {tracking.ui_link(base_url, eid)}")
        for t in tracking.trial_runs(eid, uri) if runs else ():
            fid = " ".join(f"@{n} {v:.1f}" for n, v in sorted(t["fid"].items()) if n in (1, 4, 128))
            lines.append(f"    {t['variant']:<16} seed {t['seed']:<3} {t['status']:<9} "
                         f"{('FID ' + fid) if fid else '':<30} {tracking.ui_link(base_url, eid, t['run_id'])}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """`ism ui`; the exit status (ConfigErrors reach ism.commands.main: status 2)."""
    ap = argparse.ArgumentParser(prog="ism ui", description="The MLflow UI on 127.0.0.1 over the project's store; "
                                 "Ctrl-C or SIGTERM stops the server and all its workers.")
    ap.add_argument("--port", type=env.port, default=env.ui_port(),
                    help="port on 127.0.0.1 (default $ISM_UI_PORT, else 5000)")
    options.tracking_uri(ap)
    ap.add_argument("--runs", action="store_true", help="also list each trial: variant, seed, FID and its run page")
    ap.add_argument("-v", "--verbose", action="store_true", help="keep the log lines of MLflow, Ray and Optuna")
    args = ap.parse_args(argv)
    env.quiet_libraries(args.verbose)
    from ism import tracking  # mlflow (seconds to import) loads only once the command runs
    uri = env.tracking_uri(args.tracking_uri)
    if uri.startswith(("http://", "https://")):
        print(f"ism ui: the tracking URI {masked(uri)} is a server already; its experiments:")
        print("\n".join(links(uri, uri, args.runs)) or "  (none yet)")
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
    # The links are read before the server starts (not alongside it: both would set up a new store's tables).
    listing = "\n".join(links(uri, url, args.runs)) or "  none yet: run ism ablate or ism study"
    # Its own process group: mlflow starts uvicorn and huey consumers, which a plain terminate() would orphan; and
    # should this process be killed (-9 included), the server gets SIGTERM and the watchdog stops its workers.
    procs.reap_descendants_on_exit()
    proc = subprocess.Popen(tracking.server_command(uri, port=args.port), start_new_session=True,
                            env={**os.environ, **tracking.SERVER_ENV}, preexec_fn=procs.die_with_parent)
    # SIGTERM (kill, a supervisor) ends us like Ctrl-C does, so the finally below stops the group either way.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        print(f"ism ui: starting the MLflow server on {url} (store {masked(uri)})", file=sys.stderr, flush=True)
        t0, told = time.time(), 0.0
        while not (_answers(url, 5, proc) and proc.poll() is None):  # our server, not one that took the port
            if proc.poll() is not None:
                print(f"ism ui: the MLflow server exited with status {proc.returncode}", file=sys.stderr)
                return proc.returncode or 1
            if time.time() - t0 >= told + 10:  # at 10 s, then every 30 s: why it is taking long
                told = time.time() - t0 + 20
                print(why_slow(time.time() - t0), file=sys.stderr, flush=True)
        print(f"ism ui: {url} answered after {time.time() - t0:.0f} s (Ctrl-C stops it); the experiments in "
              f"MLflow's training view:\n" + listing, flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(proc)
