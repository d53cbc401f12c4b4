"""The --dry-run listings of `ism ablate` and `ism study`: trials, config diffs, resources, state and estimated cost."""
from __future__ import annotations

import json
from typing import Any, Mapping

from ism.ablate import Plan
from ism.config import IDENTITY_KEYS, ConfigError, diff, from_dict, preset_delta, run_id
from ism.profiles import concurrency, estimate_parts, estimate_s
from ism.study.plan import StudyPlan
from ism.study.storage import FINISHED, counts, open_study


def fmt_resources(r: Mapping[str, float]) -> str:
    """{'cpu': 1.0, 'gpu': 0.5} -> 'cpu 1, gpu 0.5'."""
    return ", ".join(f"{k} {v:g}" for k, v in r.items() if v)


def fmt_s(s: float) -> str:
    """Seconds as s, min or h, whichever reads best."""
    return f"{s:.0f}s" if s < 90 else f"{s / 60:.1f}m" if s < 5400 else f"{s / 3600:.1f}h"


def fmt_v(v: Any) -> str:
    """A config value as typed (lists as JSON)."""
    return json.dumps(list(v)) if isinstance(v, (list, tuple)) else str(v)


def describe_plan(p: Plan, done: set[str] = frozenset(), reused: Mapping[str, str] | None = None) -> str:
    """`ism ablate --dry-run`: trials grouped by config, their diff to the base, resources and estimated cost."""
    n_cfg = len({t.variants for t in p.trials})
    lines = [f"spec {p.spec.name} ({p.spec.path}) - profile {p.profile} (preset {p.preset}) - sweep {p.sweep_id}",
             f"{len(p.variants)} variants -> {n_cfg} distinct configs x {len(p.seeds)} seeds {list(p.seeds)} = "
             f"{len(p.trials)} trials; resources per trial {fmt_resources(p.resources)}; max_failures {p.max_failures}"]
    lines += [f"  note: {n}" for n in p.notes]
    total = 0.0
    seen: set[tuple[str, ...]] = set()
    reused = reused or {}
    parts = {t.run_id: estimate_parts(t.cfg, p.profile) for t in p.trials}
    cost = {rid: sum(pt[1:]) if rid in reused else sum(pt) for rid, pt in parts.items()}  # adopted: no training
    for t in p.trials:
        est = cost[t.run_id]
        total += est
        if t.variants not in seen:
            seen.add(t.variants)
            reasons = [v.reason for v in p.spec.variants if v.name == t.variants[0]]
            lines.append(f"\n  {' = '.join(t.variants)}: {reasons[0] if reasons else ''}")
            d = {k: v for k, v in t.diff.items() if k != "run.seed"}
            lines.append("    diff vs base: " + (", ".join(f"{k}: {fmt_v(a)} -> {fmt_v(b)}" for k, (a, b) in d.items())
                                                  or "(the base)"))
        status = ("done" if t.run_id in done else
                  f"pending, evaluates the training of run {reused[t.run_id]}" if t.run_id in reused else "pending")
        lines.append(f"    seed {t.seed:<3} run {t.run_id}  est {fmt_s(est):>6}  {status}")
    k = concurrency(p.profile, p.resources)
    pending = sum(cost[t.run_id] for t in p.trials if t.run_id not in done)
    unit = "GPU" if p.resources.get("gpu") else "CPU"
    share = p.resources.get("gpu") or p.resources.get("cpu", 1)
    lines.append(f"\nestimated cost: {len(p.trials)} trials, {total * share / 3600:.2f} {unit}-hours in all; "
                 f"{len(p.trials) - len(done & {t.run_id for t in p.trials})} pending, ~{fmt_s(pending / k)} wall at "
                 f"{k} trial(s) at once" + ("" if unit == "CPU" else " per GPU"))
    return "\n".join(lines)


def describe_study(p: StudyPlan, url: str) -> str:
    """`ism study --dry-run`: base, space, objective, budget, pruning, the study's state and an estimated cost."""
    preset_cfg = from_dict(preset_delta(p.preset))
    lines = [f"study {p.study_name} ({p.spec.path}) - preset {p.preset} - storage {url}"]
    if p.spec.description:
        lines.append(f"  {p.spec.description}")
    d = {k: v for k, v in diff(preset_cfg, p.base).items() if k in IDENTITY_KEYS}
    lines.append("base vs preset: " + (", ".join(f"{k}: {fmt_v(a)} -> {fmt_v(b)}" for k, (a, b) in d.items())
                                       or "(the preset)"))
    lines.append(f"base run id {run_id(p.base)}; space ({len(p.space)} keys):")
    lines += [f"  {x.key:<32} {x.describe()}" for x in p.space]
    lines.append(f"objective: {p.objective.describe()}")
    lines.append(f"trials {p.n_trials}, parallelism {p.parallelism}, resources per trial {dict(p.resources)}; "
                 f"sampler {dict(p.sampler) or {'type': 'tpe'}}, pruner {dict(p.pruner) or {'type': 'none'}}")
    lines += [f"  note: {n}" for n in p.notes]
    if p.enqueue:
        lines.append(f"enqueued first: {list(p.enqueue)}")
    done = 0
    try:
        study = open_study(p, url, create=False)
        c = counts(study)
        done = sum(c[s.name] for s in FINISHED)
        lines.append("existing study: " + ", ".join(f"{v} {k.lower()}" for k, v in c.items() if v))
    except ConfigError as e:
        lines.append(f"existing study: none ({str(e).split(';')[0]})" if "no study" in str(e) else f"existing study: {e}")
    est = estimate_s(p.base, p.profile)
    left = max(0, p.n_trials - done)
    k = concurrency(p.profile, p.resources, cap=p.parallelism)
    lines.append(f"estimated cost: ~{fmt_s(est)} per full trial; {left} to run -> ~{fmt_s(est * left / k)} "
                 f"wall at {k} at once (pruning shortens it)")
    return "\n".join(lines)
