"""ism report on a real MLflow store (sqlite under tmp_path) populated in the documented layout by tracking.py's
own writers, from a real ablation plan: numbers equal MLflow's, CIs equal scipy's, verdicts, PDF, failed trials."""
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from ism.ablation import plan as ablate
from ism import tracking
from ism.conf.config import ConfigError, flatten
from ism.report import build_report
from ism.report import figures as F
from ism.report.ci import delta_ci, mean_ci
from ism.report.tables import fmt
from ism.training.sample import save_grid

SPEC = """
name: fixture
description: synthetic sweep written straight into MLflow (no training)
base:
  overrides: {eval.steps: [1, 2, 4, 128]}
seeds: [0, 1, 2]
variants:
  sm: {reason: SM baseline}
  cfg_every: {reason: the compounding form, overrides: {guidance.mode: cfg_every_level}}
  ig: {reason: intrinsic guidance alone, overrides: {guidance.mode: intrinsic, guidance.t_interval: 0.0}}
  ig_int: {reason: + interval guidance, overrides: {guidance.mode: intrinsic}}
  wavelet: {reason: wavelet loss alone, overrides: {wavelet.enabled: true}}
  sot: {reason: sOT alone, overrides: {ot.enabled: true}}
  twin_ema: {reason: twin EMA alone, overrides: {ema.twin: true}}
groups:
  cumulative: [ig, ig_int]
  alone: [sm, ig, wavelet, sot]
"""
STEPS = (1, 2, 4, 128)
FID = {"sm": (50, 40, 30, 10), "cfg_every": (60, 45, 33, 11), "ig": (40, 33, 25, 9), "ig_int": (38, 31, 24, 9),
       "wavelet": (47, 38, 29, 10), "sot": (49, 39, 28, 10), "twin_ema": (45, 36, 27, 10)}
NOISE = {0: 0.0, 1: 0.7, 2: -0.4}
DIAG = {  # per variant: (spectrum_top_err @1, sc_gap @1 by seed, straightness @128 by seed, effective guidance:
    # the compounding exponent at one step (every level) or the reading's ratio to 1 + w (intrinsic))
    "sm": (0.9, (0.10, 0.20, 0.15), (1.10, 1.11, 1.12), None),
    "cfg_every": (0.9, (0.12, 0.2, 0.1), (1.1, 1.1, 1.1), 7.0),
    "ig": (0.9, (0.1, 0.1, 0.1), (1.1, 1.1, 1.1), 1.0),
    "ig_int": (0.9, (0.1, 0.1, 0.1), (1.1, 1.1, 1.1), 0.9),
    "wavelet": (0.3, (0.1, 0.2, 0.15), (1.1, 1.1, 1.1), None),
    "sot": (0.9, (0.1, 0.2, 0.15), (1.50, 1.51, 1.52), None),
    "twin_ema": (0.9, (0.14, 0.12, 0.13), (1.1, 1.1, 1.1), None),
}
FAILED = ("sot", 2, "RuntimeError: injected crash at step 4")
NOT_STARTED = ("twin_ema", 2)


def fid(v, s, seed):
    return FID[v][STEPS.index(s)] + NOISE[seed] * (1 + 0.1 * STEPS.index(s))


def effective(v, seed, cfg, s):
    """A synthetic effective-guidance reading: every level compounds (exponent x (K - log2 s)/K), intrinsic ~ 1 + w."""
    K = cfg.shortcut.max_steps_log2
    if cfg.guidance.mode == "cfg_every_level":
        e = DIAG[v][3] * (K - math.log2(s)) / K * (1 + 0.02 * (seed - 1)) if s < 2 ** K else 1.0
        return cfg.guidance.cfg_scale ** e
    return (1 + cfg.eval.w) * DIAG[v][3] * (1 + 0.01 * seed)


def eval_metrics(v, seed, cfg=None):
    m = {}
    for s in STEPS:
        m[f"fid_steps_{s}"] = fid(v, s, seed)
        m[f"kid_steps_{s}"] = fid(v, s, seed) / 1000
        m[f"spectrum_top_err_steps_{s}"] = DIAG[v][0] + 0.01 * seed + 0.02 * STEPS.index(s)
    for s in STEPS[:-1]:
        m[f"sc_gap_steps_{s}"] = DIAG[v][1][seed] * (1 + STEPS.index(s))
    m["straightness_steps_128"] = DIAG[v][2][seed]
    m["pairing_cost_steps_128"] = 250.0 + seed
    if DIAG[v][3] is not None and cfg is not None:
        for s in STEPS:
            m[f"effective_guidance_steps_{s}"] = effective(v, seed, cfg, s)
            m[f"effective_guidance_bound_steps_{s}"] = 0.0
    if v == "ig":  # a guidance sweep for the intrinsic model only
        for w in (0.0, 0.5, 1.5):
            for s in (1, 128):
                m[f"fid_steps_{s}_w_{w:g}"] = fid(v, s, seed) - 6 + 4 * abs(w - 0.5)
    m["extractor_accuracy"] = 0.987
    return m


def write_trial(c, exp, parent, t, p, root, fail=None):
    v, seed = t.variants[0], t.seed
    comp = ablate.components(t.cfg)
    tags = {"ism.kind": "trial", "ism.spec": p.spec.name, "ism.variant": v, "ism.variants": ",".join(t.variants),
            "ism.seed": str(seed), "ism.run_id": t.run_id, "ism.profile": p.profile, "ism.sweep_id": p.sweep_id,
            "ism.git_commit": "abc123", "ism.components": ",".join(k for k, on in comp.items() if on) or "none",
            **{f"ism.component.{k}": "on" if on else "off" for k, on in comp.items()}}
    run_dir = root / t.run_id
    rid = tracking.child_run(c, exp, parent, run_dir, f"{t.label}-{t.run_id}", tags, flatten(t.cfg))
    log = tracking.TrialLog(c.tracking_uri, rid)
    for step in (2, 4, 6, 8):
        losses = {"loss": 1.0 / step + seed * 0.01, "loss_fm": 0.8 / step, "loss_sc": 0.3 / step,
                  "wall_time_s": 0.5 * step, "peak_mem_mb": 300.0 + seed}
        if t.cfg.guidance.mode == "intrinsic":
            losses["loss_guid"] = 0.5 / step
        log.metrics(step, losses)
        if fail and step == 4:
            log.finish("FAILED", fail)
            return rid
    metrics = eval_metrics(v, seed, t.cfg)
    log.eval_metrics(8, metrics)
    log.eval_metrics(8, {"wall_time_s": 4.0, "peak_mem_mb": 310.0 + seed, "params": 12345})
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    rows = [{"train_step": 8, "steps": s, "guidance": 0.5, "metric": "fid", "value": metrics[f"fid_steps_{s}"], "n": 64,
             "extractor": "mnist-cnn", "ref_hash": "f00dfeed12345678"} for s in STEPS]
    (run_dir / "eval" / "eval.json").write_text(json.dumps(rows))
    (run_dir / "summary.json").write_text(json.dumps({"steps": 8, "device": "cpu"}))
    g = torch.Generator().manual_seed(seed)
    for s in (1, 4, 128):  # distinct content per step count so spectra differ
        x = torch.rand(40, 1, 16, 16, generator=g) * 2 - 1
        save_grid(x / s ** 0.25, run_dir / "samples" / f"grid_steps_{s}_train_00000008.png", nrow=10)
    log.artifacts(run_dir)
    log.finish("FINISHED")
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    spec_path = root / "fixture.yaml"
    spec_path.write_text(SPEC)
    p = ablate.plan(ablate.load_spec(spec_path), "smoke")
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    (root / "mlruns").mkdir()
    c = tracking.client(uri)
    exp, parent = tracking.start_parent(
        c, f"ism/{p.spec.name}", "fixture-smoke",
        {"ism.kind": "sweep", "ism.spec": p.spec.name, "ism.profile": p.profile, "ism.sweep_id": p.sweep_id,
         "ism.git_commit": "abc123", "ism.preset": p.preset},
        {"spec": p.spec.name, "resources": json.dumps(dict(p.resources))},
        {"spec.yaml": SPEC, "plan.json": json.dumps(p.to_json()), "notes.txt": "\n".join(p.notes) + "\n"})
    for t in p.trials:
        if (t.variants[0], t.seed) == NOT_STARTED:
            continue
        fail = FAILED[2] if (t.variants[0], t.seed) == FAILED[:2] else None
        write_trial(c, exp, parent, t, p, root / "trials", fail)
    tracking.set_status(c, parent, "FAILED")
    out = root / "reports" / "fixture"
    rep = build_report(str(spec_path), uri, out)
    return {"uri": uri, "client": c, "parent": parent, "plan": p, "report": rep, "out": out, "root": root}


# ----------------------------------------------------------------------------------------------- CI arithmetic
def test_mean_ci_equals_scipy_t_interval():
    x = [3.1, 2.7, 3.9, 3.3, 2.2]
    iv = mean_ci(x)
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert (iv.mean, iv.n) == (pytest.approx(np.mean(x), abs=0), 5)
    assert iv.lo == pytest.approx(lo, rel=1e-12) and iv.hi == pytest.approx(hi, rel=1e-12)
    one = mean_ci([4.0])
    assert one.mean == 4.0 and not one.has_ci


def test_delta_ci_paired_and_welch_equal_scipy():
    a = {0: 10.0, 1: 11.5, 2: 9.0, 3: 10.2}
    b = {0: 9.1, 1: 10.9, 2: 8.7, 3: 9.0}
    d = delta_ci(a, b)
    ref = stats.ttest_rel([b[s] for s in a], [a[s] for s in a]).confidence_interval(0.95)
    assert d.method == "paired" and d.n == 4
    assert (d.lo, d.hi) == (pytest.approx(ref.low, rel=1e-12), pytest.approx(ref.high, rel=1e-12))
    b.pop(3)  # different seed sets: Welch, checked against the Welch-Satterthwaite formula written out
    w = delta_ci(a, b)
    xa, xb = np.array(list(a.values())), np.array(list(b.values()))
    va, vb = xa.var(ddof=1) / len(xa), xb.var(ddof=1) / len(xb)
    df = (va + vb) ** 2 / (va ** 2 / (len(xa) - 1) + vb ** 2 / (len(xb) - 1))
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    diff = xb.mean() - xa.mean()
    assert w.method == "Welch" and w.df == pytest.approx(df)
    assert (w.lo, w.hi) == (pytest.approx(diff - half, rel=1e-9), pytest.approx(diff + half, rel=1e-9))


# ----------------------------------------------------------------------------------------------- numbers
def _mlflow_values(store, metric):
    """{(variant, steps): {seed: value}} read straight from the store's FINISHED child runs."""
    out = {}
    for run in tracking.child_runs(store["parent"], store["uri"]):
        if run.info.status != "FINISHED":
            continue
        for k, v in run.data.metrics.items():
            m = re.fullmatch(rf"{metric}_steps_(\d+)", k)
            if m:
                for name in run.data.tags["ism.variants"].split(","):
                    out.setdefault((name, int(m.group(1))), {})[int(run.data.tags["ism.seed"])] = v
    return out


def _log_interval(x):
    """Geometric mean and the 95 % t-interval of log(x) back-transformed, computed independently with scipy."""
    lx = np.log(x)
    lo, hi = stats.t.interval(0.95, len(lx) - 1, loc=np.mean(lx), scale=stats.sem(lx))
    return math.exp(np.mean(lx)), math.exp(lo), math.exp(hi)


def test_report_numbers_are_exactly_mlflows(store):
    import pandas as pd
    for metric in ("fid", "kid"):  # both strictly positive here: log intervals
        held = _mlflow_values(store, metric)
        table = pd.read_csv(store["out"] / "tables" / f"{metric}_by_steps.csv")
        assert len(table) == len(held) == 7 * len(STEPS)
        assert [c for c in table.columns if c.startswith("seed_")] == ["seed_0", "seed_1", "seed_2"]
        assert "values" not in table.columns  # per-seed values are columns, not JSON in a cell
        for r in table.itertuples():
            vals = held[(r.variant, r.steps)]
            assert {k: getattr(r, f"seed_{k}") for k in (0, 1, 2) if not math.isnan(getattr(r, f"seed_{k}"))} == vals
            assert r.mean == pytest.approx(np.mean(list(vals.values())), rel=1e-12) and r.n == len(vals)
            geo, lo, hi = _log_interval(list(vals.values()))
            assert r.interval == "log-t" and r.geo_mean == pytest.approx(geo, rel=1e-12)
            assert (r.ci_low, r.ci_high) == (pytest.approx(lo, rel=1e-9), pytest.approx(hi, rel=1e-9))
            assert 0 < r.ci_low < r.geo_mean < r.ci_high
    md = (store["out"] / "report.md").read_text()
    geo, lo, hi = _log_interval(list(_mlflow_values(store, "fid")[("sm", 1)].values()))
    assert f"{fmt(geo)} [{fmt(lo, 3)}, {fmt(hi, 3)}]" in md
    # the best 1-step FID (ig_int) is bold in the FID table
    geo, lo, hi = _log_interval(list(_mlflow_values(store, "fid")[("ig_int", 1)].values()))
    assert f"**{fmt(geo)} [{fmt(lo, 3)}, {fmt(hi, 3)}]**" in md
    assert "(n=1)" not in md and "(n=3/3)" not in md


def test_failed_and_missing_trials_are_listed_and_short_cells_flagged(store):
    md = (store["out"] / "report.md").read_text()
    sec = md.split("## Missing and failed trials")[1].split("## ")[0]
    assert re.search(r"\| sot \| 2 \| \w+ \| FAILED \| RuntimeError: injected crash at step 4 \|", sec)
    assert re.search(r"\| twin_ema \| 2 \| \w+ \| MISSING \| planned but no MLflow run", sec)
    assert "| sot | 2/3 ⚠ |" in md and "(n=2/3)" in md
    miss = store["report"].sweep.missing
    assert sorted(zip(miss["variants"], miss["seed"], miss["status"])) == [("sot", 2, "FAILED"), ("twin_ema", 2, "MISSING")]


def test_fid_ratios_to_the_baseline_say_paired_or_welch(store):
    assert "fid_delta" not in store["report"].tables  # FID > 0: compared as a ratio
    t = store["report"].tables["fid_ratio"]
    rows = {r[0]: r for r in t.rows}
    assert rows["ig"][-1] == "paired (n=3)" and rows["sot"][-1] == "Welch"
    d = t.data[(t.data["variant"] == "ig") & (t.data["steps"] == 1)].iloc[0]
    held = _mlflow_values(store, "fid")
    a, b = held[("sm", 1)], held[("ig", 1)]
    ref = stats.ttest_rel(np.log([b[s] for s in a]), np.log([a[s] for s in a])).confidence_interval(0.95)
    assert (d.ci_low, d.ci_high) == (pytest.approx(math.exp(ref.low)), pytest.approx(math.exp(ref.high)))
    assert d.ci_high < 1  # ig is better than sm at 1 step: bold, shown as a ratio
    assert rows["ig"][1] == f"×{fmt(d.ratio, 3)} [{fmt(d.ci_low, 3)}, {fmt(d.ci_high, 3)}]"
    assert (list(rows).index("ig"), 1) in t.bold
    md = (store["out"] / "report.md").read_text()
    assert "FID ratio to the baseline" in md and "excludes 1" in md


def test_claims_verdicts_follow_the_numbers(store):
    res = {r.claim.problem: r for r in store["report"].claims}
    comp = res["compounding guidance"]
    assert comp.verdict == "reproduced" and comp.pair is None  # each variant against its mode's prediction
    assert "cfg_every: " in comp.detail and "predicted 7.0)" in comp.detail and "ig: " in comp.detail
    table = store["report"].tables["compounding"]
    assert set(table.data["variant"]) == {"cfg_every", "ig", "ig_int"}
    row = table.data[(table.data["variant"] == "cfg_every") & (table.data["steps"] == 1)].iloc[0]
    assert row.exponent == pytest.approx(7.0, rel=1e-9) and row.n == 3
    sw = store["report"].sweep
    w = float(sw.params[sw.representative("cfg_every")]["guidance.cfg_scale"])
    assert row.predicted == pytest.approx(w ** 7) and row.effective == pytest.approx(w ** 7, rel=0.05)
    assert (store["out"] / "figures" / "effective_guidance_vs_steps.png").stat().st_size > 0
    assert res["fixed guidance"].verdict == "reproduced" and res["fixed guidance"].pair == ("sm", "ig")
    assert res["frequency bias"].pair == ("sm", "wavelet") and res["frequency bias"].verdict == "reproduced"
    assert res["curvy trajectories"].verdict == "not reproduced" and res["curvy trajectories"].delta.method == "Welch"
    assert res["divergent self-consistency"].verdict == "inconclusive (CIs overlap)"
    md = (store["out"] / "report.md").read_text()
    assert "| frequency bias | spectrum_top_err @1 step | sm → wavelet |" in md


def test_cumulative_and_config_diff_tables(store):
    cum = store["report"].tables["cumulative"]
    assert [r[1] for r in cum.rows] == ["ig", "ig_int"]
    alone = store["report"].tables["group_alone"]
    assert [r[0] for r in alone.rows] == ["ig", "wavelet", "sot"] and alone.rows[2][-1] == "Welch"
    diff = store["report"].tables["config_diff"].data
    assert set(diff[diff["variant"] == "ig"]["key"]) == {"guidance.mode", "guidance.t_interval"}
    assert diff[diff["variant"] == "wavelet"][["key", "base", "value"]].values.tolist() == [["wavelet.enabled", "False", "True"]]
    meta = dict(store["report"].tables["metadata"].data.values.tolist())
    assert meta["git commit"] == "abc123" and meta["reference-statistics hash"] == "f00dfeed12345678"
    assert "mnist-cnn" in meta["feature extractor"] and "0.987" in meta["feature extractor"]
    assert meta["N (samples per step count)"] == "64" and "max 302.0 MB" in meta["peak memory per trial"]


# ----------------------------------------------------------------------------------------------- outputs
def test_pdf_parses_with_tables_and_figures(store):
    from pypdf import PdfReader
    pdf, appendix = PdfReader(store["out"] / "report.pdf"), PdfReader(store["out"] / "appendix.pdf")
    text = "\n".join(p.extract_text() for p in pdf.pages)
    more = "\n".join(p.extract_text() for p in appendix.pages)
    # the body reads as a paper's ablation section; the details are in the appendix, and nothing is lost
    for s in ("Claims check", "FID per variant and step count", "Missing and failed trials", "Cumulative ablation",
              "injected crash", "twin_ema", "reproduced", "Samples", "appendix.pdf"):
        assert s in text, s
    for s in ("Run metadata", "Configuration differences", "Diagnostics", "Guidance sweep", "Training losses"):
        assert s in more and s not in text, s
    sm1 = mean_ci(list(_mlflow_values(store, "fid")[("sm", 1)].values()))
    assert fmt(sm1.mean) in text
    assert sum(len(p.images) for p in pdf.pages) >= 4 and sum(len(p.images) for p in appendix.pages) >= 4


def test_figures_exist_and_report_is_logged_on_the_parent(store):
    figs = store["report"].figures
    for k in ("metric_vs_steps", "metric2_vs_steps", "ablation_bars", "guidance_sweep", "spectra", "straightness_gap", "losses",
              "samples"):
        assert not isinstance(figs[k], str), (k, figs[k])
        assert figs[k].stat().st_size > 5000
    names = {a.path for a in store["client"].list_artifacts(store["parent"], "report")}
    assert {"report/report.md", "report/report.pdf", "report/appendix.pdf", "report/figures", "report/tables"} <= names


def test_grid_tiles_roundtrip(tmp_path):
    x = (torch.rand(20, 1, 16, 16) * 2 - 1)
    save_grid(x, tmp_path / "g.png", nrow=10)
    back = F.grid_tiles(tmp_path / "g.png", 16)
    assert back.shape == (20, 1, 16, 16)
    assert np.abs(back - x.numpy()).max() <= 1.01 / 127.5 + 1e-6


# ----------------------------------------------------------------------------------------------- sparse sweeps, errors
def test_sparse_sweep_says_what_is_absent(store, tmp_path):
    spec = tmp_path / "bare.yaml"
    spec.write_text("name: bare\nseeds: [0, 1]\nvariants:\n  sm: {reason: only the baseline}\n")
    p = ablate.plan(ablate.load_spec(spec), "smoke")
    c = store["client"]
    exp, parent = tracking.start_parent(c, "ism/bare", "bare", {"ism.kind": "sweep", "ism.profile": "smoke"}, {}, {})
    for t in p.trials:
        rid = tracking.child_run(c, exp, parent, tmp_path / t.run_id, t.label,
                                 {"ism.kind": "trial", "ism.variant": "sm", "ism.seed": str(t.seed)}, {})
        tracking.TrialLog(store["uri"], rid).eval_metrics(8, {"fid_steps_1": 5.0 + t.seed})
        tracking.set_status(c, rid, "FINISHED")
    rep = build_report("bare", store["uri"], tmp_path / "out", log=False)
    md = rep.markdown.read_text()
    assert "no guidance sweep in this spec" in md and "no sample grid at 4 steps was logged" in md
    assert "no per-kind training losses" in md and "no cumulative-order group" in md
    geo, lo, hi = _log_interval([5.0, 6.0])
    assert f"| sm [baseline] | 2/2 | **{fmt(geo)} [{fmt(lo, 3)}, {fmt(hi, 3)}]** |" in md
    assert rep.pdf.stat().st_size > 0


def test_unknown_spec_is_a_clear_error(store):
    from ism.cli import main as cli
    with pytest.raises(ConfigError, match="no sweep of 'nope'"):
        build_report("nope", store["uri"], log=False)
    assert cli(["report", "nope", "--tracking-uri", store["uri"], "--no-log"]) == 2
    with pytest.raises(ConfigError, match="no MLflow store at"):
        build_report("fixture", f"sqlite:///{store['root'] / 'absent.db'}", log=False)
    assert not (store["root"] / "absent.db").exists()


@pytest.mark.parametrize("every_exponent, bound, verdict", [
    (3.0, 0, "partly (compounding weaker than Prop. 1)"),
    (1.0, 0, "not reproduced (no compounding)"),
    # below the ruler's range (what few-step MNIST samples read; the ruler's section of docs/results.md): a bound,
    # never 'not reproduced'
    (0.0, -1, "inconclusive (cfg_every_level's reading lies beyond the ruler's calibrated range: the statistic "
              "does not measure these samples)")])
def test_guidance_claims_pair_modes_even_with_interval_guidance(store, tmp_path, every_exponent, bound, verdict):
    """guidance.yaml-like: cfg_finest, cfg_every_level, intrinsic (with interval guidance) and a guidance sweep; the
    compounding verdict follows cfg_every_level's exponent at one step (predicted 7), unless it is a bound."""
    c, uri = store["client"], store["uri"]
    name = f"modes{int(every_exponent)}{'b' if bound else ''}"
    exp, parent = tracking.start_parent(c, f"ism/{name}", name, {"ism.kind": "sweep", "ism.profile": "smoke"}, {}, {})
    modes = {"cfg_finest": (set(), 1.0, 30.0), "cfg_every_level": (set(), every_exponent, 35.0),
             "intrinsic": ({"intrinsic", "interval"}, 1.0, 25.0)}
    for v, (comps, ex, fid1) in modes.items():
        for seed in (0, 1, 2):
            tags = {"ism.kind": "trial", "ism.variant": v, "ism.seed": str(seed),
                    **{f"ism.component.{k}": "on" if k in comps else "off" for k in ("intrinsic", "interval")}}
            params = {"guidance.mode": v, "guidance.cfg_scale": 2.0, "eval.cfg_scale": 2.0, "eval.w": 1.0,
                      "shortcut.max_steps_log2": 7}
            rid = tracking.child_run(c, exp, parent, tmp_path / f"{v}{seed}", v, tags, params)
            m = {"fid_steps_1": fid1 + seed, **{f"fid_steps_1_w_{w:g}": fid1 + seed + abs(w - 1) * 3 - 2
                                                for w in (0.0, 1.0, 2.0)}}
            for s in (1, 4, 128):
                e = ex * (7 - math.log2(s)) / 7 if v == "cfg_every_level" and s < 128 else 1.0
                m[f"effective_guidance_steps_{s}"] = 2.0 ** (e * (1 + 0.02 * (seed - 1)))
                m[f"effective_guidance_bound_steps_{s}"] = float(bound if v == "cfg_every_level" and s == 1 else 0)
            tracking.TrialLog(uri, rid).eval_metrics(8, m)
            tracking.set_status(c, rid, "FINISHED")
    rep = build_report(name, uri, tmp_path / "out", log=False)
    res = {r.claim.problem: r for r in rep.claims}
    assert rep.sweep.baseline == "cfg_finest"
    assert res["compounding guidance"].verdict == verdict
    assert "cfg_every_level: " in res["compounding guidance"].detail
    assert res["fixed guidance"].pair == ("cfg_finest", "intrinsic") and res["fixed guidance"].verdict == "reproduced"
    assert res["frequency bias"].verdict.startswith("inconclusive (not measured")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Compounding guidance (Prop. 1)" in md and "effective_guidance_vs_steps.png" in md


def test_a_non_embedded_report_never_lands_on_the_committed_embedded_one():
    from ism.report import default_out
    assert default_out("components", "embedded") == Path("reports/components")
    assert default_out("components", None) == Path("reports/components")  # a plan without a profile: as before
    assert default_out("components", "smoke") == Path("reports/components-smoke")
    assert default_out("ema", "gpu-cifar10") == Path("reports/ema-gpu-cifar10")


# ----------------------------------------------------------------------------------------------- how it reads
def test_pdf_layout_keeps_headings_with_content_and_columns_readable(store):
    """Every table column is at least as wide as its header's longest word (a 'seeds' header used to wrap letter
    by letter), no page ends on a heading, and figures share pages (the page count stays small)."""
    from pypdf import PdfReader
    from reportlab.pdfbase.pdfmetrics import stringWidth
    from ism.report.render import PAD_PT, _fonts, col_widths
    font, bold = _fonts()
    measure = lambda text, b: stringWidth(text, bold if b else font, 7)  # noqa: E731
    width = 841.89 - 2 * 34.02  # landscape A4 minus 1.2 cm margins, as render_pdf lays it out
    for name, t in store["report"].tables.items():
        widths = col_widths(t, width, measure)
        assert sum(widths) <= width + 1e-6, name
        for head, w in zip(t.columns, widths):
            need = max(measure(word, True) for word in str(head).split()) + PAD_PT
            assert w >= min(need, width / len(t.columns)) - 1e-6 and w > 20, (name, head, w, need)
    pdf = PdfReader(store["out"] / "report.pdf")
    pages = [*pdf.pages, *PdfReader(store["out"] / "appendix.pdf").pages]
    md = (store["out"] / "report.md").read_text().splitlines()
    captions = {ln.strip("*") for ln in md if ln.startswith("*") and ln.endswith("*")}
    headings = {ln.lstrip("#").strip() for ln in md if ln.startswith("#")} - captions  # 'Guidance sweep' is both
    for i, page in enumerate(pages):
        lines = [ln.strip() for ln in page.extract_text().splitlines() if ln.strip()]
        assert lines and lines[-1] not in headings, f"page {i + 1} ends on the heading {lines[-1]!r}"
    n_figs = sum(1 for f in store["report"].figures.values() if not isinstance(f, str))
    assert len(pages) <= 6 + n_figs // 2 + 5, f"{len(pages)} pages for {n_figs} figures"  # + 1: two documents
    assert len(pdf.pages) <= 10, f"the body is {len(pdf.pages)} pages"


def test_tables_also_come_as_tidy_long_csv_and_booktabs_latex(store):
    import pandas as pd
    out = store["out"] / "tables"
    long = pd.read_csv(out / "scores_long.csv")
    assert list(long.columns) == ["variant", "seed", "metric", "steps", "guidance", "guidance_sweep", "value",
                                  "mlflow_run_id"]
    want = _mlflow_values(store, "fid")
    got = long[(long["metric"] == "fid") & ~long["guidance_sweep"]]
    assert len(got) == sum(len(v) for v in want.values())
    for r in got.itertuples():
        assert r.value == want[(r.variant, r.steps)][r.seed]
    for name, t in store["report"].tables.items():
        tex = (out / f"{name}.tex").read_text()
        assert "\\toprule" in tex and "\\bottomrule" in tex and tex.count("\\\\\n") == len(t.rows) + 1, name
        assert "_" not in tex.replace("\\_", "").split("\\begin{tabular}")[1], "LaTeX specials are escaped"


def test_metadata_labels_each_parameter_count(store):
    t = store["report"].tables["metadata"]
    model = dict((r[0], r[1]) for r in t.rows)["model"]
    assert "parameters" in model and not any(ch.isdigit() for ch in model.split("parameters")[-1][:1])


def test_reports_index_lists_every_committed_report_with_its_headline():
    """reports/README.md is rebuilt by ism report; the committed one matches the committed reports."""
    from ism.report.index import index_markdown
    root = Path(__file__).resolve().parents[1] / "reports"
    text = (root / "README.md").read_text()
    assert text == index_markdown(root), "rebuild: python -c 'from ism.report.index import write_index; " \
                                         "write_index(__import__(\"pathlib\").Path(\"reports\"))'"
    from ism.report.index import other_profile
    for md in [*root.glob("*/report.md"), *root.glob("studies/*/report.md")]:
        if other_profile(md.parent):  # a local smoke or GPU report: git-ignored, never in the tracked index
            continue
        rel = md.parent.relative_to(root).as_posix()
        assert f"]({rel}/report.md)" in text, rel
    assert "**Full method `" in text and "Best trial #" in text  # a sweep's headline is its comparison


def test_index_headline_comes_from_the_report(tmp_path):
    from ism.report.index import index_markdown
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "report.md").write_text("# ism report: x\n\n## Summary\n\n**2 of 2 trials finished**\n\n"
                                              "Lowest FID at 1 step: `b` 3.0 (baseline 6.0)\n\nnoise\n\n## Next\n\nBest no\n")
    text = index_markdown(tmp_path)
    assert "- **2 of 2 trials finished**" in text and "- Lowest FID at 1 step: `b` 3.0" in text
    assert "noise" not in text and "Best no" not in text and "[PDF]" not in text


def test_summary_leads_with_the_full_method_against_the_baseline(store):
    """The first summary line is the comparison (the variant with the most components ÷ the baseline) at 1, 4 and
    128 steps, its paired ratio interval computed here with scipy; a 'Lowest ...' pick never repeats it."""
    held = _mlflow_values(store, "fid")
    summary = (store["out"] / "report.md").read_text().split("## Summary", 1)[1].strip().splitlines()
    first = summary[0]
    assert first.startswith("**Full method `ig_int` ÷ baseline `sm`, FID:")
    for s in (1, 4, 128):
        a, b = held[("sm", s)], held[("ig_int", s)]
        seeds = sorted(set(a) & set(b))
        d = np.log([b[k] for k in seeds]) - np.log([a[k] for k in seeds])
        lo, hi = stats.t.interval(0.95, len(d) - 1, loc=np.mean(d), scale=stats.sem(d))
        cell = f"×{fmt(math.exp(np.mean(d)), 3)} [{fmt(math.exp(lo), 3)}, {fmt(math.exp(hi), 3)}]"
        assert f"{cell} at {s} step" in first, (cell, first)
    assert "no arm was tuned" in " ".join(summary[:3]).lower()   # the fixture's spec has no tune: block
    lowest = [ln for ln in summary if ln.startswith("Lowest ")]
    assert all("`ig_int`" not in ln for ln in lowest), lowest   # the full method is the headline, not repeated


def test_an_unfinished_full_method_keeps_the_headline_and_says_it_is_not_measured():
    """With only the baseline and a one-component variant finished, the headline must not crown that variant the full
    method (seen on an interrupted components sweep): it names the real one and says it is not measured."""
    import pandas as pd
    from ism.report.fairness import full_method, headline
    from ism.report.load import Sweep
    comps = {"sm": frozenset(), "one": frozenset({"intrinsic"}), "full": frozenset({"intrinsic", "wavelet", "sot"})}
    status = {"sm": "FINISHED", "one": "FINISHED", "full": "KILLED"}
    trials = pd.DataFrame([{"variant": v, "seed": 0, "status": status[v], "components": comps[v], "mlflow_id": v}
                           for v in comps])
    scores = pd.DataFrame([{"variant": v, "seed": 0, "mlflow_id": v, "metric": "fid", "steps": s, "guidance": math.nan,
                            "sweep": False, "value": 10.0} for v in ("sm", "one") for s in (1, 4, 128)])
    sw = Sweep(uri="", spec="x", experiment="ism/x", parent={}, plan={}, notes=[], spec_text="", trials=trials,
               scores=scores, scalars=pd.DataFrame(columns=["variant", "seed", "mlflow_id", "key", "value"]), params={},
               variants=list(comps), seeds=[0], baseline="sm", missing=pd.DataFrame())
    assert full_method(sw) == "full"
    first = headline(sw, "fid")[0]
    assert first.startswith("**Full method `full` ÷ baseline `sm`: not measured**"), first


def _tiny_sweep(fid: dict, plan: dict):
    """A Sweep of {variant: {seed: fid at 1 and 128 steps}}, baseline 'sm', every trial finished."""
    import pandas as pd
    from ism.report.load import Sweep
    trials = pd.DataFrame([{"variant": v, "seed": k, "status": "FINISHED", "components": frozenset(),
                            "mlflow_id": f"{v}{k}", "variants": v} for v, per in fid.items() for k in per])
    scores = pd.DataFrame([{"variant": v, "seed": k, "mlflow_id": f"{v}{k}", "metric": "fid", "steps": s,
                            "guidance": math.nan, "sweep": False, "value": x}
                           for v, per in fid.items() for k, x in per.items() for s in (1, 128)])
    return Sweep(uri="", spec="x", experiment="ism/x", parent={}, plan=plan, notes=[], spec_text="", trials=trials,
                 scores=scores, scalars=pd.DataFrame(columns=["variant", "seed", "mlflow_id", "key", "value"]),
                 params={}, variants=list(fid), seeds=[0, 1, 2], baseline="sm", missing=pd.DataFrame())


def test_lowest_line_only_picks_among_tuned_arms_with_the_baselines_seeds():
    """The summary's 'Lowest FID' pick skips an untuned arm and an arm with fewer seeds than the baseline, however
    low their numbers (the components report once crowned a 2-seed untuned arm); it fails if either competes."""
    from ism.report import _summary
    rec = {"sm": {"values": {"ema.half_life_steps": 5.0}, "carried_by": ["tuned"], "trials": []}}
    sw = _tiny_sweep({"sm": {0: 20.0, 1: 22.0, 2: 21.0}, "tuned": {0: 10.0, 1: 11.0, 2: 12.0},
                      "bare": {0: 1.0, 1: 1.0, 2: 1.0}, "thin": {0: 2.0}}, {"tuning": rec})
    low = [ln for ln in _summary(sw, "fid") if ln.startswith("Lowest ")]
    assert len(low) == 2 and all("`tuned`" in ln for ln in low), low
    assert all("2 tuned variants with at least the baseline's 3 seeds" in ln for ln in low), low


def test_a_tuned_value_at_the_edge_of_its_grid_is_flagged():
    """A chosen value equal to the smallest or largest tried is named; an interior choice is not (inverted: fails)."""
    from ism.report.fairness import at_edge
    grid = [{"values": {"h": h, "c": c}} for h in (1.5, 5.0, 15.0) for c in (1.5, 2.5)]
    assert at_edge({"values": {"h": 5.0, "c": 2.5}, "trials": grid}) == ["c = 2.5 (highest of 1.5, 2.5)"]
    assert at_edge({"values": {"h": 1.5, "c": 1.5}, "trials": grid}) == ["h = 1.5 (lowest of 1.5, 5, 15)",
                                                                          "c = 1.5 (lowest of 1.5, 2.5)"]
    assert at_edge({"values": {"h": 5.0}, "trials": [{"values": {"h": h}} for h in (1.5, 5.0, 15.0)]}) == []


def test_decisions_list_a_trial_shared_by_two_names_once():
    """Variants with identical configs share one trial (ism = cum5_twin_ema): the adaptive-seeds table gives that
    comparison one row labelled with both names, not two identical rows."""
    from ism.report.sequential import sequential_table
    sw = _tiny_sweep({"sm": {0: 20.0, 1: 22.0, 2: 21.0}, "ism": {0: 10.0, 1: 11.0, 2: 12.0},
                      "cum5": {0: 10.0, 1: 11.0, 2: 12.0}}, {})
    sw.trials.loc[sw.trials["variant"].isin(["ism", "cum5"]), "variants"] = "ism,cum5"
    t = sequential_table(sw, "fid", steps=(1,))
    assert [r[0] for r in t.rows] == ["ism (= cum5)"]


def test_a_rebuilt_report_leaves_no_table_or_figure_of_the_previous_one(tmp_path):
    """Tables are written as .csv and .tex: a table the new sweep no longer has must go in both forms (a budgeted
    rerun once left the 2026-12-02 .tex tables beside a report saying 'not run'); other files stay."""
    from ism.report import _clean
    (tmp_path / "tables").mkdir()
    (tmp_path / "figures").mkdir()
    old = [tmp_path / "tables" / "fid_by_steps.tex", tmp_path / "tables" / "fid_by_steps.csv",
           tmp_path / "figures" / "samples_steps_1.png"]
    keep = [tmp_path / "spec.yaml", tmp_path / "tables" / "README.txt"]
    for p in old + keep:
        p.write_text("x")
    _clean(tmp_path)
    assert not any(p.exists() for p in old) and all(p.exists() for p in keep)


def test_no_lowest_pick_when_only_the_headline_pair_competes():
    """With only the baseline and the full method eligible, a 'Lowest' line would restate the headline (the
    compounding report read 'Lowest ...: `cfg_finest_1.5` 0.0081 (baseline 0.0081)'): none is written."""
    from ism.report import _summary
    sw = _tiny_sweep({"sm": {0: 5.0, 1: 6.0, 2: 5.5}, "full": {0: 9.0, 1: 8.0, 2: 9.5}, "thin": {0: 1.0}}, {})
    comps = {"sm": frozenset(), "full": frozenset({"intrinsic"}), "thin": frozenset()}
    sw.trials["components"] = sw.trials["variant"].map(comps)
    lines = _summary(sw, "fid")
    assert lines[0].startswith("**Full method `full`") and not [ln for ln in lines if ln.startswith("Lowest ")]
