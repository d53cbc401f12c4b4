"""`ism train`: one run from a preset, YAML deltas and key=value overrides; rerunning the same command resumes it."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ism.commands.env import eval_cache_root
from ism.config import DEFAULT_PRESET, PRESETS, Config, dump_yaml, resolve, run_id
from ism.evaluate import make_evaluator
from ism.train import Diverged, train


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
    args = ap.parse_args(argv)
    cfg = config_from_args(args)
    run_dir = Path(args.run_dir) if args.run_dir else Path(cfg.run.out_dir) / run_id(cfg)
    if args.dry_run:
        print(f"# run id {run_id(cfg)}  ->  {run_dir}")
        print(dump_yaml(cfg), end="")
        return 0
    # Evaluations during training (eval.every_steps) need the evaluator as much as the one at the end.
    wants_eval = cfg.eval.at_end or cfg.eval.every_steps > 0
    evaluator = make_evaluator(cfg, eval_cache_root()) if wants_eval and not args.no_eval else None
    print(f"run {run_id(cfg)} -> {run_dir}", file=sys.stderr)
    try:
        summary = train(cfg, run_dir, evaluator=evaluator, cache_root=eval_cache_root())
    except Diverged as e:
        print(f"ism train: {e}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in summary.items() if k != "metrics"} | {"metrics": summary["metrics"]}, indent=2))
    return 0 if math.isfinite(summary["final_loss"]) or cfg.run.steps == 0 else 1
