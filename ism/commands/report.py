"""`ism report`: the Markdown/PDF report of an ablation sweep read from MLflow, or of a study (studies/X.yaml) read
from its Optuna storage."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ism.commands import env, options
from ism.conf.config import read_yaml
from ism.conf.profiles import DEFAULT_PROFILE
from ism.commands.listing import update_index


def is_study_spec(target: str) -> bool:
    """A study spec file (studies/*.yaml: it has a search space and an objective), not an ablation spec."""
    path = Path(target)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return False
    raw = read_yaml(path, "spec")[0]  # not YAML, not UTF-8, a key twice: one clear error, whatever the spec's kind
    return isinstance(raw, dict) and "space" in raw and "objective" in raw


def study_report(target: str, profile: str | None, out: str | None, storage: str | None, optuna_storage: str | None,
                 tracking_uri: str | None, log: bool) -> int:
    """`ism report studies/X.yaml`: the study report from the stored study, without running anything."""
    from ism.commands.study import DEFAULT_STORAGE
    from ism.report.study_section import write_study_report  # optuna loads only for study reports
    from ism.study.plan import plan
    from ism.study.spec import load_spec
    from ism.study.storage import storage_url
    p = plan(load_spec(target), profile or DEFAULT_PROFILE)
    root = env.storage(storage, DEFAULT_STORAGE)
    url = storage_url(env.optuna_url(optuna_storage), root)
    r = write_study_report(p, url, out, root, env.tracking_uri(tracking_uri) if log else None,
                           default_root=env.storage(None, DEFAULT_STORAGE), default_url=env.optuna_url(None))
    print(f"wrote {r.markdown} and {r.pdf}" + (f"; logged to MLflow run {r.logged_to}" if r.logged_to else ""))
    update_index(r.markdown)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`ism report`; the exit status (ConfigErrors reach ism.commands.main: status 2)."""
    ap = argparse.ArgumentParser(prog="ism report", description="Markdown and PDF report of an ablation sweep, read "
                                 "from MLflow: FID/KID versus steps with CIs, deltas, claims check, figures; or, for a "
                                 "study spec (studies/X.yaml), the study's report read from its Optuna storage.")
    ap.add_argument("target", help="spec file (ablations/components.yaml or studies/wavelet.yaml), spec name, or "
                    "experiment (ism/components)")
    options.tracking_uri(ap)
    ap.add_argument("--out", default=None, help="output folder (default reports/<spec> for an embedded sweep, "
                    "reports/<spec>-<profile> for another; studies: reports/studies/<name>/ on the embedded profile, "
                    "reports/studies/<name>-<profile>/ on another)")
    ap.add_argument("--profile", default=env.report_profile(),
                    help="report the newest sweep of this profile (default: the newest sweep of any profile); "
                    "studies: the study of this profile (default embedded)")
    ap.add_argument("--sweep", default=None, help="a specific sweep: its parent MLflow run id or ism.sweep_id")
    ap.add_argument("--no-log", action="store_true", help="do not log the report as artifacts of the sweep's parent run")
    options.storage(ap, "runs/study", "study specs (studies/X.yaml): root of the study storage")
    ap.add_argument("--optuna-storage", default=None, help="study specs: Optuna RDB URL (default $OPTUNA_STORAGE or "
                    "sqlite <storage>/optuna.db)")
    ap.add_argument("-v", "--verbose", action="store_true", help="keep the log lines of MLflow, Ray and Optuna")
    args = ap.parse_args(argv)
    env.quiet_libraries(args.verbose)
    if is_study_spec(args.target):
        return study_report(args.target, args.profile, args.out, args.storage, args.optuna_storage,
                            args.tracking_uri, log=not args.no_log)
    from ism.report import build_report  # MLflow, pandas and matplotlib load only once the command runs
    r = build_report(args.target, env.tracking_uri(args.tracking_uri), args.out, args.profile, args.sweep,
                     log=not args.no_log)
    verdicts = ", ".join(f"{c.claim.problem}: {c.verdict}" for c in r.claims)
    print(f"wrote {r.markdown}, {r.pdf} and its appendix {r.pdf.with_name('appendix.pdf').name}"
          + (f"; logged to MLflow run {r.logged_to}" if r.logged_to else ""))
    print(f"claims: {verdicts}")
    update_index(r.markdown)
    if not r.sweep.missing.empty:
        print(f"{len(r.sweep.missing)} trial(s) missing or failed; listed in the report", file=sys.stderr)
    return 0
