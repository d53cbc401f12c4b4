"""`ism ablate`: an ablation spec as Ray Tune trials tracked in MLflow; rerunning the same command resumes a sweep."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shlex
import sys
from pathlib import Path

from typing import Mapping

from ism.ablation import budget as B
from ism.system import store
from ism.ablation.plan import Plan, finished_trials, load_spec, plan, reused_training
from ism.commands import env, options
from ism.commands.listing import flags, fmt_resources, fmt_s, fmt_v, ui_hint
from ism.conf.profiles import DEFAULT_PROFILE, PROFILES, concurrency, cost_warning, estimate_parts
from ism.ablation.progress import measured_scale
from ism.errors import ConfigError
from ism.conf.specs import SpecKindError


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


@dataclasses.dataclass
class Job:
    """One spec of an `ism ablate` run, validated before any work: its plan, and its tuning state when it tunes."""
    path: str
    spec: object
    plan: Plan
    parts: list = dataclasses.field(default_factory=list)   # one TunePart per record the spec's tuning reads

    @property
    def tuning_first(self) -> bool:
        return any(p.stale for p in self.parts)


@dataclasses.dataclass
class TunePart:
    """One record's share of a spec's tuning: the arms it borrows from another spec's record, or its own arms."""
    tune: object
    arms: list
    record_path: Path

    @property
    def stale(self) -> list[str]:
        return [a.arm.variant for a in self.arms if not a.current]


def prepare(path: str, args: argparse.Namespace, storage: Path, before: tuple[str, ...] = ()) -> Job:
    """Load, tune-check and plan one spec (ConfigErrors here come before any work). `before`: the specs this
    invocation runs first; a record borrowed from one of them may still be tuned by it (checked again at its turn)."""
    try:
        spec = load_spec(path)
    except SpecKindError as e:  # a study spec: the hint keeps what ablate and study share
        raise e.with_flags(flags(profile=args.profile, storage=args.storage, tracking_uri=args.tracking_uri)) from None
    tune, parts, tuning = spec.tune(args.profile), [], {}
    if tune:
        from ism.ablation import tuning as TU
        from ism.study import tune as ST  # Optuna loads only for specs that tune
        from ism.study.storage import quiet_optuna
        quiet_optuna(args.verbose)
        for t in tune.parts():
            record_path = TU.record_path(spec.path, t.record or spec.name, args.profile, storage, DEFAULT_PROFILE)
            part = TunePart(t, ST.status(spec, t, args.profile, TU.read_record(record_path), args.retune), record_path)
            parts.append(part)
            lender = Path(spec.path).parent / f"{t.record}.yaml"
            if t.record and part.stale and any(Path(b).resolve() == lender.resolve() for b in before):
                print(f"ism ablate: {path}: arm(s) {', '.join(part.stale)} wait for {lender} to tune them first in this "
                      f"run (record {record_path})", file=sys.stderr)
            elif t.record and part.stale:  # a borrowed record is only read: its own spec tunes it
                raise ConfigError(f"{path}: tune.record '{t.record}': arm(s) {', '.join(part.stale)} not current in "
                                  f"{record_path} (the arm must be the same study there: base config, grid, budget, "
                                  f"objective, seed); run `ism ablate {lender} --tune-only --profile {args.profile}` "
                                  "first, or mark the arm `own: true` to tune it in this spec")
            tuning.update({a.arm.variant: a.entry for a in part.arms if a.current})
    p = plan(spec, args.profile, args.variants, args.seeds, tuning)
    if args.max_failures is not None:
        if args.max_failures < 0:
            raise ConfigError(f"--max-failures: expected an integer >= 0 (retries per trial), got {args.max_failures}")
        p = dataclasses.replace(p, max_failures=args.max_failures)
    return Job(path, spec, p, parts)


def _parser() -> argparse.ArgumentParser:
    """`ism ablate`'s arguments."""
    ap = argparse.ArgumentParser(prog="ism ablate", description="Run ablation specs as Ray Tune trials tracked in MLflow. "
                                 "Rerunning the same command resumes. With a budget, seeds are added adaptively "
                                 "and one budget covers every spec given, in order.")
    ap.add_argument("spec", nargs="*", help="ablation spec(s), e.g. ablations/components.yaml (or --vary instead); "
                    "several specs run in the given order under one budget and one Ray session")
    options.profile(ap)
    ap.add_argument("--dry-run", action="store_true", help="list the trials, their config diff, resources and cost; run nothing")
    ap.add_argument("--variants", type=csv(str), default=None, help="comma-separated subset of variants")
    ap.add_argument("--seeds", type=csv(int), default=None, help="comma-separated seeds (overrides the spec)")
    options.storage(ap, "runs/ablate", "root of trial run dirs and Ray results")
    options.tracking_uri(ap)
    ap.add_argument("--max-failures", type=int, default=None, help="retries per trial (default from the spec)")
    ap.add_argument("--vary", action="append", metavar="KEY=A,B,...", help="inline sweep instead of a spec: one variant "
                    "per value (several --vary are crossed); the generated spec is written beside its report, "
                    "reports/<name>[-<profile>]/spec.yaml, to rerun it")
    ap.add_argument("--base", default=None, help="inline sweep: the preset the --vary values change (default the "
                    "profile's preset)")
    ap.add_argument("--name", default=None, help="inline sweep: its name (default [<base>-]vary-<keys>)")
    ap.add_argument("-v", "--verbose", action="store_true", help="keep the log lines of MLflow, Ray and Optuna")
    ap.add_argument("--budget", default=None, help=f"what the run may spend: {B.FORMS} (default: the spec's "
                    "budget: key; none = every listed seed). With a budget, seeds come in rounds at the adaptive rule's "
                    "looks, to the comparisons still undecided; the dry run shows what it buys")
    ap.add_argument("--tune-only", action="store_true", help="run the spec's tuning (missing or stale arms) and write "
                    "its record, then stop before the sweep")
    ap.add_argument("--retune", action="store_true", help="re-derive every arm's tuned values from its tuning study "
                    "(a spec's tune: block), even where the record is current")
    return ap


def _dry_run(jobs: list[Job], storage: Path, budget, rule, looks, first_look_pays) -> int:
    """Print each job's tuning state, trials, cost and (with a budget) what the budget buys; run nothing."""
    for j in jobs:
        for part in j.parts:
            from ism.study import tune as ST
            print(ST.describe(part.tune, part.arms, part.record_path) + "\n")
        done, reused = finished_trials(j.plan, storage), reused_training(j.plan, storage)
        print(describe_plan(j.plan, done, reused, measured_scale(storage, j.plan.profile)))
        if budget is not None:
            print("\n" + B.describe(looks(j), budget, rule, len(j.plan.seeds),
                                    partial=len(jobs) > 1 or first_look_pays(j)) + "\n")
    if budget is not None and len(jobs) > 1:
        print(f"one budget for the {len(jobs)} specs, spent in the order given: {budget.describe()}; a spec it "
              "does not reach is reported as not run")
    return 0


def _next_steps(jobs: list[Job], args, uri: str) -> None:
    """The report command of each spec (with the flags given) and the MLflow UI link, on stderr."""
    from ism.report import default_out
    for j in jobs:
        p = j.plan
        print(f"next:\n  report:  ism report {j.path}{flags(profile=p.profile, tracking_uri=args.tracking_uri)}   "
              f"(-> {default_out(p.spec.name, p.profile)}/report.md and .pdf)", file=sys.stderr)
    print(ui_hint(uri, f"ism/{jobs[0].plan.spec.name}", env.ui_port(), args.tracking_uri), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """`ism ablate`; the exit status (ConfigErrors reach ism.commands.main: status 2)."""
    args = _parser().parse_args(argv)
    env.quiet_libraries(args.verbose)
    if args.vary:
        args.spec = [str(inline_spec(args, argv or []))]
    elif args.base or args.name or not args.spec:
        raise ConfigError("give an ablation spec (e.g. ablations/components.yaml), or an inline sweep: --vary KEY=A,B "
                          "[--vary KEY2=C,D] [--base PRESET] [--seeds 0,1] [--name NAME]")
    storage = env.storage(args.storage, "runs/ablate")
    env.ui_port()  # a bad ISM_UI_PORT is an error now, not after the sweep
    jobs = [prepare(path, args, storage, tuple(args.spec[:i])) for i, path in enumerate(args.spec)]
    first = jobs[0]
    budget_text = args.budget or (first.spec.budget_for(args.profile) if len(jobs) == 1 else None)
    where = "--budget" if args.budget else f"{first.path}: budget"
    budget = B.parse(budget_text, where) if budget_text else None
    rule = B.Rule()
    scale = (measured_scale(storage, args.profile) or (1.0, 0))[0]

    def looks(j: Job, trials=None) -> list[B.Look]:
        p = j.plan
        return B.looks(p.trials if trials is None else trials, p.profile, p.resources, rule, finished_trials(p, storage),
                       reused_training(p, storage))

    def first_look_pays(j: Job) -> bool:
        """The budget covers the first look of what runs first: the headline pair's, else every config's."""
        from ism.ablation.adaptive import headline_trials
        trials, _ = headline_trials(j.plan)
        return B.affordable([lk for lk in looks(j, trials) if lk.seeds <= len(j.plan.seeds)], budget) > 0

    if args.dry_run:
        return _dry_run(jobs, storage, budget, rule, looks, first_look_pays)
    if budget is not None and len(jobs) == 1 and not first_look_pays(first):
        from ism.ablation.adaptive import headline_trials
        trials, who = headline_trials(first.plan)  # one spec: a budget that buys nothing fails before any work
        lk = looks(first, trials)[0]
        raise ConfigError(f"{where}: {budget.describe()} does not cover the first {rule.looks[0]} seeds of {who} "
                          f"(~{lk.total_wall_s / 60:.0f} min wall, {lk.total_trials} trials)")
    store.check_writable(storage, "--storage (ISM_STORAGE)")
    store.check_writable(env.eval_cache_root(), "ISM_CACHE")
    if args.tune_only:
        return _tune_only(jobs, args, storage)
    from ism.ablation import ray_adapter
    from ism.ablation.adaptive import Clock
    uri = env.tracking_uri(args.tracking_uri)
    clock = Clock(budget)
    work = budget is not None or any(j.tuning_first or finished_trials(j.plan, storage) != {t.run_id for t in j.plan.trials}
                                     for j in jobs)
    status = 0
    with contextlib.ExitStack() as stack:
        if work:  # one Ray session for every spec, round and tuning study: each start costs tens of seconds here
            stack.enter_context(ray_adapter.ray_session(num_cpus=PROFILES[args.profile].cpus or None))
        for j in jobs:
            rc = _run_job(j, args, storage, uri, clock, rule, scale)
            status = rc if rc == 130 else max(status, rc)
            if rc == 130:
                break
    if status != 130:
        _next_steps(jobs, args, uri)
    return status


def _tune_only(jobs: list[Job], args: argparse.Namespace, storage: Path) -> int:
    """--tune-only: run each spec's missing or stale tuning arms and write the records; no sweep."""
    status = 0
    for j in jobs:
        paths = ", ".join(str(p.record_path) for p in j.parts)
        if not j.tuning_first:
            print("ism ablate: " + (f"every arm's record is current ({paths})" if j.parts else
                                    f"{j.path} has no tune: block"), file=sys.stderr)
            continue
        from ism.ablation import ray_adapter
        with ray_adapter.ray_session(num_cpus=PROFILES[args.profile].cpus or None):
            rc = _tune(j, args, storage, env.tracking_uri(args.tracking_uri))
        if rc != 0:
            return rc
        print(f"ism ablate: tuned values recorded in {paths}", file=sys.stderr)
    return status


def _tune(j: Job, args: argparse.Namespace, storage: Path, uri: str) -> int:
    """Tune the spec's missing or stale arms (in the running Ray session) and re-plan with the record."""
    from ism.study import tune as ST
    from ism.study.storage import storage_url
    root = storage / "tune"
    spec = j.spec
    tuning = {}
    for part in j.parts:
        if part.tune.record:  # borrowed: its own spec ran first in this invocation and must have tuned these arms
            from ism.ablation import tuning as TU
            record = TU.read_record(part.record_path)
            stale = [a.arm.variant for a in ST.status(spec, part.tune, args.profile, record) if not a.current]
            if stale:
                print(f"ism ablate: {j.path}: tune.record '{part.tune.record}': arm(s) {', '.join(stale)} still not "
                      f"current in {part.record_path} after its spec ran; its tuning must finish first", file=sys.stderr)
                return 2
        else:
            rc, record = ST.ensure_tuned(spec, part.tune, args.profile, part.record_path,
                                         storage_url(env.optuna_url(None), root), root, uri, env.eval_cache_root(),
                                         args.retune, say=lambda m: print(f"[{spec.name}/{args.profile}] {m}",
                                                                          file=sys.stderr))
            if rc != 0:
                print(f"ism ablate: tuning stopped (status {rc}); rerun the same command to resume it", file=sys.stderr)
                return rc
        tuning.update({a.variant: record[a.variant] for a in part.tune.arms if a.variant in record})
    p = plan(spec, args.profile, args.variants, args.seeds, tuning)
    if args.max_failures is not None:
        p = dataclasses.replace(p, max_failures=args.max_failures)
    j.plan = p
    return 0


def _run_job(j: Job, args: argparse.Namespace, storage: Path, uri: str, clock, rule: B.Rule, scale: float) -> int:
    """One spec: its tuning when missing or stale (not charged to the budget: it runs once per profile), then the sweep,
    adaptive under a budget (ism.ablation.adaptive), every listed seed without one."""
    from ism.ablation import adaptive
    from ism.ablation.driver import record_plan, run_sweep
    name = f"[{j.plan.spec.name}/{j.plan.profile}]"
    if j.tuning_first and clock.budget is not None and clock.left() <= 0:
        print(f"{name} tuning skipped: the budget is spent (the spec is reported as not run)", file=sys.stderr)
    elif j.tuning_first:
        rc = _tune(j, args, storage, uri)
        if rc != 0:
            return rc
    elif j.parts:
        print(f"{name} tuning: every arm reuses its recorded values "
              f"({', '.join(str(p.record_path) for p in j.parts)})", file=sys.stderr)
    sweep = lambda p: run_sweep(p, storage, uri, env.eval_cache_root(), crash=env.crash_target())  # noqa: E731
    if clock.budget is None:
        return sweep(j.plan)
    print(f"{name} adaptive seeds under {clock.budget.describe()} ({_left(clock)} left): {rule.describe()}",
          file=sys.stderr)
    rescale = lambda: (measured_scale(storage, j.plan.profile) or (scale, 0))[0]  # noqa: E731  (trials just timed)
    out = adaptive.run(j.plan, storage, clock, sweep, rule, rescale, say=lambda m: print(f"{name} {m}", file=sys.stderr),
                       record=lambda p: record_plan(p, storage, uri),
                       calibrated=lambda: measured_scale(storage, j.plan.profile) is not None)
    print(f"{name} adaptive seeds stopped: {out.stopped}; {len(out.rounds)} round(s)", file=sys.stderr)
    return out.rc


def _left(clock) -> str:
    left = clock.left()
    if clock.budget.kind == "trials":
        return f"{max(0, left):.0f} trials"
    return f"{max(0.0, left) / 60:.0f} min" + (" CPU" if clock.budget.kind == "cpu_s" else "")
