"""`ism train`: one run from a preset, YAML deltas and key=value overrides; rerunning the same command resumes it."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ism.conf import metric_keys
from ism.commands.env import eval_cache_root
from ism.conf.config import DEFAULT_PRESET, PRESETS, Config, dump_yaml, resolve, run_id
from ism.system.store import SUMMARY, list_checkpoints, read_json


def add_config_args(ap: argparse.ArgumentParser) -> None:
    """The config options shared by train-like commands."""
    ap.add_argument("--preset", default=DEFAULT_PRESET, help=f"named preset: {', '.join(PRESETS)} (default {DEFAULT_PRESET})")
    ap.add_argument("-c", "--config", action="append", help="YAML delta file(s), applied in order")
    ap.add_argument("overrides", nargs="*", help="dotted overrides key=value, e.g. guidance.mode=intrinsic")


def config_from_args(args: argparse.Namespace) -> Config:
    """Resolve --preset, --config files and key=value overrides."""
    return resolve(args.preset, args.config or [], args.overrides)


def main(argv: list[str] | None = None) -> int:
    """`ism train`; the exit status (ConfigErrors reach ism.commands.main: status 2)."""
    ap = argparse.ArgumentParser(prog="ism train", description="Train one run; rerunning the same command resumes it.")
    add_config_args(ap)
    ap.add_argument("--dry-run", action="store_true", help="print the resolved config and run id, then exit")
    ap.add_argument("--run-dir", default=None, help="run directory (default run.out_dir/RUN_ID)")
    ap.add_argument("--no-eval", action="store_true", help="skip the evaluations (at the end and every eval.every_steps)")
    args = ap.parse_intermixed_args(argv)  # key=value overrides may follow the flags: ... --no-eval a.b=1
    cfg = config_from_args(args)
    run_dir = Path(args.run_dir) if args.run_dir else Path(cfg.run.out_dir) / run_id(cfg)
    if args.dry_run:
        print(f"# run id {run_id(cfg)}  ->  {run_dir}")
        print(f"# {cost_line(cfg)}")
        print(dump_yaml(cfg), end="")
        return 0
    if (run_dir / SUMMARY).exists():  # nothing to train: say so rather than print a fresh-looking summary
        print(f"run {run_id(cfg)} is already complete in {run_dir}", file=sys.stderr)
        summary = read_json(run_dir / SUMMARY)
        print(summary_text(summary, run_dir))
        return exit_status(summary, cfg)
    # torch and torch-fidelity (seconds to import) load only once a run starts, so `ism train --help` is instant.
    from ism.evaluation.evaluate import make_evaluator
    from ism.training.train import Diverged, train
    # Evaluations during training (eval.every_steps) need the evaluator as much as the one at the end.
    wants_eval = cfg.eval.at_end or cfg.eval.every_steps > 0
    evaluator = make_evaluator(cfg, eval_cache_root()) if wants_eval and not args.no_eval else None
    print(f"run {run_id(cfg)} -> {run_dir}", file=sys.stderr)
    try:
        summary = train(cfg, run_dir, evaluator=evaluator, cache_root=eval_cache_root())
    except Diverged as e:
        print(f"ism train: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        done = list_checkpoints(run_dir)
        at = f"; newest checkpoint at step {done[-1][0]}" if done else ""
        print(f"\nism train: interrupted{at}; rerun the same command to resume", file=sys.stderr)
        return 130
    print(summary_text(summary, run_dir))
    return exit_status(summary, cfg)


def exit_status(summary: dict, cfg: Config) -> int:
    """1 when the run ended on a non-finite loss (a run of zero steps has none), else 0."""
    return 0 if math.isfinite(summary["final_loss"]) or cfg.run.steps == 0 else 1


def cost_line(cfg: Config) -> str:
    """The dry run's cost: training and evaluation at the rates of the CPU (embedded) or a GPU profile, with the
    warning of ism.conf.profiles.cost_warning beyond a sane bound."""
    from ism.conf.profiles import cost_warning, estimate_s
    gpu = cfg.run.device.startswith("cuda")
    s = estimate_s(cfg, "gpu-cifar10" if gpu else "embedded")
    unit = "GPU" if gpu else "CPU"
    warn = cost_warning(s / 3600, unit)
    return (f"estimated cost: ~{s / 3600:,.2f} {unit}-hours at the {'gpu-cifar10' if gpu else 'embedded'} profile's "
            "rates" + (f"\n# {warn}" if warn else ""))


HEADLINE = ("fid", "kid", "energy_distance")  # the rest (diagnostics, guidance sweeps) is in RUN/eval/eval.csv


def summary_text(summary: dict, run_dir: Path) -> str:
    """The few lines a finished run deserves: where it is, its loss and time, its FID/KID row if evaluated."""
    lines = [f"run {summary['run_id']}: {summary['steps']} steps in {summary['wall_time_s']:.0f} s, final loss "
             f"{summary['final_loss']:.4g}, {summary['params']:,} parameters ({summary['device']})",
             f"  run dir   {run_dir}  (summary.json, stats.jsonl, checkpoints/, eval/)"]
    rows: dict[str, dict[int, float]] = {}
    for k, v in summary.get("metrics", {}).items():
        mk = metric_keys.parse(k)
        if mk is not None and mk.w is None and mk.metric in HEADLINE and isinstance(v, (int, float)):
            rows.setdefault(mk.metric, {})[mk.steps] = float(v)
    for metric in sorted(rows):
        cells = "  ".join(f"{n}: {v:.4g}" for n, v in sorted(rows[metric].items()))
        lines.append(f"  {metric:<6} at steps  {cells}")
    if rows:
        lines.append(f"  (all metrics and diagnostics: {run_dir / 'eval' / 'eval.csv'})")
    else:
        lines.append("  not evaluated")
    lines.append("next:")
    if not rows:
        lines.append(f"  evaluate:  ism eval {run_dir}   (FID/KID versus sampling steps)")
    lines.append(f"  samples:   ism sample {run_dir}   (PNG grids -> {run_dir / 'samples'})")
    return "\n".join(lines)
