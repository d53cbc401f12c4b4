"""`ism ablate`: an ablation spec as Ray Tune trials tracked in MLflow; rerunning the same command resumes a sweep."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from typing import Mapping

from ism import store
from ism.ablate import Plan, finished_trials, load_spec, plan, reused_training
from ism.commands import env
from ism.commands.listing import fmt_resources, fmt_s, fmt_v, ui_hint
from ism.errors import ConfigError
from ism.profiles import DEFAULT_PROFILE, PROFILES, concurrency, cost_warning, estimate_parts


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
    warn = cost_warning(total * share / 3600, unit)
    return "\n".join(lines + ([warn] if warn else []))


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
    args = ap.parse_args(argv)
    p = plan(load_spec(args.spec), args.profile, args.variants, args.seeds)
    if args.max_failures is not None:
        if args.max_failures < 0:
            raise ConfigError(f"--max-failures: expected an integer >= 0 (retries per trial), got {args.max_failures}")
        p = dataclasses.replace(p, max_failures=args.max_failures)
    storage = env.storage(args.storage, "runs/ablate")
    env.ui_port()  # a bad ISM_UI_PORT is an error now, not after the sweep
    if args.dry_run:
        print(describe_plan(p, finished_trials(p, storage), reused_training(p, storage)))
        return 0
    store.check_writable(storage, "--storage (ISM_STORAGE)")
    store.check_writable(env.eval_cache_root(), "ISM_CACHE")
    from ism.sweep import run_sweep  # Ray, MLflow and the trial code load only when a sweep runs
    uri = env.tracking_uri(args.tracking_uri)
    rc = run_sweep(p, storage, uri, env.eval_cache_root(), crash=env.crash_target())
    if rc != 130:  # interrupted: run_sweep said to rerun
        from ism.report import default_out
        print(f"next:\n  report:  ism report {args.spec} --profile {p.profile}   "
              f"(-> {default_out(p.spec.name, p.profile)}/report.md and .pdf)\n"
              + ui_hint(uri, f"ism/{p.spec.name}", env.ui_port()), file=sys.stderr)
    return rc
