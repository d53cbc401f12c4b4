"""Targets: bootstrap = two half-steps, guided targets follow their formulas, interval guidance, row layout."""
import pytest
import torch

from ism.conf.config import resolve
from ism.training.objective import targets as T
from ism.training.rng import generator

NULL = 3


def cfg_of(*over):
    return resolve("toy2d", [], ["shortcut.clip=0", *over])


class DiracFlow:
    """Exact flow-matching velocity when all data sit at one point c: v(x, t) = (c - (1-s) x) / (1 - (1-s) t)."""

    def __init__(self, c):
        self.c = c

    def __call__(self, x, t, k, y, w):
        s = 1 - T.SIGMA_MIN
        # x_t = (1 - s t) x0 + t c  =>  x0 = (x - t c) / (1 - s t);  v = c - s x0
        x0 = (x - t[:, None] * self.c) / (1 - s * t[:, None])
        return self.c - s * x0


class LabelNet:
    """A net whose output depends on label, level and w in a known way (for formula checks)."""

    def __call__(self, x, t, k, y, w):
        return x * 0.5 + (y.float() + 1)[:, None] + 0.1 * k.float()[:, None] + w[:, None]


def test_bootstrap_target_equals_two_half_steps_and_exact_shortcut():
    c = torch.tensor([[1.5, -0.5]])
    net = DiracFlow(c)
    cfg = cfg_of()
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    t = torch.rand(16, generator=torch.Generator().manual_seed(1)) * 0.5
    k = torch.randint(0, 6, (16,), generator=torch.Generator().manual_seed(2))
    xt = T.interpolate(x0, c.expand(16, 2), t)
    y, w = torch.zeros(16, dtype=torch.long), torch.zeros(16)
    got = T.bootstrap_target(net, xt, t, k, y, w, cfg, NULL)
    h = torch.pow(2.0, -(k.float() + 1))[:, None]
    v1 = net(xt, t, k + 1, y, w)
    v2 = net(xt + h * v1, t + h.flatten(), k + 1, y, w)
    torch.testing.assert_close(got, (v1 + v2) / 2)
    # Straight paths: the average velocity over any jump equals the instantaneous one, c - s x0.
    torch.testing.assert_close(got, T.velocity(x0, c.expand(16, 2)), atol=1e-4, rtol=1e-4)


def test_bootstrap_target_clips_like_the_sm_code():
    cfg = resolve("toy2d", [], ["shortcut.clip=1.0"])
    big = lambda x, t, k, y, w: torch.full_like(x, 10.0)  # noqa: E731
    x = torch.zeros(4, 2)
    out = T.bootstrap_target(big, x, torch.zeros(4), torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long),
                             torch.zeros(4), cfg, NULL)
    assert out.abs().max() <= 1.0


def test_guidance_target_formula_and_interval():
    cfg = cfg_of("guidance.mode=intrinsic", "guidance.t_interval=0.3")
    net = LabelNet()
    n = 8
    x = torch.randn(n, 2)
    t = torch.linspace(0, 0.9, n)
    k = torch.full((n,), 7)
    y = torch.ones(n, dtype=torch.long)
    w = torch.full((n,), 2.0)
    v = torch.randn(n, 2)
    got = T.guidance_target(net, x, t, k, y, w, v, cfg, NULL)
    zeros = torch.zeros(n)
    diff = net(x, t, k, y, zeros) - net(x, t, k, torch.full_like(y, NULL), zeros)  # = (1+1) - (3+1) = -2
    w_eff = torch.where(t >= 0.3, w, zeros)
    torch.testing.assert_close(got, v + w_eff[:, None] * diff)
    assert torch.allclose(got[t < 0.3], v[t < 0.3]), "interval guidance: no guidance below t_interval"
    assert not torch.allclose(got[t >= 0.3], v[t >= 0.3])


def cfg_bootstrap(net, xt, t, k, y, scale: float) -> torch.Tensor:
    """Oracle, written out from the SM code: two half-steps at level k + 1, each velocity v_null + s (v_c - v_null)
    (scale 1 = the plain conditional velocity); no clipping (cfg_of sets shortcut.clip=0)."""
    h = 2.0 ** -(k.float() + 1)
    zeros = torch.zeros(len(t))

    def g(x, tt):
        v_c = net(x, tt, k + 1, y, zeros)
        v_null = net(x, tt, k + 1, torch.full_like(y, NULL), zeros)
        return v_null + scale * (v_c - v_null)

    v1 = g(xt, t)
    v2 = g(xt + h[:, None] * v1, t + h)
    return (v1 + v2) / 2


def test_cfg_finest_guides_only_the_finest_shortcut_rows():
    cfg = cfg_of("guidance.mode=cfg_finest", "guidance.cfg_scale=2.0", "optim.batch_size=64",
                 "shortcut.bootstrap_fraction=0.5")
    nets = {k: LabelNet() for k in ("online", "target", "infer")}
    x1, x0 = torch.randn(64, 2), torch.randn(64, 2)
    y = torch.randint(0, 3, (64,))
    rows, diag = T.build_rows(x1, y, x0, nets, cfg, generator(0, 0, "rows"), NULL)
    sc = rows.kind == T.SC
    assert int(sc.sum()) == 32
    K = 7
    finest = sc & (rows.k == K - 1)
    assert 0 < int(finest.sum()) < 32 and diag["rows_cfg"] == float(finest.sum())
    # Rows at the finest shortcut level (d = 1/64) get CFG at scale 2 in both half-steps; all others none.
    scale = torch.where(finest[sc], 2.0, 1.0)
    want = torch.cat([cfg_bootstrap(LabelNet(), rows.xt[i:i + 1], rows.t[i:i + 1], rows.k[i:i + 1],
                                    rows.y[i:i + 1], float(scale[j]))
                      for j, i in enumerate(sc.nonzero().flatten().tolist())])
    torch.testing.assert_close(rows.target[sc], want)


def test_cfg_every_level_guides_every_conditional_shortcut_row():
    cfg = cfg_of("guidance.mode=cfg_every_level", "guidance.cfg_scale=2.0", "shortcut.bootstrap_fraction=0.5",
                 "guidance.label_dropout=0.25")
    nets = {k: LabelNet() for k in ("online", "target", "infer")}
    x1, x0, y = torch.randn(64, 2), torch.randn(64, 2), torch.randint(0, 3, (64,))
    rows, diag = T.build_rows(x1, y, x0, nets, cfg, generator(0, 1, "rows"), NULL)
    sc = rows.kind == T.SC
    cond = sc & (rows.y != NULL)
    assert diag["rows_cfg"] == float(cond.sum()) and 0 < cond.sum() < sc.sum()
    assert len(set(rows.k[cond].tolist())) > 1, "guided rows span several levels"
    # Every conditional shortcut row, at every level, is v_null + 2 (v_c - v_null) in both half-steps; the rows whose
    # label was dropped to null stay unguided (v_null itself), so the unconditional branch never compounds.
    for i in sc.nonzero().flatten().tolist():
        sl = slice(i, i + 1)
        want = cfg_bootstrap(LabelNet(), rows.xt[sl], rows.t[sl], rows.k[sl], rows.y[sl], 2.0 if cond[i] else 1.0)
        torch.testing.assert_close(rows.target[sl], want, msg=f"row {i} (level {int(rows.k[i])}, label "
                                   f"{int(rows.y[i])})")


def test_intrinsic_rows_layout():
    cfg = cfg_of("guidance.mode=intrinsic", "optim.batch_size=64", "shortcut.bootstrap_fraction=0.25",
                 "guidance.velocity_fraction=0.5", "guidance.w_max=3.5", "guidance.w_step=0.25")
    nets = {k: LabelNet() for k in ("online", "target", "infer")}
    x1, x0, y = torch.randn(64, 2), torch.randn(64, 2), torch.randint(0, 3, (64,))
    rows, diag = T.build_rows(x1, y, x0, nets, cfg, generator(0, 2, "rows"), NULL)
    assert (diag["rows_sc"], diag["rows_fm"], diag["rows_guid"]) == (16.0, 24.0, 24.0)
    fm, guid, sc = rows.kind == T.FM, rows.kind == T.GUID, rows.kind == T.SC
    assert torch.all(rows.w[fm] == 0) and torch.all(rows.w[guid] > 0) and torch.all(rows.w[guid] <= 3.5)
    assert torch.all(rows.k[fm | guid] == 7) and torch.all(rows.k[sc] < 7)
    grid = set((torch.arange(15) * 0.25).tolist())
    assert set(rows.w[sc | guid].tolist()) <= grid
    assert torch.all(rows.y[guid] != NULL) and torch.all(rows.y[sc] != NULL)
    # Shortcut rows sit on the grid of their own jump: t * 2^k is an integer.
    tk = rows.t[sc] * torch.pow(2.0, rows.k[sc].float())
    torch.testing.assert_close(tk, tk.round())


def test_unconditional_data_uses_the_null_class():
    cfg = resolve("toy2d", [], ["data.conditional=false", "guidance.mode=none"])
    nets = {k: LabelNet() for k in ("online", "target", "infer")}
    rows, _ = T.build_rows(torch.randn(32, 2), torch.randint(0, 3, (32,)), torch.randn(32, 2), nets, cfg,
                           generator(0, 0, "rows"), NULL)
    assert torch.all(rows.y == NULL)


class CountingNet(LabelNet):
    """LabelNet that counts its forward calls and rows."""

    def __init__(self):
        self.calls, self.rows = 0, 0

    def __call__(self, x, t, k, y, w):
        self.calls, self.rows = self.calls + 1, self.rows + x.shape[0]
        return super().__call__(x, t, k, y, w)


def test_intrinsic_batches_the_first_half_step_with_the_guidance_pair():
    over = ["guidance.mode=intrinsic", "optim.batch_size=64", "guidance.w_max=3.5", "guidance.w_step=0.25"]
    x1, x0, y = torch.randn(64, 2), torch.randn(64, 2), torch.randint(0, 3, (64,))
    shared = CountingNet()  # target EMA makes both the shortcut targets and the guidance pair (the default)
    rows, diag = T.build_rows(x1, y, x0, {"online": CountingNet(), "target": shared, "infer": CountingNet()},
                              cfg_of(*over), generator(0, 3, "rows"), NULL)
    nb, ng = int(diag["rows_sc"]), int(diag["rows_guid"])
    assert shared.calls == 2 and shared.rows == nb + 2 * ng + nb
    # the same rows and targets as the unbatched path (guidance pair from another, identical net)
    online, target = CountingNet(), CountingNet()
    ref, _ = T.build_rows(x1, y, x0, {"online": online, "target": target, "infer": CountingNet()},
                          cfg_of(*over, "guidance.w_source=online"), generator(0, 3, "rows"), NULL)
    assert online.calls == 1 and target.calls == 2
    for f in ("xt", "t", "k", "y", "w", "target", "kind"):
        torch.testing.assert_close(getattr(rows, f), getattr(ref, f))


# ----------------------------------------------------------------------------------------------- level allocation
# The SM code's layout (targets_shortcut.py, dt_base): jnp.repeat(K-1 ... 0, n // K), padded with level 0. Written
# out by hand for the embedded (8 rows) and paper-like batch shares, K = 7 (128 steps).
SM_LAYOUTS = {
    8: [6, 5, 4, 3, 2, 1, 0, 0],
    7: [6, 5, 4, 3, 2, 1, 0],
    16: [6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0, 0, 0],
    3: [0, 0, 0],
}


@pytest.mark.parametrize("n", sorted(SM_LAYOUTS))
def test_default_level_allocation_is_the_sm_layout(n):
    cfg = cfg_of()
    assert cfg.shortcut.level_allocation == "sm"
    assert T.sc_levels(n, 7, cfg.shortcut.level_allocation).tolist() == SM_LAYOUTS[n]


@pytest.mark.parametrize("n", [32, 64, 100])
def test_sm_layout_gives_the_one_step_level_its_block_plus_the_remainder(n):
    k = T.sc_levels(n, 7, "sm")
    counts = torch.bincount(k, minlength=7).tolist()
    assert counts == [n // 7 + n % 7] + [n // 7] * 6


def test_cycle_allocation_is_kept_as_an_option():
    assert T.sc_levels(8, 7, "cycle").tolist() == [6, 5, 4, 3, 2, 1, 0, 6]


def test_training_rows_follow_the_configured_allocation():
    B = 32  # toy2d: 8 self-consistency rows at bootstrap_fraction 0.25
    for alloc in ("sm", "cycle"):
        cfg = cfg_of(f"shortcut.level_allocation={alloc}", "shortcut.bootstrap_fraction=0.25", "guidance.mode=none")
        x1, x0 = torch.randn(B, 2), torch.randn(B, 2)
        y = torch.arange(B) % NULL
        nets = {k: LabelNet() for k in ("online", "target", "infer")}
        rows, _ = T.build_rows(x1, y, x0, nets, cfg, torch.Generator().manual_seed(0), NULL)
        got = rows.k[rows.kind == T.SC].tolist()
        assert got == T.sc_levels(8, cfg.shortcut.max_steps_log2, alloc).tolist()
    assert got != T.sc_levels(8, cfg.shortcut.max_steps_log2, "sm").tolist()
