"""`ism sample`: PNG grids from a run's slow EMA with fixed noise, one row per class."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ism.conf.config import ConfigError, step_level
from ism.commands.env import data_cache_root
from ism.system.store import run_dir_of


def main(argv: list[str] | None = None) -> int:
    """`ism sample`; the exit status (ConfigErrors reach ism.commands.main: status 2)."""
    ap = argparse.ArgumentParser(prog="ism sample", description="PNG grids from a run's slow EMA with fixed noise.")
    ap.add_argument("run", help="run directory or checkpoint file")
    ap.add_argument("--steps", default="1,4,128", help="comma-separated step counts (powers of two)")
    ap.add_argument("--per-class", type=int, default=8, help="samples per class (one grid row per class)")
    ap.add_argument("--guidance", type=float, default=None, help="w (intrinsic) or CFG scale (cfg_* modes)")
    ap.add_argument("--net", default="infer", choices=("infer", "target", "online"), help="which weights sample")
    ap.add_argument("--seed", type=int, default=0, help="noise seed")
    ap.add_argument("--out", default=None, help="output dir (default RUN/samples)")
    args = ap.parse_args(argv)
    # torch (seconds to import) loads only once the command runs, so --help answers at once.
    import torch

    from ism.training.run_state import load_run
    from ism.training.sample import fixed_noise, sample, save_grid
    cfg, nets, data, step = load_run(args.run, data_cache=data_cache_root())
    steps = [int(s) for s in args.steps.split(",") if s.strip()]
    for s in steps:
        step_level(s, cfg.shortcut.max_steps_log2, "--steps")
    if data.kind == "points":
        raise ConfigError("ism sample draws image grids; for 2-D data use ism eval (energy distance per step count)")
    ncls = max(data.num_classes, 1)
    y = torch.arange(ncls).repeat_interleave(args.per_class)
    x0 = fixed_noise(ncls * args.per_class, data.shape, args.seed)
    out = Path(args.out) if args.out else run_dir_of(args.run) / "samples"
    print(f"ism sample: {len(y)} images ({ncls} classes x {args.per_class}) from {args.net} weights at training step "
          f"{step}, at {', '.join(map(str, steps))} steps", file=sys.stderr, flush=True)
    for i, s in enumerate(steps, 1):
        t0 = time.perf_counter()
        x = sample(nets[args.net], x0, y, s, cfg, args.guidance, null=data.num_classes)
        path = save_grid(x, out / f"grid_steps_{s}_{args.net}_step{step}.png", nrow=args.per_class)
        print(f"[{i}/{len(steps)}] {s} steps: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        print(path)
    return 0
