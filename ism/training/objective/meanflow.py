"""MeanFlow (Geng et al. 2025) on the shared core, re-derived for t = 0 noise, t = 1 data.

The network u(x_t, t, d) is the average velocity over [t, t + d], so one jump is x_{t+d} = x_t + d u (the shortcut
models' form, with a continuous step d = the paper's t - r). With the end time e = t + d held fixed,
    d u(x_t, t, e - t) = int_t^e v(x_s, s) ds;   d/dt of both sides:  -u + d (du/dt) = -v,
so u = v + d du/dt, du/dt = v . d_x u + d_t u - d_d u the total derivative along the flow. In the paper's
convention (t = 1 noise, integrating backward to r < t) the sign is minus, u = v - (t - r) du/dt; integrating
forward here flips it. The JVP therefore runs in the network's inputs (x, t, d) with tangent (v, 1, -1) (the paper's
(v, 0, 1) in (z, r, t), mapped through t_ours = 1 - t, d = t - r).

Rows: a share method.mf_fraction has d > 0 (kind SC), the rest d = 0, where the target is the velocity itself (kind
FM, or GUID for intrinsic rows with w > 0). Guidance: the cfg_* modes fold CFG into the velocity at a fixed omega =
guidance.cfg_scale (the paper's v~ = omega v + (1 - omega) u(x_t, t, 0 | null), labels dropped at
guidance.label_dropout, where v~ = v); intrinsic takes w as an input (improved MeanFlow's choice), v~ = v + w sg[u(c)
- u(null)] at d = 0, w = 0 rows below guidance.t_interval as in iSM. The tangent is v~: the guided field is the one
whose average velocity is learned.
"""
from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ism.conf.config import Config
from ism.training.objective.targets import FM, GUID, SC, Rows, _b, _drop_labels, interpolate, sc_network, velocity, w_grid


def draw_times(n: int, n_jump: int, cfg: Config, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, d) per row: two logit-normal times, t the earlier (noisier), d the gap; d = 0 beyond the first n_jump."""
    m = cfg.method
    a = torch.sigmoid(torch.randn(n, generator=gen) * m.mf_t_s + m.mf_t_m)
    b = torch.sigmoid(torch.randn(n, generator=gen) * m.mf_t_s + m.mf_t_m)
    t, e = torch.minimum(a, b), torch.maximum(a, b)
    d = torch.where(torch.arange(n) < n_jump, e - t, torch.zeros(n))
    return t, d


def meanflow_target(net, x, t, d, y, w, v) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, sg[v + d du/dt]) with du/dt from one forward-mode JVP, tangent (v, 1, -1) in (x, t, d)."""
    def u_of(x_, t_, d_):
        return net(x_, t_, d_, y, w)
    ones = torch.ones_like(t)
    # The fused attention kernels (flash, memory-efficient) have no forward-mode derivative; the math kernel does.
    # Autocast is off: under bf16 autocast a convolution's forward-mode tangent kept float32 against bf16 weights
    # (a dtype error on CPU), so the JVP runs in float32.
    with sdpa_kernel(SDPBackend.MATH), torch.autocast(x.device.type, enabled=False):
        u, dudt = torch.func.jvp(u_of, (x, t, d), (v, ones, -ones))
    return u.detach(), (v + _b(d, v) * dudt).detach()


def _guided_velocity(net, x, t, y, w, v, cfg: Config, null: int, gen: torch.Generator):
    """v~ and the labels the rows train with, for the run's guidance mode (see the module doc)."""
    g, n, dev = cfg.guidance, x.shape[0], x.device
    zero_d = torch.zeros(n, device=dev)
    if g.mode in ("cfg_finest", "cfg_every_level"):
        y = _drop_labels(y, g.label_dropout, null, gen)
        idx = (y != null).nonzero(as_tuple=True)[0]
        if g.cfg_scale != 1.0 and idx.numel():
            u_null = net(x[idx], t[idx], zero_d[idx], torch.full_like(y[idx], null), w[idx])
            v = v.clone()
            v[idx] = g.cfg_scale * v[idx] + (1 - g.cfg_scale) * u_null.to(v.dtype)
        return v, y
    if g.mode == "intrinsic":
        idx = ((w > 0) & (t >= g.t_interval)).nonzero(as_tuple=True)[0]
        if idx.numel():
            xi, ti, zi = x[idx], t[idx], zero_d[idx]
            out = net(torch.cat([xi, xi]), torch.cat([ti, ti]), torch.cat([zi, zi]),
                      torch.cat([y[idx], torch.full_like(y[idx], null)]), torch.zeros(2 * idx.numel(), device=dev))
            v = v.clone()
            v[idx] = v[idx] + _b(w[idx], v[idx]) * (out[:idx.numel()] - out[idx.numel():]).to(v.dtype)
        plain = w == 0
        y = torch.where(plain, _drop_labels(y, g.label_dropout, null, gen), y)
        return v, y
    return v, y


def _intrinsic_w(n: int, cfg: Config, gen: torch.Generator) -> torch.Tensor:
    """w per row: 0 on guidance.velocity_fraction of the rows, the rest from the positive w grid."""
    pos = w_grid(cfg, positive=True)
    w = pos[torch.randint(0, max(pos.numel(), 1), (n,), generator=gen)] if pos.numel() else torch.zeros(n)
    plain = torch.rand(n, generator=gen) < cfg.guidance.velocity_fraction
    return torch.where(plain, torch.zeros(n), w)


@torch.no_grad()
def targets_meanflow(x1, y, x0, nets: dict, cfg: Config, gen: torch.Generator, null: int) -> tuple[Rows, dict]:
    """MeanFlow rows: the JVP target on d > 0 rows, the (guided) velocity on d = 0 rows."""
    B, dev = x1.shape[0], x1.device
    nj = 0 if cfg.method.mf_fraction <= 0 else max(1, int(round(B * cfg.method.mf_fraction)))
    t, d = draw_times(B, nj, cfg, gen)
    t, d = t.to(dev), d.to(dev)
    w = (_intrinsic_w(B, cfg, gen) if cfg.guidance.mode == "intrinsic" else torch.zeros(B)).to(dev)
    xt, v = interpolate(x0, x1, t), velocity(x0, x1)
    net = sc_network(nets, cfg)
    v, y = _guided_velocity(net, xt, t, y, w, v, cfg, null, gen)
    target = v.clone()
    if nj:
        # Forward-mode AD works under no_grad: no backward graph is built for the target.
        _, target[:nj] = meanflow_target(net, xt[:nj], t[:nj], d[:nj], y[:nj], w[:nj], v[:nj])
    kind = torch.where(torch.arange(B, device=dev) < nj, torch.full((B,), SC, device=dev),
                       torch.where(w > 0, torch.full((B,), GUID, device=dev), torch.full((B,), FM, device=dev)))
    rows = Rows(xt, t, d, y, w, target, kind)
    return rows, {"rows_sc": float(nj), "rows_fm": float((kind == FM).sum()),
                  "d_mean": float(d[:nj].mean()) if nj else 0.0}
