"""`ism eval`: FID/KID (or 2-D distances) versus sampling steps and diagnostics for a stored run."""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys

from ism.commands.env import data_cache_root, eval_cache_root
from ism.conf.config import ConfigError, replace, step_level
from ism.conf.schema import EvalConfig
from ism.system.store import run_dir_of


# The schema's choices, the same names as ism.training.extractors.EXTRACTORS, read without importing torch.
EXTRACTORS = next(f.metadata["choices"] for f in dataclasses.fields(EvalConfig) if f.name == "extractor")


def _int_list(text: str, what: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]; anything else is a ConfigError naming the option."""
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what}: {text!r} is not a comma-separated list of integers, e.g. 1,2,4,128") from None
    if not vals:
        raise ConfigError(f"{what}: empty list")
    return vals


def _float_list(text: str, what: str) -> list[float]:
    """'0.5,1' -> [0.5, 1.0]; anything else is a ConfigError naming the option."""
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what}: {text!r} is not a comma-separated list of numbers") from None


def overrides(args: argparse.Namespace, cfg) -> dict:
    """The eval.* keys the options change for this run; --guidance sets the key of the run's guidance mode."""
    from ism.training.sample import guidance_key
    over: dict = {}
    if args.steps is not None:
        steps = _int_list(args.steps, "--steps")
        for s in steps:
            step_level(s, cfg.shortcut.max_steps_log2, "--steps")
        over["eval.steps"] = steps
    if args.num_samples is not None:
        over["eval.num_samples"] = args.num_samples
    if args.extractor:
        over["eval.extractor"] = args.extractor
    if args.weights_path:
        over["eval.weights_path"] = args.weights_path
    if args.no_diagnostics:
        over["eval.diagnostics"] = False
    if args.sweep is not None:
        over["eval.guidance_sweep"] = _float_list(args.sweep, "--sweep")
    if args.guidance is not None and guidance_key(cfg) is not None:
        over[guidance_key(cfg)] = args.guidance
    return over


def main(argv: list[str] | None = None) -> int:
    """`ism eval`; the exit status (ConfigErrors reach ism.commands.main: status 2)."""
    ap = argparse.ArgumentParser(prog="ism eval", description="FID/KID (or 2-D distances) versus sampling steps and "
                                 "diagnostics for a run; writes RUN/eval/eval.csv and eval.json.")
    ap.add_argument("run", help="run directory or checkpoint file")
    ap.add_argument("--steps", default=None, help="comma-separated step counts, e.g. 1,2,4,8,16,32,64,128 "
                    "(default eval.steps of the run)")
    ap.add_argument("--num-samples", type=int, default=None, help="samples per step count (default eval.num_samples)")
    ap.add_argument("--guidance", type=float, default=None, help="w (intrinsic) or CFG scale (cfg_* modes)")
    ap.add_argument("--extractor", default=None, choices=EXTRACTORS, help="feature extractor (default eval.extractor)")
    ap.add_argument("--sweep", default=None, help="comma-separated guidance values for the sweep at eval.sweep_steps")
    ap.add_argument("--weights-path", default=None, help="local weights for inception-v3-compat")
    ap.add_argument("--no-diagnostics", action="store_true", help="skip straightness / spectrum / sc-gap diagnostics")
    args = ap.parse_args(argv)
    if args.steps is not None:
        _int_list(args.steps, "--steps")  # a malformed list fails before the run is loaded
    if args.num_samples is not None and args.num_samples < 2:
        raise ConfigError(f"--num-samples: {args.num_samples} is too small; need >= 2")
    # torch and torch-fidelity (seconds to import) loads only once the command runs, so --help answers at once.
    import torch

    from ism.evaluation.evaluate import check_available, evaluate_run
    from ism.training.run_state import load_run
    cfg, nets, data, step = load_run(args.run, data_cache=data_cache_root())
    over = overrides(args, cfg)
    cfg = replace(cfg, **over) if over else cfg
    check_available(cfg)
    if cfg.run.threads:
        from ism.system import machine  # torch and BLAS threads together
        machine.set_threads(cfg.run.threads)
    run_dir = run_dir_of(args.run)
    rows, metrics = evaluate_run(nets, cfg, data, step, run_dir, eval_cache_root())
    for k, v in sorted(metrics.items()):
        print(f"{k:>32}  {v:.6g}" if isinstance(v, float) and math.isfinite(v) else f"{k:>32}  {v}")
    print(f"wrote {run_dir / 'eval' / 'eval.csv'} ({len(rows)} rows)", file=sys.stderr)
    return 0
