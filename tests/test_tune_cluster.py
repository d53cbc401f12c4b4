"""A Ray cluster of two nodes started with `ray start` on this machine, joined through RAY_ADDRESS, tracked by a real
`mlflow server --workers 1`: the trials of one sweep run on both nodes and land in MLflow through the server."""
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from benchmarks.support import free_port
from cluster import http_ok, start, started, stop, wait_until

BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_sweep_runs_on_a_two_node_ray_cluster_tracked_by_an_mlflow_server(tmp_path):
    # Short temp dirs: Ray's unix socket paths must stay under ~107 characters.
    rt_head, rt_worker = tempfile.mkdtemp(prefix="rh", dir="/tmp"), tempfile.mkdtemp(prefix="rw", dir="/tmp")
    # A fresh token for this cluster only: head, worker and driver all use token auth (Ray's default for heads).
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    ray_port, ml_port = free_port(), free_port()
    address = f"127.0.0.1:{ray_port}"
    store = f"sqlite:///{tmp_path}/server/mlflow.db"
    procs = []
    try:
        procs.append(start([str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                            f"--port={ray_port}", "--num-cpus=1", "--num-gpus=0", "--include-dashboard=false",
                            "--disable-usage-stats", f"--temp-dir={rt_head}"], env, tmp_path / "head.log"))
        procs.append(start([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(ml_port),
                            "--workers", "1", "--backend-store-uri", store, "--default-artifact-root",
                            (tmp_path / "server" / "artifacts").as_uri()], env, tmp_path / "mlflow.log"))
        wait_until(lambda: started(tmp_path / "head.log"), procs, 120, "the Ray head")
        procs.append(start([str(BIN / "ray"), "start", f"--address={address}", "--block", "--num-cpus=1",
                            "--num-gpus=0", "--disable-usage-stats", f"--temp-dir={rt_worker}"], env,
                           tmp_path / "worker.log"))
        wait_until(lambda: started(tmp_path / "worker.log"), procs, 180, "the second Ray node")
        wait_until(lambda: http_ok(f"http://127.0.0.1:{ml_port}/health"), procs, 120, "the MLflow server")

        spec = tmp_path / "cluster.yaml"
        spec.write_text(yaml.safe_dump({"name": "cluster", "seeds": [0, 1],
                                        "base": {"overrides": {"eval.at_end": False, "run.steps": 24}},
                                        "variants": {"sm": {"reason": "one config, two seeds, two nodes"}}}))
        uri = f"http://127.0.0.1:{ml_port}"
        res = subprocess.run([sys.executable, "-m", "ism.cli", "ablate", str(spec), "--profile", "smoke", "--storage",
                              str(tmp_path / "st")], env={**env, "RAY_ADDRESS": address, "MLFLOW_TRACKING_URI": uri},
                             capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-4000:]

        from ism import tracking
        parent = tracking.find_sweeps("cluster", "smoke", uri)
        assert len(parent) == 1 and parent[0].info.status == "FINISHED"
        kids = tracking.child_runs(parent[0].info.run_id, uri)
        assert len(kids) == 2 and {k.info.status for k in kids} == {"FINISHED"}
        nodes = {k.data.tags["ism.node_id"] for k in kids}
        assert len(nodes) == 2, f"both trials ran on one node: {nodes}"
        assert all(k.data.tags["ism.node_ip"] not in ("", "unknown") for k in kids)
        assert all("loss" in k.data.metrics for k in kids)
        # the server wrote into its own sqlite store and artifact root
        local = tracking.client(store)
        assert {local.get_run(k.info.run_id).info.status for k in kids} == {"FINISHED"}
        assert "config.yaml" in {a.path for a in local.list_artifacts(kids[0].info.run_id)}
    finally:
        for p in reversed(procs):
            stop(p)
        shutil.rmtree(rt_head, ignore_errors=True)
        shutil.rmtree(rt_worker, ignore_errors=True)
