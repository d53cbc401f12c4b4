"""MeanFlow and consistency training (method.name): targets against closed forms, finite differences and hand-
stepped ODEs; samplers against exact consistency functions; the level-conditioned models left as they were."""
import math
from types import SimpleNamespace

import pytest
import torch

from ism.training import toys
from ism.conf.config import ConfigError, from_dict, resolve, run_id
from ism.training.models import build_model
from ism.training.objective import consistency as C
from ism.training.objective import meanflow as MF
from ism.training.objective.methods import build_rows
from ism.training.objective.targets import FM, SC, interpolate, velocity
from ism.training.rng import generator
from ism.training.sample import sample

NULL = 3


def _data(shape=(2,), classes=3):
    return SimpleNamespace(shape=shape, num_classes=classes, kind="points" if len(shape) == 1 else "image", name="t")


def _perturbed(model, scale=0.05, seed=1):
    """Random weights everywhere (the zero-initialised output layers would make every output 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


# ------------------------------------------------------------------------------------------------ config / models
def test_method_key_is_added_and_ct_refuses_guidance():
    assert run_id(from_dict({})) == run_id(from_dict({"method": {"name": "sm"}}))
    assert run_id(from_dict({"method": {"name": "meanflow"}})) != run_id(from_dict({}))
    with pytest.raises(ConfigError, match="guidance.mode.*method.name=ct"):
        from_dict({"method": {"name": "ct"}, "guidance": {"mode": "cfg_finest"}})
    with pytest.raises(ConfigError, match="method.name"):
        from_dict({"method": {"name": "rectified"}})
    with pytest.raises(ConfigError, match="eval.guidance_sweep.*folds its CFG"):
        from_dict({"method": {"name": "meanflow"}, "eval": {"guidance_sweep": [1.0, 2.0]}})
    from_dict({"method": {"name": "meanflow"}, "guidance": {"mode": "intrinsic"}, "eval": {"guidance_sweep": [1.0]}})


# Outputs of the level-conditioned models at commit 5c105b7 (before the continuous step input), same weights and
# inputs as below: the new embedding must leave them as they were.
BEFORE = {"unet-smoke": (-139.6859396888758, 214.35021136462456),
          "mlp2d-small": (-1.1575046852231026, 1.7754328325390816),
          "dit-tiny/4": (-73.88702637981623, 507.6501637576148)}


@pytest.mark.parametrize("name, shape, mode", [("unet-smoke", (1, 16, 16), "cfg_finest"),
                                               ("mlp2d-small", (2,), "intrinsic"),
                                               ("dit-tiny/4", (1, 16, 16), "intrinsic")])
def test_level_models_keep_their_outputs_and_meanflow_models_take_a_continuous_step(name, shape, mode):
    def build(method):
        torch.manual_seed(0)
        return build_model(from_dict({"model": {"name": name}, "guidance": {"mode": mode}, "method": {"name": method}}),
                           _data(shape))
    old, new = _perturbed(build("sm")), _perturbed(build("meanflow"))
    g = torch.Generator().manual_seed(1)
    for _ in old.parameters():  # the same draws _perturbed made, so x is the pinned input
        torch.randn(_.shape, generator=g)
    x = torch.randn(4, *shape, generator=g)
    t, y, w = torch.tensor([0.0, 0.25, 0.5, 0.99]), torch.tensor([0, 1, 2, 3]), torch.tensor([0.0, 0.5, 1.0, 2.0])
    with torch.no_grad():
        out = old(x, t, torch.tensor([7, 0, 3, 5]), y, w).double()
        assert (float(out.sum()), float(out.abs().sum())) == pytest.approx(BEFORE[name], rel=1e-6)
        assert not any("d_embed" in k for k in old.state_dict())
        assert any("d_embed" in k for k in new.state_dict()) and not any("k_embed" in k for k in new.state_dict())
        a, b = (new(x, t, torch.full((4,), d), y, w) for d in (0.25, 0.2501))
        assert 0 < (a - b).abs().max() < 0.05 * a.abs().max()  # continuous in d, and d is read


# ------------------------------------------------------------------------------------------------ MeanFlow target
def _field_net(u):
    """A 'network' from a closed-form average velocity u(x, t, d)."""
    return lambda x, t, d, y, w: u(x, t[:, None], d[:, None])


@pytest.mark.parametrize("case", ["time_only", "linear"])
def test_exact_average_velocity_is_the_fixed_point_of_the_meanflow_target(case):
    # v(x, s) = s: u = t + d / 2.  v(x, s) = x: the flow is x e^(s - t), u = x (e^d - 1) / d.
    # A sign error in the identity or in the tangent (v, 1, -1) moves the target off u.
    x = torch.randn(64, 2, dtype=torch.float64)
    t = torch.rand(64, dtype=torch.float64) * 0.7
    d = torch.rand(64, dtype=torch.float64) * (1 - t) + 1e-3
    if case == "time_only":
        u_fn, v = (lambda x_, t_, d_: (t_ + d_ / 2).expand_as(x_)), t[:, None].expand(64, 2)
    else:
        u_fn, v = (lambda x_, t_, d_: x_ * torch.expm1(d_) / d_), x
    u, target = MF.meanflow_target(_field_net(u_fn), x, t, d, None, None, v)
    assert torch.allclose(target, u, atol=1e-10)
    # the paper's sign, copied without re-deriving, misses
    _, wrong = MF.meanflow_target(_field_net(u_fn), x, t, -d, None, None, v)
    assert (wrong - u_fn(x, t[:, None], d[:, None])).abs().max() > 1e-2


def test_meanflow_jvp_matches_finite_differences_on_a_network():
    cfg = from_dict({"data": {"name": "toy2d"}, "model": {"name": "mlp2d-small"}, "guidance": {"mode": "none"},
                     "method": {"name": "meanflow"}})
    torch.manual_seed(0)
    net = _perturbed(build_model(cfg, _data()).double(), 0.02)
    g = torch.Generator().manual_seed(3)
    x, v = torch.randn(16, 2, generator=g, dtype=torch.float64), torch.randn(16, 2, generator=g, dtype=torch.float64)
    t = torch.rand(16, generator=g, dtype=torch.float64) * 0.5
    d = torch.rand(16, generator=g, dtype=torch.float64) * 0.4
    y, w = torch.randint(0, 3, (16,), generator=g), torch.zeros(16, dtype=torch.float64)
    u, target = MF.meanflow_target(net, x, t, d, y, w, v)
    eps = 1e-6
    with torch.no_grad():
        up = net(x + eps * v, t + eps, d - eps, y, w)
        um = net(x - eps * v, t - eps, d + eps, y, w)
    dudt_fd = (up - um) / (2 * eps)  # central differences along the tangent (v, 1, -1); O(eps^2) = 1e-7 off here
    assert torch.allclose((target - v) / d[:, None], dudt_fd, atol=1e-5)
    assert dudt_fd.abs().max() > 0.1  # the derivative is not trivially zero


def test_meanflow_rows_share_jumps_and_velocity_rows():
    cfg = resolve("smoke", [], ["method.name=meanflow", "guidance.mode=cfg_every_level", "guidance.cfg_scale=2"])
    torch.manual_seed(0)
    online = build_model(cfg, _data((1, 16, 16), 10))
    x1, x0 = torch.randn(16, 1, 16, 16), torch.randn(16, 1, 16, 16)
    rows, diag = build_rows(x1, torch.arange(16) % 10, x0, {"online": online, "target": online, "infer": online}, cfg,
                            generator(0, 0, "rows"), 10)
    nj = round(16 * cfg.method.mf_fraction)
    assert diag["rows_sc"] == nj and (rows.kind[:nj] == SC).all() and (rows.kind[nj:] == FM).all()
    assert (rows.k[:nj] > 0).all() and (rows.k[nj:] == 0).all() and rows.k.dtype.is_floating_point
    assert ((rows.t + rows.k) <= 1).all()
    # a zero-output network: the folded CFG target is omega v on labelled rows, v on dropped ones
    v = velocity(x0, x1)
    scale = torch.where(rows.y == 10, 1.0, 2.0).view(-1, 1, 1, 1)
    assert torch.allclose(rows.target, scale * v, atol=1e-6)
    assert torch.allclose(rows.xt, interpolate(x0, x1, rows.t))


def _rk4(mix, x, t0: float, t1: float, n: int = 64):
    """Integrate the mixture's exact ODE from t0 to t1 (RK4, float64)."""
    h = (t1 - t0) / n
    for j in range(n):
        s = t0 + j * h
        k1 = mix.velocity(x, s)
        k2 = mix.velocity(x + h / 2 * k1, s + h / 2)
        k3 = mix.velocity(x + h / 2 * k2, s + h / 2)
        k4 = mix.velocity(x + h * k3, s + h)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


@pytest.mark.e2e
def test_meanflow_learns_the_exact_average_velocity_on_a_toy():
    """Two 2-D Gaussians with exact velocities: after 400 steps u(z, 0, 1) is near the exact one-jump average
    velocity (RK4 of the exact ODE), far nearer than the zero guess and than the instantaneous velocity a
    flow-matching model would jump with (which lands every point between the modes)."""
    mix = toys.isotropic(torch.tensor([[-1.5, 0.0], [1.5, 0.0]]), 0.3, torch.zeros(2), 1)
    cfg = resolve("toy2d", [], ["data.conditional=false", "guidance.mode=none", "method.name=meanflow",
                                "model.name=mlp2d-small", "shortcut.target=online", "method.mf_fraction=0.75",
                                "method.mf_t_m=0.0", "method.mf_t_s=2.0"])
    torch.manual_seed(0)
    model = build_model(cfg, _data(classes=1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    steps = 400
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)  # a quiet end instead of an EMA
    nets = {"online": model, "target": model, "infer": model}
    for step in range(steps):
        g = generator(0, step, "toy")
        x1 = mix.sample(256, g)[0].float()[torch.randperm(256, generator=g)]
        rows, _ = build_rows(x1, torch.zeros(256, dtype=torch.long), torch.randn(256, 2, generator=g), nets, cfg,
                             generator(0, step, "rows"), 1, step)
        loss = (model(rows.xt, rows.t, rows.k, rows.y, rows.w) - rows.target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    z = torch.randn(512, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    exact = _rk4(mix, z, 0.0, 1.0) - z              # the exact average velocity over [0, 1]
    with torch.no_grad():
        u = model(z.float(), torch.zeros(512), torch.ones(512), torch.ones(512, dtype=torch.long), torch.zeros(512))
    err = (u.double() - exact).norm(dim=1).mean()
    zero, inst = exact.norm(dim=1).mean(), (mix.velocity(z, 0.0) - exact).norm(dim=1).mean()
    assert err < 0.5 * zero and err < 0.3 * inst, (float(err), float(zero), float(inst))


# ------------------------------------------------------------------------------------------------ consistency
def test_ct_curriculum_and_grid_follow_ict():
    cfg = from_dict({"method": {"name": "ct"}, "guidance": {"mode": "none"}, "run": {"steps": 800}})
    # s0 = 10 doubling to s1 = 1280: log2(128) + 1 = 8 stages of 100 steps
    assert [C.curriculum_n(s, cfg) for s in (0, 99, 100, 250, 699, 700, 799)] == [10, 10, 20, 40, 640, 1280, 1280]
    t = C.grid_times(10, cfg)
    assert t[0] == 0 and torch.all(t[1:] > t[:-1])
    assert t[1] == pytest.approx(1 / 81) and t[-1] == pytest.approx(1 / 1.002)
    p = C.interval_weights(t, cfg)
    assert p.sum() == pytest.approx(1.0) and (p > 0).all()
    # iCT's lognormal: the interval holding sigma = exp(P_mean) = 0.33 (t = 0.75) is the likeliest
    assert t[int(p.argmax())] <= 1 / (1 + math.exp(-1.1)) <= t[int(p.argmax()) + 1]


def test_ct_target_steps_the_exact_ode_of_a_point_mass():
    """With one data point c the conditional path is the exact ODE path; a zero network makes f(x, t) = x, so the
    row's target lands x_t on the hand-stepped (RK4) exact ODE at the next grid time."""
    cfg = resolve("toy2d", [], ["data.conditional=false", "guidance.mode=none", "method.name=ct", "run.steps=100",
                                "shortcut.target=online"])
    c = torch.tensor([[0.7, -1.2]], dtype=torch.float64)
    mix = toys.isotropic(c, 0.0, torch.zeros(1), 1)
    x1, x0 = c.float().expand(64, 2).contiguous(), torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    zero = lambda x, t, k, y, w: torch.zeros_like(x)
    rows, diag = build_rows(x1, torch.zeros(64, dtype=torch.long), x0, {"online": zero, "target": zero, "infer": zero},
                            cfg, generator(0, 50, "rows"), 1, step=50)
    assert diag["ct_n"] == C.curriculum_n(50, cfg) == 160  # stages of 100 // 8 = 12 steps: step 50 is in stage 4
    grid = C.grid_times(160, cfg)
    for r in range(64):
        t0 = float(rows.t[r])
        i = int(torch.argmin((grid - t0).abs()))
        t1 = float(grid[i + 1])
        x = _rk4(mix, rows.xt[r:r + 1].double(), t0, t1, 32)
        landed = rows.xt[r].double() + (1 - t0) * rows.target[r].double()
        assert torch.allclose(landed, x[0], atol=1e-4), (r, t0, t1)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_ct_sampler_returns_the_exact_consistency_function(steps):
    """For a point mass c, f(x, t) = c for every x and t; a net giving exactly that samples c at any step count,
    and the re-noising between steps is deterministic."""
    cfg = from_dict({"method": {"name": "ct"}, "guidance": {"mode": "none"}, "data": {"name": "toy2d"},
                     "model": {"name": "mlp2d-small"}})
    c = torch.tensor([0.3, -0.8])
    net = lambda x, t, k, y, w: (c - x) / (1 - t)[:, None]
    x0 = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    out, path = sample(net, x0, torch.zeros(32, dtype=torch.long), steps, cfg, trajectory=True)
    assert torch.allclose(out, c.expand(32, 2), atol=1e-5) and len(path) == steps + 1
    assert torch.equal(sample(net, x0, torch.zeros(32, dtype=torch.long), steps, cfg), out)


def test_meanflow_sampler_jumps_with_the_continuous_step():
    cfg = from_dict({"method": {"name": "meanflow"}, "guidance": {"mode": "none"}, "data": {"name": "toy2d"},
                     "model": {"name": "mlp2d-small"}})
    seen = []
    net = lambda x, t, k, y, w: seen.append(k.clone()) or torch.ones_like(x)
    out = sample(net, torch.zeros(8, 2), torch.zeros(8, dtype=torch.long), 4, cfg)
    assert torch.allclose(out, torch.ones(8, 2)) and all(torch.equal(k, torch.full((8,), 0.25)) for k in seen)


# ------------------------------------------------------------------------------------------------ report additions
def _sweep(fids: dict, walls: dict, steps: int = 100):
    """A Sweep from {(variant, steps): {seed: fid}} and {variant: {seed: wall seconds}}."""
    import pandas as pd
    from ism.report.load import Sweep
    variants = list(dict.fromkeys([v for v, _ in fids] + list(walls)))
    scores = pd.DataFrame([{"variant": v, "seed": s, "mlflow_id": f"{v}-{s}", "metric": "fid", "steps": n,
                            "guidance": math.nan, "sweep": False, "value": x}
                           for (v, n), by in fids.items() for s, x in by.items()])
    scalars = pd.DataFrame([{"variant": v, "seed": s, "mlflow_id": f"{v}-{s}", "key": "wall_time_s", "value": x}
                            for v, by in walls.items() for s, x in by.items()])
    trials = pd.DataFrame([{"variant": v, "seed": s, "mlflow_id": f"{v}-{s}", "status": "FINISHED",
                            "components": frozenset(), "run_id": f"{v}-{s}", "variants": v} for v in variants for s in (0, 1, 2)])
    params = {f"{v}-{s}": {"run.steps": str(steps)} for v in variants for s in (0, 1, 2)}
    return Sweep("", "methods", "", {}, {}, [], "", trials, scores, scalars, params, variants, [0, 1, 2], "sm",
                 pd.DataFrame())


def test_method_report_tables_follow_the_numbers():
    from ism.report import method_claims as M
    sm1, mf1, mf2 = {0: 40.0, 1: 44.0, 2: 38.0}, {0: 20.0, 1: 25.0, 2: 19.0}, {0: 15.0, 1: 18.0, 2: 16.0}
    sot1 = {0: 10.0, 1: 12.5, 2: 9.5}   # exactly half of meanflow's, seed by seed
    sw = _sweep({("sm", 1): sm1, ("meanflow", 1): mf1, ("meanflow", 2): mf2, ("meanflow+sot", 1): sot1,
                 ("ct", 1): {0: 30.0, 1: 31.0, 2: 29.0}, ("ct", 2): {0: 33.0, 1: 34.0, 2: 32.0}},
                {"sm": {0: 10.0, 1: 11.0, 2: 12.0}, "meanflow": {0: 30.0, 1: 33.0, 2: 36.0},
                 "sm+wavelet": {}, "ct+twin_ema": {}})
    res = {r.claim.problem: r for r in M.method_results(sw)}
    assert res["MeanFlow beats SM at 1 NFE"].verdict == "reproduced"
    geo = lambda d: math.exp(sum(math.log(x) for x in d.values()) / len(d))  # noqa: E731
    assert res["MeanFlow beats SM at 1 NFE"].ratio.mean == pytest.approx(geo(mf1) / geo(sm1))
    assert res["MeanFlow improves from 1 to 2 NFE"].verdict == "reproduced"
    assert res["consistency training improves from 1 to 2 steps"].verdict == "not reproduced"
    assert "iSM beats MeanFlow at 1 step" not in res  # no ism variant in this sweep
    assert "MeanFlow beats SM at 1 NFE at equal training CPU" not in res   # nor the CPU-matched MeanFlow
    slow = {0: 50.0, 1: 40.0, 2: 45.0}   # the CPU-matched MeanFlow worse than SM on two of three seeds
    res = {r.claim.problem: r for r in M.method_results(_sweep({("sm", 1): sm1, ("meanflow_cpu_matched", 1): slow}, {}))}
    eq = res["MeanFlow beats SM at 1 NFE at equal training CPU"]
    assert eq.verdict != "reproduced" and eq.ratio.mean == pytest.approx(geo(slow) / geo(sm1))
    assert eq.pair == ("sm @1", "meanflow_cpu_matched @1")
    tr = M.transfer_table(sw)
    assert [r[:2] for r in tr.rows] == [["meanflow", "sot"]]   # fix arms without a finished pair: no row of dashes
    row = tr.data[(tr.data["method"] == "meanflow") & (tr.data["fix"] == "sot") & (tr.data["steps"] == 1)].iloc[0]
    assert row["ratio"] == pytest.approx(0.5) and row["n"] == 3
    st = M.step_time_table(sw).data.set_index("variant")
    assert st.loc["sm", "sec_per_step"] == pytest.approx(0.11)
    assert st.loc["meanflow", "ratio_to_baseline"] == pytest.approx(3.0)


@pytest.mark.parametrize("name", ["dit-tiny/4", "unet-smoke"])
def test_meanflow_targets_run_through_attention_and_bf16_autocast(name):
    """Fused attention kernels have no forward-mode derivative, and a bf16-autocast convolution's tangent
    mismatched its weights: the JVP runs on the math kernel in float32 and gives finite targets."""
    cfg = resolve("smoke", [], ["method.name=meanflow", f"model.name={name}", "shortcut.target=online"])
    torch.manual_seed(0)
    net = _perturbed(build_model(cfg, _data((1, 16, 16), 10)))
    g = torch.Generator().manual_seed(0)
    x1, x0 = torch.randn(8, 1, 16, 16, generator=g), torch.randn(8, 1, 16, 16, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rows, diag = build_rows(x1, torch.arange(8) % 10, x0, {"online": net, "target": net, "infer": net}, cfg,
                                generator(0, 0, "rows"), 10)
    assert diag["rows_sc"] == 2 and torch.isfinite(rows.target).all() and rows.target.dtype == torch.float32
