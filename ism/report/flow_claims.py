"""Claims of the rectified-flow papers, checked where a sweep holds the variants they need (ablations/flow-design).

- Rectified flow (Liu, Gong, Liu 2022): reflow lowers the transport (pairing) cost, straightens the paths
  (straightness -> 1) and improves 1-step sampling; checked on every reflow student against its teacher, the variant
  whose trial its data.reflow_teacher names.
- SD3 (Esser et al. 2024) and rfpp (Lee, Lin, Fanti 2024): logit-normal and U-shaped timestep densities beat
  uniform t at few steps; checked on the variant that differs from the baseline only by shortcut.t_density.
- Rectified Diffusion (Wang et al. 2024): straightness is not the target; checked as the rank correlation of
  straightness and 1-step FID across the sweep's variants.

Same verdict rules as ism.report.claims: FID as a ratio (interval on log FID wholly below 1 = reproduced), other
diagnostics as a difference (wholly below 0), paired by seed when possible; fewer than 2 seeds: no interval.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

from ism.report.ci import Interval
from ism.report.claims import NOT_REPRODUCED, OVERLAP, REPRODUCED, Claim, Result, _verdict
from ism.report.load import Sweep

TEACHER_KEY, COUPLING_KEY, DENSITY_KEY = "data.reflow_teacher", "data.coupling", "shortcut.t_density"
REFLOW_CLAIMS = (
    ("reflow: transport cost", "pairing_cost", "max", "rectified flow: reflow does not increase the transport cost "
     "E||x1 - x0||^2 of the model's own noise-sample pairs: lower for the student"),
    ("reflow: straight paths", "straightness", "max", "rectified flow: reflow straightens the ODE paths: "
     "straightness (path / chord) closer to 1 for the student"),
    ("reflow: one step", "fid", "min", "rectified flow / InstaFlow: the reflowed model samples better in one step: "
     "lower 1-step FID"),
)
DENSITY_CLAIMS = (("logit_normal", "SD3: logit-normal t (mass in the middle) beats uniform t"),
                  ("u_shaped", "rfpp: U-shaped t (mass near noise and data) beats uniform t at few steps"))


def _param(sw: Sweep, v: str, key: str) -> str | None:
    return sw.params.get(sw.representative(v) or "", {}).get(key)


def reflow_pairs(sw: Sweep) -> list[tuple[str, str]]:
    """(teacher variant, student variant) for every finished reflow student whose teacher is in the sweep."""
    by_run = dict(zip(sw.trials["run_id"], sw.trials["variant"]))
    out = []
    for v in sw.variants:
        if _param(sw, v, COUPLING_KEY) == "reflow" and (t := by_run.get(_param(sw, v, TEACHER_KEY) or "")):
            out.append((t, v))
    return out


def density_variants(sw: Sweep) -> dict[str, str]:
    """{density: variant} for variants that differ from the baseline by the timestep density alone."""
    base = sw.params.get(sw.representative(sw.baseline) or "", {})
    out = {}
    for v in sw.variants:
        p = sw.params.get(sw.representative(v) or "", {})
        diff = {k for k in set(p) | set(base) if k != "run.seed" and p.get(k) != base.get(k)}
        if diff == {DENSITY_KEY}:
            out.setdefault(p[DENSITY_KEY], v)
    return out


def _pair_result(sw: Sweep, claim: Claim, pair: tuple[str, str], steps: int | None) -> Result:
    diag = claim.metric + (f" @{steps} step{'s' * (steps > 1)}" if steps else "")
    va, vb = (sw.values(claim.metric, steps).get(v, {}) for v in pair)
    if not va or not vb:
        return Result(claim, diag, pair, verdict="inconclusive (not measured: a side has no finished seed)")
    return _verdict(Result(claim, diag, pair), va, vb, claim.metric)


def _steps(sw: Sweep, metric: str, at: str) -> int | None:
    s = sw.steps_of(metric)
    return (s[0] if at == "min" else s[-1]) if s else None


def straightness_vs_fid(sw: Sweep) -> Result | None:
    """Rectified Diffusion's point as a rank correlation across variants (Spearman, Fisher-z interval with the
    Bonett-Wright standard error sqrt(1.06 / (n - 3)))."""
    s_st, s_fid = _steps(sw, "straightness", "max"), _steps(sw, "fid", "min")
    claim = Claim("straightness vs FID", "", "straightness", None,
                  "Rectified Diffusion: straightness is not the target; a model's few-step quality follows its "
                  "training pairs, not how straight its paths are. Checked: does straightness rank the variants' "
                  "1-step FID? Reproduced when rho's interval lies wholly below 0 (straighter is not better); not "
                  "reproduced when wholly above 0 (straighter ranks better)")
    if s_st is None or s_fid is None:
        return None
    st, fid = sw.values("straightness", s_st), sw.values("fid", s_fid)
    vs = [v for v in sw.variants if st.get(v) and fid.get(v)]
    diag = f"Spearman rho(straightness @{s_st}, FID @{s_fid}) over {len(vs)} variants (seed means)"
    if len(vs) < 4:
        return Result(claim, diag, None, verdict="inconclusive (fewer than 4 variants with both metrics)")
    x = [float(np.mean(list(st[v].values()))) for v in vs]
    y = [float(np.mean(list(fid[v].values()))) for v in vs]
    rho = float(stats.spearmanr(x, y).statistic)
    if not math.isfinite(rho):
        return Result(claim, diag, None, verdict="inconclusive (constant ranks)")
    z, se = math.atanh(max(min(rho, 0.999999), -0.999999)), math.sqrt(1.06 / (len(vs) - 3))
    q = stats.norm.ppf(0.975)
    iv = Interval(rho, math.tanh(z - q * se), math.tanh(z + q * se), len(vs), "spearman")
    r = Result(claim, diag, None, delta=iv)
    r.detail = f"rho {rho:.2f} [{iv.lo:.2f}, {iv.hi:.2f}] over {', '.join(vs)}"
    r.verdict = REPRODUCED if iv.hi < 0 else NOT_REPRODUCED if iv.lo > 0 else OVERLAP
    return r


def flow_results(sw: Sweep) -> list[Result]:
    """Every rectified-flow claim this sweep can check (none when it has no reflow student nor density variant)."""
    out = []
    for teacher, student in reflow_pairs(sw):
        for problem, metric, at, paper in REFLOW_CLAIMS:
            out.append(_pair_result(sw, Claim(f"{problem} ({student})", "", metric, at, paper),
                                    (teacher, student), _steps(sw, metric, at)))
    dens = density_variants(sw)
    for kind, paper in DENSITY_CLAIMS:
        if kind in dens:
            for s in sorted({x for x in (1, 4) if x in sw.steps_of("fid")}):
                out.append(_pair_result(sw, Claim(f"timestep density: {kind}", "", "fid", None, paper),
                                        (sw.baseline, dens[kind]), s))
    if out and (r := straightness_vs_fid(sw)) is not None:
        out.append(r)
    return out
