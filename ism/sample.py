"""The Euler shortcut sampler (d = 1/N, N a power of two <= 2^max_steps_log2), guidance at inference, PNG grids."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from ism.config import Config, ConfigError
from ism.rng import generator


def check_steps(n: int, cfg: Config) -> int:
    """The step level log2(n); any n that is not a power of two <= 2^K is an error."""
    top = 2 ** cfg.shortcut.max_steps_log2
    if n < 1 or n & (n - 1) or n > top:
        raise ConfigError(f"steps: {n} is not allowed; the shortcut sampler takes powers of two from 1 to {top}")
    return int(math.log2(n))


@torch.no_grad()
def sample(model, x0: torch.Tensor, y: torch.Tensor, num_steps: int, cfg: Config, w: float | None = None,
           cfg_scale: float | None = None, trajectory: bool = False, null: int | None = None):
    """Integrate from noise x0 (t=0) to data (t=1) in num_steps shortcut steps; optionally return the path.

    Intrinsic guidance: w is a network input, one forward pass per step (w=0 for steps wholly below t_interval
    when guidance.interval_at_inference). CFG modes: SM trains the null class only at the finest level, so the
    inference CFG (two passes) applies only when num_steps = 2^K; coarser step counts carry the baked-in guidance.
    """
    level = check_steps(num_steps, cfg)
    g = cfg.guidance
    w = cfg.eval.w if w is None else w
    scale = cfg.eval.cfg_scale if cfg_scale is None else cfg_scale
    n, dev = x0.shape[0], x0.device
    d = 1.0 / num_steps
    k = torch.full((n,), level, dtype=torch.long, device=dev)
    y = y.to(dev)
    if null is None:
        null = getattr(model, "num_classes", None)
        if null is None and g.mode in ("cfg_finest", "cfg_every_level"):
            raise ValueError("sample(): pass null=<number of classes> (the null class index) for CFG sampling")
    null_y = torch.full_like(y, null if null is not None else 0)
    x = x0.clone()
    path = [x.clone()] if trajectory else None
    use_cfg = g.mode in ("cfg_finest", "cfg_every_level") and level == cfg.shortcut.max_steps_log2 and scale != 1.0
    for i in range(num_steps):
        t_val = i * d
        t = torch.full((n,), t_val, device=dev)
        if g.mode == "intrinsic":
            w_i = 0.0 if (g.interval_at_inference and t_val + d <= g.t_interval) else w
            v = model(x, t, k, y, torch.full((n,), w_i, device=dev))
        elif use_cfg:
            zeros = torch.zeros(2 * n, device=dev)
            out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([k, k]), torch.cat([y, null_y]), zeros)
            v = out[n:] + scale * (out[:n] - out[n:])
        else:
            v = model(x, t, k, y, torch.zeros(n, device=dev))
        x = x + d * v.float()
        if trajectory:
            path.append(x.clone())
    return (x, path) if trajectory else x


def fixed_noise(n: int, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """The same noise for every run with this seed, so grids and metrics compare across variants."""
    return torch.randn((n, *shape), generator=generator(seed, 0, "sample"))


def fixed_labels(n: int, num_classes: int) -> torch.Tensor:
    """Balanced labels 0, 1, ..., num_classes-1, 0, 1, ..."""
    return torch.arange(n) % max(num_classes, 1)


def sample_batched(model, x0, y, num_steps, cfg: Config, batch_size: int, device="cpu", **kw) -> torch.Tensor:
    """sample() in batches on device; returns CPU tensors."""
    out = []
    for i in range(0, x0.shape[0], batch_size):
        out.append(sample(model, x0[i:i + batch_size].to(device), y[i:i + batch_size].to(device), num_steps, cfg,
                          **kw).cpu())
    return torch.cat(out)


def save_grid(x: torch.Tensor, path: str | Path, nrow: int) -> Path:
    """Save images in [-1, 1] (or 1-channel latents) as a PNG grid."""
    from torchvision.utils import save_image  # torchvision is part of the pinned stack (torch-fidelity needs it)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imgs = x[:, :3] if x.shape[1] > 3 else x
    save_image((imgs.clamp(-1, 1) + 1) / 2, path, nrow=nrow, padding=1)
    return path


def main(argv: list[str] | None = None) -> int:
    from ism.train import load_run
    ap = argparse.ArgumentParser(prog="ism sample", description="PNG grids from a run's slow EMA with fixed noise.")
    ap.add_argument("run", help="run directory or checkpoint file")
    ap.add_argument("--steps", default="1,4,128", help="comma-separated step counts (powers of two)")
    ap.add_argument("--per-class", type=int, default=8, help="samples per class (one grid row per class)")
    ap.add_argument("--guidance", type=float, default=None, help="w (intrinsic) or CFG scale (cfg_* modes)")
    ap.add_argument("--net", default="infer", choices=("infer", "target", "online"), help="which weights sample")
    ap.add_argument("--seed", type=int, default=0, help="noise seed")
    ap.add_argument("--out", default=None, help="output dir (default RUN/samples)")
    args = ap.parse_args(argv)
    cfg, nets, data, step = load_run(args.run)
    steps = [int(s) for s in args.steps.split(",") if s.strip()]
    for s in steps:
        check_steps(s, cfg)
    if data.kind == "points":
        raise ConfigError("ism sample draws image grids; for 2-D data use ism eval (energy distance per step count)")
    ncls = max(data.num_classes, 1)
    n = ncls * args.per_class
    y = torch.arange(ncls).repeat_interleave(args.per_class)
    x0 = fixed_noise(n, data.shape, args.seed)
    kw = {"w": args.guidance} if cfg.guidance.mode == "intrinsic" else {"cfg_scale": args.guidance}
    out = Path(args.out) if args.out else Path(args.run if Path(args.run).is_dir() else Path(args.run).parent.parent) / "samples"
    for s in steps:
        x = sample(nets[args.net], x0, y, s, cfg, null=data.num_classes, **{k: v for k, v in kw.items() if v is not None})
        p = save_grid(x, out / f"grid_steps_{s}_{args.net}_step{step}.png", nrow=args.per_class)
        print(p)
    return 0
