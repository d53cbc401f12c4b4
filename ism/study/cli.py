"""`ism study` command line: run a study, or --dry-run (the plan and the study's state) and --export-best."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

from ism import ablate
from ism.config import NON_IDENTITY_KEYS, ConfigError, diff, from_dict, preset_delta, run_id, unflatten
from ism.study.driver import run_study
from ism.study.plan import StudyPlan, plan
from ism.study.spec import load_spec
from ism.study.storage import FINISHED, counts, open_study, storage_root, storage_url


def export_best(p: StudyPlan, url: str, out: Path | None = None, root: Path | None = None) -> Path:
    """Write the best trial as a delta config (preset + changed keys) that config.resolve and ablation bases load."""
    study = open_study(p, url, create=False)
    try:
        best = study.best_trial
    except ValueError:
        raise ConfigError(f"study '{p.study_name}' has no completed trial yet; run it first") from None
    cfg = p.portable_config(best.params)
    preset_cfg = from_dict(preset_delta(p.preset))
    delta = unflatten({k: list(b) if isinstance(b, tuple) else b for k, (_, b) in diff(preset_cfg, cfg).items()})
    out = out or (root or storage_root()) / "best" / f"{p.spec.name}-{p.profile}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    params = p.decode(best.params)
    head = [f"# Best trial #{best.number} of study '{p.study_name}' ({p.spec.path}): {p.objective.describe()} = {best.value:.6g}",
            f"# tuned: {json.dumps(params)}",
            "# Load: ism train -c THIS_FILE (or config.resolve(files=[THIS_FILE])); as an ablation base:",
            f"#   base: {{preset: {p.preset}, overrides: <the sections below>}}"]
    out.write_text("\n".join(head) + "\n" + yaml.safe_dump({"preset": p.preset, **delta}, sort_keys=False))
    return out


# ----------------------------------------------------------------------------------------------- listing
def describe_plan(p: StudyPlan, url: str) -> str:
    """The --dry-run listing: base, space, objective, budget, pruning, the study's state and an estimated cost."""
    preset_cfg = from_dict(preset_delta(p.preset))
    lines = [f"study {p.study_name} ({p.spec.path}) - preset {p.preset} - storage {url}"]
    if p.spec.description:
        lines.append(f"  {p.spec.description}")
    d = {k: v for k, v in diff(preset_cfg, p.base).items() if k not in NON_IDENTITY_KEYS}
    lines.append("base vs preset: " + (", ".join(f"{k}: {ablate._fmt_v(a)} -> {ablate._fmt_v(b)}" for k, (a, b) in d.items()) or "(the preset)"))
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
    est = ablate.estimate_s(p.base, p.profile)
    left = max(0, p.n_trials - done)
    k = ablate.concurrency(p.profile, p.resources, cap=p.parallelism)
    lines.append(f"estimated cost: ~{ablate._fmt_s(est)} per full trial; {left} to run -> ~{ablate._fmt_s(est * left / k)} "
                 f"wall at {k} at once (pruning shortens it)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ism study", description="Run an Optuna study as Ray Tune trials tracked in MLflow. "
                                 "Rerunning the same command continues an interrupted study.")
    ap.add_argument("spec", help="study spec, e.g. studies/wavelet.yaml")
    ap.add_argument("--profile", default=os.environ.get("PROFILE") or ablate.DEFAULT_PROFILE,
                    help=f"one of {', '.join(ablate.PROFILES)} (default {ablate.DEFAULT_PROFILE}; env PROFILE)")
    ap.add_argument("--n-trials", type=int, default=None, help="trial budget (finished trials in all), overrides the spec")
    ap.add_argument("--dry-run", action="store_true", help="show the base, space, objective, study state and cost; run nothing")
    ap.add_argument("--export-best", action="store_true", help="write the best trial as a delta config YAML and exit")
    ap.add_argument("--out", default=None, help="path for --export-best (default <storage>/best/<name>-<profile>.yaml)")
    ap.add_argument("--storage", default=None, help="root of trial dirs and Ray results (default runs/study; env ISM_STORAGE)")
    ap.add_argument("--optuna-storage", default=None, help="Optuna RDB URL (default $OPTUNA_STORAGE or sqlite <storage>/optuna.db)")
    ap.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite under mlruns/)")
    ap.add_argument("--report-out", default=None, help="folder of the study report written when the study finishes "
                    "(default reports/studies/<name>/ on the embedded profile, reports/studies/<name>-<profile>/ otherwise)")
    ap.add_argument("--no-report", action="store_true", help="do not write the study report")
    args = ap.parse_args(argv)
    if args.n_trials is not None and args.n_trials < 1:
        raise ConfigError(f"--n-trials: expected an integer >= 1, got {args.n_trials}")
    p = plan(load_spec(args.spec), args.profile, args.n_trials)
    root = storage_root(args.storage)
    url = storage_url(args.optuna_storage, root)
    if args.dry_run:
        print(describe_plan(p, url))
        return 0
    if args.export_best:
        path = export_best(p, url, Path(args.out) if args.out else None, root)
        print(f"ism study: best config of {p.study_name} -> {path}")
        return 0
    rc = run_study(p, url, root, tracking_uri=args.tracking_uri)
    if rc == 130 or args.no_report:  # interrupted: the report comes with the run that finishes the study
        return rc
    return write_report(p, url, root, args.report_out, args.tracking_uri) or rc


def write_report(p: StudyPlan, url: str, root: Path, out: str | None, tracking_uri: str | None) -> int:
    """The study report after a run (ism.report.study_section); 1 with a message if it could not be written."""
    from ism import tracking
    from ism.report.study_section import write_study_report
    try:
        r = write_study_report(p, url, out, root, tracking.tracking_uri(tracking_uri))
    except Exception as e:  # the study itself is safe in its storage; say how to rebuild the report
        print(f"ism study: the study report failed ({type(e).__name__}: {e}); rebuild it with "
              f"`ism report {p.spec.path} --profile {p.profile}`", file=sys.stderr)
        return 1
    print(f"ism study: report -> {r.markdown} and {r.pdf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
