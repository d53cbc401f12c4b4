"""What makes a comparison fair, as the report states it first: the full method against the baseline (ratios with
intervals at 1, 4 and 128 steps), how every arm was tuned (equal budgets, ism.ablation.tuning), and guidance compared at each
arm's own best strength selected on held-out noise (eval.select_guidance), with the learned guidance response.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ism.conf.config import cfg_equivalent
from ism.report.ci import positive
from ism.report.load import Sweep, aliases, distinct, label
from ism.report.tables import Table, compare_ci, compare_cell, fmt, log_metric

HEADLINE_STEPS = (1, 4, 128)
COMPONENTS = frozenset({"intrinsic", "interval", "wavelet", "sot", "twin_ema"})


def knob(v) -> str:
    """A knob's value as written in a spec (1.5, not the tables' 1.500)."""
    return f"{v:g}" if isinstance(v, float) else str(v)


def full_method(sw: Sweep) -> str | None:
    """The variant with the most components switched on (the first in spec order), if it has more than the baseline.
    Judged on every trial of the sweep, finished or not: an unfinished full method must not hand the headline to
    the most complete variant that happens to have finished."""
    cands = [v for v in sw.variants if v != sw.baseline and not sw.trials[sw.trials["variant"] == v].empty]
    if not cands:
        return None
    most = max(len(sw.components(v)) for v in cands)
    if most <= len(sw.components(sw.baseline)):  # no variant adds components to the baseline: no method to headline
        return None
    return next(v for v in cands if len(sw.components(v)) == most)


def _tuned_of(sw: Sweep, variant: str) -> dict | None:
    """The tuned values a variant carries (its arm's record entry), or None."""
    for arm, e in (sw.plan.get("tuning") or {}).items():
        if variant == arm or variant in (e.get("carried_by") or ()):
            return e.get("values")
    return None


def headline(sw: Sweep, metric: str) -> list[str]:
    """The summary's first lines: full method ÷ baseline at 1, 4 and 128 steps, and the baseline's tuned values."""
    full = full_method(sw)
    if full is None:
        return []
    log = log_metric(sw, metric)
    cells = []
    for s in HEADLINE_STEPS:
        per = sw.values(metric, s)
        if sw.baseline in per and full in per:
            c = compare_ci(per[sw.baseline], per[full], log)
            cells.append(f"{compare_cell(c, log)} at {s} step{'s' * (s > 1)}")
    what = "÷" if log else "−"
    if not cells:
        return [f"**Full method `{full}` {what} baseline `{sw.baseline}`: not measured**: one of them has no finished "
                "seed (see 'Missing and failed trials')."]
    same = aliases(sw, full)  # the spec may name the full method twice (cum5_twin_ema = ism)
    named = f"`{full}`" + (" (= " + ", ".join(f"`{a}`" for a in same) + ")" if same else "")
    lines = [f"**Full method {named} {what} baseline `{sw.baseline}`, {metric.upper()}: " + "; ".join(cells) +
             "** (95 % intervals, paired by seed" + (", on log values" if log else "") + ")."]
    tuned = _tuned_of(sw, sw.baseline)
    if sw.plan.get("tuning"):
        rec = sw.plan["tuning"]
        budget = {e.get("provenance", {}).get("budget") for e in rec.values()}
        bare = untuned(sw)
        lines.append(f"Every tuning arm got the same budget ({', '.join(str(b) for b in sorted(budget, key=str))} "
                     f"trials on a held-out seed); the baseline carries "
                     + (", ".join(f"`{k}` = {knob(v)}" for k, v in tuned.items())
                        if tuned else "no tuned value") + " (see 'Tuning')."
                     + (f" **Not tuned**: {', '.join(f'`{v}`' for v in bare)} run at their configured values, so a "
                        "comparison with them favours the tuned side." if bare else "")
                     + edge_note(sw))
    else:
        lines.append("No arm was tuned in this sweep (the spec has no tune: block): each variant runs at the preset's "
                     "values, so a comparison is only as fair as those values are for both sides.")
    return lines


def untuned(sw: Sweep) -> list[str]:
    """Variants (one per trial) that neither tune an arm nor carry one's values, when the spec tunes at all."""
    rec = sw.plan.get("tuning") or {}
    if not rec:
        return []
    carried = {v for arm, e in rec.items() for v in (arm, *(e.get("carried_by") or []))}
    return [v for v in distinct(sw) if v not in carried and not set(aliases(sw, v)) & carried]


def at_edge(entry: dict) -> list[str]:
    """The numeric knobs whose chosen value is the smallest or largest of the values tried (two or more): the best may
    lie beyond the grid, so the arm may be under-tuned."""
    out = []
    for k, v in (entry.get("values") or {}).items():
        tried = sorted({t["values"][k] for t in entry.get("trials", []) if isinstance(t["values"].get(k), (int, float))})
        if isinstance(v, (int, float)) and not isinstance(v, bool) and len(tried) > 1 and v in (tried[0], tried[-1]):
            out.append(f"{k} = {v:g} ({'lowest' if v == tried[0] else 'highest'} of {', '.join(f'{x:g}' for x in tried)})")
    return out


def edge_note(sw: Sweep) -> str:
    """One sentence naming the arms whose tuned value sits at an edge of its grid, or ''."""
    rec = sw.plan.get("tuning") or {}
    edges = {arm: at_edge(e) for arm, e in rec.items()}
    edges = {a: e for a, e in edges.items() if e}
    if not edges:
        return ""
    return (" **At a grid edge**: " + "; ".join(f"`{a}` {', '.join(e)}" for a, e in edges.items())
            + ": the best value may lie outside the grid, so these arms may be under-tuned by the same budget.")


def tuning_table(sw: Sweep) -> Table | None:
    """Per arm: what it tuned, over which grid, with which budget and seed, and the value chosen."""
    rec = sw.plan.get("tuning") or {}
    if not rec:
        return None
    rows, raw = [], []
    for arm, e in rec.items():
        prov = e.get("provenance", {})
        keys = list(e.get("values", {}))
        grid = "; ".join(", ".join(f"{k}={knob(v)}" for k, v in t["values"].items())
                         + f" → {fmt(t['objective_value'])}" for t in e.get("trials", []))
        chosen = ", ".join(f"{k} = {knob(v)}" for k, v in e.get("values", {}).items())
        rows.append([arm, ", ".join(e.get("carried_by") or []) or "–", ", ".join(keys), grid,
                     f"{prov.get('trials', '?')} / {prov.get('budget', '?')}", str(prov.get("seed", "?")), chosen])
        raw.append({"arm": arm, "carried_by": ",".join(e.get("carried_by") or []), "keys": ",".join(keys),
                    "budget": prov.get("budget"), "trials": prov.get("trials"), "seed": prov.get("seed"),
                    "objective": prov.get("objective"), "chosen": chosen, "objective_value": e.get("objective_value")})
    objective = next(iter(rec.values())).get("provenance", {}).get("objective", "?")
    note = (f"Equal-budget tuning (docs/method.md#fair-comparisons): every arm, the baseline included, got the same "
            f"number of trials for its own knobs, on a training seed the sweep does not report, judged by one "
            f"objective ({objective}); the best point is carried by the arm and the variants listed. Values are "
            "reused from the record while their provenance (config identity, grid, budget, objective, seed) matches.")
    return Table("tuning", "Tuning: each arm's knobs, grid, budget and chosen values",
                 ["arm", "carried by", "knobs", "grid → objective", "trials / budget", "seed", "chosen"], rows,
                 set(), note, pd.DataFrame(raw))


def selected_table(sw: Sweep, metric: str) -> Table | None:
    """FID at the configured guidance against FID at the value selected on held-out noise, per variant and step."""
    sel = f"{metric}_selected"
    steps = sw.steps_of(sel)
    if not steps:
        return None
    log = log_metric(sw, metric)
    rows, raw = [], []
    for v in sw.variants:
        cfgd, best, g = ({s: sw.values(m, s).get(v, {}) for s in steps} for m in (metric, sel, "selected_guidance"))
        if not any(best.values()):
            continue
        row = [v]
        for s in steps:
            a, b = cfgd[s], best[s]
            ga = list(g[s].values())
            gtxt = f" @ {fmt(sum(ga) / len(ga), 3)}" if ga else ""
            mean = lambda x: (math.exp(sum(map(math.log, x)) / len(x)) if log and positive(x) else sum(x) / len(x))  # noqa: E731
            row.append(f"{fmt(mean(list(a.values()))) if a else '–'} → {fmt(mean(list(b.values()))) if b else '–'}{gtxt}")
            raw.append({"variant": v, "steps": s, "configured": mean(list(a.values())) if a else math.nan,
                        "selected": mean(list(b.values())) if b else math.nan,
                        "selected_cfg_equivalent": sum(ga) / len(ga) if ga else math.nan})
        rows.append(row)
    note = ("Configured → selected: the metric at the run's own inference guidance, and at the value the guidance "
            "sweep selected on a second, held-out noise set (reported on the evaluation noise, so the choice does not "
            "flatter the number); @ the selected value as a CFG-equivalent scale (1 + w for intrinsic guidance), mean "
            "over seeds. The cfg_* modes can change their guidance at inference only at the finest step count; at "
            "fewer steps their scale is the one training baked in (a tuned knob).")
    return Table(f"{metric}_selected", f"{metric.upper()} at the configured and at the selected guidance",
                 ["variant", *[f"{s} step{'s' * (s > 1)}" for s in steps]], rows, set(), note, pd.DataFrame(raw))


def guidance_response(sw: Sweep, path: Path) -> Path | str:
    """How far guidance moves samples (RMS distance to unguided samples from the same noise) against the
    CFG-equivalent scale: each intrinsic variant's learned response, and two-pass CFG at the same scale."""
    df = sw.scores
    if not len(df) or "guidance_displacement" not in set(df["metric"]):
        return "no guidance response was measured (eval.select_guidance with a guidance sweep)"
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    colors = plt.get_cmap("tab10")
    shown = [v for v in distinct(sw) if not df[(df["variant"] == v) & df["sweep"]].empty]  # aliases drawn once
    for i, v in enumerate(shown):
        sub = df[(df["variant"] == v) & df["sweep"]]
        intrinsic = "intrinsic" in sw.components(v)
        for metric, style in (("guidance_displacement", "-"), ("cfg_displacement", ":")):
            for s, g in sub[sub["metric"] == metric].groupby("steps"):
                m = g.groupby("guidance")["value"].mean()
                x = [cfg_equivalent("intrinsic" if intrinsic else "cfg", w) for w in m.index]
                what = "learned" if metric == "guidance_displacement" else "two-pass CFG"
                ax.plot(x, m.values, style, marker={1: "o", 4: "s"}.get(int(s), "^"), ms=3, color=colors(i % 10),
                        label=f"{label(sw, v)} {what}, {int(s)} step{'s' * (s > 1)}")
    ax.set_xlabel("CFG-equivalent scale (1 + w for intrinsic guidance)")
    ax.set_ylabel("RMS displacement from unguided samples")
    if ax.get_legend_handles_labels()[0]:  # below the axes: inside, it hid the curves
        ax.legend(fontsize=6, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path
