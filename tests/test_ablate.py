"""Ablation specs and profiles (resolved up front), and end-to-end sweeps on a real local Ray and a real MLflow store."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ism.ablation import plan as ablate
from ism import cli
from ism.conf import profiles
from ism.commands import ablate as ablate_cmd
from ism.conf.config import ConfigError, flatten, run_id

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "ablations").glob("*.yaml"))


# ----------------------------------------------------------------------------------------------- specs and profiles
@pytest.mark.parametrize("profile", list(ablate.PROFILES))
@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_every_shipped_spec_resolves_on_every_profile(spec, profile):
    p = ablate.plan(ablate.load_spec(spec), profile)
    prof = ablate.PROFILES[profile]
    assert p.preset == (p.spec.base_preset or prof.preset) and p.trials  # a spec may name its own preset (a toy)
    assert len({t.run_id for t in p.trials}) == len(p.trials)           # one trial per distinct config
    for t in p.trials:
        assert run_id(t.cfg) == t.run_id and t.cfg.run.seed == t.seed
        assert t.cfg.run.threads == max(1, int(p.resources.get("cpu", 1)))
        assert t.cfg.run.device == prof.overrides["run.device"] and t.cfg.run.progress is False
    assert sorted(v for t in p.trials for v in t.variants) == sorted(v for v in p.variants for _ in p.seeds)
    if profile.startswith("gpu-"):
        assert dict(p.resources) == {"gpu": 1.0, "cpu": 8.0}


def test_components_matrix_shares_identical_configs():
    spec = ablate.load_spec(ROOT / "ablations/components.yaml")
    assert spec.seeds == (0, 1, 2) and ablate.plan(spec, "gpu-cifar10").seeds == (0, 1, 2)
    p = ablate.plan(spec, "embedded")
    # The oracle, from the YAML itself: a variant is base overrides + its own; equal merged overrides = one trial.
    raw = yaml.safe_load((ROOT / "ablations/components.yaml").read_text())
    merged = {n: frozenset((k, json.dumps(x)) for k, x in {**raw["base"]["overrides"], **(v.get("overrides") or {})}.items())
              for n, v in raw["variants"].items()}
    aliases = {frozenset(n for n in merged if merged[n] == m) for m in merged.values()}
    assert len(p.variants) == len(raw["variants"]) and len(p.trials) == len(aliases) * len(p.seeds)
    assert {frozenset(t.variants) for t in p.trials if t.seed == 0} == aliases
    names = {t.variants for t in p.trials if t.seed == 0}
    assert ("sm+intrinsic", "cum2_interval") in names
    assert ("cum4_sot", "ism-twin_ema") in names
    assert ("cum5_twin_ema", "ism") in names
    base = p.base
    assert (base.guidance.mode, base.wavelet.enabled, base.ot.enabled, base.ema.twin) == ("cfg_finest", False, False, False)
    full = next(t for t in p.trials if "ism" in t.variants).cfg
    assert (full.guidance.mode, full.guidance.t_interval, full.wavelet.enabled, full.ot.enabled, full.ema.twin) == \
        ("intrinsic", 0.3, True, True, True)
    cum1 = next(t for t in p.trials if t.variants == ("cum1_intrinsic",)).cfg
    assert (cum1.guidance.mode, cum1.guidance.t_interval) == ("intrinsic", 0.0)
    assert set(t.cfg.eval.steps for t in p.trials) == {(1, 2, 4, 8, 16, 32, 64, 128)}
    assert ablate.components(full) == dict.fromkeys(["intrinsic", "interval", "wavelet", "sot", "twin_ema"], True)
    assert list(p.spec.groups["cumulative"]) == ["sm", "cum1_intrinsic", "cum2_interval", "cum3_wavelet", "cum4_sot",
                                                  "cum5_twin_ema"]


def test_side_specs_record_fewer_seeds_on_embedded_and_reuse_components_trials():
    # components evaluates with a held-out guidance selection the side specs skip: their trainings are shared
    # (adopted, ism.system.store.trained_donor), not their run ids
    from ism.conf.config import training_id
    comp = {training_id(t.cfg) for t in ablate.plan(ablate.load_spec(ROOT / "ablations/components.yaml"),
                                                    "embedded").trials}
    for name, shared in (("sot-pool", {"K0", "K32"}), ("wavelet-levels", {"L0", "Lmax"}), ("ema", {"paper", "none"})):
        spec = ablate.load_spec(ROOT / f"ablations/{name}.yaml")
        p = ablate.plan(spec, "embedded")
        assert p.seeds == (0,) and spec.seeds == (0, 1, 2)
        assert any("seeds [0]" in n for n in p.notes)
        assert {v for t in p.trials if training_id(t.cfg) in comp for v in t.variants} == shared
        assert ablate.plan(spec, "gpu-cifar10").seeds == (0, 1, 2)


def test_wavelet_levels_rows_each_differ_from_mse_and_from_each_other():
    """Each level row must test something: its loss differs from plain MSE (with one level a per-band mean of four
    equal-sized bands WAS the MSE) and from the other level counts."""
    import torch
    from ism.training.objective.wavelet import wavelet_loss
    p = ablate.plan(ablate.load_spec(ROOT / "ablations/wavelet-levels.yaml"), "embedded")
    g = torch.Generator().manual_seed(0)
    err = torch.randn(8, 1, 16, 16, generator=g)
    mse = err.square().mean(dim=(1, 2, 3))
    losses = {}
    for t in p.trials:
        if t.cfg.wavelet.enabled:
            losses[t.variants[0]] = wavelet_loss(err, torch.zeros_like(err), t.cfg.wavelet)[0]
    assert set(losses) == {"L1", "L3", "Lmax"}
    for v, loss in losses.items():
        assert (loss / mse).min() > 1.05, v  # above MSE: the finest details weigh more
    assert len({round(float(x.mean()), 5) for x in losses.values()}) == 3


def test_components_embedded_lists_the_rules_maximum_of_seeds_paired():
    """Every variant has the same six seeds (paired), so the adaptive rule can reach its last look (6 seeds)."""
    from ism.ablation.sequential import Rule
    p = ablate.plan(ablate.load_spec(ROOT / "ablations/components.yaml"), "embedded")
    assert p.seeds == tuple(range(Rule().max_seeds))
    by_variant = {}
    for t in p.trials:
        for v in t.variants:
            by_variant.setdefault(v, set()).add(t.seed)
    assert all(s == set(p.seeds) for s in by_variant.values())


def test_ema_spec_keeps_the_inference_ema_and_the_papers_ratios():
    spec = ablate.load_spec(ROOT / "ablations/ema.yaml")
    for profile in ("embedded", "gpu-fashion", "gpu-cifar10"):
        p = ablate.plan(spec, profile)
        by = {t.variants[0]: t.cfg for t in p.trials}
        infer = (by["paper"].ema.infer_half_life_steps, by["paper"].ema.infer_decay)
        for v in ("long", "live"):
            assert (by[v].ema.infer_half_life_steps, by[v].ema.infer_decay) == infer and by[v].ema.twin
        none = by["none"].ema
        assert not none.twin and (none.half_life_steps == infer[0] if infer[0] else none.decay == infer[1])
        if infer[0]:
            assert by["long"].ema.target_half_life_steps == pytest.approx(infer[0] / 10)
        assert by["live"].shortcut.target == "online"


def test_guidance_spec_sweeps_guidance_per_mode():
    p = ablate.plan(ablate.load_spec(ROOT / "ablations/guidance.yaml"), "embedded")
    by = {t.variants[0]: t.cfg for t in p.trials}
    assert {v: c.guidance.mode for v, c in by.items()} == {"cfg_finest": "cfg_finest", "cfg_every_level": "cfg_every_level",
                                                           "intrinsic": "intrinsic"}
    assert all(c.eval.guidance_sweep and c.eval.sweep_steps == (1, 4, 128) for c in by.values())
    assert 0.0 in by["intrinsic"].eval.guidance_sweep and 1.0 in by["cfg_finest"].eval.guidance_sweep
    # the intrinsic sweep stays inside the w range the model was trained on, and reaches the inference default
    assert max(by["intrinsic"].eval.guidance_sweep) <= by["intrinsic"].guidance.w_max
    assert by["intrinsic"].eval.w in by["intrinsic"].eval.guidance_sweep


def write_spec(path: Path, **over) -> Path:
    spec = {"name": "mini", "base": {"overrides": {"eval.at_end": False}},
            "variants": {"a": {"reason": "baseline"}, "b": {"reason": "intrinsic", "overrides": {"guidance.mode": "intrinsic"}}},
            "seeds": [0, 1]}
    spec.update(over)
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("over, match", [
    ({"variants": {"a": {"reason": "x", "overides": {}}}}, r"variants\.a: unknown key 'overides'.*Did you mean 'overrides'"),
    ({"variants": {"a": {"reason": "x", "overrides": {"guidance.mod": "intrinsic"}}}},
     r"variant 'a' seed 0: unknown config key 'guidance.mod'"),
    ({"variants": {"a": {"reason": "x", "overrides": {"guidance.mode": "cfg_sometimes"}}}},
     r"variant 'a'.*guidance.mode: 'cfg_sometimes' is not allowed"),
    ({"variants": {"a": {"overrides": {}}}}, r"variants\.a: a one-line 'reason' is required"),
    ({"profiles": {"laptop": {"seeds": [0]}}}, r"unknown profile 'laptop'"),
    ({"profiles": {"smoke": {"variants": ["c"]}}}, r"unknown variant 'c'"),
    ({"groups": {"g": ["a", "zz"]}}, r"groups\.g: unknown variant 'zz'"),
    ({"seeds": [0, 0]}, r"seeds: repeated"),
    ({"resources": {"tpu": 1}}, r"unknown resource 'tpu'"),
    ({"base": {"overrides": {"nosuch.key": 1}}}, r"base: unknown config section 'nosuch'"),
    ({"varients": {}}, r"unknown key 'varients'"),
])
def test_bad_specs_fail_with_a_clear_error(tmp_path, over, match):
    path = write_spec(tmp_path / "bad.yaml", **over)
    with pytest.raises(ConfigError, match=match):
        ablate.plan(ablate.load_spec(path), "smoke")


def test_bad_spec_on_the_command_line_exits_2_before_anything_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = write_spec(tmp_path / "good.yaml")
    bad = write_spec(tmp_path / "bad.yaml", variants={"a": {"reason": "x", "overrides": {"optim.lrate": 1}}})
    assert cli.main(["ablate", str(bad), "--profile", "smoke", "--storage", str(tmp_path / "st")]) == 2
    assert "unknown config key 'optim.lrate'" in capsys.readouterr().err
    assert cli.main(["ablate", str(good), "--profile", "laptop"]) == 2
    assert "unknown profile 'laptop'" in capsys.readouterr().err
    assert cli.main(["ablate", str(good), "--profile", "smoke", "--variants", "a,zz"]) == 2
    assert "unknown variant 'zz'" in capsys.readouterr().err
    assert not (tmp_path / "st").exists() and not (tmp_path / "mlruns").exists()


def test_dry_run_lists_trials_diffs_resources_and_cost(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.yaml", variants={"a": {"reason": "baseline"}, "b": {"reason": "b", "overrides": {}},
                                                     "c": {"reason": "wavelets", "overrides": {"wavelet.enabled": True}}})
    assert ablate_cmd.main([str(spec), "--profile", "smoke", "--dry-run", "--storage", str(tmp_path / "st")]) == 0
    out = capsys.readouterr().out
    assert "3 variants -> 2 distinct configs x 2 seeds [0, 1] = 4 trials" in out
    assert "a = b: baseline" in out and "diff vs base: (the base)" in out
    assert "diff vs base: wavelet.enabled: False -> True" in out
    assert "resources per trial cpu 1;" in out and "estimated cost: 4 trials" in out
    assert out.count("  pending\n") == 4 and "4 pending" in out
    assert not (tmp_path / "st").exists()


def test_sweep_id_is_stable_and_follows_the_trial_set(tmp_path):
    spec = ablate.load_spec(write_spec(tmp_path / "s.yaml"))
    a, b = ablate.plan(spec, "smoke"), ablate.plan(spec, "smoke")
    assert a.sweep_id == b.sweep_id
    assert ablate.plan(spec, "smoke", seeds=[0]).sweep_id != a.sweep_id
    assert ablate.plan(spec, "embedded").sweep_id != a.sweep_id
    plan_json = a.to_json()
    assert [t["variants"] for t in plan_json["trials"]] == [["a"], ["a"], ["b"], ["b"]]
    assert plan_json["trials"][2]["diff"] == {"guidance.mode": ["cfg_finest", "intrinsic"]}


# ----------------------------------------------------------------------------------------------- end to end
def run_ablate(spec: Path, storage: Path, uri: str, *extra: str, env: dict | None = None, timeout: float = 600,
               drop: tuple[str, ...] = ()):
    full = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in drop}
    return subprocess.run([sys.executable, "-m", "ism.cli", "ablate", str(spec), "--profile", "smoke", "--storage",
                           str(storage), "--tracking-uri", uri, *extra], capture_output=True, text=True,
                          env=full, timeout=timeout, cwd=storage.parent)


def children(uri: str, spec: str) -> tuple:
    from ism import tracking
    sweeps = tracking.find_sweeps(spec, "smoke", uri)
    assert len(sweeps) == 1, "one parent run per sweep, reused on rerun"
    return sweeps[0], tracking.child_runs(sweeps[0].info.run_id, uri)


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory):
    """2 variants x 2 seeds with evaluation; one trial crashes once at step 6 (checkpoint at 4) and is retried; a third
    variant points at a dataset that does not exist, a permanent error that must fail without retries."""
    root = tmp_path_factory.mktemp("sweep")
    variants = {"a": {"reason": "baseline"}, "b": {"reason": "intrinsic", "overrides": {"guidance.mode": "intrinsic"}},
                "broken": {"reason": "missing data", "overrides": {"data.name": "idx", "data.path": str(root / "nodata")}}}
    spec = write_spec(root / "mini.yaml", variants=variants,
                      base={"overrides": {"eval.steps": [1, 2], "eval.sweep_steps": [1]}})
    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    # No ISM_CACHE: the driver's default cache (.ism/cache under its working directory) must serve every trial, though
    # Ray runs each trial in a working directory of its own. Seeded with the session's classifier (not its reference
    # statistics), so the trials' evaluation writes those statistics there.
    cache = root / ".ism" / "cache"
    cache.mkdir(parents=True)
    for f in Path(os.environ["ISM_CACHE"]).glob("mnist-cnn-*.pt"):
        shutil.copy2(f, cache / f.name)
    t0 = time.time()
    res = run_ablate(spec, root / "st", uri, env={"ISM_INJECT_CRASH": "b@6"}, drop=("ISM_CACHE",))
    assert res.returncode == 1, res.stderr[-4000:]  # 1: some trials failed
    return {"root": root, "spec": spec, "uri": uri, "out": res.stderr, "wall": time.time() - t0,
            "plan": ablate.plan(ablate.load_spec(spec), "smoke")}


@pytest.mark.ray
@pytest.mark.e2e
def test_smoke_sweep_leaves_parent_and_child_runs_with_params_metrics_artifacts(smoke_sweep):
    from ism import tracking
    uri, p = smoke_sweep["uri"], smoke_sweep["plan"]
    parent, kids = children(uri, "mini")
    assert parent.info.status == "FAILED"
    tags = parent.data.tags
    assert (tags["ism.kind"], tags["ism.spec"], tags["ism.profile"], tags["ism.sweep_id"]) == ("sweep", "mini", "smoke", p.sweep_id)
    assert tags["ism.git_commit"] != "unknown"
    c = tracking.client(uri)
    assert {a.path for a in c.list_artifacts(parent.info.run_id)} >= {"plan.json", "spec.yaml", "notes.txt"}
    by = {(k.data.tags["ism.variant"], int(k.data.tags["ism.seed"])): k for k in kids}
    assert len(kids) == 6 and set(by) == {(v, s) for v in ("a", "b", "broken") for s in (0, 1)}
    assert {by[v, s].info.status for v in ("a", "b") for s in (0, 1)} == {"FINISHED"}
    for t in p.trials[:4]:
        k = by[(t.variants[0], t.seed)]
        assert k.data.tags["ism.run_id"] == t.run_id and k.data.tags["ism.profile"] == "smoke"
        assert k.data.tags["ism.component.intrinsic"] == ("on" if t.variants[0] == "b" else "off")
        assert k.data.params == {key: (json.dumps(list(v)) if isinstance(v, (list, tuple)) else str(v))
                                 for key, v in flatten(t.cfg).items()}
        m = k.data.metrics
        for key in ("loss", "loss_fm", "loss_sc", "wall_time_s", "peak_mem_mb", "fid_steps_1", "fid_steps_2",
                    "kid_steps_1", "fid/vs_log2_steps", "machine/train_s", "machine/eval_s",
                    "machine/cpu_util"):
            assert key in m, key
        assert [h.step for h in c.get_metric_history(k.info.run_id, "fid/vs_log2_steps")] == [0, 1]  # 1, 2 steps
        assert k.data.tags["ism.hardware"] and k.data.tags["ism.node_ip"]
        steps = [h.step for h in c.get_metric_history(k.info.run_id, "loss")]
        assert steps == sorted(set(steps)) and steps[-1] == t.cfg.run.steps, "each logged step once"
        arts = {a.path for a in c.list_artifacts(k.info.run_id)}
        assert {"config.yaml", "stats.jsonl", "eval", "samples"} <= arts
        assert {"eval/eval.csv", "eval/eval.json"} <= {a.path for a in c.list_artifacts(k.info.run_id, "eval")}
        assert any(a.path.endswith(".png") for a in c.list_artifacts(k.info.run_id, "samples"))
    assert "loss_guid" in by[("b", 0)].data.metrics
    cache = smoke_sweep["root"] / ".ism" / "cache"
    assert any((cache / "fidelity").iterdir()), "the trials wrote their reference statistics to the driver's cache"
    assert not list((smoke_sweep["root"] / "st").rglob(".ism")), "no cache of its own in a Ray trial's working dir"
    # the trials that ran to their end here, without a retry, calibrate the next dry run on this machine
    from ism.ablation.progress import measured_scale
    timed = measured_scale(smoke_sweep["root"] / "st", "smoke")
    assert timed is not None and timed[1] == 2 and timed[0] > 0, timed  # a/s0, a/s1: b's crashed once, broken failed


@pytest.mark.ray
@pytest.mark.e2e
def test_parent_run_carries_the_sweep_summary_and_the_experiment_the_training_view(smoke_sweep):
    """What a user opens first: the parent run's per-variant FID/KID at the headline step counts (a geometric mean
    over finished seeds for FID), a summary table, and an experiment MLflow 3's UI shows as model training."""
    import math
    from ism import tracking
    uri = smoke_sweep["uri"]
    parent, kids = children(uri, "mini")
    c = tracking.client(uri)
    assert c.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    m = parent.data.metrics
    for v in ("a", "b"):
        fids = [k.data.metrics["fid_steps_1"] for k in kids
                if k.data.tags["ism.variant"] == v and k.info.status == "FINISHED"]
        assert len(fids) == 2 and m[f"{v}/fid_steps_1"] == pytest.approx(math.exp(sum(map(math.log, fids)) / 2))
        assert f"{v}/kid_steps_1" in m
    assert not any(k.startswith("broken/") for k in m), "a variant with no finished seed has no summary"
    assert m["machine/trials"] == 4 and 0 < m["machine/cpu_util"] <= 1, "the machine account of the trials run"
    assert "% of all cores busy" in smoke_sweep["out"]
    arts = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"summary.json", "summary.csv"} <= arts
    assert "| a | 2 |" in parent.data.tags["mlflow.note.content"], "the Overview's description holds the summary"
    out = smoke_sweep["out"]
    assert "next:" in out and "ism report" in out and "workflowType" in out
    # quiet: ism's own lines, not the libraries' (they come back with --verbose)
    for noise in ("Token authentication is enabled", "Creating initial MLflow database tables", "Downloading artifacts",
                  "INFO mlflow"):
        assert noise not in out, noise
    etas = [ln for ln in out.splitlines() if ", ETA " in ln]
    assert etas and all(re.search(r"ETA (>= )?\d+\.\d min \((cost model|from \d+ (earlier )?trial)", ln) for ln in etas), etas
    from ism.commands.ls import sweep_lines
    line = next(ln for ln in sweep_lines(uri) if ln.split()[:2] == ["mini", "smoke"])
    assert "FAILED" in line and "6 trials: 4 finished, 2 failed" in line, line


def _descendants(pid: int) -> set[int]:
    """Every live process below pid (read from /proc)."""
    kids: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.add(k)
            todo.append(k)
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.browser
@pytest.mark.ray
@pytest.mark.e2e
def test_ism_ui_renders_runs_and_fid_in_a_real_browser_and_stops_whole_on_sigterm(smoke_sweep):
    """`ism ui` over the smoke sweep's store: headless Chromium renders the experiment in the training view with the
    sweep's runs, and the parent run's page with its FID summary; SIGTERM then stops mlflow, uvicorn and huey."""
    import socket
    from ism import tracking
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        # .ci/run installs Debian's chromium, so CI never skips this; a developer machine without it may
        assert not os.environ.get("ISM_REQUIRE_BROWSER"), "ISM_REQUIRE_BROWSER is set but no Chromium is installed"
        pytest.skip("no Chromium here (apt-get install chromium)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = smoke_sweep["uri"]
    parent, kids = children(uri, "mini")
    proc = subprocess.Popen([sys.executable, "-m", "ism.cli", "ui", "--port", str(port), "--tracking-uri", uri],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=smoke_sweep["root"])
    try:
        lines = []
        deadline = time.time() + 300
        while time.time() < deadline and not any("ism/mini" in ln for ln in lines):
            ln = proc.stdout.readline()
            if not ln:
                break
            lines.append(ln)
        link = next(ln.split()[-1] for ln in lines if "ism/mini" in ln)
        assert link == tracking.ui_link(f"http://127.0.0.1:{port}", parent.info.experiment_id)

        def render(url: str) -> str:
            dom = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                  "--virtual-time-budget=30000", "--dump-dom", url],
                                 capture_output=True, text=True, timeout=240).stdout
            return " ".join(re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style).*?</\1>", "", dom, flags=re.S)).split())

        runs = render(link)
        # the shared view ism's link opens: trials grouped by variant (open), FID columns, no click needed
        assert "Model training" in runs and "Group by: ism.variant" in runs and "fid_steps_1" in runs, runs[:2000]
        assert all(k.info.run_name in runs for k in kids if k.data.tags["ism.variant"] in ("a", "b")), runs[:2000]
        page = render(link.replace("/runs?", f"/runs/{parent.info.run_id}?"))
        assert "a/fid_steps_1" in page and "b/kid_steps_1" in page, page[:2000]
        assert any(k.info.run_name in page for k in kids), "the parent's page lists its child runs"
    finally:
        below = _descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert below, "the server ran below ism ui"
    time.sleep(1)
    assert not [p for p in below if _alive(p)], "SIGTERM to ism ui stops the whole server process group"
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the browser's closed connections linger in TIME_WAIT
        s.bind(("127.0.0.1", port))  # no listener is left on the port
        s.listen()


@pytest.mark.ray
@pytest.mark.e2e
def test_permanent_trial_errors_fail_once_with_their_reason(smoke_sweep):
    _, kids = children(smoke_sweep["uri"], "mini")
    broken = [k for k in kids if k.data.tags["ism.variant"] == "broken"]
    assert {k.info.status for k in broken} == {"FAILED"}
    for k in broken:
        assert "nodata" in k.data.tags["ism.error"] and "ism.failures" not in k.data.tags  # not retried
    assert smoke_sweep["out"].count("FAILED broken seed") == 2 and "4/6 trials finished, 2 failed" in smoke_sweep["out"]


@pytest.mark.ray
@pytest.mark.e2e
def test_injected_crash_is_retried_from_its_checkpoint(smoke_sweep):
    _, kids = children(smoke_sweep["uri"], "mini")
    for t in smoke_sweep["plan"].trials[:4]:
        k = next(k for k in kids if k.data.tags["ism.run_id"] == t.run_id)
        summary = json.loads((smoke_sweep["root"] / "st" / "trials" / t.run_id / "summary.json").read_text())
        if t.variants[0] == "b":
            assert k.data.tags["ism.failures"] == "1" and "injected crash at step 6" in k.data.tags["ism.last_error"]
            assert summary["resumed_from"] == 4
        else:
            assert "ism.failures" not in k.data.tags and summary["resumed_from"] == 0
    assert "retry b/s" in smoke_sweep["out"]


@pytest.mark.ray
@pytest.mark.e2e
def test_rerunning_a_finished_sweep_reruns_only_failed_trials(smoke_sweep):
    root = smoke_sweep["root"]
    summaries = {p: p.stat().st_mtime_ns for p in (root / "st" / "trials").glob("*/summary.json")}
    assert len(summaries) == 4
    _, before = children(smoke_sweep["uri"], "mini")
    res = run_ablate(smoke_sweep["spec"], root / "st", smoke_sweep["uri"])
    assert res.returncode == 1 and "4 already done, 2 to run" in res.stderr, res.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in summaries} == summaries
    _, after = children(smoke_sweep["uri"], "mini")
    assert sorted(k.info.run_id for k in after) == sorted(k.info.run_id for k in before)


@pytest.mark.ray
@pytest.mark.e2e
def test_trial_differing_only_in_evaluation_adopts_the_finished_training(smoke_sweep, tmp_path):
    """A spec that re-evaluates a stored trial with other eval settings trains nothing: it evaluates the same weights."""
    from ism import tracking
    donor_t = next(t for t in smoke_sweep["plan"].trials if t.variants[0] == "a" and t.seed == 0)
    st = tmp_path / "st"
    shutil.copytree(smoke_sweep["root"] / "st" / "trials" / donor_t.run_id, st / "trials" / donor_t.run_id)
    donor = st / "trials" / donor_t.run_id
    spec = write_spec(tmp_path / "again.yaml", name="again", seeds=[0],
                      variants={"a": {"reason": "same training, a guidance sweep at eval",
                                      "overrides": {"eval.guidance_sweep": [1.0, 2.0]}},
                                "lr": {"reason": "other training", "overrides": {"optim.lr": 5e-4}}},
                      base={"overrides": {"eval.steps": [1, 2], "eval.sweep_steps": [1]}})
    p = ablate.plan(ablate.load_spec(spec), "smoke")
    new, other = (next(t for t in p.trials if t.variants[0] == v) for v in ("a", "lr"))
    assert new.run_id != donor_t.run_id
    assert ablate.reused_training(p, st) == {new.run_id: donor_t.run_id}
    assert ablate_cmd.main([str(spec), "--profile", "smoke", "--dry-run", "--storage", str(st)]) == 0
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    res = run_ablate(spec, st, uri)
    assert res.returncode == 0, res.stderr[-3000:]
    run = st / "trials" / new.run_id
    steps = new.cfg.run.steps
    assert os.path.samefile(run / "checkpoints" / f"ckpt-{steps:08d}.pt", donor / "checkpoints" / f"ckpt-{steps:08d}.pt")
    assert json.loads((run / "training_from.json").read_text())["run_dir"] == str(donor)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from"] == steps
    assert (run / "stats.jsonl").read_text() == (donor / "stats.jsonl").read_text()
    rows = json.loads((run / "eval" / "eval.json").read_text())
    assert {r["guidance"] for r in rows if r.get("metric") == "fid" and r["steps"] == 1} >= {1.0, 2.0}, "the sweep ran"
    from ism.training.sample import default_guidance
    g = default_guidance(new.cfg)
    fid = {r["steps"]: r["value"] for r in rows if r["metric"] == "fid" and r["guidance"] == g}
    old = {r["steps"]: r["value"] for r in json.loads((donor / "eval" / "eval.json").read_text())
           if r["metric"] == "fid" and r["guidance"] == g}
    assert fid and fid == pytest.approx(old, rel=1e-4), "the same weights on the same noise give the same FID"
    assert not (st / "trials" / other.run_id / "training_from.json").exists()
    assert json.loads((st / "trials" / other.run_id / "summary.json").read_text())["resumed_from"] == 0
    _, kids = children(uri, "again")
    by = {k.data.tags["ism.variant"]: k for k in kids}
    assert by["a"].data.tags["ism.training_from"] == donor_t.run_id and "ism.training_from" not in by["lr"].data.tags
    logged = [h.step for h in tracking.client(uri).get_metric_history(by["a"].info.run_id, "loss")]
    assert logged and logged[-1] == steps, "the adopted training's curves are in the new child run"


def _tagged_pids(tag: str) -> list[int]:
    """Processes whose environment carries our tag: the sweep, its Ray daemons and Ray's trial workers."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if tag.encode() in (d / "environ").read_bytes():
                    found.append(int(d.name))
            except OSError:
                pass
    return found


def _wait_for(cond, proc, timeout=400):
    t0 = time.time()
    while not cond():
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        assert time.time() - t0 < timeout, "timed out waiting for the sweep"
        time.sleep(0.5)


@pytest.mark.ray
@pytest.mark.e2e
def test_sweep_killed_after_first_trial_resumes_without_rerun_or_duplicates(tmp_path):
    """kill -9 of the whole sweep (driver and its Ray) once the short trial finished and the long one checkpointed."""
    spec = write_spec(tmp_path / "kill.yaml", name="killed", seeds=[0],
                      variants={"short": {"reason": "done first", "overrides": {"run.steps": 4}},
                                "long": {"reason": "interrupted", "overrides": {"run.steps": 200, "run.checkpoint_every": 8}}})
    st, uri = tmp_path / "st", f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    p = ablate.plan(ablate.load_spec(spec), "smoke")
    short, long_ = (next(t for t in p.trials if t.variants[0] == v) for v in ("short", "long"))
    tag = f"ISM_TEST_SWEEP={os.getpid()}-{time.time_ns()}"
    proc = subprocess.Popen([sys.executable, "-m", "ism.cli", "ablate", str(spec), "--profile", "smoke", "--storage",
                             str(st), "--tracking-uri", uri], cwd=tmp_path, start_new_session=True,
                            env={**os.environ, tag.split("=")[0]: tag.split("=")[1]},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: (st / "trials" / short.run_id / "summary.json").exists()
                  and list((st / "trials" / long_.run_id / "checkpoints").glob("ckpt-*.pt")), proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray daemons it started share its session
        proc.wait()
        # Ray's trial workers sit in process groups of their own; they exit once their raylet is gone.
        t0 = time.time()
        while (left := _tagged_pids(tag)) and time.time() - t0 < 60:
            time.sleep(1)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"processes outlived the killed sweep: {left}"
    assert not (st / "trials" / long_.run_id / "summary.json").exists()
    short_mtime = (st / "trials" / short.run_id / "summary.json").stat().st_mtime_ns
    _, before = children(uri, "killed")
    res = run_ablate(spec, st, uri)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "1 already done, 1 to run" in res.stderr
    assert (st / "trials" / short.run_id / "summary.json").stat().st_mtime_ns == short_mtime
    summary = json.loads((st / "trials" / long_.run_id / "summary.json").read_text())
    assert summary["resumed_from"] >= 8
    from ism import tracking
    parent, kids = children(uri, "killed")
    assert parent.info.status == "FINISHED"
    assert sorted(k.info.run_id for k in kids) == sorted(k.info.run_id for k in before) and len(kids) == 2
    assert {k.info.status for k in kids} == {"FINISHED"}
    k = next(k for k in kids if k.data.tags["ism.variant"] == "long")
    steps = [h.step for h in tracking.client(uri).get_metric_history(k.info.run_id, "loss")]
    assert steps == list(range(2, 201, 2)), "every logged step exactly once across the kill and the resume"


def test_spec_base_can_be_an_exported_delta_file(tmp_path):
    (tmp_path / "best.yaml").write_text("preset: smoke\noptim:\n  lr: 0.002\nwavelet:\n  enabled: true\n")
    (tmp_path / "s.yaml").write_text("name: s\nbase:\n  config: best.yaml\n  overrides: {optim.lr: 0.003}\n"
                                     "variants:\n  a: {reason: r}\n")
    spec = ablate.load_spec(tmp_path / "s.yaml")
    t = ablate.plan(spec, "smoke").trials[0]
    assert t.cfg.wavelet.enabled and t.cfg.optim.lr == 0.003 and spec.base_preset == "smoke"


def test_concurrency_follows_the_profiles_cpus_and_the_study_cap():
    assert profiles.concurrency("embedded", {"cpu": 1}) == 2           # two 1-CPU trials on the 2-core local Ray
    assert profiles.concurrency("embedded", {"cpu": 0.5}) == 4         # Ray packs fractional shares
    assert profiles.concurrency("embedded", {"cpu": 2}) == 1
    assert profiles.concurrency("embedded", {"cpu": 1}, cap=1) == 1    # a study's parallelism caps it
    assert profiles.concurrency("gpu-cifar10", {"gpu": 1, "cpu": 8}) == 1
    assert profiles.concurrency("gpu-cifar10", {"gpu": 1, "cpu": 8}, cap=4) == 4


def test_reflow_teacher_variant_resolves_to_the_same_seed_trial_and_runs_first():
    p = ablate.plan(ablate.load_spec(ROOT / "ablations/flow-design.yaml"), "embedded")
    by = {(t.variants[0], t.seed): t for t in p.trials}
    for seed in p.seeds:
        for student, teacher in (("sm+reflow", "sm"), ("ism+reflow", "ism")):
            s = by[student, seed].cfg
            assert s.data.coupling == "reflow" and s.data.reflow_teacher == by[teacher, seed].run_id
            assert not s.ot.enabled and (s.data.reflow_steps, s.data.reflow_pairs) == (32, 4096)
    from ism.conf.config import training_id   # the same training as components' sm (evaluated differently)
    assert training_id(by["sm", 0].cfg) == training_id(
        ablate.plan(ablate.load_spec(ROOT / "ablations/components.yaml"), "embedded").trials[0].cfg)
    first, second = ablate.phases(list(p.trials), p.trials)
    assert {t.variants[0] for t in second} == {"sm+reflow", "ism+reflow"}
    assert [t.run_id for t in first] == [t.run_id for t in p.trials if t not in second]
    # teachers already finished: their students join the first phase
    assert len(ablate.phases(list(second), p.trials)) == 1
    teachers = {t.run_id for t in first if t.variants[0] in ("sm", "ism")}
    assert len(ablate.phases(list(p.trials), p.trials, trained=teachers)) == 1


@pytest.mark.parametrize("over, match", [
    ({"data.coupling": "reflow", "data.reflow_teacher": "variant:nope"}, "unknown variant 'nope'"),
    ({"data.coupling": "reflow", "data.reflow_teacher": "variant:b"}, "cycle"),
])
def test_bad_reflow_teachers_fail_before_anything_runs(tmp_path, over, match):
    variants = {"a": {"reason": "student", "overrides": over},
                "b": {"reason": "other", "overrides": {"data.coupling": "reflow", "data.reflow_teacher": "variant:a"}}}
    with pytest.raises(ConfigError, match=match):
        ablate.plan(ablate.load_spec(write_spec(tmp_path / "s.yaml", variants=variants)), "smoke")
    spec = write_spec(tmp_path / "t.yaml", variants={"a": {"reason": "t"}, "s": {"reason": "s", "overrides": {
        "data.coupling": "reflow", "data.reflow_teacher": "variant:a"}}})
    with pytest.raises(ConfigError, match="needs its teacher 'a'"):
        ablate.plan(ablate.load_spec(spec), "smoke", variants=["s"])


@pytest.mark.ray
@pytest.mark.e2e
def test_reflow_students_run_after_their_teachers_and_fail_with_a_failed_teacher(tmp_path):
    student = {"data.coupling": "reflow", "data.reflow_steps": 2, "data.reflow_pairs": 48}
    spec = write_spec(tmp_path / "rf.yaml", name="rf", seeds=[0],
                      base={"overrides": {"eval.steps": [1, 2], "eval.sweep_steps": [1]}},
                      variants={"rf": {"reason": "student listed first", "overrides": {**student,
                                                                                   "data.reflow_teacher": "variant:a"}},
                                "a": {"reason": "teacher"},
                                "broken": {"reason": "missing data", "overrides": {"data.name": "idx",
                                                                                   "data.path": str(tmp_path / "no")}},
                                "rfb": {"reason": "student of a failed teacher",
                                        "overrides": {**student, "data.reflow_teacher": "variant:broken"}}})
    st, uri = tmp_path / "st", f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    res = run_ablate(spec, st, uri)
    assert res.returncode == 1 and "2/4 trials finished, 2 failed" in res.stderr, res.stderr[-3000:]
    _, kids = children(uri, "rf")
    by = {k.data.tags["ism.variant"]: k for k in kids}
    assert by["rf"].info.status == by["a"].info.status == "FINISHED"
    teacher_done = (st / "trials" / by["a"].data.tags["ism.run_id"] / "summary.json").stat().st_mtime
    assert float(by["rf"].data.tags["ism.started_at"]) >= teacher_done
    assert by["rfb"].info.status == "FAILED" and "reflow teacher" in by["rfb"].data.tags["ism.error"]
    shard = list((st / "trials" / by["a"].data.tags["ism.run_id"] / "reflow").glob("pairs-*.npz"))
    assert len(shard) == 1


def test_cost_estimate_counts_the_reflow_pairs():
    p = ablate.plan(ablate.load_spec(ROOT / "ablations/flow-design.yaml"), "embedded")
    by = {t.variants[0]: t for t in p.trials if t.seed == 0}
    extra = profiles.estimate_s(by["sm+reflow"].cfg, "embedded") - profiles.estimate_s(by["sm"].cfg, "embedded")
    assert extra == pytest.approx(4096 * 32 * profiles.PROFILES["embedded"].sample_nfe_s)


def test_methods_spec_shares_sm_and_ism_training_with_components_and_configures_each_method():
    from ism.ablation import tuning as TU
    from ism.conf.config import training_id
    record = TU.read_record(ROOT / "ablations/tuned/components.embedded.yaml")   # both specs carry its tuned values
    comp = {training_id(t.cfg) for t in ablate.plan(ablate.load_spec(ROOT / "ablations/components.yaml"),
                                                     "embedded", tuning=record).trials}
    p = ablate.plan(ablate.load_spec(ROOT / "ablations/methods.yaml"), "embedded", tuning=record)
    assert p.seeds == (0, 1, 2) and set(t.cfg.eval.steps for t in p.trials) == {(1, 2, 4, 128)}
    # evaluated at other step counts (other run ids), trained as the components trials (same training ids)
    shared = {v for t in p.trials if training_id(t.cfg) in comp for v in t.variants}
    assert shared == {"sm", "sm+sot", "sm+wavelet", "sm+twin_ema", "ism"}
    cfg = {v: t.cfg for t in p.trials if t.seed == 0 for v in t.variants}
    assert {v: c.method.name for v, c in cfg.items() if v.startswith(("meanflow", "ct"))} == {
        **dict.fromkeys(["meanflow", "meanflow+intrinsic", "meanflow_cpu_matched", "meanflow+sot", "meanflow+wavelet",
                         "meanflow+twin_ema"], "meanflow"), **dict.fromkeys(["ct", "ct+sot", "ct+wavelet", "ct+twin_ema"], "ct")}
    # equal training CPU: the step ratio the benchmark measured, and otherwise MeanFlow itself
    assert cfg["meanflow_cpu_matched"].run.steps == round(cfg["meanflow"].run.steps / 1.68 / 10) * 10 == 890
    assert cfg["meanflow_cpu_matched"].method == cfg["meanflow"].method
    for m in ("meanflow", "ct"):  # each fix arm is its method plus exactly that fix
        base = cfg[m]
        assert (base.shortcut.target, base.ema.twin, base.ot.enabled, base.wavelet.enabled) == ("online", False, False, False)
        assert cfg[f"{m}+sot"].ot.enabled and cfg[f"{m}+wavelet"].wavelet.enabled
        assert (cfg[f"{m}+twin_ema"].shortcut.target, cfg[f"{m}+twin_ema"].ema.twin) == ("ema", True)
    assert cfg["ct"].loss.distance == "pseudo_huber" and cfg["ct"].guidance.mode == "none"
    assert cfg["meanflow+intrinsic"].guidance.mode == "intrinsic"


# ----------------------------------------------------------------------------------------------- inline sweeps
INLINE = ["--base", "mnist-cpu", "--vary", "guidance.w_max=1,2,3", "--seeds", "0,1,2", "--profile", "smoke"]


def test_inline_sweep_is_the_spec_it_writes_beside_its_report(tmp_path, monkeypatch, capsys):
    """`--vary` plans what the same spec written by hand plans (same trials, same sweep id, so the same MLflow
    experiment and report), and leaves that spec beside the report, where rerunning it gives the same dry run."""
    monkeypatch.chdir(tmp_path)
    st = ["--storage", str(tmp_path / "st"), "--dry-run"]
    assert ablate_cmd.main(INLINE + st) == 0
    inline_out = capsys.readouterr().out
    written = Path("reports/mnist-cpu-vary-guidance_w_max-smoke/spec.yaml")
    assert written.is_file() and f"({written})" in inline_out.splitlines()[0]
    by_hand = write_spec(tmp_path / "by_hand.yaml", name="mnist-cpu-vary-guidance_w_max", base={"preset": "mnist-cpu"},
                         seeds=[0, 1, 2], variants={f"w_max_{w}": {"reason": f"w_max {w}",
                                                                   "overrides": {"guidance.w_max": float(w)}}
                                                    for w in (1, 2, 3)})
    a, b = ablate.plan(ablate.load_spec(written), "smoke"), ablate.plan(ablate.load_spec(by_hand), "smoke")
    assert [(t.run_id, t.variants, t.seed) for t in a.trials] == [(t.run_id, t.variants, t.seed) for t in b.trials]
    assert a.sweep_id == b.sweep_id and len(a.trials) == 9
    assert ablate_cmd.main([str(written), "--profile", "smoke", *st]) == 0
    assert capsys.readouterr().out == inline_out, "rerunning the written spec is the same sweep"


def test_inline_sweep_crosses_its_axes_and_refuses_bad_keys_as_a_spec_does(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    st = ["--storage", str(tmp_path / "st"), "--dry-run", "--profile", "smoke"]
    assert ablate_cmd.main(["--vary", "guidance.w_max=1,2", "--vary", "optim.lr=0.001,0.002", *st]) == 0
    spec = ablate.load_spec(next(Path("reports").glob("*/spec.yaml")))
    assert [v.name for v in spec.variants] == ["w_max_1-lr_0_001", "w_max_1-lr_0_002", "w_max_2-lr_0_001",
                                               "w_max_2-lr_0_002"]
    assert dict(spec.variants[1].overrides) == {"guidance.w_max": 1, "optim.lr": 0.002}
    capsys.readouterr()
    bad = write_spec(tmp_path / "bad.yaml", variants={"wmax_1": {"reason": "r", "overrides": {"guidance.wmax": 1}}})
    with pytest.raises(ConfigError) as from_spec:
        ablate.plan(ablate.load_spec(bad), "smoke")
    with pytest.raises(ConfigError) as inline:
        ablate_cmd.main(["--base", "mnist-cpu", "--vary", "guidance.wmax=1,2", "--name", "bad", *st])
    said = lambda e: str(e.value).split(": ", 1)[1].split("\n")[0]  # the message after the file's name
    assert said(inline) == said(from_spec), (str(inline.value), str(from_spec.value))
    assert "Did you mean 'w_max'" in str(inline.value) and not Path("reports/bad-smoke").exists()
    for flags, match in ((["--vary", "guidance.w_max"], "expected KEY=VALUE"),
                         (["--vary", "a=1", "--vary", "a=2"], "given twice"),
                         (["ablations/ema.yaml", "--vary", "guidance.w_max=1"], "not both"),
                         (["--base", "mnist-cpu"], "--vary KEY=A,B")):
        with pytest.raises(ConfigError, match=match):
            ablate_cmd.main(flags + st)
