"""`ism ablate`: an ablation spec as Ray Tune trials tracked in MLflow; rerunning the same command resumes a sweep."""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

from typing import Mapping

from ism import budget as B
from ism import store
from ism.ablate import Plan, finished_trials, load_spec, plan, reused_training
from ism.commands import env
from ism.commands.listing import flags, fmt_resources, fmt_s, fmt_v, ui_hint
from ism.profiles import DEFAULT_PROFILE, PROFILES, concurrency, cost_warning, estimate_parts, measured_scale
from ism.errors import ConfigError
from ism.specs import SpecKindError


def csv(kind):
    """An argparse type: 'a,b' -> [kind(a), kind(b)]."""
    return lambda s: [kind(x) for x in s.split(",") if x.strip()]


def describe_plan(p: Plan, done: set[str] = frozenset(), reused: Mapping[str, str] | None = None,
                  measured: tuple[float, int] | None = None) -> str:
    """`ism ablate --dry-run`: trials grouped by config, their diff to the base, resources and estimated cost;
    measured: (measured / estimated seconds, trials) of the profile's trials timed on this machine, which scales it."""
    n_cfg = len({t.variants for t in p.trials})
    lines = [f"spec {p.spec.name} ({p.spec.path}) - profile {p.profile} (preset {p.preset}) - sweep {p.sweep_id}",
             f"{len(p.variants)} variants -> {n_cfg} distinct configs x {len(p.seeds)} seeds {list(p.seeds)} = "
             f"{len(p.trials)} trials; resources per trial {fmt_resources(p.resources)}; max_failures {p.max_failures}"]
    lines += [f"  note: {n}" for n in p.notes]
    total = 0.0
    seen: set[tuple[str, ...]] = set()
    reused = reused or {}
    parts = {t.run_id: estimate_parts(t.cfg, p.profile) for t in p.trials}
    scale = measured[0] if measured else 1.0
    cost = {rid: scale * (sum(pt[1:]) if rid in reused else sum(pt)) for rid, pt in parts.items()}  # adopted: no training
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
    start = PROFILES[p.profile].sweep_overhead_s if pending else 0.0  # Ray, MLflow and imports, once per sweep
    lines.append(f"\nestimated cost: {len(p.trials)} trials, {total * share / 3600:.2f} {unit}-hours in all; "
                 f"{len(p.trials) - len(done & {t.run_id for t in p.trials})} pending, ~{fmt_s(pending / k + start)} "
                 f"wall at {k} trial(s) at once" + ("" if unit == "CPU" else " per GPU")
                 + (f", ~{fmt_s(start)} of it to start Ray and MLflow" if start else ""))
    lines.append(f"  (the cost model's rates x {scale:.2f}, measured on {measured[1]} {p.profile} trial(s) run on this "
                 "machine; timings.json in the storage)" if measured else
                 f"  (the cost model's rates for {p.profile}; not yet measured on this machine: a sweep's finished "
                 "trials calibrate it)")
    warn = cost_warning(total * share / 3600, unit)
    return "\n".join(lines + ([warn] if warn else []))


def inline_spec(args: argparse.Namespace, argv: list[str]) -> Path:
    """The spec of --vary/--base/--seeds, written beside its report and checked as any spec (ism.commands.vary)."""
    from ism.commands import vary
    from ism.report import default_out
    if args.spec:
        raise ConfigError(f"give a spec ({args.spec}) or --vary, not both")
    command = "ism ablate " + shlex.join(a for a in argv if a != "--dry-run")
    name, text = vary.spec_text(args.vary, args.base, args.seeds, args.name, command)
    path = default_out(name, args.profile) / "spec.yaml"
    return vary.write_spec(path, text, lambda p: plan(load_spec(p), args.profile, args.variants, None))


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
    ap.add_argument("spec", nargs="?", help="ablation spec, e.g. ablations/components.yaml (or --vary instead)")
    ap.add_argument("--profile", default=env.profile(),
                    help=f"one of {', '.join(PROFILES)} (default {DEFAULT_PROFILE}; env PROFILE)")
    ap.add_argument("--dry-run", action="store_true", help="list the trials, their config diff, resources and cost; run nothing")
    ap.add_argument("--variants", type=csv(str), default=None, help="comma-separated subset of variants")
    ap.add_argument("--seeds", type=csv(int), default=None, help="comma-separated seeds (overrides the spec)")
    ap.add_argument("--storage", default=None, help="root of trial run dirs and Ray results (default runs/ablate; env ISM_STORAGE)")
    ap.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite under mlruns/)")
    ap.add_argument("--max-failures", type=int, default=None, help="retries per trial (default from the spec)")
    ap.add_argument("--vary", action="append", metavar="KEY=A,B,...", help="inline sweep instead of a spec: one variant "
                    "per value (several --vary are crossed); the generated spec is written beside its report, "
                    "reports/<name>[-<profile>]/spec.yaml, to rerun it")
    ap.add_argument("--base", default=None, help="inline sweep: the preset the --vary values change (default the "
                    "profile's preset)")
    ap.add_argument("--name", default=None, help="inline sweep: its name (default [<base>-]vary-<keys>)")
    ap.add_argument("-v", "--verbose", action="store_true", help="keep the log lines of MLflow, Ray and Optuna")
    ap.add_argument("--budget", default=None, help=f"what the sweep may spend: {B.FORMS} (default: the spec's "
                    "budget: key; none = every listed seed); the dry run shows what it buys")
    ap.add_argument("--tune-only", action="store_true", help="run the spec's tuning (missing or stale arms) and write "
                    "its record, then stop before the sweep")
    ap.add_argument("--retune", action="store_true", help="re-derive every arm's tuned values from its tuning study "
                    "(a spec's tune: block), even where the record is current")
    args = ap.parse_args(argv)
    env.quiet_libraries(args.verbose)
    if args.vary:
        args.spec = str(inline_spec(args, argv or []))
    elif args.base or args.name or not args.spec:
        raise ConfigError("give an ablation spec (e.g. ablations/components.yaml), or an inline sweep: --vary KEY=A,B "
                          "[--vary KEY2=C,D] [--base PRESET] [--seeds 0,1] [--name NAME]")
    try:
        spec = load_spec(args.spec)
    except SpecKindError as e:  # a study spec: the hint keeps what ablate and study share
        raise e.with_flags(flags(profile=args.profile, storage=args.storage, tracking_uri=args.tracking_uri)) from None
    storage = env.storage(args.storage, "runs/ablate")
    env.ui_port()  # a bad ISM_UI_PORT is an error now, not after the sweep
    tune, tuning = spec.tune(args.profile), {}
    if tune:
        from ism import tuning as TU
        from ism.profiles import DEFAULT_PROFILE as DEFAULT
        from ism.study import tune as ST  # Optuna loads only for specs that tune
        from ism.study.storage import storage_url
        record_path = TU.record_path(spec.path, spec.name, args.profile, storage, DEFAULT)
        arms = ST.status(spec, tune, args.profile, TU.read_record(record_path), args.retune)
        tuning = {a.arm.variant: a.entry for a in arms if a.current}
    budget_text = args.budget or spec.budget_for(args.profile)
    budget = B.parse(budget_text, "--budget" if args.budget else f"{args.spec}: budget") if budget_text else None
    p = plan(spec, args.profile, args.variants, args.seeds, tuning)
    if args.max_failures is not None:
        if args.max_failures < 0:
            raise ConfigError(f"--max-failures: expected an integer >= 0 (retries per trial), got {args.max_failures}")
        p = dataclasses.replace(p, max_failures=args.max_failures)
    rule = B.Rule()

    def budgeted(p: Plan, record, say: bool = True) -> Plan:
        """The plan cut to what the budget buys (tuning trials are not charged: they run once per profile)."""
        if budget is None:
            return p
        looks = B.looks(p.trials, p.profile, p.resources, rule, finished_trials(p, storage), reused_training(p, storage))
        p, note = apply_budget(p, budget, looks, rule, lambda seeds: plan(spec, args.profile, args.variants, seeds, record),
                               "--budget" if args.budget else f"{args.spec}: budget")
        if say:
            print(note, file=sys.stderr)
        return p

    if args.dry_run:
        if tune:
            print(ST.describe(tune, arms, record_path) + "\n")
        done, reused = finished_trials(p, storage), reused_training(p, storage)
        print(describe_plan(p, done, reused, measured_scale(storage, p.profile)))
        if budget is not None:
            looks = B.looks(p.trials, p.profile, p.resources, rule, done, reused)
            print("\n" + B.describe(looks, budget, rule, len(p.seeds)))
        return 0
    tuning_first = bool(tune) and not all(a.current for a in arms)
    budgeted(p, tuning, say=False)  # a budget that buys nothing fails before any work (and before the tuning)
    if not tuning_first:
        p = budgeted(p, tuning)
    store.check_writable(storage, "--storage (ISM_STORAGE)")
    store.check_writable(env.eval_cache_root(), "ISM_CACHE")
    from ism.sweep import run_sweep  # Ray, MLflow and the trial code load only when a sweep runs
    uri = env.tracking_uri(args.tracking_uri)
    if tune and not tuning_first:
        print(f"[{spec.name}/{args.profile}] tuning: every arm reuses its recorded values ({record_path})",
              file=sys.stderr)
    if args.tune_only and not tuning_first:
        print("ism ablate: " + (f"every arm's record is current ({record_path})" if tune else
                                f"{args.spec} has no tune: block"), file=sys.stderr)
        return 0
    if tuning_first:
        from ism import ray_adapter
        root = storage / "tune"
        # One Ray session for the arms' studies and the sweep: each start costs tens of seconds on 2 cores.
        with ray_adapter.ray_session(num_cpus=PROFILES[p.profile].cpus or None):
            rc, record = ST.ensure_tuned(spec, tune, args.profile, record_path, storage_url(env.optuna_url(None), root),
                                         root, uri, env.eval_cache_root(), args.retune,
                                         say=lambda m: print(f"[{spec.name}/{args.profile}] {m}", file=sys.stderr))
            if rc != 0:
                print(f"ism ablate: tuning stopped (status {rc}); rerun the same command to resume it", file=sys.stderr)
                return rc
            if args.tune_only:
                print(f"ism ablate: tuned values recorded in {record_path}", file=sys.stderr)
                return 0
            p = plan(spec, args.profile, args.variants, args.seeds, record)
            if args.max_failures is not None:
                p = dataclasses.replace(p, max_failures=args.max_failures)
            rc = run_sweep(budgeted(p, record), storage, uri, env.eval_cache_root(), crash=env.crash_target())
    else:
        rc = run_sweep(p, storage, uri, env.eval_cache_root(), crash=env.crash_target())
    if rc != 130:  # interrupted: run_sweep said to rerun
        from ism.report import default_out
        print(f"next:\n  report:  ism report {args.spec}{flags(profile=p.profile, tracking_uri=args.tracking_uri)}   "
              f"(-> {default_out(p.spec.name, p.profile)}/report.md and .pdf)\n"
              + ui_hint(uri, f"ism/{p.spec.name}", env.ui_port(), args.tracking_uri), file=sys.stderr)
    return rc
