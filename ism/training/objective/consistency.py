"""Consistency training in the iCT style (Song & Dhariwal 2023) on the shared core, t = 0 noise, t = 1 data.

The consistency function is f(x_t, t) = x_t + (1 - t) net(x_t, t, K, y, w): the network is read as a velocity and
extrapolated to t = 1, so f(x, 1) = x holds by construction (iCT's boundary condition, for the rectified-flow
path). A row pulls f(x_{t_i}, t_i) to sg f(x_{t_{i+1}}, t_{i+1}), the neighbour one discretisation step closer to
data on the same (x0, x1) path (iCT's x + sigma_{i+1} z -> x + sigma_i z, as there without a teacher model:
the target net is the live weights under stop-grad unless shortcut.target=ema).

Grid: iCT's Karras sigmas (method.ct_sigma_min ... ct_sigma_max, rho) mapped to this path by sigma = (1 - t) / t
(x_t / t = x1 + sigma x0 up to the 1e-5 offset), preceded by t = 0 (sigma = inf, pure noise, where the samplers
start). N doubles from ct_s0 to ct_s1 in equal stages of the run (iCT's curriculum); the interval i is drawn with
iCT's lognormal weights erf((log sigma_i - P_mean) / (sqrt 2 P_std)) - erf((log sigma_{i+1} - ...)).

The row's target is written in velocity units, (f_target - x_{t_i}) / (1 - t_i), so the loss (loss.distance,
wavelet) acts on f's error divided by 1 - t_i, the weighting this parametrisation gives instead of iCT's
1 / (sigma_{i+1} - sigma_i).
"""
from __future__ import annotations

import math

import torch

from ism.conf.config import Config
from ism.training.objective.targets import SC, Rows, _b, interpolate, sc_network


def curriculum_n(step: int, cfg: Config) -> int:
    """Discretisation steps N at a training step: ct_s0 doubling in equal stages up to ct_s1 (iCT's N(k) - 1)."""
    m = cfg.method
    stages = int(math.floor(math.log2(m.ct_s1 / m.ct_s0))) + 1
    stage_len = max(1, cfg.run.steps // stages)
    return min(m.ct_s0 * 2 ** (step // stage_len), m.ct_s1)


def grid_times(n: int, cfg: Config) -> torch.Tensor:
    """float64 [n + 1]: t = 0, then n Karras sigmas (descending) mapped to t = 1 / (1 + sigma)."""
    m = cfg.method
    i = torch.arange(n, dtype=torch.float64)
    hi, lo = m.ct_sigma_max ** (1 / m.ct_rho), m.ct_sigma_min ** (1 / m.ct_rho)
    sigma = (hi + i / max(n - 1, 1) * (lo - hi)) ** m.ct_rho
    return torch.cat([torch.zeros(1, dtype=torch.float64), 1 / (1 + sigma)])


def interval_weights(t: torch.Tensor, cfg: Config) -> torch.Tensor:
    """iCT's lognormal probabilities of the intervals [t_i, t_{i+1}] (float64, sums to 1)."""
    m = cfg.method
    with torch.no_grad():
        log_sigma = torch.log((1 - t) / t)                                  # +inf at t = 0
        cdf = torch.special.erf((log_sigma - m.ct_p_mean) / (math.sqrt(2) * m.ct_p_std))
    p = cdf[:-1] - cdf[1:]
    return p / p.sum()


def consistency_fn(net, x, t, k, y, w) -> torch.Tensor:
    """f(x_t, t) = x_t + (1 - t) net(...)."""
    return x + _b(1 - t, x) * net(x, t, k, y, w).to(x.dtype)


@torch.no_grad()
def targets_ct(x1, y, x0, nets: dict, cfg: Config, gen: torch.Generator, null: int,
               step: int = 0) -> tuple[Rows, dict]:
    """Consistency rows: student at t_i, target sg f(x_{t_{i+1}}, t_{i+1}) in velocity units (module doc)."""
    B, dev = x1.shape[0], x1.device
    n = curriculum_n(step, cfg)
    grid = grid_times(n, cfg)
    i = torch.multinomial(interval_weights(grid, cfg), B, replacement=True, generator=gen)
    t, t_next = grid[i].float().to(dev), grid[i + 1].float().to(dev)
    k = torch.full((B,), cfg.shortcut.max_steps_log2, dtype=torch.long, device=dev)
    w = torch.zeros(B, device=dev)
    xt, x_next = interpolate(x0, x1, t), interpolate(x0, x1, t_next)
    f_next = consistency_fn(sc_network(nets, cfg), x_next, t_next, k, y, w)
    target = (f_next - xt) / _b(1 - t, xt)
    rows = Rows(xt, t, k, y, w, target, torch.full((B,), SC, device=dev))
    return rows, {"rows_sc": float(B), "ct_n": float(n), "ct_dt_mean": float((t_next - t).mean())}
