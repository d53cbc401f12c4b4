"""Hostile input and faults (issue 23): names are identifiers, one YAML loader (duplicate keys, file names, UTF-8),
paths built from names stay under their roots."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from ism.system import store
from ism.commands import main
from ism.conf.config import ConfigError, parse_yaml, read_yaml
from test_study import TOY, with_


def _spec(path: Path, name: str | None = None, variants: dict | None = None) -> Path:
    spec = {"base": {"overrides": {"eval.at_end": False}}, "variants": variants or {"a": {"reason": "baseline"}}}
    if name is not None:
        spec["name"] = name
    path.write_text(yaml.safe_dump(spec))
    return path


# ----------------------------------------------------------------------------------------------- names
@pytest.mark.parametrize("name", ["../../escaped_spec", "/tmp/abs_spec", "a/b", ".", "..", "x" * 101, "sp ace"])
def test_spec_name_that_is_no_identifier_is_refused_before_any_work(tmp_path, capsys, name):
    spec = _spec(tmp_path / "s.yaml", name=name)
    st = tmp_path / "deep" / "st"
    assert main(["ablate", str(spec), "--profile", "smoke", "--storage", str(st)]) == 2
    err = capsys.readouterr().err
    assert "name" in err and "not allowed" in err and "letters, digits" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["s.yaml"], "nothing written anywhere"


@pytest.mark.parametrize("variant", ["../x", "/etc", "..", "a/b"])
def test_variant_name_that_is_no_identifier_is_refused_by_the_dry_run(tmp_path, capsys, variant):
    spec = _spec(tmp_path / "s.yaml", variants={"a": {"reason": "baseline"}, variant: {"reason": "hostile"}})
    assert main(["ablate", str(spec), "--profile", "smoke", "--dry-run", "--storage", str(tmp_path / "st")]) == 2
    assert f"name {variant!r} is not allowed" in capsys.readouterr().err


def test_shipped_names_are_identifiers():
    root = Path(__file__).resolve().parent.parent
    from ism.ablation import plan as ablate
    from ism.study import load_spec
    for f in sorted((root / "ablations").glob("*.yaml")):
        s = ablate.load_spec(f)
        assert all(store.NAME.fullmatch(v.name) for v in s.variants)
    for f in sorted((root / "studies").glob("*.yaml")):
        assert store.NAME.fullmatch(load_spec(f).name)


def test_study_name_that_climbs_out_is_refused(tmp_path, capsys):
    spec = tmp_path / "st.yaml"
    spec.write_text(yaml.safe_dump(with_(TOY, name="../../escaped_study"), sort_keys=False))
    assert main(["study", str(spec), "--profile", "smoke", "--dry-run", "--storage", str(tmp_path / "s")]) == 2
    assert "'../../escaped_study' is not allowed" in capsys.readouterr().err
    assert main(["report", str(spec), "--profile", "smoke"]) == 2


def test_paths_built_from_names_stay_under_their_root(tmp_path):
    assert store.under(tmp_path, tmp_path / "a" / "b") == tmp_path / "a" / "b"
    with pytest.raises(ConfigError, match="outside"):
        store.under(tmp_path / "st", tmp_path / "st" / ".." / "x")
    with pytest.raises(ConfigError, match="not allowed"):
        store.sweep_dir(tmp_path, "../up", "smoke", "abc")
    with pytest.raises(ConfigError, match="not allowed"):
        store.trial_dir(tmp_path, "../../etc")


# ----------------------------------------------------------------------------------------------- YAML
def test_duplicate_variant_key_is_an_error_naming_key_and_line(tmp_path, capsys):
    spec = tmp_path / "dup.yaml"
    spec.write_text("name: dup\nvariants:\n  a:\n    reason: first\n  b:\n    reason: other\n  a:\n    reason: second\n")
    assert main(["ablate", str(spec), "--profile", "smoke", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert str(spec) in err and "duplicate key 'a' on line 7 (first on line 3)" in err


def test_duplicate_key_in_a_config_file_and_nested_mappings(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim:\n  lr: 1.0e-3\n  batch_size: 8\n  lr: 2.0e-3\n")
    assert main(["train", "-c", str(cfg), "--dry-run"]) == 2
    assert "duplicate key 'lr' on line 4 (first on line 2)" in capsys.readouterr().err
    # YAML's merge key is not a duplicate; a mapping key given once in each of two mappings is not either
    assert parse_yaml("x: &a {k: 1}\ny:\n  <<: *a\n  j: 2\n", "t") == {"x": {"k": 1}, "y": {"k": 1, "j": 2}}


def test_yaml_errors_name_the_file_and_line(tmp_path, capsys):
    spec = tmp_path / "broken.yaml"
    spec.write_text("name: b\nvariants: [a\n")
    assert main(["ablate", str(spec), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unicode string" not in err and err.count(str(spec)) >= 2 and "line 3" in err


@pytest.mark.parametrize("cmd", [["ablate", "{f}", "--dry-run"], ["train", "-c", "{f}", "--dry-run"],
                                 ["study", "{f}", "--dry-run"], ["report", "{f}"]])
def test_non_utf8_yaml_is_exit_2_naming_the_file(tmp_path, capsys, cmd):
    f = tmp_path / "latin1.yaml"
    f.write_bytes("name: x\ndescription: caf\u00e9\n".encode("latin-1"))
    assert main([c.format(f=f) for c in cmd]) == 2
    assert f"{f}: not UTF-8 text (byte 0xe9 on line 2)" in capsys.readouterr().err


def test_read_yaml_keeps_plain_data_only(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("a: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="x.yaml"):
        read_yaml(f)


# ----------------------------------------------------------------------------------------------- checkpoints
FAST = ["run.progress=false", "eval.at_end=false", "run.steps=8", "run.checkpoint_every=4", "run.log_every=1"]


def _strict_json(path: Path) -> dict:
    """JSON as a standard parser reads it: NaN and Infinity are refused."""
    import json

    def refuse(c):
        raise ValueError(f"{path}: non-standard JSON constant {c}")
    return json.loads(path.read_text(), parse_constant=refuse)


def _spoil(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\x00not a checkpoint" * 64}[how])


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage"])
def test_resume_skips_a_bad_newest_checkpoint_and_moves_it_aside(tmp_path, capsys, how):
    from ism.conf.config import resolve
    from ism.training.train import train
    cfg = resolve("smoke", [], [f"run.out_dir={tmp_path}", *FAST])
    ref = train(cfg, tmp_path / "ref")
    run = tmp_path / "run"
    train(cfg, run)
    (run / store.SUMMARY).unlink()  # killed after its last checkpoint, then the disk spoiled that checkpoint
    _spoil(store.checkpoint_path(run, 8), how)
    got = train(cfg, run)
    assert got["resumed_from"] == 4 and got["final_loss"] == ref["final_loss"]
    assert [s for s, _ in store.list_checkpoints(run)] == [4, 8]  # the step-8 checkpoint written again
    moved = list((run / "checkpoints").glob("ckpt-00000008.pt.bad-*"))
    assert len(moved) == 1
    err = capsys.readouterr().err
    assert err.count("is bad (") == 1 and moved[0].name in err


def test_every_checkpoint_bad_starts_over(tmp_path, capsys):
    from ism.conf.config import resolve
    from ism.training.train import train
    cfg = resolve("smoke", [], [f"run.out_dir={tmp_path}", *FAST])
    train(cfg, tmp_path / "r")
    (tmp_path / "r" / store.SUMMARY).unlink()
    for _, p in store.list_checkpoints(tmp_path / "r"):
        _spoil(p, "garbage")
    assert train(cfg, tmp_path / "r")["resumed_from"] == 0
    assert capsys.readouterr().err.count("is bad (") == 2


def test_a_run_resumed_at_its_end_finishes_with_its_real_final_loss(tmp_path, capsys):
    from ism.conf.config import resolve
    from ism.training.train import train
    args = [f"run.out_dir={tmp_path}", *FAST]
    ref = train(resolve("smoke", [], args), tmp_path / "ref")
    run = tmp_path / "run"
    assert main(["train", "--preset", "smoke", "--run-dir", str(run), *args]) == 0
    (run / store.SUMMARY).unlink()  # killed after the final checkpoint, before summary.json (during evaluation)
    for _ in range(2):  # the rerun, and every later one
        assert main(["train", "--preset", "smoke", "--run-dir", str(run), *args]) == 0
        s = _strict_json(run / store.SUMMARY)
        assert s["resumed_from"] == 8 and s["final_loss"] == ref["final_loss"]


def test_summary_json_is_standard_json_even_without_a_final_loss(tmp_path):
    from ism.conf.config import resolve
    from ism.training.train import train
    cfg = resolve("smoke", [], [f"run.out_dir={tmp_path}", "run.progress=false", "eval.at_end=false", "run.steps=0"])
    assert train(cfg, tmp_path / "z")["final_loss"] != train(cfg, tmp_path / "z")["final_loss"]  # NaN, read back
    assert _strict_json(tmp_path / "z" / store.SUMMARY)["final_loss"] is None


# ----------------------------------------------------------------------------------------------- exit-2 gaps
@pytest.mark.parametrize("args, env, match", [
    (["ui", "--port", "99999"], {}, "invalid port value"),
    (["ui", "--port", "0"], {}, "invalid port value"),
    (["ui"], {"ISM_UI_PORT": "abc"}, "ISM_UI_PORT: 'abc' is not a port"),
])
def test_bad_ports_are_exit_2(monkeypatch, capsys, args, env, match):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) if "--port" in args else _no_raise():
        assert main(args) == 2
    assert match in capsys.readouterr().err


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_negative_max_failures_and_bad_ui_port_before_any_work(tmp_path, capsys, monkeypatch):
    spec = _spec(tmp_path / "s.yaml", name="mf")
    assert main(["ablate", str(spec), "--profile", "smoke", "--max-failures", "-5", "--storage", str(tmp_path / "st")]) == 2
    assert "--max-failures: expected an integer >= 0" in capsys.readouterr().err
    monkeypatch.setenv("ISM_UI_PORT", "abc")
    assert main(["ablate", str(spec), "--profile", "smoke", "--storage", str(tmp_path / "st")]) == 2
    assert "ISM_UI_PORT" in capsys.readouterr().err and not (tmp_path / "st").exists()


def _unwritable(path: Path) -> Path:
    """A folder nobody can write below: read-only for a user, a regular file in the way for root (who writes into
    read-only folders)."""
    import os
    if os.geteuid() == 0:
        path.write_text("a file, not a folder")
    else:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o555)
    return path


@pytest.mark.parametrize("which", ["storage", "cache"])
def test_unwritable_storage_or_cache_is_exit_2_before_any_work(tmp_path, capsys, monkeypatch, which):
    ro = _unwritable(tmp_path / "ro")
    spec = _spec(tmp_path / "s.yaml", name="ro")
    st = ro / "st" if which == "storage" else tmp_path / "st"
    if which == "cache":
        monkeypatch.setenv("ISM_CACHE", str(ro / "cache"))
    assert main(["ablate", str(spec), "--profile", "smoke", "--storage", str(st),
                 "--tracking-uri", f"sqlite:///{tmp_path}/ml.db"]) == 2
    err = capsys.readouterr().err
    assert "not writable" in err and ("ISM_STORAGE" if which == "storage" else "ISM_CACHE") in err
    assert not (tmp_path / "ml.db").exists(), "nothing tracked, no Ray started"


def test_check_writable_refuses_a_path_under_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="ISM_CACHE .*not writable"):
        store.check_writable(tmp_path / "f" / "cache", "ISM_CACHE")


def test_every_dry_run_has_a_cost_line_and_warns_beyond_a_sane_bound(tmp_path, capsys):
    spec = _spec(tmp_path / "s.yaml", name="cost")
    st = with_(TOY, name="coststudy")
    (tmp_path / "st.yaml").write_text(yaml.safe_dump(st, sort_keys=False))
    runs = [["ablate", str(spec), "--profile", "smoke", "--dry-run", "--storage", str(tmp_path / "x")],
            ["study", str(tmp_path / "st.yaml"), "--profile", "smoke", "--dry-run", "--storage", str(tmp_path / "y")],
            ["train", "--preset", "smoke", "--dry-run"]]
    for args in runs:
        assert main(args) == 0
        out = capsys.readouterr().out
        assert "estimated cost" in out and "warning" not in out, args
    huge = (["ablate", str(_spec(tmp_path / "h.yaml", name="huge")), "--profile", "smoke", "--dry-run", "run.steps=1"],)
    del huge
    big = tmp_path / "big.yaml"
    big.write_text(yaml.safe_dump({"name": "big", "base": {"overrides": {"run.steps": int(1e12)}},
                                   "variants": {"a": {"reason": "typo"}}}))
    st["base"]["overrides"]["run"]["steps"] = int(1e12)
    (tmp_path / "st.yaml").write_text(yaml.safe_dump(st, sort_keys=False))
    for args in [["ablate", str(big), "--profile", "smoke", "--dry-run", "--storage", str(tmp_path / "x")], runs[1],
                 ["train", "--preset", "smoke", "--dry-run", "run.steps=1e12"]]:
        assert main(args) == 0
        assert "warning: the estimated cost" in capsys.readouterr().out, args


def test_shipped_sweeps_are_priced_below_the_sane_bound():
    from ism.ablation import plan as ablate
    from ism.conf.profiles import PROFILES, SANE_DEVICE_HOURS, estimate_s
    root = Path(__file__).resolve().parent.parent
    for f in sorted((root / "ablations").glob("*.yaml")):
        s = ablate.load_spec(f)
        for name in PROFILES:
            p = ablate.plan(s, name)
            share = p.resources.get("gpu") or p.resources.get("cpu", 1)
            assert sum(estimate_s(t.cfg, name) for t in p.trials) * share / 3600 < SANE_DEVICE_HOURS / 10, (f, name)


# ----------------------------------------------------------------------------------------------- CIFAR-10 unpickler
def test_cifar_batch_loads_numpy_arrays_and_refuses_any_other_callable(tmp_path):
    import pickle

    import numpy as np
    from ism.conf.config import DataConfig
    from ism.training.data import load_dataset
    planes = np.zeros((4, 3072), np.uint8)
    for proto in (2, pickle.HIGHEST_PROTOCOL):
        with open(tmp_path / "data_batch_1", "wb") as fh:
            pickle.dump({b"data": planes, b"labels": [0, 1, 2, 3], b"batch_label": b"b", b"filenames": [b"a"] * 4},
                        fh, protocol=proto)
        assert load_dataset(DataConfig(name="cifar10", path=str(tmp_path), resolution=32), tmp_path / "c" / str(proto)
                            ).train_x.shape == (4, 3, 32, 32)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (__import__("os").system, (f"touch {marker}",))
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}))
    with pytest.raises(ConfigError, match="refused (posix|os).system"):
        load_dataset(DataConfig(name="cifar10", path=str(tmp_path), resolution=32), tmp_path / "c" / "evil")
    assert not marker.exists(), "the crafted batch ran code"


# ----------------------------------------------------------------------------------------------- one driver at a time
HOLD = "import sys, time; from ism.system import store\nwith store.driver_lock(sys.argv[1], 'sweep x'):\n    print('held', flush=True); time.sleep(600)\n"


def test_a_second_driver_is_refused_naming_the_holder_and_a_killed_holder_frees_the_lock(tmp_path):
    import os
    import signal
    import socket
    import subprocess
    import sys
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError) as e:
            with store.driver_lock(tmp_path, "sweep x"):
                pass
        msg = str(e.value)
        assert f"pid {holder.pid} on host {socket.gethostname()} since 20" in msg and "sweep x" in msg
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        with store.driver_lock(tmp_path, "sweep x") as path:  # the kernel dropped the dead holder's lock
            assert f'"pid": {os.getpid()}' in path.read_text()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.ray
@pytest.mark.e2e
def test_two_ablate_drivers_started_at_once_one_runs_the_other_exits_2(tmp_path):
    import os
    import subprocess
    import sys
    spec = tmp_path / "twin.yaml"
    spec.write_text(yaml.safe_dump({"name": "twin", "seeds": [0], "base": {"overrides": {
        "eval.at_end": False, "run.steps": 8}}, "variants": {"a": {"reason": "baseline"}}}))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "ism.cli", "ablate", str(spec), "--profile", "smoke", "--storage", str(tmp_path / "st"),
           "--tracking-uri", f"sqlite:///{tmp_path}/mlruns/mlflow.db"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [o[1][-2000:] for o in outs]
    loser = next(o[1] for p, o in zip(procs, outs) if p.returncode == 2)
    winner = next(p for p in procs if p.returncode == 0)
    assert f"sweep twin/smoke is being run by another driver: pid {winner.pid}" in loser
    stats = list((tmp_path / "st" / "trials").glob("*/stats.jsonl"))
    steps = [__import__("json").loads(ln)["step"] for ln in stats[0].read_text().splitlines()]
    assert len(stats) == 1 and steps == sorted(set(steps)) and steps[-1] == 8, "each step logged once, by one driver"


# ----------------------------------------------------------------------------------------------- ism ui, orphans
def test_ui_on_a_busy_port_is_exit_2_and_starts_no_server(tmp_path, capsys):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["ui", "--port", str(port), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 2
    assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err


def _alive(procs: dict[int, int]) -> dict[int, int]:
    from ism.system.procs import _stat
    return {p: t for p, t in procs.items() if (s := _stat(p)) is not None and s[1] == t}


def _gone_after_kill9(proc, ready, what: str) -> None:
    """Wait for `ready(descendants)`, kill -9 the ism process, then wait for every descendant to be gone. The bound,
    REAP_GRACE_S, is far below what Ray's agents take to notice on their own (1-2 minutes, issue 23)."""
    import os
    import signal
    import time
    from ism.system.procs import descendants
    deadline = time.time() + 300
    kids: dict[int, int] = {}
    while not ready(kids):
        assert proc.poll() is None, f"{what} exited early"
        assert time.time() < deadline, f"{what} never got ready"
        time.sleep(0.5)
        kids = descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    end = time.time() + REAP_GRACE_S
    while _alive(kids) and time.time() < end:
        time.sleep(0.5)
    left = _alive(kids)
    for p in left:  # stop what the test started, whatever the verdict
        os.kill(p, signal.SIGKILL)
    assert not left, f"orphans of {what}: " + ", ".join(Path(f"/proc/{p}/cmdline").read_text()[:80] for p in left
                                                      if Path(f"/proc/{p}/cmdline").exists())


REAP_GRACE_S = 30


def test_the_watchdog_leaves_no_resource_warning_and_stops_after_its_parent(tmp_path):
    """A process that started the watchdog exits without "subprocess N is still running", even with the warning
    filters reset and ResourceWarning shown (Ray and MLflow reset them: the message leaked into `ism ablate`'s
    output), and the watchdog itself ends soon after its parent."""
    import subprocess
    import sys
    import time
    from ism.system.procs import _stat
    code = ("import warnings; from ism.system import procs; pid = procs.reap_descendants_on_exit(); "
            "warnings.resetwarnings(); warnings.simplefilter('always'); print(pid)")
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert "still running" not in out.stderr and "ResourceWarning" not in out.stderr, out.stderr
    pid = int(out.stdout.strip())
    end = time.time() + REAP_GRACE_S
    while _stat(pid) is not None and time.time() < end:
        time.sleep(0.2)
    assert _stat(pid) is None, "the watchdog outlived its parent"


def _names(kids) -> str:
    return " ".join(Path(f"/proc/{p}/cmdline").read_text() if Path(f"/proc/{p}/cmdline").exists() else ""
                    for p in kids)


@pytest.mark.e2e
def test_the_mlflow_server_of_a_killed_ui_dies_with_it(tmp_path):
    import os
    import subprocess
    import sys
    from benchmarks.support import free_port
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ism.cli", "ui", "--port", str(port), "--tracking-uri",
                             f"sqlite:///{tmp_path}/mlflow.db"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ})
    import urllib.request

    def answering(kids) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return len(kids) >= 2
        except OSError:
            return False
    _gone_after_kill9(proc, answering, "ism ui")


@pytest.mark.ray
@pytest.mark.e2e
def test_a_local_ray_of_a_killed_ablate_driver_dies_with_it(tmp_path):
    import os
    import subprocess
    import sys
    spec = tmp_path / "orph.yaml"
    spec.write_text(yaml.safe_dump({"name": "orph", "seeds": [0], "base": {"overrides": {
        "eval.at_end": False, "run.steps": 100000}}, "variants": {"a": {"reason": "long enough to be killed"}}}))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-m", "ism.cli", "ablate", str(spec), "--profile", "smoke", "--storage",
                             str(tmp_path / "st"), "--tracking-uri", f"sqlite:///{tmp_path}/mlruns/mlflow.db"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # ready once a trial trains: Ray's daemons, agents and a worker all exist then
    _gone_after_kill9(proc, lambda kids: "raylet" in _names(kids) and any((tmp_path / "st" / "trials").glob(
        "*/checkpoints/ckpt-*.pt")), "ism ablate")


# ----------------------------------------------------------------------------------------------- portable reports
ABSOLUTE = __import__("re").compile(r"sqlite:////|file:///|(?<![\w.~])/(?:home|root|work|tmp|Users|mnt|data|var|opt)/")
REPORTS = Path(__file__).resolve().parent.parent / "reports"


def test_committed_text_reports_hold_no_machine_path():
    """Reports are portable: store URIs relative to the repo or without the machine's folders (ism.system.dburl.shown)."""
    found = [f"{p.relative_to(REPORTS)}: {m.group(0)}" for p in sorted(REPORTS.rglob("*"))
             if p.suffix in (".md", ".csv", ".tex") for m in ABSOLUTE.finditer(p.read_text())]
    assert not found, found[:10]


def test_committed_pdf_reports_hold_no_machine_path():
    from test_secrets import _pdf_text
    found = [str(p.relative_to(REPORTS)) for p in sorted(REPORTS.rglob("*.pdf"))
             if ABSOLUTE.search(_pdf_text(p.read_bytes()).decode("latin-1"))]
    assert not found, found


def test_reports_of_other_profiles_never_touch_the_tracked_index(tmp_path, monkeypatch):
    from ism.commands.listing import update_index
    from ism.report.index import index_markdown
    (tmp_path / "reports" / "x").mkdir(parents=True)
    (tmp_path / "reports" / "x" / "report.md").write_text("# ism report: x\n\n## Summary\n\n**1 of 1 trials finished**\n")
    (tmp_path / "reports" / "README.md").write_text(index_markdown(tmp_path / "reports"))
    before = (tmp_path / "reports" / "README.md").read_text()
    monkeypatch.chdir(tmp_path)
    for folder in ("x-smoke", "x-gpu-cifar10", "studies/y-smoke"):
        (tmp_path / "reports" / folder).mkdir(parents=True)
        md = tmp_path / "reports" / folder / "report.md"
        md.write_text("# ism report: x (profile smoke)\n\n## Summary\n\n**1 of 1 trials finished**\n")
        update_index(md)
        assert (tmp_path / "reports" / "README.md").read_text() == before, folder
    assert "x-smoke" not in index_markdown(tmp_path / "reports")
    update_index(tmp_path / "reports" / "x" / "report.md")  # the embedded report still rebuilds it
    assert (tmp_path / "reports" / "README.md").read_text() == before


def test_report_headers_show_store_uris_without_the_machine_path(tmp_path, monkeypatch):
    from ism.report.study_section import rerun_command  # noqa: F401 - the study report's header uses the same helper
    from ism.system import dburl
    monkeypatch.chdir(tmp_path)
    assert dburl.shown(f"sqlite:///{tmp_path}/mlruns/mlflow.db") == "sqlite:///mlruns/mlflow.db"
    assert not ABSOLUTE.search(dburl.shown("sqlite:////elsewhere/store/study/optuna.db"))
    assert not ABSOLUTE.search(dburl.shown("/home/someone/runs/study"))


def test_load_run_of_a_run_dir_skips_a_bad_newest_checkpoint(tmp_path, capsys):
    from ism.conf.config import resolve
    from ism.training.run_state import load_run
    from ism.training.train import train
    cfg = resolve("smoke", [], [f"run.out_dir={tmp_path}", *FAST])
    train(cfg, tmp_path / "r")
    _spoil(store.checkpoint_path(tmp_path / "r", 8), "truncated")
    assert load_run(tmp_path / "r")[3] == 4 and "is bad (" in capsys.readouterr().err


def test_a_second_study_driver_on_a_local_ray_exits_2_naming_the_holder(tmp_path, capsys, monkeypatch):
    import subprocess
    import sys
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    spec = tmp_path / "lk.yaml"
    spec.write_text(yaml.safe_dump(with_(TOY, name="lk", n_trials=1), sort_keys=False))
    held = tmp_path / "store" / "studies" / "lk" / "smoke"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(held)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["study", str(spec), "--profile", "smoke", "--storage", str(tmp_path / "store"), "--no-report",
                     "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err
        assert not (tmp_path / "mlflow.db").exists(), "refused before MLflow and Ray"
    finally:
        holder.kill()
        holder.wait()


class _SavedCopyHooks:
    """A trial's hooks whose scheduler persisted a copy of the trial's last reported checkpoint (Ray's, here a folder)."""

    def __init__(self, saved: Path):
        self.saved = saved

    def report(self, metrics):
        pass

    def report_checkpoint(self, metrics, path):
        pass

    def restore(self, run_dir):  # what RayHooks.restore does with Ray's copy
        store.adopt_newer_checkpoint(run_dir, self.saved)

    def node(self):
        return "node", "127.0.0.1"


def test_a_trial_whose_newest_checkpoint_is_bad_resumes_from_the_schedulers_intact_copy(tmp_path, capsys):
    """The trial body (ism.ablation.trials) on a run dir whose only checkpoint, the newest, was spoiled, while the
    scheduler holds an intact copy of it: the bad one is moved aside, the copy adopted, and the trial ends exactly where
    an uninterrupted run ends, instead of failing on every retry."""
    from ism import tracking
    from ism.ablation.trials import ablation_trial
    from ism.conf.config import resolve, to_dict
    from ism.training.train import train
    cfg = resolve("smoke", [], [f"run.out_dir={tmp_path}", *FAST])
    ref = train(cfg, tmp_path / "ref")
    run = tmp_path / "run"
    train(cfg, run)
    (run / store.SUMMARY).unlink()
    saved = tmp_path / "ray-copy" / "checkpoints"
    saved.mkdir(parents=True)
    shutil.copy2(store.checkpoint_path(run, 8), saved / store.checkpoint_path(run, 8).name)
    store.checkpoint_path(run, 4).unlink()  # the node lost it
    _spoil(store.checkpoint_path(run, 8), "truncated")
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    c = tracking.client(uri)
    exp, parent = tracking.start_parent(c, "ism/restore", "restore-smoke", {"ism.kind": "sweep"}, {"trials": 1}, {}, None)
    rid = tracking.child_run(c, exp, parent, run, "t", {}, {})
    payload = {"cfg": to_dict(cfg), "trial_dir": str(run), "tracking_uri": uri, "mlflow_run_id": rid,
               "cache_root": str(tmp_path / "cache"), "storage": None}
    ablation_trial(payload, _SavedCopyHooks(saved.parent))
    got = _strict_json(run / store.SUMMARY)
    assert got["resumed_from"] == 8 and got["final_loss"] == ref["final_loss"]
    assert len(list((run / "checkpoints").glob("ckpt-00000008.pt.bad-*"))) == 1
    assert c.get_run(rid).info.status == "FINISHED"
    # without the copy the same trial would start over: the oracle that the copy, not luck, resumed it
    assert store.adopt_newer_checkpoint(run, tmp_path / "nothing") is None
