"""Timestep densities of the flow-matching rows, drawn on SM's finest grid t = i / 2^K (i = 0 ... 2^K - 1).

The rectified-flow line biases the training times away from uniform: SD3 (Esser et al. 2024) logit-normal (m, s),
"mode" sampling with scale s and the cosine map; rfpp (Lee, Lin, Fanti 2024) a U-shaped density
p(t) ∝ exp(a t) + exp(a (1 - t)) (their a = 4). Here every density is evaluated at the grid points and normalised
into categorical weights, so a flow-matching row's t stays on the grid every sampler step count uses (a continuous t
would train times no sampler visits). Self-consistency rows keep t on their own d-grid (targets._sc_inputs).

Convention: t = 0 is noise, t = 1 is data (SD3's is the reverse); the symmetric densities (m = 0, mode, cosine,
u_shaped) read the same either way, and SD3's logit-normal location m is -m here.
`uniform` draws with torch.randint exactly as before, so uniform runs reproduce the earlier rows bit for bit.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ism.conf.config import Config, ShortcutConfig

DENSITIES = ("uniform", "logit_normal", "mode", "cosine", "u_shaped")


def _mode_density(t: np.ndarray, s: float) -> np.ndarray:
    """SD3's mode sampling t = f(u) = 1 - u - s (cos^2(pi u / 2) - 1 + u), u ~ U(0, 1): p(t) = 1 / |f'(f^-1(t))|.

    f is decreasing for s in SD3's range [-1, 2 / (pi - 2)], so f^-1 is read off a fine table (numpy interp)."""
    u = np.linspace(0.0, 1.0, 200001)
    f = 1 - u - s * (np.cos(np.pi * u / 2) ** 2 - 1 + u)
    ui = np.interp(t, f[::-1], u[::-1])
    return 1.0 / np.abs(-(1 + s) + s * np.pi / 2 * np.sin(np.pi * ui))


def density(t: np.ndarray, sc: ShortcutConfig) -> np.ndarray:
    """The configured density (unnormalised) at times t in [0, 1)."""
    kind = sc.t_density
    if kind == "uniform":
        return np.ones_like(t)
    if kind == "logit_normal":
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.log(t) - np.log1p(-t)
            p = np.exp(-(z - sc.t_density_m) ** 2 / (2 * sc.t_density_s ** 2)) / (t * (1 - t))
        return np.nan_to_num(p, nan=0.0, posinf=0.0)  # t = 0 has density 0 (logit -> -inf)
    if kind == "mode":
        return _mode_density(t, sc.t_density_scale)
    if kind == "cosine":
        # SD3's cosine map t = 1 - 1 / (tan(pi u / 2) + 1): u = (2 / pi) atan(t / (1 - t)), du/dt below.
        return (2 / math.pi) / ((1 - t) ** 2 + t ** 2)
    if kind == "u_shaped":
        a = sc.t_density_u_a
        return np.exp(a * t) + np.exp(a * (1 - t))
    raise ValueError(f"shortcut.t_density: unknown density {kind!r}")


@functools.lru_cache(maxsize=32)
def _weights(sc: ShortcutConfig) -> torch.Tensor:
    t = np.arange(2 ** sc.max_steps_log2) / 2 ** sc.max_steps_log2
    p = density(t, sc)
    return torch.as_tensor(p / p.sum(), dtype=torch.float64)


def grid_weights(sc: ShortcutConfig) -> torch.Tensor:
    """Probabilities of the grid points i / 2^K, i = 0 ... 2^K - 1 (float64, sums to 1)."""
    return _weights(sc)


def draw_fm_t(n: int, cfg: Config, gen: torch.Generator) -> torch.Tensor:
    """n flow-matching times on the finest grid, drawn from shortcut.t_density (CPU float32)."""
    K = cfg.shortcut.max_steps_log2
    if cfg.shortcut.t_density == "uniform":
        return torch.randint(0, 2 ** K, (n,), generator=gen).float() / 2 ** K
    if n == 0:
        return torch.zeros(0)
    idx = torch.multinomial(grid_weights(cfg.shortcut), n, replacement=True, generator=gen)
    return idx.float() / 2 ** K
