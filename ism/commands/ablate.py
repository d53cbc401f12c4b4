"""`ism ablate`: an ablation spec as Ray Tune trials tracked in MLflow; rerunning the same command resumes a sweep."""
from __future__ import annotations

import argparse
import dataclasses

from ism.ablate import finished_trials, load_spec, plan, reused_training
from ism.commands import env
from ism.commands.listing import describe_plan
from ism.profiles import DEFAULT_PROFILE, PROFILES


def csv(kind):
    """An argparse type: 'a,b' -> [kind(a), kind(b)]."""
    return lambda s: [kind(x) for x in s.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
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
        p = dataclasses.replace(p, max_failures=args.max_failures)
    storage = env.storage(args.storage, "runs/ablate")
    if args.dry_run:
        print(describe_plan(p, finished_trials(p, storage), reused_training(p, storage)))
        return 0
    from ism.sweep import run_sweep  # Ray, MLflow and the trial code load only when a sweep runs
    return run_sweep(p, storage, env.tracking_uri(args.tracking_uri), env.eval_cache_root(), crash=env.crash_target())
