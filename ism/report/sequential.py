"""The report's adaptive-seed section: per comparison (each variant against the baseline at the headline step counts)
the seeds it has, its interval at each pre-set look of the rule (ism.ablation.sequential), and why it stopped; and the sweep's
machine account (ism.system.accounting) against every core busy."""
from __future__ import annotations

import math

import pandas as pd

from ism.system.accounting import PHASES, PREFIX
from ism.report.load import Sweep, distinct
from ism.report.tables import Table, fmt, label, log_metric
from ism.ablation.sequential import Comparison, Rule

STEPS = (1, 4)  # the headline comparisons: the full method against the baseline at 1 and 4 steps


def sequential_table(sw: Sweep, metric: str, rule: Rule | None = None, steps=STEPS,
                     budget_left: bool = True) -> Table | None:
    """Each variant against the baseline at `steps`: seeds, the interval at every look, and the rule's verdict."""
    rule = rule or Rule()
    if not sw.baseline:
        return None
    log = log_metric(sw, metric)
    rows, bold, raw = [], set(), []
    for s in (x for x in steps if x in sw.steps_of(metric)):
        vals = sw.values(metric, s)
        base = vals.get(sw.baseline, {})
        for v in distinct(sw):  # variants sharing one trial are one comparison, labelled with every name
            if v == sw.baseline or v not in vals:
                continue
            c = Comparison(f"{v}@{s}", sw.baseline, v, metric, log=log)
            c.assess(base, vals[v], rule)
            show = (lambda x: f"×{math.exp(x):.3g}") if log else (lambda x: fmt(x, 3))
            looks = "; ".join(f"{lk.seeds}: {show(lk.mean)} [{show(lk.lo)}, {show(lk.hi)}]" for lk in c.looks) or "–"
            n = len(set(base) & set(vals[v]))
            rows.append([label(sw, v), str(s), str(n), looks, c.status(rule, budget_left)])
            if c.decided:
                bold.add((len(rows) - 1, 4))
            raw += [{"variant": v, "baseline": sw.baseline, "steps": s, "seeds": lk.seeds, "mean": lk.mean,
                     "lo": lk.lo, "hi": lk.hi, "decided": lk.decided, "log": log} for lk in c.looks]
    if not rows:
        return None
    what = "ratio to the baseline" if log else "difference to the baseline"
    note = (f"{metric.upper()} {what}, paired by seed, at the rule's looks (seeds: estimate [interval]). Rule: "
            f"{rule.describe()}. Bold: decided. A comparison's looks use its first seeds in seed order, so rerunning "
            "with the same seeds gives the same decisions.")
    return Table(f"{metric}_sequential", f"Adaptive seeds: {metric.upper()} decisions at pre-set looks",
                 ["variant", "steps", "paired seeds", "looks", "verdict"], rows, bold, note, pd.DataFrame(raw))


def exhausted(sw: Sweep) -> bool:
    """Whether the sweep's adaptive seeds stopped because the budget ran out (plan.json's adaptive record)."""
    return bool((sw.plan.get("adaptive") or {}).get("exhausted"))


def adaptive_summary(sw: Sweep) -> list[str]:
    """How the seeds were spent: the budget, each round's seeds per variant, why the rounds stopped, what was left."""
    a = sw.plan.get("adaptive") or {}
    if not a:
        return ["Seeds: every listed seed of every variant (no budget, so no adaptive rounds)."]
    lines = [f"Seeds were added adaptively under {a.get('budget') or 'no budget'}: {len(a.get('rounds', []))} "
             f"round(s); stopped: {a.get('stopped') or 'still running'}. Rule: {a.get('rule', '')}."]
    for i, r in enumerate(a.get("rounds", []), 1):
        seeds = r.get("seeds", {})
        counts = sorted({(n, v) for v, n in seeds.items()})
        by_n: dict[int, list[str]] = {}
        for n, v in counts:
            by_n.setdefault(n, []).append(v)
        shape = "; ".join(f"{n} seeds: {', '.join(vs)}" for n, vs in sorted(by_n.items(), reverse=True))
        lines.append(f"Round {i}: {shape}. Ran {len(r.get('ran', []))} trial(s)"
                     + (f"; left undone by the budget: {', '.join(r['left_undone'])}" if r.get("left_undone") else "")
                     + ".")
    return lines


def machine_table(sw: Sweep) -> Table | None:
    """The sweep's machine account from its parent run's machine/* metrics (None when the sweep logged none)."""
    m = sw.parent.get("metrics") or {}
    if PREFIX + "span_s" not in m:
        return None
    rows = [[f"{p} (trial time)", f"{m.get(f'{PREFIX}{p}_s', 0.0) / 60:.1f} min"] for p in PHASES]
    rows += [["trials", f"{m[PREFIX + 'trials']:.0f}"], ["sweep wall", f"{m[PREFIX + 'span_s'] / 60:.1f} min"],
             ["CPU", f"{m[PREFIX + 'cpu_s'] / 60:.1f} min"],
             ["cores busy", f"{100 * m[PREFIX + 'cpu_util']:.0f} % of {m[PREFIX + 'cores']:.0f} cores"],
             ["idle", f"{m[PREFIX + 'idle_core_s'] / 60:.1f} core-min"]]
    return Table("machine", "Machine account of the last run of this sweep", ["", "value"], rows, set(),
                 "Phases are the trials' own time (two at once on 2 cores: their sum exceeds the wall). 'cores busy' "
                 "is CPU time over wall × cores, the ideal being 100 %.")
