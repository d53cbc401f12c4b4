"""Cluster storage for real: Optuna and MLflow on a real PostgreSQL (tests/pgserver.py) and a Ray cluster of two nodes
started with `ray start` on this machine, joined through RAY_ADDRESS with token auth. A study survives a kill -9 of its
driver; several drivers run one study at once; a smoke ablation runs its trials on both nodes, tracked by a real
`mlflow server --workers 1` whose store is the same PostgreSQL, and `ism report` builds from that server."""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml
from benchmarks.support import free_port
from cluster import http_ok, start, started, stop, stop_session, wait_until
from test_study import TOY, with_, write_spec

BIN = Path(sys.executable).parent
GOOD = [{"optim.lr": 1e-6, "guidance.label_dropout": 0.1}, {"optim.lr": 2e-6, "guidance.label_dropout": 0.2}]
BAD = [{"optim.lr": 3e-3, "guidance.label_dropout": 0.1}, {"optim.lr": 5e-3, "guidance.label_dropout": 0.2}]


@pytest.fixture(scope="module")
def stack(pg, tmp_path_factory):
    """Ray head + a second Ray node (1 CPU each) and `mlflow server` on PostgreSQL with its own artifact folder."""
    root = tmp_path_factory.mktemp("pgc")
    # Short temp dirs: Ray's unix socket paths must stay under ~107 characters.
    rt_head, rt_worker = tempfile.mkdtemp(prefix="rh", dir="/tmp"), tempfile.mkdtemp(prefix="rw", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    ray_port, ml_port = free_port(), free_port()
    procs = []
    try:
        procs.append(start([str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                            f"--port={ray_port}", "--num-cpus=1", "--num-gpus=0", "--include-dashboard=false",
                            "--disable-usage-stats", f"--temp-dir={rt_head}"], env, root / "head.log"))
        procs.append(start([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(ml_port),
                            "--workers", "1", "--backend-store-uri", pg.url("mlflow"),
                            "--artifacts-destination", str(root / "artifacts")], env, root / "mlflow.log"))
        wait_until(lambda: started(root / "head.log"), procs, 120, "the Ray head")
        procs.append(start([str(BIN / "ray"), "start", f"--address=127.0.0.1:{ray_port}", "--block", "--num-cpus=1",
                            "--num-gpus=0", "--disable-usage-stats", f"--temp-dir={rt_worker}"], env,
                           root / "worker.log"))
        wait_until(lambda: started(root / "worker.log"), procs, 180, "the second Ray node")
        wait_until(lambda: http_ok(f"http://127.0.0.1:{ml_port}/health"), procs, 120, "the MLflow server")
        uri = f"http://127.0.0.1:{ml_port}"
        yield {"root": root, "pg": pg, "uri": uri,
               "env": {**env, "RAY_ADDRESS": f"127.0.0.1:{ray_port}", "MLFLOW_TRACKING_URI": uri}}
    finally:
        for p in reversed(procs):
            stop(p)
        shutil.rmtree(rt_head, ignore_errors=True)
        shutil.rmtree(rt_worker, ignore_errors=True)


def driver(stack, spec: Path, db: str, log: Path) -> subprocess.Popen:
    """`ism study` on the cluster with OPTUNA_STORAGE on PostgreSQL, in its own session (stopped by its pid)."""
    env = {**stack["env"], "OPTUNA_STORAGE": stack["pg"].url(db)}
    return subprocess.Popen([sys.executable, "-m", "ism.cli", "study", str(spec), "--profile", "smoke", "--storage",
                             str(stack["root"] / "st"), "--no-report"], cwd=stack["root"], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"), start_new_session=True)


def states(url: str, name: str) -> dict[str, int]:
    """Trial counts by state, read from the database itself ({} before the driver made the tables)."""
    import sqlalchemy
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as c:
            rows = c.execute(sqlalchemy.text("SELECT t.state, count(*) FROM trials t JOIN studies s USING (study_id) "
                                             "WHERE s.study_name = :n GROUP BY t.state"), {"n": name}).all()
        return {str(s).split(".")[-1]: n for s, n in rows}
    except sqlalchemy.exc.ProgrammingError:
        return {}
    finally:
        engine.dispose()


def children(uri: str, study: str):
    from mlflow.tracking import MlflowClient
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name(f"ism-study/{study}").experiment_id], max_results=1000)
    return ([r for r in runs if r.data.tags.get("ism.kind") == "study"],
            [r for r in runs if r.data.tags.get("ism.kind") == "trial"])


def _ask_until_full(spec: str, url: str) -> list[int]:
    """A driver's asking loop without Ray: ask and claim under the study lock until the study is full, tell at once."""
    from ism import study as S
    p = S.plan(S.load_spec(spec), "smoke")
    study = S.open_study(p, url)  # all at once on a fresh database: the first creates the tables
    books = S.Bookkeeper(p, study, Path(spec).parent, "", "", "", "", url)
    mine = []
    while True:
        with books.slot() as free:
            if not free:
                return mine
            ot = study.ask(p.distributions())
            books.claim(ot)
        study.tell(ot, float(ot.number))
        mine.append(ot.number)


def test_drivers_asking_at_once_stop_at_exactly_n_trials_on_postgresql(pg, tmp_path):
    """Four processes open one fresh study at once and ask trials until it is full: exactly n trials, unique numbers
    (without the study lock each count-then-ask races and the total overshoots)."""
    _race(pg.url("race"), tmp_path)


def test_drivers_asking_at_once_stop_at_exactly_n_trials_on_sqlite(tmp_path):
    """The same race on a SQLite file: no server, so it runs in the fast tier."""
    _race(f"sqlite:///{tmp_path / 'optuna.db'}", tmp_path)


def _race(url: str, tmp_path: Path) -> None:
    """Four drivers fill one fresh study of n trials at once; checks n unique numbers, all complete."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from ism import study as S  # noqa: F401 -- imported before the fork: the children start in milliseconds
    n, drivers = 24, 4
    spec = write_spec(tmp_path, with_(TOY, name="race", n_trials=n))
    with ProcessPoolExecutor(drivers, mp_context=multiprocessing.get_context("fork")) as pool:
        got = list(pool.map(_ask_until_full, [str(spec)] * drivers, [url] * drivers))
    numbers = sorted(x for g in got for x in g)
    assert numbers == list(range(n))                       # none twice, none beyond n_trials
    assert sum(1 for g in got if g) >= 2                    # they really shared the study
    study = optuna.load_study(study_name="race/smoke", storage=url)
    assert len(study.trials) == n and {t.state.name for t in study.trials} == {"COMPLETE"}


@pytest.mark.db
@pytest.mark.ray
def test_study_on_postgres_survives_a_killed_driver(stack, tmp_path):
    # Two good points, then two bad ones the median pruner stops at step 10 (a good one has completed by then: at
    # parallelism 2 the third trial starts only when one of the first two ends).
    spec = write_spec(tmp_path, with_(TOY, name="pgkill", n_trials=4, parallelism=2, enqueue=GOOD + BAD))
    url = stack["pg"].url("optuna_kill")
    proc = driver(stack, spec, "optuna_kill", tmp_path / "first.log")
    try:
        deadline = time.time() + 240
        while not (states(url, "pgkill/smoke").get("COMPLETE", 0) >= 1 and states(url, "pgkill/smoke").get("RUNNING", 0) >= 1):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "no trial finished in time"
            time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)  # the driver dies mid-study: nothing settled, its trials left RUNNING
        proc.wait(timeout=30)
    finally:
        stop_session(proc.pid)
    running = states(url, "pgkill/smoke")["RUNNING"]
    rerun = driver(stack, spec, "optuna_kill", tmp_path / "rerun.log")
    assert rerun.wait(timeout=400) == 0, (tmp_path / "rerun.log").read_text()[-4000:]
    study = optuna.load_study(study_name="pgkill/smoke", storage=url)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]                 # nothing lost, nothing duplicated
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]
    assert [t.params for t in study.trials] == GOOD + BAD
    assert sum(t.user_attrs.get("ism.requeued", 0) for t in study.trials) == running
    parents, kids = children(stack["uri"], "pgkill")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"       # the rerun continued the parent run
    by_number = {int(r.data.tags["ism.trial_number"]): r for r in kids}
    assert sorted(by_number) == [0, 1, 2, 3]
    for t in study.trials:
        assert by_number[t.number].data.tags["ism.trial_state"] == t.state.name
        assert by_number[t.number].info.status == "FINISHED"


@pytest.mark.db
@pytest.mark.ray
def test_several_drivers_share_one_study_on_postgres(stack, tmp_path):
    """Optuna's distributed pattern: three `ism study` started at once on one study name."""
    n, drivers = 4, 3
    spec = write_spec(tmp_path, with_(TOY, name="pgmany", n_trials=n, parallelism=1, pruner={"type": "none"},
                                      sampler={"type": "random", "seed": 0}))
    url = stack["pg"].url("optuna_many")
    procs = [driver(stack, spec, "optuna_many", tmp_path / f"d{i}.log") for i in range(drivers)]
    try:
        rcs = [p.wait(timeout=400) for p in procs]
    finally:
        for p in procs:
            stop_session(p.pid)
    logs = [(tmp_path / f"d{i}.log").read_text() for i in range(drivers)]
    assert rcs == [0] * drivers, "\n---\n".join(lg[-2000:] for lg in logs)
    assert not any("database is locked" in lg for lg in logs)
    study = optuna.load_study(study_name="pgmany/smoke", storage=url)
    assert sorted(t.number for t in study.trials) == list(range(n))         # unique numbers, exactly n trials
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    owners = {t.user_attrs["ism.owner"]["pid"] for t in study.trials}
    assert len(owners) >= 2, f"one driver ran every trial: {owners}"        # the drivers really shared the study
    # Seeded by trial number, not per driver: drivers started together never draw the same point.
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == n
    parents, kids = children(stack["uri"], "pgmany")
    assert len(parents) == 1 and sorted(int(r.data.tags["ism.trial_number"]) for r in kids) == list(range(n))


@pytest.mark.db
@pytest.mark.ray
@pytest.mark.e2e
def test_smoke_ablation_tracked_by_an_mlflow_server_on_postgres(stack, tmp_path):
    from ism import tracking
    spec = tmp_path / "pgab.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "pgab", "seeds": [0],
        "base": {"overrides": {"run.steps": 24, "eval.steps": [1, 4], "eval.guidance_sweep": [], "eval.num_samples": 256}},
        "variants": {"sm": {"reason": "baseline"},
                     "sm+intrinsic": {"reason": "intrinsic guidance", "overrides": {"guidance.mode": "intrinsic",
                                                                                    "guidance.t_interval": 0.0}}}}))
    run = lambda *a: subprocess.run([sys.executable, "-m", "ism.cli", *a], env=stack["env"], capture_output=True,
                                    text=True, timeout=600, cwd=tmp_path)
    res = run("ablate", str(spec), "--profile", "smoke", "--storage", str(tmp_path / "st"))
    assert res.returncode == 0, res.stderr[-4000:]
    uri = stack["uri"]
    parent = tracking.find_sweeps("pgab", "smoke", uri)
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    kids = tracking.child_runs(parent[0].info.run_id, uri)
    assert sorted(k.data.tags["ism.variant"] for k in kids) == ["sm", "sm+intrinsic"]
    assert {k.info.status for k in kids} == {"FINISHED"}
    assert len({k.data.tags["ism.node_id"] for k in kids}) == 2, "both trials ran on one node"
    assert all(k.data.tags["ism.node_ip"] not in ("", "unknown") for k in kids)
    for k in kids:
        assert k.data.params["run.steps"] == "24" and {"loss", "fid_steps_1", "fid_steps_4"} <= set(k.data.metrics)
        assert {"config.yaml", "stats.jsonl", "summary.json"} <= set(tracking.list_artifacts(k.info.run_id, "", uri))
    # The artifacts went through the server into its --artifacts-destination, the runs into PostgreSQL.
    assert any((stack["root"] / "artifacts").rglob("summary.json"))
    res = run("report", str(spec), "--profile", "smoke", "--out", str(tmp_path / "report"))
    assert res.returncode == 0, res.stderr[-4000:]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "sm+intrinsic" in md and (tmp_path / "report" / "report.pdf").exists()
    assert {"report/report.md", "report/report.pdf"} <= set(tracking.list_artifacts(parent[0].info.run_id, "report", uri))
