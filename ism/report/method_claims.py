"""The few-step methods side by side (ablations/methods.yaml): the papers' claims, whether iSM's fixes transfer to
MeanFlow and consistency training, and what a training step costs.

Variants are found by name, the spec's convention: `sm`, `ism`, `meanflow`, `ct` (method.name on the shared core)
and `<method>+<fix>` for fix in sot, wavelet, twin_ema. The paper columns quote each paper on its own network,
data, schedule and FID statistics: a direction to compare with, never a number ours should match.

Same verdict rules as ism.report.claims: FID as a ratio with its interval on log FID (wholly below 1 = reproduced),
paired by seed when both sides hold the same seeds.
"""
from __future__ import annotations

import math

import pandas as pd

from ism.report.ci import log_mean_ci, mean_ci, positive, ratio_ci
from ism.report.claims import Claim, Result, _verdict
from ism.report.load import Sweep, distinct, label
from ism.report.tables import Table, cell, ratio_cell

METHODS = ("sm", "meanflow", "ct")
FIXES = ("sot", "wavelet", "twin_ema")

# (problem, (without, steps), (with, steps), the paper's statement with its numbers). Checked against the papers'
# abstracts with the search tool where marked; the others are quoted from issue 27.
CLAIMS = (
    ("MeanFlow beats SM at 1 NFE", ("sm", 1), ("meanflow", 1),
     "MeanFlow (Geng et al. 2025): FID 3.43 at 1 NFE, DiT-XL/2, ImageNet 256 (abstract, checked); SM 10.60 at 1 "
     "step (issue 27, SM README, custom ImageNet statistics: not comparable)"),
    ("MeanFlow improves from 1 to 2 NFE", ("meanflow", 1), ("meanflow", 2),
     "MeanFlow: 3.43 at 1 NFE → 2.20 at 2 NFE (issue 27; leaderboards also list 2.93 at 2 NFE for the paper, the "
     "model behind 2.20 was not checked)"),
    ("consistency training improves from 1 to 2 steps", ("ct", 1), ("ct", 2),
     "iCT (Song & Dhariwal 2023): CIFAR-10 2.51 at 1 step → 2.24 at 2 steps (abstract, checked)"),
    ("MeanFlow beats SM at 1 NFE at equal training CPU", ("sm", 1), ("meanflow_cpu_matched", 1),
     "not a paper's claim: the papers compare at equal epochs; a MeanFlow step costs 1.68× SM's CPU here (its JVP), "
     "so this MeanFlow trains 1,500 / 1.68 = 890 steps to SM's 1,500"),
    ("iSM beats MeanFlow at 1 step", ("meanflow", 1), ("ism", 1),
     "the papers say the reverse on their own setups: iSM 5.27 at 1 step (issue 27, not checked) vs MeanFlow 3.43"),
)


def method_results(sw: Sweep) -> list[Result]:
    """Every method claim this sweep can check (none when it lacks the variants)."""
    out = []
    for problem, (a, sa), (b, sb), paper in CLAIMS:
        if a not in sw.variants or b not in sw.variants:
            continue
        claim = Claim(problem, "", "fid", None, paper)
        diag = f"fid @{sa} vs @{sb} steps" if sa != sb else f"fid @{sa} step{'s' * (sa > 1)}"
        pair = (f"{a} @{sa}", f"{b} @{sb}")
        va, vb = sw.values("fid", sa).get(a, {}), sw.values("fid", sb).get(b, {})
        if not va or not vb:
            out.append(Result(claim, diag, pair, verdict="inconclusive (not measured: a side has no finished seed "
                                                        "at that step count)"))
            continue
        out.append(_verdict(Result(claim, diag, pair), va, vb, "fid"))
    return out


def transfer_table(sw: Sweep, metric: str = "fid", steps: tuple[int, ...] = (1, 2, 4)) -> Table | None:
    """Each iSM fix's ratio on each method: FID(method + fix) / FID(method), paired by seed, per step count."""
    have = [s for s in steps if s in sw.steps_of(metric)]
    rows, raw = [], []
    for m in METHODS:
        for fix in FIXES:
            v = f"{m}+{fix}"
            if m not in sw.variants or v not in sw.variants:
                continue
            cells = []
            for s in have:
                a, b = sw.values(metric, s).get(m, {}), sw.values(metric, s).get(v, {})
                iv = ratio_ci(a, b) if a and b and positive([*a.values(), *b.values()]) else None
                cells.append(ratio_cell(iv) if iv else "–")
                raw.append({"method": m, "fix": fix, "steps": s, "ratio": iv.mean if iv else math.nan,
                            "ratio_low": iv.lo if iv else math.nan, "ratio_high": iv.hi if iv else math.nan,
                            "n": iv.n if iv else 0})
            if any(c != "–" for c in cells):  # a fix arm with no finished pair at any step count says nothing
                rows.append([m, fix, *cells])
    if not rows or not have:
        return None
    return Table("transfer", f"Do iSM's fixes transfer? {metric.upper()} with the fix ÷ without, per method",
                 ["method", "fix", *(f"@{s} step{'s' * (s > 1)}" for s in have)], rows, set(),
                 "Ratio of geometric means over seeds, 95 % interval on log values, paired by seed where both sides "
                 "hold the same seeds; below 1: the fix helps that method. twin_ema on MeanFlow and consistency "
                 "training makes the fast EMA their target network (shortcut.target=ema).", pd.DataFrame(raw))


def step_time_table(sw: Sweep, metric: str = "fid") -> Table | None:
    """Seconds per training step (wall_time_s / run.steps) per variant, its ratio to the baseline, and the 1-step
    metric beside it: the cost of each method's step (a JVP costs more than a forward pass)."""
    wall = sw.scalar("wall_time_s")
    if not wall:
        return None
    per_step = {}
    for v, seeds in wall.items():
        steps = float(sw.params.get(sw.representative(v) or "", {}).get("run.steps", "nan"))
        if steps > 0:
            per_step[v] = {s: t / steps for s, t in seeds.items()}
    base = per_step.get(sw.baseline, {})
    fid1 = sw.values(metric, 1) if 1 in sw.steps_of(metric) else {}
    rows, raw = [], []
    for v in distinct(sw):  # aliases share one trial: one row
        if v not in per_step:
            continue
        iv = mean_ci(list(per_step[v].values()))
        r = ratio_ci(base, per_step[v]) if base and v != sw.baseline else None
        f = log_mean_ci(list(fid1[v].values())) if fid1.get(v) and positive(fid1[v].values()) else None
        rows.append([label(sw, v), cell(iv, len(sw.seeds)), ratio_cell(r) if r else ("×1" if v == sw.baseline else "–"),
                     cell(f, len(sw.seeds)) if f else "–"])
        raw.append({"variant": v, "sec_per_step": iv.mean, "sec_per_step_half": iv.half if iv.has_ci else math.nan,
                    "ratio_to_baseline": r.mean if r else math.nan, f"{metric}_1": f.mean if f else math.nan})
    if not rows:
        return None
    return Table("step_time", "Training cost: seconds per step and the ratio to the baseline",
                 ["variant", "s / step", f"÷ {sw.baseline}", f"{metric.upper()} @1 step"], rows, set(),
                 "Training wall time (logged wall_time_s, evaluation excluded) over run.steps, mean ± 95 % "
                 "half-width over seeds; every variant trains the same number of steps, so FID columns compare at "
                 "equal steps and this ratio says how much longer each took. Trials share a machine, so the times "
                 "carry its load.", pd.DataFrame(raw))
