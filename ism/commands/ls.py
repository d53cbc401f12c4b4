"""`ism ls`: the sweeps and studies in the store, with their state and trial counts."""
from __future__ import annotations

import argparse
import time

from ism.commands import env, options
from ism.system.dburl import masked


def _counts(by: dict[str, int], order: tuple[str, ...]) -> str:
    """'39 finished, 1 failed' in a fixed order, zero counts left out (all of them: 'no trials')."""
    parts = [f"{by[k]} {k.lower()}" for k in order if by.get(k)]
    parts += [f"{n} {k.lower()}" for k, n in sorted(by.items()) if k not in order and n]
    return ", ".join(parts) or "no trials"


def sweep_lines(uri: str) -> list[str]:
    """One line per sweep parent run in the MLflow store."""
    from ism import tracking  # mlflow loads only here
    rows = tracking.sweeps_overview(uri)
    lines = [f"Sweeps in {masked(uri)}:" if rows else f"No sweeps in {masked(uri)} (ism ablate SPEC runs one)."]
    for r in rows:
        total = sum(r["children"].values())
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["start_ms"] / 1000)) if r["start_ms"] else "?"
        lines.append(f"  {r['spec']:<16} {r['profile']:<12} {r['status']:<9} {total:>3} trials: "
                     f"{_counts(r['children'], ('FINISHED', 'RUNNING', 'SCHEDULED', 'FAILED', 'KILLED'))}"
                     f"  (started {when}, sweep {r['sweep_id']}, run {r['run_id'][:8]})")
    return lines


def study_lines(url: str) -> list[str]:
    """One line per Optuna study in the storage."""
    from ism.study.storage import overview  # optuna loads only here
    rows = overview(url)
    lines = [f"Studies in {masked(url)}:" if rows else f"No studies in {masked(url)} (ism study SPEC runs one)."]
    for r in rows:
        best = f"; best {r['best'][0]:.5g} (#{r['best'][1]}, {r['direction']})" if r["best"] else ""
        lines.append(f"  {r['name']:<28} {sum(r['trials'].values()):>3} trials: "
                     f"{_counts(r['trials'], ('COMPLETE', 'PRUNED', 'FAIL', 'RUNNING', 'WAITING'))}{best}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """`ism ls`; the exit status (ConfigErrors reach ism.commands.main: status 2)."""
    ap = argparse.ArgumentParser(prog="ism ls", description="The sweeps (MLflow) and studies (Optuna) in the store, "
                                 "with their state and trial counts.")
    options.tracking_uri(ap)
    options.storage(ap, "runs/study", "root of the study storage")
    ap.add_argument("--optuna-storage", default=None, help="Optuna RDB URL (default $OPTUNA_STORAGE or sqlite "
                    "<storage>/optuna.db)")
    ap.add_argument("-v", "--verbose", action="store_true", help="keep the log lines of MLflow, Ray and Optuna")
    args = ap.parse_args(argv)
    env.quiet_libraries(args.verbose)
    from ism.commands.study import DEFAULT_STORAGE
    from ism.study.storage import storage_url  # optuna loads only once the command runs
    url = storage_url(env.optuna_url(args.optuna_storage), env.storage(args.storage, DEFAULT_STORAGE))
    print("\n".join(sweep_lines(env.tracking_uri(args.tracking_uri)) + [""] + study_lines(url)))
    return 0
