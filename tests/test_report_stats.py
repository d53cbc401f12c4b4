"""Report statistics that can decide: log-scale intervals for FID (never below 0), ratios to the baseline paired by
seed, log axes with per-seed points when seeds are few, FID claims decided on the ratio, effective guidance in one
(CFG-equivalent) unit. Synthetic sweeps built in memory (no MLflow); expectations computed with scipy directly."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ism.report import figures as F
from ism.report.ci import delta_ci, log_mean_ci, mean_ci, ratio_ci
from ism.report.claims import CLAIMS, NOT_REPRODUCED, OVERLAP, REPRODUCED, check
from ism.report.load import Sweep
from ism.report.tables import delta_table, metric_table


def sweep(values: dict[str, dict[tuple, float]], components: dict[str, set] | None = None, seeds=(0, 1),
          scalars: dict[str, dict[int, float]] | None = None) -> Sweep:
    """An in-memory Sweep: values {variant: {(metric, steps, seed[, w]): value}}; first variant = baseline."""
    components = components or {}
    trials, scores, scal = [], [], []
    for v, vals in values.items():
        for seed in sorted({k[2] for k in vals}):
            trials.append({"mlflow_id": f"{v}-{seed}", "run_id": f"{v}{seed}", "variant": v, "variants": v,
                           "seed": seed, "status": "FINISHED", "reason": "",
                           "components": frozenset(components.get(v, ())), "start_time": 0, "end_time": 1,
                           "git_commit": "", "node": "", "hardware": ""})
        for key, x in vals.items():
            m, s, seed, *w = key
            scores.append({"variant": v, "seed": seed, "mlflow_id": f"{v}-{seed}", "metric": m, "steps": s,
                           "guidance": w[0] if w else math.nan, "sweep": bool(w), "value": x})
    for key, per in (scalars or {}).items():
        for v, d in per.items():
            scal += [{"variant": v, "seed": s, "mlflow_id": f"{v}-{s}", "key": key, "value": x} for s, x in d.items()]
    variants = list(values)
    return Sweep(uri="mem", spec="synthetic", experiment="ism/synthetic", parent={"mlflow_id": "p", "tags": {}},
                 plan={"seeds": list(seeds), "variants": variants}, notes=[], spec_text="",
                 trials=pd.DataFrame(trials), scores=pd.DataFrame(scores),
                 scalars=pd.DataFrame(scal, columns=["variant", "seed", "mlflow_id", "key", "value"]),
                 params={f"{v}-{s}": {"v": v} for v in variants for s in seeds}, variants=variants,
                 seeds=list(seeds), baseline=variants[0], missing=pd.DataFrame())


# ----------------------------------------------------------------------------------------------- intervals
def test_log_interval_stays_positive_and_matches_scipy_on_logs():
    x = [4.0, 90.0]  # two seeds far apart: the arithmetic t-interval reaches far below 0
    assert mean_ci(x).lo < 0
    iv = log_mean_ci(x)
    lx = np.log(x)
    lo, hi = stats.t.interval(0.95, 1, loc=lx.mean(), scale=stats.sem(lx))
    assert iv.method == "log-t" and iv.n == 2
    assert iv.mean == pytest.approx(math.sqrt(4 * 90), rel=1e-12)  # the geometric mean
    assert (iv.lo, iv.hi) == (pytest.approx(math.exp(lo), rel=1e-12), pytest.approx(math.exp(hi), rel=1e-12))
    assert 0 < iv.lo < iv.mean < iv.hi
    rng = np.random.default_rng(0)
    for _ in range(200):
        y = np.exp(rng.normal(2, 1.5, rng.integers(2, 6)))
        v = log_mean_ci(y)
        assert 0 < v.lo <= v.mean <= v.hi
    # a value <= 0 (KID can be slightly negative): the arithmetic interval, unchanged
    k = [0.002, -0.0005, 0.001]
    assert log_mean_ci(k) == mean_ci(k) and log_mean_ci(k).method == "t"
    assert not log_mean_ci([7.0]).has_ci and log_mean_ci([7.0]).mean == 7.0


def test_ratio_interval_is_exp_of_the_paired_t_interval_on_log_differences():
    a = {0: 50.0, 1: 47.0, 2: 53.0, 3: 49.0}
    b = {0: 31.0, 1: 30.5, 2: 33.0, 3: 29.0}
    r = ratio_ci(a, b)
    d = np.log([b[s] for s in a]) - np.log([a[s] for s in a])
    lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert r.method == "paired" and r.n == 4
    assert r.mean == pytest.approx(math.exp(d.mean()), rel=1e-12)
    assert (r.lo, r.hi) == (pytest.approx(math.exp(lo), rel=1e-12), pytest.approx(math.exp(hi), rel=1e-12))
    assert r.hi < 1 and r.excludes(1)
    # different seed sets: Welch's interval on the logs, back-transformed
    b.pop(3)
    w = ratio_ci(a, b)
    ref = stats.ttest_ind(np.log(list(b.values())), np.log(list(a.values())), equal_var=False).confidence_interval(0.95)
    assert w.method == "Welch"
    assert (w.lo, w.hi) == (pytest.approx(math.exp(ref.low), rel=1e-9), pytest.approx(math.exp(ref.high), rel=1e-9))
    with pytest.raises(ValueError):
        ratio_ci({0: 1.0, 1: -0.1}, {0: 1.0, 1: 2.0})


# ----------------------------------------------------------------------------------------------- tables
FEW = {  # FID, two seeds far apart per variant: the arithmetic interval of 'sm' at 1 step goes below 0
    "sm": {("fid", 1, 0): 10.0, ("fid", 1, 1): 80.0, ("fid", 4, 0): 8.0, ("fid", 4, 1): 9.0},
    "wavelet": {("fid", 1, 0): 6.0, ("fid", 1, 1): 50.0, ("fid", 4, 0): 7.9, ("fid", 4, 1): 9.2},
    "sot": {("fid", 1, 0): 12.0, ("fid", 4, 0): 8.4},  # one seed of two finished
}


def test_tables_show_log_intervals_ratios_and_seed_columns():
    sw = sweep(FEW, {"wavelet": {"wavelet"}, "sot": {"sot"}})
    t = metric_table(sw, "fid", "FID")
    cells = {r[0]: r for r in t.rows}
    iv = log_mean_ci([10.0, 80.0])
    assert cells["sm [baseline]"][2].startswith(f"{math.sqrt(800):.2f} [") and iv.lo > 0
    assert cells["sot"][2].endswith("(n=1/2)") and "(n=" not in cells["wavelet"][2]
    assert {"seed_0", "seed_1"} <= set(t.data.columns) and "values" not in t.data.columns
    row = t.data[(t.data.variant == "sot") & (t.data.steps == 1)].iloc[0]
    assert row.seed_0 == 12.0 and math.isnan(row.seed_1)
    assert (t.data.ci_low.dropna() > 0).all()
    r = delta_table(sw, "fid")
    assert r.name == "fid_ratio" and r.rows[0][1].startswith("×")
    ref = ratio_ci({0: 10.0, 1: 80.0}, {0: 6.0, 1: 50.0})
    got = r.data[(r.data.variant == "wavelet") & (r.data.steps == 1)].iloc[0]
    assert (got.ratio, got.ci_low, got.ci_high) == pytest.approx((ref.mean, ref.lo, ref.hi))
    # a metric with a value <= 0 keeps the arithmetic difference table
    kid = sweep({"sm": {("kid", 1, 0): 0.001, ("kid", 1, 1): -0.0002}, "x": {("kid", 1, 0): 0.002, ("kid", 1, 1): 0.001}})
    assert delta_table(kid, "kid").name == "kid_delta"


# ----------------------------------------------------------------------------------------------- figures
@pytest.fixture
def captured(monkeypatch):
    """The figures a plotting function made, kept open (instead of saved and closed)."""
    figs = []
    monkeypatch.setattr(F, "_save", lambda fig, path: figs.append(fig) or path)
    yield figs
    import matplotlib.pyplot as plt
    for f in figs:
        plt.close(f)


def _bands(ax):
    from matplotlib.collections import PolyCollection
    return [p for p in ax.collections if isinstance(p, PolyCollection)]


def _seed_markers(ax):
    return [ln for ln in ax.lines if ln.get_marker() == "x"]


def test_metric_vs_steps_has_a_log_axis_positive_bands_and_seed_points(captured, tmp_path):
    sw = sweep(FEW)
    F.metric_vs_steps(sw, "fid", tmp_path / "f.png")
    ax = captured[0].axes[0]
    assert ax.get_yscale() == "log"
    bands = _bands(ax)
    assert bands and min(v[:, 1].min() for b in bands for v in (p.vertices for p in b.get_paths())) > 0
    # n < 3 everywhere: every seed is drawn, including the single seed of 'sot'
    ys = sorted(float(y) for ln in _seed_markers(ax) for y in ln.get_ydata())
    assert ys == sorted(x for vals in FEW.values() for x in vals.values())


def test_ablation_bars_and_guidance_sweep_use_log_scales(captured, tmp_path):
    sw = sweep({v: {**x, **{(m, 128, s): val for (m, st, s), val in x.items() if st == 4}} for v, x in FEW.items()})
    F.ablation_bars(sw, "fid", tmp_path / "b.png")
    assert all(ax.get_xscale() == "log" for ax in captured[0].axes)
    assert all(ax.get_xlim()[0] > 0 for ax in captured[0].axes)
    gs = sweep({"ig": {("fid", 1, s, w): 30 + 10 * s + 5 * abs(w - 1) for s in (0, 1) for w in (0.0, 1.0, 2.0)}})
    F.guidance_sweep(gs, "fid", tmp_path / "g.png")
    ax = captured[1].axes[0]
    assert ax.get_yscale() == "log" and len(_seed_markers(ax)) == 3
    assert min(v[:, 1].min() for b in _bands(ax) for v in (p.vertices for p in b.get_paths())) > 0


def test_every_seed_is_drawn_beside_the_mean(captured, tmp_path):
    """Per-seed points with many seeds too: what the mean and its interval rest on stays visible."""
    sw = sweep({"sm": {("fid", 1, s): 10.0 + s for s in range(4)}}, seeds=range(4))
    F.metric_vs_steps(sw, "fid", tmp_path / "f.png")
    (markers,) = _seed_markers(captured[0].axes[0])
    assert sorted(markers.get_ydata()) == [10.0, 11.0, 12.0, 13.0]


# ----------------------------------------------------------------------------------------------- claims
FREQ = next(c for c in CLAIMS if c.problem == "frequency bias")  # spectrum_top_err absent: decided on 1-step FID


def _freq(sm: dict[int, float], wav: dict[int, float]):
    sw = sweep({"sm": {("fid", 1, s): x for s, x in sm.items()}, "wavelet": {("fid", 1, s): x for s, x in wav.items()}},
               {"wavelet": {"wavelet"}}, seeds=sorted(sm))
    return check(sw, FREQ)


def test_fid_claims_are_decided_on_the_ratio_interval():
    sm = {0: 10.0, 1: 100.0, 2: 1000.0}
    # ~10 % lower on every seed: the ratio interval lies below 1 although the arithmetic delta's straddles 0
    r = _freq(sm, {0: 9.0, 1: 91.0, 2: 890.0})
    assert r.pair == ("sm", "wavelet") and r.verdict == REPRODUCED
    assert r.ratio.hi < 1 and r.delta.lo < 0 < r.delta.hi
    d = np.log([9.0, 91.0, 890.0]) - np.log([10.0, 100.0, 1000.0])
    hi = stats.t.interval(0.95, 2, loc=d.mean(), scale=stats.sem(d))[1]
    assert r.ratio.hi == pytest.approx(math.exp(hi))
    assert _freq(sm, {0: 11.0, 1: 109.0, 2: 1110.0}).verdict == NOT_REPRODUCED
    assert _freq(sm, {0: 9.0, 1: 110.0, 2: 1000.0}).verdict == OVERLAP
    assert _freq({0: 10.0}, {0: 9.0}).verdict.startswith("inconclusive (fewer than 2 seeds")


def test_other_diagnostics_keep_the_paired_delta():
    sw = sweep({"sm": {("spectrum_top_err", 1, s): 0.9 + 0.01 * s for s in (0, 1, 2)},
                "wavelet": {("spectrum_top_err", 1, s): 0.3 + 0.012 * s for s in (0, 1, 2)}},
               {"wavelet": {"wavelet"}}, seeds=(0, 1, 2))
    r = check(sw, FREQ)
    assert r.ratio is None and r.delta.method == "paired" and r.verdict == REPRODUCED
    assert r.delta.mean == pytest.approx(delta_ci({0: 0.9, 1: 0.91, 2: 0.92}, {0: 0.3, 1: 0.312, 2: 0.324}).mean)




def test_the_variant_plot_draws_dots_at_the_geometric_means_not_bars_and_aliases_once(captured, tmp_path):
    """Bars on a log axis have no meaningful length: each variant is a dot at its geometric mean with its interval as
    a line; two names for one trial (identical configs) are one row, labelled with both."""
    from matplotlib.patches import Rectangle
    sw = sweep(FEW)
    sw.trials.loc[sw.trials["variant"] == "sot", "variants"] = "sot,sot_alias"
    alias = sw.trials[sw.trials["variant"] == "sot"].assign(variant="sot_alias")
    sw.trials = pd.concat([sw.trials, alias], ignore_index=True)
    sw.variants = [*sw.variants, "sot_alias"]
    F.ablation_bars(sw, "fid", tmp_path / "b.png")
    ax = captured[0].axes[0]
    assert not [p for p in ax.patches if isinstance(p, Rectangle) and p.get_width() > 0], "no bars"
    dots = sorted(float(ln.get_xdata()[0]) for ln in ax.lines if ln.get_marker() == "o")
    assert dots == pytest.approx(sorted([math.sqrt(10.0 * 80.0), math.sqrt(6.0 * 50.0), 12.0]))
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) == 3 and "sot (= sot_alias)" in labels


def test_a_component_is_paired_within_one_method():
    """In the methods spec, sm and meanflow+intrinsic differ by intrinsic guidance *and* the method: the fixed-guidance
    claim must pair meanflow -> meanflow+intrinsic, never the SM baseline with another method's variant."""
    from types import SimpleNamespace
    from ism.report.claims import Claim, find_pair
    comps = {"sm": frozenset(), "meanflow": frozenset(), "meanflow+intrinsic": frozenset({"intrinsic"})}
    method = {"sm": "sm", "meanflow": "meanflow", "meanflow+intrinsic": "meanflow"}
    sw = SimpleNamespace(variants=list(comps), baseline="sm", components=comps.get, representative=lambda v: v,
                         params={v: {"method.name": m, "guidance.mode": "intrinsic" if "+" in v else "cfg_finest"}
                                 for v, m in method.items()})
    claim = Claim("fixed guidance", "intrinsic", "fid", "min", "")
    assert find_pair(sw, claim, lambda v: True, lambda v: True) == ("meanflow", "meanflow+intrinsic")
    del comps["meanflow"], sw.variants[1]   # only the cross-method pair is left: no pair, not a wrong one
    assert find_pair(sw, claim, lambda v: True, lambda v: True) is None
