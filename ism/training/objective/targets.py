"""Training rows and their regression targets: flow matching, self-consistency and guidance.

Conventions (docs/method.md#conventions): t = 0 is noise, t = 1 is data, x_t = (1 - (1 - 1e-5) t) x0 + t x1,
v = x1 - (1 - 1e-5) x0; the network gets the step level k = log2(1/d), k = K (= max_steps_log2) being the
flow-matching token. One targets function per method, one signature:
    targets_fn(x1, y, x0, nets, cfg, gen, null) -> (Rows, diag)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ism.conf.config import Config
from ism.training.objective.timesteps import draw_fm_t

FM, SC, GUID = 0, 1, 2  # row kinds: flow matching (velocity), self-consistency, guidance
KIND_NAMES = {FM: "fm", SC: "sc", GUID: "guid"}
SIGMA_MIN = 1e-5  # the SM code's path offset


@dataclass
class Rows:
    """Network inputs, regression targets and the kind of every row."""
    xt: torch.Tensor
    t: torch.Tensor
    k: torch.Tensor
    y: torch.Tensor
    w: torch.Tensor
    target: torch.Tensor
    kind: torch.Tensor

    @staticmethod
    def cat(parts: list["Rows"]) -> "Rows":
        """Concatenate row blocks."""
        return Rows(*(torch.cat([getattr(p, f) for p in parts]) for f in ("xt", "t", "k", "y", "w", "target", "kind")))


def _b(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-row vector over x's trailing dims."""
    return v.view(-1, *([1] * (x.dim() - 1)))


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The SM path x_t."""
    return (1 - (1 - SIGMA_MIN) * _b(t, x0)) * x0 + _b(t, x1) * x1


def velocity(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """The flow-matching target v = x1 - (1 - 1e-5) x0."""
    return x1 - (1 - SIGMA_MIN) * x0


def w_grid(cfg: Config, positive: bool = False) -> torch.Tensor:
    """The intrinsic-guidance grid 0, w_step, ..., w_max (without 0 when positive)."""
    g = cfg.guidance
    n = int(round(g.w_max / g.w_step)) if g.w_max > 0 else 0
    grid = torch.arange(n + 1, dtype=torch.float32) * g.w_step
    return grid[1:] if positive else grid


def _clip(x: torch.Tensor, c: float) -> torch.Tensor:
    return x.clamp(-c, c) if c > 0 else x


def _drop_labels(y: torch.Tensor, p: float, null: int, gen: torch.Generator) -> torch.Tensor:
    if p <= 0:
        return y
    drop = torch.rand(y.shape[0], generator=gen) < p
    return torch.where(drop.to(y.device), torch.full_like(y, null), y)


def guided_velocity(net: Callable, x, t, k, y, w, null: int, scale: float, mask: torch.Tensor) -> torch.Tensor:
    """net's velocity; rows in mask get CFG v_null + scale (v_cond - v_null), in one batched forward."""
    idx = mask.nonzero(as_tuple=True)[0]
    if idx.numel() == 0 or scale == 1.0:
        return net(x, t, k, y, w)
    out = net(torch.cat([x, x[idx]]), torch.cat([t, t[idx]]), torch.cat([k, k[idx]]),
              torch.cat([y, torch.full_like(y[idx], null)]), torch.cat([w, w[idx]]))
    v, v_null = out[: x.shape[0]].clone(), out[x.shape[0]:]
    v[idx] = v_null + scale * (v[idx] - v_null)
    return v


def bootstrap_target(net: Callable, xt, t, k, y, w, cfg: Config, null: int, scale: float = 1.0,
                     mask: torch.Tensor | None = None, v1: torch.Tensor | None = None) -> torch.Tensor:
    """Self-consistency target for a jump d = 2^-k: the mean velocity of two half-steps of the target net.

    v1, when given, is the first half-step's velocity already computed (batched with other rows by the caller).
    """
    h = _b(torch.pow(2.0, -(k.float() + 1)), xt)
    kh = k + 1
    mask = torch.zeros_like(k, dtype=torch.bool) if mask is None else mask
    if v1 is None:
        v1 = guided_velocity(net, xt, t, kh, y, w, null, scale, mask)
    x_mid = _clip(xt + h * v1, cfg.shortcut.clip)
    v2 = guided_velocity(net, x_mid, t + h.flatten(), kh, y, w, null, scale, mask)
    return _clip((v1 + v2) / 2, cfg.shortcut.clip)


def sc_levels(n: int, K: int, allocation: str) -> torch.Tensor:
    """The step level k (d = 2^-k) of each of n self-consistency rows, finest first.

    sm: the SM code's layout (its dt_base): each level K-1 ... 0 in a block of n // K rows, the remainder at level 0
    (d = 1, the 1-step shortcut), e.g. n = 8, K = 7: [6, 5, 4, 3, 2, 1, 0, 0]. cycle: the levels cycled row by row,
    [6, 5, 4, 3, 2, 1, 0, 6], which gives d = 1 about half of SM's rows when n is just above a multiple of K.
    """
    if allocation == "cycle":
        return (K - 1) - (torch.arange(n) % K)
    block = torch.arange(K - 1, -1, -1).repeat_interleave(n // K)
    return torch.cat([block, torch.zeros(n - block.numel(), dtype=torch.long)])


def _sc_inputs(x1, x0, cfg: Config, gen: torch.Generator):
    """Levels k over d = 1/2^(K-1) ... 1 (shortcut.level_allocation), and t on the grid of each row's d."""
    n, K, dev = x1.shape[0], cfg.shortcut.max_steps_log2, x1.device
    k = sc_levels(n, K, cfg.shortcut.level_allocation)
    t = torch.floor(torch.rand(n, generator=gen) * torch.pow(2.0, k.float())) / torch.pow(2.0, k.float())
    k, t = k.to(dev), t.to(dev)
    return interpolate(x0, x1, t), t, k


def _fm_inputs(x1, x0, cfg: Config, gen: torch.Generator):
    """Flow-matching rows: t on the finest grid (as the SM code), the flow-matching token k = K."""
    n, K, dev = x1.shape[0], cfg.shortcut.max_steps_log2, x1.device
    t = draw_fm_t(n, cfg, gen).to(dev)  # shortcut.t_density on the finest grid (uniform: SM's draw)
    k = torch.full((n,), K, dtype=torch.long, device=dev)
    return interpolate(x0, x1, t), t, k


def _split(B: int, cfg: Config) -> int:
    frac = cfg.shortcut.bootstrap_fraction
    return 0 if frac <= 0 else min(B - 1, max(1, int(round(B * frac))))


def sc_network(nets: dict, cfg: Config) -> Callable:
    """The network making self-consistency targets: the (fast) target EMA or the live weights."""
    return nets["target"] if cfg.shortcut.target == "ema" else nets["online"]


@torch.no_grad()
def targets_sm(x1, y, x0, nets: dict, cfg: Config, gen: torch.Generator, null: int) -> tuple[Rows, dict]:
    """Shortcut models: guidance none, cfg_finest (SM code) or cfg_every_level (the compounding form iSM analyses)."""
    mode, g = cfg.guidance.mode, cfg.guidance
    B, dev = x1.shape[0], x1.device
    nb = _split(B, cfg)
    T = sc_network(nets, cfg)
    xs, ts, ks = _sc_inputs(x1[:nb], x0[:nb], cfg, gen)
    ys = y[:nb]
    ws = torch.zeros(nb, device=dev)
    if mode == "cfg_every_level":
        # The unconditional branch needs its own shortcut rows so that it stays unguided at every level.
        ys = _drop_labels(ys, g.label_dropout, null, gen)
        mask = ys != null
    elif mode == "cfg_finest":
        mask = (ks == cfg.shortcut.max_steps_log2 - 1) & (ys != null)  # only d = 1/64 rows; propagated upward
    else:
        mask = torch.zeros(nb, dtype=torch.bool, device=dev)
    scale = g.cfg_scale if mode != "none" else 1.0
    target_sc = bootstrap_target(T, xs, ts, ks, ys, ws, cfg, null, scale, mask)
    xf, tf, kf = _fm_inputs(x1[nb:], x0[nb:], cfg, gen)
    yf = _drop_labels(y[nb:], g.label_dropout, null, gen) if mode != "none" else y[nb:]
    nf = B - nb
    rows = Rows.cat([
        Rows(xs, ts, ks, ys, ws, target_sc, torch.full((nb,), SC, device=dev)),
        Rows(xf, tf, kf, yf, torch.zeros(nf, device=dev), velocity(x0[nb:], x1[nb:]), torch.full((nf,), FM, device=dev)),
    ])
    return rows, {"rows_sc": float(nb), "rows_fm": float(nf), "rows_cfg": float(mask.sum())}


def _guidance_inputs(xt, t, k, y, null: int) -> tuple:
    """Inputs of the guidance pair s(x,t,c,0,0), s(x,t,null,0,0) as one batch (conditional rows first)."""
    zeros = torch.zeros(2 * xt.shape[0], device=xt.device)
    return torch.cat([xt, xt]), torch.cat([t, t]), torch.cat([k, k]), torch.cat([y, torch.full_like(y, null)]), zeros


def _guided(pair_out: torch.Tensor, t, w, v, cfg: Config) -> torch.Tensor:
    """v + w_eff (s_cond - s_null) from the guidance pair's outputs; w_eff = 0 below t_interval."""
    n = v.shape[0]
    w_eff = torch.where(t >= cfg.guidance.t_interval, w, torch.zeros_like(w))
    return v + _b(w_eff, v) * (pair_out[:n] - pair_out[n:])


def guidance_target(net: Callable, xt, t, k, y, w, v, cfg: Config, null: int) -> torch.Tensor:
    """(x1 - x0) + w_eff sg[s(x,t,c,0,0) - s(x,t,null,0,0)], w_eff = 0 below t_interval (interval guidance)."""
    return _guided(net(*_guidance_inputs(xt, t, k, y, null)), t, w, v, cfg)


@torch.no_grad()
def targets_intrinsic(x1, y, x0, nets: dict, cfg: Config, gen: torch.Generator, null: int) -> tuple[Rows, dict]:
    """iSM intrinsic guidance: velocity rows (w=0), guidance rows (d=0, w>0) and guided consistency rows."""
    g = cfg.guidance
    B, dev = x1.shape[0], x1.device
    nb = _split(B, cfg)
    grid, pos = w_grid(cfg), w_grid(cfg, positive=True)
    # Self-consistency rows: w drawn from the whole grid and threaded through both half-steps; no recombination
    # inside the target, so guidance is not compounded across levels.
    xs, ts, ks = _sc_inputs(x1[:nb], x0[:nb], cfg, gen)
    ws = grid[torch.randint(0, grid.numel(), (nb,), generator=gen)].to(dev)
    xf, tf, kf = _fm_inputs(x1[nb:], x0[nb:], cfg, gen)
    nf = B - nb
    nv = nf if pos.numel() == 0 else int(round(nf * g.velocity_fraction))
    yv = _drop_labels(y[nb:nb + nv], g.label_dropout, null, gen)
    v = velocity(x0[nb:], x1[nb:])
    ng = nf - nv
    wg = pos[torch.randint(0, max(pos.numel(), 1), (ng,), generator=gen)].to(dev) if ng else torch.zeros(0, device=dev)
    src = {"online": nets["online"], "target": nets["target"], "infer": nets["infer"]}[g.w_source]
    sl = slice(nv, nf)
    T = sc_network(nets, cfg)
    if src is T and nb:
        # One forward for the first half-step and the guidance pair: on small CPU batches a network call costs
        # mostly its fixed per-layer overhead, so this saves about one call per step (rows are independent).
        first = (xs, ts, ks + 1, y[:nb], ws)
        pair = _guidance_inputs(xf[sl], tf[sl], kf[sl], y[nb + nv:], null)
        out = T(*(torch.cat([a, b]) for a, b in zip(first, pair)))
        v1 = out[:nb]
        target_g = _guided(out[nb:], tf[sl], wg, v[sl], cfg)
    else:
        v1 = None
        target_g = guidance_target(src, xf[sl], tf[sl], kf[sl], y[nb + nv:], wg, v[sl], cfg, null)
    target_sc = bootstrap_target(T, xs, ts, ks, y[:nb], ws, cfg, null, v1=v1)
    rows = Rows.cat([
        Rows(xs, ts, ks, y[:nb], ws, target_sc, torch.full((nb,), SC, device=dev)),
        Rows(xf[:nv], tf[:nv], kf[:nv], yv, torch.zeros(nv, device=dev), v[:nv], torch.full((nv,), FM, device=dev)),
        Rows(xf[sl], tf[sl], kf[sl], y[nb + nv:], wg, target_g, torch.full((ng,), GUID, device=dev)),
    ])
    return rows, {"rows_sc": float(nb), "rows_fm": float(nv), "rows_guid": float(ng),
                  "w_mean": float(torch.cat([ws, wg]).mean()) if nb + ng else 0.0}


TARGETS: dict[str, Callable] = {"none": targets_sm, "cfg_finest": targets_sm, "cfg_every_level": targets_sm,
                                "intrinsic": targets_intrinsic}


def build_rows(x1, y, x0, nets: dict, cfg: Config, gen: torch.Generator, null: int) -> tuple[Rows, dict]:
    """The rows of one training step for the configured guidance mode."""
    if not cfg.data.conditional:
        y = torch.full_like(y, null)
    return TARGETS[cfg.guidance.mode](x1, y, x0, nets, cfg, gen, null)
