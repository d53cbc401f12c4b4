"""MLflow tracking on a real store: URIs, parent/child runs that survive resumes, metric de-duplication, `ism ui`."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from benchmarks.support import free_port

from ism import tracking
from ism.errors import ConfigError


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store for the module (creating its schema takes seconds); tests use their own experiments."""
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlruns/mlflow.db"


def test_default_uri_is_sqlite_under_cwd_with_artifacts_beside_it(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    from ism.commands import env
    uri = env.tracking_uri(None)
    assert uri == tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    assert tracking.artifact_root(uri) == (tmp_path / "mlruns" / "artifacts").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/env.db")
    assert env.tracking_uri(None) == f"sqlite:///{tmp_path}/env.db"  # the environment over the default
    assert env.tracking_uri("sqlite:///x.db") == f"sqlite:///{tmp_path.resolve()}/x.db"  # the flag wins
    assert tracking.artifact_root("http://127.0.0.1:5999") is None  # the server picks its artifact store
    assert tracking.tracking_uri("sqlite:///rel/x.db") == f"sqlite:///{tmp_path.resolve()}/rel/x.db"


def test_plain_file_store_is_refused_with_a_clear_message(tmp_path):
    with pytest.raises(ValueError, match="sqlite"):
        tracking.client(f"file://{tmp_path}/mlruns")


def _sweep(uri, name, resume=None):
    c = tracking.client(uri)
    return c, *tracking.start_parent(c, f"ism/{name}", f"{name}-smoke", {"ism.kind": "sweep", "ism.profile": "smoke"},
                                     {"trials": 1}, {"plan.json": "{}"}, resume)


def test_parent_and_child_runs_are_reused_not_duplicated(store, tmp_path):
    c, exp, parent = _sweep(store, "reuse")
    root = Path(store[len("sqlite:///"):]).parent / "artifacts"
    assert c.get_experiment(exp).artifact_location == f"{root.as_uri()}/ism_reuse"
    tdir = tmp_path / "trial"
    child = tracking.child_run(c, exp, parent, tdir, "v/s0", {"ism.kind": "trial", "ism.variant": "v"},
                               {"optim.lr": 0.001, "eval.steps": (1, 2)})
    assert json.loads((tdir / tracking.RUN_IDS_FILE).read_text()) == {parent: child}
    # a rerun of the sweep finds the same parent and the same child
    _, exp2, parent2 = _sweep(store, "reuse", resume=parent)
    child2 = tracking.child_run(c, exp2, parent2, tdir, "v/s0", {"ism.kind": "trial", "ism.variant": "v"},
                                {"optim.lr": 0.001, "eval.steps": (1, 2)})
    assert (exp2, parent2, child2) == (exp, parent, child)
    runs = tracking.child_runs(parent, store)
    assert [r.info.run_id for r in runs] == [child]
    run = runs[0]
    assert run.data.params == {"optim.lr": "0.001", "eval.steps": "[1, 2]"}
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["ism.variant"] == "v"
    assert [r.info.run_id for r in tracking.find_sweeps("reuse", "smoke", store)] == [parent]
    assert tracking.find_sweeps("reuse", "embedded", store) == []


def test_trial_log_skips_replayed_steps_and_logs_eval_once(store, tmp_path):
    c, exp, parent = _sweep(store, "triallog")
    rid = tracking.child_run(c, exp, parent, tmp_path / "t", "t", {}, {})
    log = tracking.TrialLog(store, rid)
    log.running()
    for step in (2, 4, 6):
        log.metrics(step, {"loss": 1.0 / step, "loss_fm": 0.5, "bad": float("nan")})
    # the trial process dies and is restarted: a new TrialLog resumes after the last logged step
    log = tracking.TrialLog(store, rid)
    assert log.last_step == 6
    for step in (6, 8):  # training resumed from a step-4 checkpoint and reached 6 again
        log.metrics(step, {"loss": 1.0 / step})
    stats = tmp_path / "stats.jsonl"
    stats.write_text("".join(json.dumps({"step": s, "time": 0, "loss": 1.0 / s}) + "\n" for s in (2, 4, 6, 8, 10)))
    assert log.replay_stats(stats) == 1
    log.eval_metrics(10, {"fid_steps_1": 50.0, "fid_steps_128": 20.0})
    log.eval_metrics(10, {"fid_steps_1": 50.0, "fid_steps_128": 20.0})
    log.steps_curves({"fid_steps_1": 50.0, "fid_steps_128": 20.0, "fid_steps_1_w_0.5": 9.0, "sc_gap_steps_1": 1.0})
    log.steps_curves({"fid_steps_1": 50.0, "fid_steps_128": 20.0})
    # log2 of the step count as MLflow's step, so 1, 2, 4, 8 do not bunch at the left of its linear axis
    assert [(m.step, m.value) for m in c.get_metric_history(rid, "fid/vs_log2_steps")] == [(0, 50.0), (7, 20.0)]
    assert not {"sc_gap/vs_log2_steps", "fid/vs_steps"} & set(c.get_run(rid).data.metrics)
    note = c.get_run(rid).data.tags["mlflow.note.content"]  # the run page's Description: FID by step count
    assert note.startswith("**FID 50 at 1, 20 at 128** (steps).")
    assert "| sampling steps | FID |" in note and "| 1 | 50 |" in note and "| 128 | 20 |" in note and "9" not in note
    hist = c.get_metric_history(rid, "loss")
    assert sorted(m.step for m in hist) == [2, 4, 6, 8, 10]
    assert [m.step for m in c.get_metric_history(rid, "fid_steps_1")] == [10]
    assert "bad" not in c.get_run(rid).data.metrics
    run_dir = tmp_path / "rundir"
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "eval" / "eval.csv").write_text("metric,value\nfid,1\n")
    (run_dir / "config.yaml").write_text("run: {}\n")
    log.artifacts(run_dir)
    log.tag("ism.failures", 1)
    assert log.failures() == 1
    log.finish("FAILED", "RuntimeError: boom")
    run = c.get_run(rid)
    assert run.info.status == "FAILED" and run.data.tags["ism.error"] == "RuntimeError: boom"
    assert {a.path for a in c.list_artifacts(rid)} == {"config.yaml", "eval"}
    assert [a.path for a in c.list_artifacts(rid, "eval")] == ["eval/eval.csv"]


def test_ism_ui_refuses_a_server_uri_nobody_answers():
    """A server URI must answer before anything starts. That `ism ui` really serves the store on 127.0.0.1 only is
    test_ism_ui_serves_the_store_and_works_as_a_tracking_server (e2e tier); the browser and SIGTERM are
    test_ablate's real-browser test."""
    from ism.commands import ui
    port = free_port()  # free a moment ago: nothing listens there
    with pytest.raises(ConfigError, match=f"no MLflow server answered at http://127.0.0.1:{port}"):
        ui.main(["--tracking-uri", f"http://127.0.0.1:{port}"])


def test_retry_rides_out_transient_store_errors_only(monkeypatch):
    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    calls = []

    def flaky(fail_times, message):
        def fn(x):
            calls.append(x)
            if len(calls) <= fail_times:
                raise RuntimeError(message)
            return x * 2
        return fn

    assert tracking._retry(flaky(3, "database is locked"), 21) == 42 and len(calls) == 4
    calls.clear()
    with pytest.raises(RuntimeError, match="no such table"):
        tracking._retry(flaky(1, "no such table"), 1)
    assert len(calls) == 1, "a permanent error is raised at once"
    calls.clear()
    with pytest.raises(RuntimeError, match="locked"):
        tracking._retry(flaky(99, "database is locked"), 1, tries=3)
    assert len(calls) == 3




def wait_http(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until a server answers (or its process died)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a process we started in its own session, with everything it spawned."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.e2e
def test_ism_ui_serves_the_store_and_works_as_a_tracking_server(store, tmp_path):
    """`ism ui` runs a real MLflow server (one worker) on 127.0.0.1; the tracking API works through it."""
    c, exp, parent = _sweep(store, "ui")  # something to show
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ism.cli", "ui", "--port", str(port), "--tracking-uri", store],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
        listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
        assert f"127.0.0.1:{port}" in listening and f"0.0.0.0:{port}" not in listening
        http = f"http://127.0.0.1:{port}"
        assert [r.info.run_id for r in tracking.find_sweeps("ui", "smoke", http)] == [parent]
        hc, hexp, hparent = _sweep(http, "ui", resume=parent)
        assert (hexp, hparent) == (exp, parent)
        rid = tracking.child_run(hc, hexp, hparent, tmp_path / "t", "t", {"ism.kind": "trial"}, {"a": 1})
        log = tracking.TrialLog(http, rid)
        log.metrics(2, {"loss": 0.5})
        (tmp_path / "rd").mkdir()
        (tmp_path / "rd" / "stats.jsonl").write_text('{"step": 2, "loss": 0.5}\n')
        log.artifacts(tmp_path / "rd")
        log.finish()
        # what went through the server is in the sqlite store
        run = tracking.client(store).get_run(rid)
        assert run.info.status == "FINISHED" and run.data.metrics["loss"] == 0.5
        assert [a.path for a in tracking.client(store).list_artifacts(rid)] == ["stats.jsonl"]
    finally:
        stop_group(proc)


@pytest.mark.parametrize("uri, match", [
    ("foo://bar", "scheme 'foo' is not allowed"),
    ("file:///tmp/x", "file store"),
    ("sqlite:////nonexistent-ism-dir/sub/mlflow.db", "folder /nonexistent-ism-dir does not exist"),
])
def test_bad_tracking_uris_are_refused_naming_the_uri(uri, match):
    from ism.errors import ConfigError
    with pytest.raises(ConfigError, match=match) as e:
        tracking.check_uri(uri)
    assert uri in str(e.value)
    assert not Path("/nonexistent-ism-dir").exists()  # nothing was created


def test_a_server_uri_nobody_answers_is_refused_quickly(tmp_path):
    import socket
    import time
    from ism.errors import ConfigError
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=f"no MLflow server answered at http://127.0.0.1:{port}/health"):
        tracking.check_uri(f"http://127.0.0.1:{port}")
    assert time.monotonic() - t0 < tracking.SERVER_TIMEOUT_S + 5
    tracking.check_uri(f"sqlite:///{tmp_path}/mlflow.db")  # an existing folder is fine
    # A database nobody serves: refused before any work, the password kept out of the message, postgresql:// given
    # the pinned driver (SQLAlchemy's default, psycopg2, is not installed).
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=rf"tracking URI postgresql\+psycopg://user:\*\*\*@127.0.0.1:{port}/ism: could "
                                          "not connect") as e:
        tracking.check_uri(tracking.tracking_uri(f"postgresql://user:s3cret@127.0.0.1:{port}/ism"))
    assert "s3cret" not in str(e.value) and time.monotonic() - t0 < 5


def test_a_database_that_never_answers_is_refused_after_the_connect_timeout(monkeypatch):
    """A port that accepts the TCP connection but never speaks PostgreSQL (a hung server, a wrong service): without
    the connect timeout libpq would wait forever; with it, a ConfigError naming the URI."""
    import socket
    import time
    from ism.system import dburl
    from ism.errors import ConfigError
    monkeypatch.setattr(dburl, "CONNECT_TIMEOUT_S", 2)  # libpq's smallest connect_timeout; the default 5 s is the same path
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)  # the kernel completes the handshake; nobody ever reads or answers
        url = f"postgresql+psycopg://ism@127.0.0.1:{s.getsockname()[1]}/ism"
        t0 = time.monotonic()
        with pytest.raises(ConfigError, match="Optuna storage .* could not connect within"):
            dburl.check(url, "Optuna storage")
        assert time.monotonic() - t0 < dburl.CONNECT_TIMEOUT_S + 5


def test_ablate_with_a_bad_tracking_uri_exits_2_before_any_work(tmp_path, capsys):
    from ism.cli import main
    store = tmp_path / "store"
    rc = main(["ablate", "ablations/components.yaml", "--profile", "smoke", "--storage", str(store),
               "--tracking-uri", "foo://bar"])
    assert rc == 2 and "foo://bar" in capsys.readouterr().err
    assert not store.exists() or not any(store.rglob("plan.json"))


def test_ism_version(capsys):
    from importlib.metadata import version
    from ism.cli import main
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ism {version('ism')}"


def test_links_open_the_training_view_and_the_trials_view_is_stored_on_the_experiment(store):
    c, exp, parent = _sweep(store, "links")
    view = json.loads(c.get_experiment(exp).tags[tracking.VIEW_TAG])
    assert view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "ism.variant"}]
    assert {f"metrics.`fid_steps_{n}`" for n in (1, 4, 128)} <= set(view["selectedColumns"])
    exp_link, run_link = tracking.ui_link("http://h:1/", exp), tracking.ui_link("http://h:1", exp, parent)
    view = f"viewStateShareKey={tracking.VIEW_KEY}&workflowType=machine_learning"
    assert exp_link == f"http://h:1/#/experiments/{exp}/runs?{view}"
    assert run_link == f"http://h:1/#/experiments/{exp}/runs/{parent}?workflowType=machine_learning"


def _browser():
    import shutil
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        # .ci/run installs Debian's chromium, so CI never skips this; a developer machine without it may
        assert not os.environ.get("ISM_REQUIRE_BROWSER"), "ISM_REQUIRE_BROWSER is set but no Chromium is installed"
        pytest.skip("no Chromium here (apt-get install chromium)")
    return browser


@pytest.mark.browser
def test_experiment_page_shows_every_trials_fid_in_a_real_browser(store, tmp_path):
    """What ism's link opens, rendered by headless Chromium: the trials as rows, grouped by variant, with their FID at
    1, 4 and 128 steps, without a click; a trial's run page (from `ism ui --runs`) shows its FIDs too. With
    $ISM_SCREENSHOTS set, screenshots of both pages are written there."""
    import re
    browser = _browser()
    c, exp, parent = _sweep(store, "view")
    fids = {}
    for i, (variant, seed) in enumerate((v, s) for v in ("sm", "ism") for s in (0, 1)):
        tags = {"ism.kind": "trial", "ism.variant": variant, "ism.seed": str(seed)}
        rid = tracking.child_run(c, exp, parent, tmp_path / f"t{i}", f"{variant}-seed{seed}", tags, {"run.seed": seed})
        fids[rid] = {n: round(300.0 / n + 7.25 * i + 0.5, 2) for n in (1, 4, 128)}  # distinct, exactly printable
        log = tracking.TrialLog(store, rid)
        log.eval_metrics(8, {f"fid_steps_{n}": v for n, v in fids[rid].items()})
        log.finish()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ism.cli", "ui", "--port", str(port), "--tracking-uri", store,
                             "--runs"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        line = ""
        while line.split()[:1] != ["ism/view"]:  # the experiments' lines follow "ism ui: <url> answered ..."
            line = proc.stdout.readline()
            assert line, "ism ui ended before it listed the experiment"
        link = line.split()[-1]
        assert link == tracking.ui_link(f"http://127.0.0.1:{port}", exp)
        trials = [proc.stdout.readline().rstrip() for _ in range(4)]
        assert [ln.split()[:3] for ln in trials] == [["ism", "seed", "0"], ["ism", "seed", "1"], ["sm", "seed", "0"],
                                                     ["sm", "seed", "1"]]
        run_links = {ln.split()[-1].split("/runs/")[1].split("?")[0]: ln.split()[-1] for ln in trials}
        assert set(run_links) == set(fids) and all("workflowType=machine_learning" in u for u in run_links.values())

        def render(url: str, shot: str) -> str:
            flags = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1600,1000", "--virtual-time-budget=30000"]
            if os.environ.get("ISM_SCREENSHOTS"):
                subprocess.run(flags + [f"--screenshot={Path(os.environ['ISM_SCREENSHOTS']) / shot}", url],
                               capture_output=True, timeout=240)
            dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=240).stdout
            return " ".join(re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style).*?</\1>", "", dom, flags=re.S)).split())

        page = render(link, "experiment.png")
        for rid, by_steps in fids.items():
            for n, v in by_steps.items():
                assert f" {v:g} " in f" {page} ", (n, v, page[:3000])
        assert "fid_steps_1" in page and "fid_steps_128" in page and "Group by: ism.variant" in page
        rid = next(iter(fids))
        run_page = render(run_links[rid], "run.png")
        assert all(f" {v:g} " in f" {run_page} " for v in fids[rid].values()), run_page[:3000]
    finally:
        stop_group(proc)


def test_a_new_store_is_the_migrated_template_as_mlflow_would_have_made_it(tmp_path, monkeypatch):
    """seed_store copies a store mlflow migrated once (instead of ~50 migrations per new store) and links it in
    without clobbering: the same schema revision as a store mlflow makes, the Default experiment where mlflow puts it
    (<cwd>/mlruns/0), runs log into it, and an existing store is never replaced."""
    import contextlib
    import sqlite3
    from mlflow.tracking import MlflowClient
    from ism.tracking import connect
    monkeypatch.chdir(tmp_path)
    made = tmp_path / "by_mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{made}").search_experiments()
    seeded = tmp_path / "seeded.db"
    connect.seed_store(f"sqlite:///{seeded}")
    def rev(db):
        with contextlib.closing(sqlite3.connect(db)) as con:
            return con.execute("select version_num from alembic_version").fetchall()
    assert seeded.is_file() and rev(seeded) == rev(made)
    c = MlflowClient(tracking_uri=f"sqlite:///{seeded}")
    assert c.get_experiment("0").artifact_location == str(tmp_path / "mlruns" / "0")
    run = c.create_run(c.create_experiment("x", artifact_location=(tmp_path / "art").as_uri()))
    c.log_metric(run.info.run_id, "fid", 3.0)
    connect.seed_store(f"sqlite:///{seeded}")   # exists: kept, with its run
    assert MlflowClient(tracking_uri=f"sqlite:///{seeded}").get_run(run.info.run_id).data.metrics == {"fid": 3.0}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".seed")] == []
