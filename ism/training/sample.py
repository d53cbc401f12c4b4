"""The Euler shortcut sampler (d = 1/N, N a power of two <= 2^max_steps_log2), guidance at inference, PNG grids.

method.name=meanflow takes the same jumps x + d u(x, t, d) with the continuous step d = 1/N as the network's step
input; method.name=ct has its own multistep consistency sampler (sample_ct).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ism.conf.config import Config, step_level
from ism.training.objective.consistency import consistency_fn
from ism.training.objective.targets import interpolate
from ism.training.rng import generator


def guidance_key(cfg: Config) -> str | None:
    """The config key holding the run's inference guidance: eval.w (intrinsic), eval.cfg_scale (cfg_* modes), None
    (mode none). The one place that maps a guidance value to its meaning."""
    return {"intrinsic": "eval.w", "none": None}.get(cfg.guidance.mode, "eval.cfg_scale")


def default_guidance(cfg: Config) -> float | None:
    """The inference guidance of the run: eval.w (intrinsic), eval.cfg_scale (cfg_* modes), None (none)."""
    key = guidance_key(cfg)
    return None if key is None else getattr(cfg.eval, key.split(".")[1])


def guidance_effect(cfg: Config, num_steps: int, guidance: float | None) -> float | None:
    """The part of `guidance` that changes sample()'s output at num_steps (None: none does), so samples drawn from
    the same noise, labels and network at equal effects are equal: intrinsic w at every step count; a CFG scale only
    at 2^K steps (coarser step counts carry the baked-in guidance) and only when it is not 1 (one pass)."""
    g = default_guidance(cfg) if guidance is None else guidance
    mode = cfg.guidance.mode
    if mode == "intrinsic":
        return float(g)
    if mode in ("cfg_finest", "cfg_every_level"):
        top = step_level(num_steps, cfg.shortcut.max_steps_log2) == cfg.shortcut.max_steps_log2
        return float(g) if top and g != 1.0 else None
    return None


@torch.no_grad()
def sample(model, x0: torch.Tensor, y: torch.Tensor, num_steps: int, cfg: Config, guidance: float | None = None,
           trajectory: bool = False, null: int | None = None, cfg_calibration: bool = False):
    """Integrate from noise x0 (t=0) to data (t=1) in num_steps shortcut steps; optionally return the path.

    guidance: w for intrinsic guidance, the CFG scale for the cfg_* modes (guidance_key), ignored for mode none;
    None = the run's own (default_guidance). null: the null-class index (the number of classes), needed for CFG.
    Intrinsic guidance: w is a network input, one forward pass per step (w=0 for steps wholly below t_interval
    when guidance.interval_at_inference). CFG modes: SM trains the null class only at the finest level, so the
    inference CFG (two passes) applies only when num_steps = 2^K; coarser step counts carry the baked-in guidance.
    cfg_calibration: plain two-pass CFG at scale `guidance` for any mode, at 2^K steps only (the flow-matching level
    where every mode trains the null class; intrinsic runs get w = 0 inputs and keep their interval guidance: scale
    1 for steps wholly below t_interval), the guidance ruler's reference samples (ism.evaluation.ruler).
    """
    level = step_level(num_steps, cfg.shortcut.max_steps_log2)
    if cfg.method.name == "ct":
        if cfg_calibration:
            raise ValueError("sample(): cfg_calibration needs a guided mode; method.name=ct trains none")
        return sample_ct(model, x0, y, num_steps, cfg, trajectory)
    g = cfg.guidance
    w = scale = default_guidance(cfg) if guidance is None else guidance
    n, dev = x0.shape[0], x0.device
    d = 1.0 / num_steps
    meanflow = cfg.method.name == "meanflow"
    # MeanFlow's step input is the continuous jump d; shortcut models take the level k = log2(N).
    k = torch.full((n,), d, device=dev) if meanflow else torch.full((n,), level, dtype=torch.long, device=dev)
    y = y.to(dev)
    if null is None and g.mode in ("cfg_finest", "cfg_every_level"):
        raise ValueError("sample(): pass null=<number of classes> (the null class index) for CFG sampling")
    null_y = torch.full_like(y, null if null is not None else 0)
    x = x0.clone()
    path = [x.clone()] if trajectory else None
    if cfg_calibration and (level != cfg.shortcut.max_steps_log2 or g.mode == "none" or null is None):
        raise ValueError("sample(): cfg_calibration needs 2^K steps, a guided mode and null=")
    # MeanFlow folds its CFG into the training target at every d, so its samples take one pass per step.
    use_cfg = (g.mode in ("cfg_finest", "cfg_every_level") and level == cfg.shortcut.max_steps_log2 and scale != 1.0
               and not meanflow or cfg_calibration)
    interval = g.mode == "intrinsic" and g.interval_at_inference
    for i in range(num_steps):
        t_val = i * d
        t = torch.full((n,), t_val, device=dev)
        if g.mode == "intrinsic" and not use_cfg:
            w_i = 0.0 if (g.interval_at_inference and t_val + d <= g.t_interval) else w
            v = model(x, t, k, y, torch.full((n,), w_i, device=dev))
        elif use_cfg:
            zeros = torch.zeros(2 * n, device=dev)
            out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([k, k]), torch.cat([y, null_y]), zeros)
            s_i = 1.0 if (interval and t_val + d <= g.t_interval) else scale
            v = out[n:] + s_i * (out[:n] - out[n:])
        else:
            v = model(x, t, k, y, torch.zeros(n, device=dev))
        x = x + d * v.float()
        if trajectory:
            path.append(x.clone())
    return (x, path) if trajectory else x


def _renoise_generator(x0: torch.Tensor, i: int) -> torch.Generator:
    """Fresh noise for step i of the consistency sampler, a function of the batch's own starting noise (so every
    batch of an evaluation draws its own, and a rerun draws the same)."""
    digest = hashlib.sha256(x0.detach().float().cpu().numpy().tobytes()).digest()
    return generator(int.from_bytes(digest[:4], "little"), i, "ct-renoise")


@torch.no_grad()
def sample_ct(model, x0: torch.Tensor, y: torch.Tensor, num_steps: int, cfg: Config, trajectory: bool = False):
    """Multistep consistency sampling (Song et al. 2023, alg. 1) at t_i = i / N: x^ = f(x, t_i), then back onto
    the path at t_{i+1} with fresh noise, x = (1 - t_{i+1}) z + t_{i+1} x^ (the training path)."""
    n, dev = x0.shape[0], x0.device
    k = torch.full((n,), cfg.shortcut.max_steps_log2, dtype=torch.long, device=dev)
    w, y = torch.zeros(n, device=dev), y.to(dev)
    x = x0.clone()
    path = [x.clone()] if trajectory else None
    for i in range(num_steps):
        t = torch.full((n,), i / num_steps, device=dev)
        x_hat = consistency_fn(model, x, t, k, y, w).float()
        if i + 1 < num_steps:
            z = torch.randn(x.shape, generator=_renoise_generator(x0, i)).to(dev)
            x = interpolate(z, x_hat, torch.full((n,), (i + 1) / num_steps, device=dev))
        else:
            x = x_hat
        if trajectory:
            path.append(x.clone())
    return (x, path) if trajectory else x


def fixed_noise(n: int, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """The same noise for every run with this seed, so grids and metrics compare across variants."""
    return torch.randn((n, *shape), generator=generator(seed, 0, "sample"))


def fixed_labels(n: int, num_classes: int) -> torch.Tensor:
    """Balanced labels 0, 1, ..., num_classes-1, 0, 1, ..."""
    return torch.arange(n) % max(num_classes, 1)


def save_grid(x: torch.Tensor, path: str | Path, nrow: int) -> Path:
    """Save images in [-1, 1] (or 1-channel latents) as a PNG grid."""
    from torchvision.utils import save_image  # torchvision is part of the pinned stack (torch-fidelity needs it)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imgs = x[:, :3] if x.shape[1] > 3 else x
    save_image((imgs.clamp(-1, 1) + 1) / 2, path, nrow=nrow, padding=1)
    return path
