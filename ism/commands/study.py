"""`ism study`: run an Optuna study (rerun to continue it), or --dry-run (the plan and the study's state) and
--export-best; writes the study report when the study finishes."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ism.commands import env, options
from ism.commands.listing import flags, fmt_s, fmt_v, ui_hint, update_index
from ism.system.dburl import masked
from ism.system import store
from ism.conf.config import IDENTITY_KEYS, ConfigError, diff, from_dict, preset_delta, run_id
from ism.conf.profiles import concurrency, cost_warning, estimate_s
from ism.conf.specs import SpecKindError

if TYPE_CHECKING:
    from ism.study.plan import StudyPlan

DEFAULT_STORAGE = "runs/study"


def describe_study(p: StudyPlan, url: str) -> str:
    """`ism study --dry-run`: base, space, objective, budget, pruning, the study's state and an estimated cost."""
    from ism.study.storage import FINISHED, counts, open_study
    preset_cfg = from_dict(preset_delta(p.preset))
    lines = [f"study {p.study_name} ({p.spec.path}) - preset {p.preset} - storage {masked(url)}"]
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
    share = p.resources.get("gpu") or p.resources.get("cpu", 1)
    warn = cost_warning(est * left * share / 3600, "GPU" if p.resources.get("gpu") else "CPU")
    lines += [warn] if warn else []
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`ism study`; the exit status (ConfigErrors reach ism.commands.main: status 2)."""
    ap = argparse.ArgumentParser(prog="ism study", description="Run an Optuna study as Ray Tune trials tracked in MLflow. "
                                 "Rerunning the same command continues an interrupted study.")
    ap.add_argument("spec", help="study spec, e.g. studies/wavelet.yaml")
    options.profile(ap)
    ap.add_argument("--n-trials", type=int, default=None, help="trial budget (finished trials in all), overrides the spec")
    ap.add_argument("--dry-run", action="store_true", help="show the base, space, objective, study state and cost; run nothing")
    ap.add_argument("--export-best", action="store_true", help="write the best trial as a delta config YAML and exit")
    ap.add_argument("--out", default=None, help="path for --export-best (default <storage>/best/<name>-<profile>.yaml)")
    options.storage(ap, "runs/study", "root of trial dirs and Ray results")
    ap.add_argument("--optuna-storage", default=None, help="Optuna RDB URL (default $OPTUNA_STORAGE or sqlite <storage>/optuna.db)")
    options.tracking_uri(ap)
    ap.add_argument("--report-out", default=None, help="folder of the study report written when the study finishes "
                    "(default reports/studies/<name>/ on the embedded profile, reports/studies/<name>-<profile>/ otherwise)")
    ap.add_argument("--no-report", action="store_true", help="do not write the study report")
    ap.add_argument("-v", "--verbose", action="store_true", help="keep the log lines of MLflow, Ray and Optuna")
    args = ap.parse_args(argv)
    env.quiet_libraries(args.verbose)
    from ism.study.storage import quiet_optuna
    quiet_optuna(args.verbose)
    if args.n_trials is not None and args.n_trials < 1:
        raise ConfigError(f"--n-trials: expected an integer >= 1, got {args.n_trials}")
    # Optuna, MLflow and pandas (seconds to import) load only once the command runs, so --help answers at once.
    from ism.study.driver import run_study
    from ism.study.export import best_line, export_best
    from ism.study.plan import plan
    from ism.study.spec import load_spec
    from ism.study.storage import storage_url
    try:
        spec = load_spec(args.spec)
    except SpecKindError as e:  # an ablation spec: the hint keeps what study and ablate share
        raise e.with_flags(flags(profile=args.profile, storage=args.storage, tracking_uri=args.tracking_uri)) from None
    p = plan(spec, args.profile, args.n_trials)
    root = env.storage(args.storage, DEFAULT_STORAGE)
    url = storage_url(env.optuna_url(args.optuna_storage), root)
    if args.dry_run:
        print(describe_study(p, url))
        return 0
    if args.export_best:
        path = export_best(p, url, Path(args.out) if args.out else None, root)
        print(f"ism study: {best_line(p, url)}\n  config -> {path}\n  train it:  ism train -c {path}\n"
              f"  or use it as an ablation base:  base: {{preset: {p.preset}, overrides: <its sections>}}")
        return 0
    env.ui_port()  # a bad ISM_UI_PORT is an error now, not after the study
    store.check_writable(root, "--storage (ISM_STORAGE)")
    store.check_writable(env.eval_cache_root(), "ISM_CACHE")
    uri = env.tracking_uri(args.tracking_uri)
    rc = run_study(p, url, root, uri, env.eval_cache_root())
    if rc == 130:  # interrupted: the report comes with the run that finishes the study
        return rc
    where = flags(profile=p.profile, storage=args.storage, optuna_storage=args.optuna_storage)
    rc = (0 if args.no_report else write_report(p, url, root, args.report_out, uri, where)) or rc
    best = best_line(p, url)
    print("next:\n" + (f"  {best}\n" if best else "") +
          f"  export it:  ism study {args.spec}{where} --export-best\n"
          + ui_hint(uri, f"ism-study/{p.spec.name}", env.ui_port(), args.tracking_uri), file=sys.stderr)
    return rc


def write_report(p: StudyPlan, url: str, root: Path, out: str | None, tracking_uri: str, where: str = "") -> int:
    """The study report after a run (ism.report.study_section); 1 with a message if it could not be written."""
    from ism.report.study_section import write_study_report
    try:
        r = write_study_report(p, url, out, root, tracking_uri, default_root=env.storage(None, DEFAULT_STORAGE),
                               default_url=env.optuna_url(None))
    except Exception as e:  # the study itself is safe in its storage; say how to rebuild the report
        print(f"ism study: the study report failed ({type(e).__name__}: {e}); rebuild it with "
              f"`ism report {p.spec.path}{where or flags(profile=p.profile)}`", file=sys.stderr)
        return 1
    print(f"ism study: report -> {r.markdown} and {r.pdf}")
    update_index(r.markdown)
    return 0
