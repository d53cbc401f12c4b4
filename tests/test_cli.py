"""What a user sees at the terminal: train's closing summary, Ctrl-C, progress lines in logs, sample progress,
bad data paths that leave nothing behind, the data cache under $ISM_CACHE."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ism.commands.sample import main as sample_main
from ism.commands.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["run.steps=4", "run.log_every=2", "eval.steps=[1,2]", "eval.sweep_steps=[1]", "eval.num_samples=20",
        "eval.diagnostics=false"]


def test_train_ends_with_a_short_summary_not_a_json_dump(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(["--preset", "smoke", "--run-dir", str(run), *TINY]) == 0
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    assert lines[0].startswith("run ") and "4 steps in" in lines[0] and "final loss" in lines[0]
    assert str(run) in lines[1]
    fid = next(ln for ln in lines if ln.strip().startswith("fid"))
    assert "1:" in fid and "2:" in fid
    assert "{" not in out.out, "no raw JSON at the end"
    # stderr is not a terminal here: progress comes as one line per log_every steps, never tqdm's bar
    progress = [ln for ln in out.err.splitlines() if ln.startswith("train ")]
    assert [ln.split()[3] for ln in progress] == ["2/4", "4/4"] and "it/s" not in out.err
    assert lines[-2:] == ["next:", f"  samples:   ism sample {run}   (PNG grids -> {run / 'samples'})"]


def test_train_on_a_finished_run_says_already_complete(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(["--preset", "smoke", "--run-dir", str(run), "run.steps=2", "--no-eval"]) == 0
    first = capsys.readouterr()
    assert "already complete" not in first.err
    assert f"  evaluate:  ism eval {run}" in first.out, "an unevaluated run's next step is its evaluation"
    stamp = (run / "summary.json").stat().st_mtime_ns
    assert train_main(["--preset", "smoke", "--run-dir", str(run), "run.steps=2", "--no-eval"]) == 0
    again = capsys.readouterr()
    assert f"is already complete in {run}" in again.err
    assert again.out == first.out, "the same summary and next step as when it finished"
    assert (run / "summary.json").stat().st_mtime_ns == stamp


HEAVY = ("torch", "torch_fidelity", "mlflow", "ray", "optuna", "pandas", "matplotlib", "sqlalchemy")


def test_help_of_every_command_imports_no_heavy_library():
    """`ism CMD --help` must not pay for torch, MLflow, Ray or Optuna (seconds each; benchmarks/results.md, CLI
    start-up): each command's --help runs in a fresh interpreter and lists what it imported."""
    from ism.commands import COMMANDS
    probe = ("import sys\nfrom ism.commands import main\ntry:\n    main([sys.argv[1], '--help'])\n"
             "except SystemExit:\n    pass\nprint(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    for name in ["--help", *COMMANDS]:
        proc = subprocess.run([sys.executable, "-c", probe, name], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        *text, loaded = proc.stdout.strip().splitlines()
        assert "usage: ism" in "\n".join(text), (name, proc.stdout)
        assert "ism" in loaded.split(), "the probe saw its own imports"
        assert not set(HEAVY) & set(loaded.split()), (name, sorted(set(HEAVY) & set(loaded.split())))


def test_eval_offers_the_extractors_the_library_has():
    from ism.training import extractors
    from ism.commands.eval import EXTRACTORS
    assert tuple(EXTRACTORS) == tuple(extractors.EXTRACTORS)


@pytest.mark.e2e  # a whole `ism train` process: ~5-15 s, out of the 2-minute unit tier
def test_bad_data_path_leaves_nothing_behind(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "ism.cli", "train", "--preset", "smoke", "--run-dir", str(run),
                           "data.name=idx", f"data.path={tmp_path / 'nowhere'}", "run.steps=2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "data.path" in proc.stderr and "nowhere" in proc.stderr
    assert not run.exists(), "a rejected config must not leave runs/<id>/config.yaml"


@pytest.mark.e2e  # two whole `ism train` processes: ~5-15 s, out of the 2-minute unit tier
def test_ctrl_c_ends_with_one_line_and_exit_130_and_the_rerun_resumes(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "ism.cli", "train", "--preset", "smoke", "--run-dir", str(run), "run.steps=100000",
           "run.checkpoint_every=5", "run.log_every=5", "--no-eval"]
    # SIGINT's default action restored in the child: a test runner may have started us with it ignored
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not list((run / "checkpoints").glob("ckpt-*.pt")) and time.time() < deadline:
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("ism train: interrupted; newest checkpoint at step ")
    assert last.endswith("rerun the same command to resume")


def test_data_cache_follows_ism_cache(tmp_path, monkeypatch):
    """The preprocessed MNIST lands under $ISM_CACHE/data, not in the home directory."""
    monkeypatch.setenv("ISM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert train_main(["--preset", "mnist-cpu", "--run-dir", str(tmp_path / "run"), "run.steps=1", "--no-eval",
                       "run.progress=false"]) == 0
    assert list((tmp_path / "cache" / "data").glob("mnist5k-*.npz"))
    assert not (tmp_path / "home").exists()


def test_sample_reports_progress_per_step_count(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(["--preset", "smoke", "--run-dir", str(run), "run.steps=2", "--no-eval"]) == 0
    capsys.readouterr()
    assert sample_main([str(run), "--steps", "1,4", "--per-class", "2"]) == 0
    err = capsys.readouterr().err
    assert "[1/2] 1 steps:" in err and "[2/2] 4 steps:" in err


def test_a_spec_of_the_other_kind_is_named_and_the_hint_keeps_the_flags(capsys):
    from ism.commands import main
    assert main(["study", "ablations/ema.yaml", "--profile", "smoke", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "ablations/ema.yaml is an ablation spec" in err and "unknown key" not in err
    assert err.rstrip().endswith("run it with `ism ablate ablations/ema.yaml --profile smoke`"), err
    assert main(["ablate", "studies/wavelet.yaml", "--profile", "smoke", "--storage", "st", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "studies/wavelet.yaml is a study spec" in err and "unknown key" not in err
    assert err.rstrip().endswith("run it with `ism study studies/wavelet.yaml --profile smoke --storage st`"), err


def test_report_of_a_missing_sweep_suggests_the_ablate_command_with_its_flags(tmp_path, monkeypatch, capsys):
    from ism.commands import main
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["report", "ablations/ema.yaml", "--profile", "smoke"]) == 2
    assert "run `ism ablate ablations/ema.yaml --profile smoke` first" in capsys.readouterr().err
    store = f"sqlite:///{tmp_path}/other/mlflow.db"
    assert main(["report", "ablations/ema.yaml", "--profile", "smoke", "--tracking-uri", store]) == 2
    hint = f"run `ism ablate ablations/ema.yaml --profile smoke --tracking-uri {store}` first"
    assert hint in capsys.readouterr().err


def _stderr_of(code: str, **env) -> str:
    """What a fresh interpreter prints on stderr, in an environment without ism's quieting (commands run in-process
    by other tests set it in this one)."""
    from ism.commands.env import QUIET_ENV
    clean = {**{k: v for k, v in os.environ.items() if k not in dict(QUIET_ENV)}, **env}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=clean)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


@pytest.mark.e2e  # two interpreters that import MLflow: ~5-15 s, out of the 2-minute unit tier
def test_mlflow_creates_its_store_quietly_unless_verbose(tmp_path):
    """MLflow's migration lines appear only with --verbose; and only once per machine, when the migrated template
    that new stores copy is made (TMPDIR points each case at a fresh template here)."""
    code = ("from ism.commands import env\nenv.quiet_libraries({v})\nfrom ism import tracking\n"
            "assert tracking.ism_experiments('sqlite:///{db}') == []")
    (tmp_path / "t1").mkdir(), (tmp_path / "t2").mkdir()
    assert "Creating initial MLflow database tables" in _stderr_of(code.format(v=True, db=tmp_path / "a.db"),
                                                                   TMPDIR=str(tmp_path / "t1"))
    assert "Creating initial MLflow database tables" not in _stderr_of(code.format(v=True, db=tmp_path / "c.db"),
                                                                       TMPDIR=str(tmp_path / "t1"))  # a copy
    assert _stderr_of(code.format(v=False, db=tmp_path / "b.db"), TMPDIR=str(tmp_path / "t2")) == ""


def test_reopening_a_study_says_nothing(tmp_path):
    """Optuna's "Using an existing study" came once per opening (twice a run); the study's state is ism's to say."""
    code = ("from ism.study.plan import plan\nfrom ism.study.spec import load_spec\nfrom ism.study.storage import "
            f"open_study\np = plan(load_spec('studies/wavelet.yaml'), 'smoke')\nurl = 'sqlite:///{tmp_path}/o.db'\n"
            "a = open_study(p, url)\nb = open_study(p, url)\nassert a._study_id == b._study_id")
    assert "Using an existing study" not in _stderr_of(code)
