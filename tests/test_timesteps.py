"""Timestep densities of the flow-matching rows: drawn t follow the density on the grid (chi-square), uniform
reproduces the earlier draw bit for bit, self-consistency rows are untouched."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from ism.conf.config import ConfigError, replace, resolve
from ism.training.objective import targets as T
from ism.training.objective.timesteps import DENSITIES, density, draw_fm_t, grid_weights
from ism.training.rng import generator

NULL = 3


def cfg_of(*over):
    return resolve("toy2d", [], ["shortcut.clip=0", *over])


class LabelNet:
    def __call__(self, x, t, k, y, w):
        return x * 0.5 + (y.float() + 1)[:, None] + 0.1 * k.float()[:, None] + w[:, None]


@pytest.mark.parametrize("kind", DENSITIES)
def test_drawn_t_match_the_density_on_the_grid(kind):
    cfg = cfg_of(f"shortcut.t_density={kind}")
    n = 40000
    t = draw_fm_t(n, cfg, generator(0, 0, "rows"))
    idx = (t * 128).round().long()
    torch.testing.assert_close(idx.float() / 128, t)  # on the grid
    counts = torch.bincount(idx, minlength=128).numpy()
    expected = grid_weights(cfg.shortcut).numpy() * n
    keep = expected > 0
    assert counts[~keep].sum() == 0                   # zero-density points are never drawn (logit-normal at t=0)
    p = chisquare(counts[keep], expected[keep]).pvalue
    assert p > 1e-3, (kind, p)
    if kind != "uniform":  # the draw must differ from uniform (fails if the option were ignored)
        assert chisquare(counts, np.full(128, n / 128)).pvalue < 1e-6


def test_densities_have_their_published_shape():
    t = np.array([0.05, 0.5, 0.95])
    base = cfg_of().shortcut
    for kind in ("logit_normal", "mode", "cosine"):   # SD3: biased to the middle
        p = density(t, replace(cfg_of(), **{"shortcut.t_density": kind}).shortcut)
        assert p[1] > p[0] and p[1] > p[2] and math.isclose(p[0], p[2], rel_tol=1e-3), kind
    p = density(t, replace(cfg_of(), **{"shortcut.t_density": "u_shaped"}).shortcut)   # rfpp: both ends
    assert p[0] > p[1] < p[2]
    # logit-normal m shifts mass toward data (t -> 1) for m > 0
    p = density(t, replace(cfg_of(), **{"shortcut.t_density": "logit_normal", "shortcut.t_density_m": 1.0}).shortcut)
    assert p[2] > p[0]
    assert base.t_density == "uniform"


def test_uniform_reproduces_the_sm_draw_exactly():
    cfg = cfg_of("guidance.mode=cfg_finest", "optim.batch_size=64")
    gen = generator(5, 3, "rows")
    got = draw_fm_t(48, cfg, gen)
    want = torch.randint(0, 128, (48,), generator=generator(5, 3, "rows")).float() / 128
    assert torch.equal(got, want)


@pytest.mark.parametrize("mode", ["cfg_finest", "intrinsic"])
def test_density_moves_only_the_flow_matching_rows(mode):
    nets = {k: LabelNet() for k in ("online", "target", "infer")}
    x1, x0, y = torch.randn(64, 2), torch.randn(64, 2), torch.randint(0, 3, (64,))

    def rows(density):
        cfg = cfg_of(f"guidance.mode={mode}", "optim.batch_size=64", f"shortcut.t_density={density}")
        return T.build_rows(x1, y, x0, nets, cfg, generator(0, 1, "rows"), NULL)[0]
    a, b = rows("uniform"), rows("logit_normal")
    sc = a.kind == T.SC
    assert torch.equal(a.t[sc], b.t[sc]) and torch.equal(a.k[sc], b.k[sc])   # SC rows unchanged
    assert not torch.equal(a.t[~sc], b.t[~sc])
    assert torch.all(b.t[~sc] > 0)   # logit-normal never draws t = 0


def test_density_parameters_are_validated():
    with pytest.raises(ConfigError, match="shortcut.t_density"):
        cfg_of("shortcut.t_density=beta")
    with pytest.raises(ConfigError, match="shortcut.t_density_s"):
        cfg_of("shortcut.t_density_s=0")
