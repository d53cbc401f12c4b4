"""`ism ablate`: an ablation spec as Ray Tune trials tracked in MLflow; rerunning the same command resumes a sweep."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from typing import Mapping

from ism import budget as B
from ism.ablate import Plan, finished_trials, load_spec, plan, reused_training
from ism.commands import env
from ism.commands.listing import fmt_resources, fmt_s, fmt_v, ui_hint
from ism.profiles import DEFAULT_PROFILE, PROFILES, concurrency, estimate_parts


def csv(kind):
    """An argparse type: 'a,b' -> [kind(a), kind(b)]."""
    return lambda s: [kind(x) for x in s.split(",") if x.strip()]


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


def apply_budget(p: Plan, budget: B.Budget, looks: list[B.Look], rule: B.Rule, replan, where: str) -> tuple[Plan, str]:
    """The plan cut to the seeds every config can have within the budget (whole looks of the rule), and the note that
    says so (recorded on the parent run, shown in the report); a ConfigError when not even the first look fits.
    replan(seeds) -> Plan: the same spec, profile and variants with those seeds."""
    n = B.affordable([lk for lk in looks if lk.seeds <= len(p.seeds)], budget)
    if n == 0:
        raise B.ConfigError(f"{where}: {budget.describe()} does not cover the first {rule.looks[0]} seeds of every "
                            f"config (~{looks[0].total_wall_s / 60:.0f} min wall, {looks[0].total_trials} trials)")
    keep = sorted(p.seeds)[:looks[n - 1].seeds]
    left = sorted(set(p.seeds) - set(keep))
    note = (f"budget {budget.describe()}: seeds {keep} of {list(p.seeds)} for every config ("
            f"~{looks[n - 1].total_wall_s / 60:.0f} min wall estimated); left undone: "
            + (f"seeds {left}" if left else "nothing"))
    if left:
        p = dataclasses.replace(replan(keep), max_failures=p.max_failures)
    return dataclasses.replace(p, notes=p.notes + (note,)), note


def main(argv: list[str] | None = None) -> int:
    """`ism ablate`; the exit status (ConfigErrors reach ism.commands.main: status 2)."""
    ap = argparse.ArgumentParser(prog="ism ablate", description="Run an ablation spec as Ray Tune trials tracked in MLflow. "
                                 "Rerunning the same command resumes an interrupted sweep.")
    ap.add_argument("spec", help="ablation spec, e.g. ablations/components.yaml")
    ap.add_argument("--profile", default=env.profile(),
                    help=f"one of {', '.join(PROFILES)} (default {DEFAULT_PROFILE}; env PROFILE)")
    ap.add_argument("--dry-run", action="store_true", help="list the trials, their config diff, resources and cost; run nothing")
    ap.add_argument("--variants", type=csv(str), default=None, help="comma-separated subset of variants")
    ap.add_argument("--seeds", type=csv(int), default=None, help="comma-separated seeds (overrides the spec)")
    ap.add_argument("--storage", default=None, help="root of trial run dirs and Ray results (default runs/ablate; env ISM_STORAGE)")
    ap.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite under mlruns/)")
    ap.add_argument("--max-failures", type=int, default=None, help="retries per trial (default from the spec)")
    ap.add_argument("--budget", default=None, help=f"what the sweep may spend: {B.FORMS} (default: the spec's "
                    "budget: key; none = every listed seed); the dry run shows what it buys")
    args = ap.parse_args(argv)
    spec = load_spec(args.spec)
    budget_text = args.budget or spec.budget_for(args.profile)
    budget = B.parse(budget_text, "--budget" if args.budget else f"{args.spec}: budget") if budget_text else None
    p = plan(spec, args.profile, args.variants, args.seeds)
    if args.max_failures is not None:
        p = dataclasses.replace(p, max_failures=args.max_failures)
    storage = env.storage(args.storage, "runs/ablate")
    done, reused = finished_trials(p, storage), reused_training(p, storage)
    rule = B.Rule()
    looks = B.looks(p.trials, p.profile, p.resources, rule, done, reused)
    if args.dry_run:
        print(describe_plan(p, done, reused))
        if budget is not None:
            print("\n" + B.describe(looks, budget, rule, len(p.seeds)))
        return 0
    if budget is not None:
        p, note = apply_budget(p, budget, looks, rule, lambda seeds: plan(spec, args.profile, args.variants, seeds),
                               "--budget" if args.budget else f"{args.spec}: budget")
        print(note, file=sys.stderr)
    from ism.sweep import run_sweep  # Ray, MLflow and the trial code load only when a sweep runs
    uri = env.tracking_uri(args.tracking_uri)
    rc = run_sweep(p, storage, uri, env.eval_cache_root(), crash=env.crash_target())
    if rc != 130:  # interrupted: run_sweep said to rerun
        from ism.report import default_out
        print(f"next:\n  report:  ism report {args.spec} --profile {p.profile}   "
              f"(-> {default_out(p.spec.name, p.profile)}/report.md and .pdf)\n"
              + ui_hint(uri, f"ism/{p.spec.name}", env.ui_port()), file=sys.stderr)
    return rc
