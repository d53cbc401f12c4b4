"""`ism ui`: the MLflow UI on 127.0.0.1 over the project's store."""
from __future__ import annotations

import argparse
import subprocess

from ism import tracking
from ism.commands import env


def main(argv: list[str] | None = None) -> int:
    """`ism ui`; the exit status (ConfigErrors reach ism.commands.main: status 2)."""
    ap = argparse.ArgumentParser(prog="ism ui", description="The MLflow UI on 127.0.0.1 over the project's store.")
    ap.add_argument("--port", type=int, default=env.ui_port())
    ap.add_argument("--tracking-uri", default=None, help="default $MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlruns/mlflow.db")
    args = ap.parse_args(argv)
    uri = env.tracking_uri(args.tracking_uri)
    if not uri.startswith("sqlite:"):
        print(f"ism ui: the tracking URI {uri} is a server already; open it in a browser.")
        return 0
    cmd = tracking.server_command(uri, port=args.port)
    print(f"ism ui: http://127.0.0.1:{args.port}  (store {uri}; Ctrl-C stops it)", flush=True)
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        return 0
