"""Diagnostics on synthetic tensors with known answers."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ism.evaluation import diagnostics as D


def _gauss(n, d=2, seed=0, shift=0.0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) + shift


def test_energy_distance_zero_on_identical_and_grows_with_shift():
    x = _gauss(500)
    assert D.energy_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    same = D.energy_distance(x, _gauss(500, seed=1))
    shifts = [D.energy_distance(x, _gauss(500, seed=1, shift=s)) for s in (0.5, 1.0, 2.0)]
    assert same < 0.05 < shifts[0] < shifts[1] < shifts[2]
    assert D.energy_distance(_gauss(500, seed=1, shift=2.0), x) == pytest.approx(shifts[2], rel=1e-9)  # symmetric
    # Point masses at 0 and at v: 2|v| - 0 - 0.
    assert D.energy_distance(torch.zeros(10, 2), torch.tensor([[3.0, 4.0]]).repeat(7, 1)) == pytest.approx(10.0)


def test_sliced_wasserstein_matches_shift_size():
    x = _gauss(2000)
    assert D.sliced_wasserstein(x, x) == pytest.approx(0.0, abs=1e-12)
    # Shifting by v moves each 1-D projection by <v, theta>; the mean |<v, theta>| over unit directions in 2-D
    # is |v| * 2 / pi.
    v = torch.tensor([3.0, 0.0])
    sw = D.sliced_wasserstein(x, x + v, num_projections=512)
    assert sw == pytest.approx(3.0 * 2 / math.pi, rel=0.05)
    assert D.sliced_wasserstein(x, _gauss(2000, seed=3)) < 0.1


def test_guidance_sweep_rows():
    rows = D.guidance_sweep(lambda w, s: torch.full((4, 2), w * s), lambda x: float(x.mean()), [0.0, 1.5], [1, 4],
                            "fid")
    assert [(r["guidance"], r["steps"], r["value"]) for r in rows] == [(0.0, 1, 0.0), (0.0, 4, 0.0), (1.5, 1, 1.5),
                                                                        (1.5, 4, 6.0)]
    assert all(r["metric"] == "fid" for r in rows)


def test_white_noise_spectrum_is_flat():
    x = torch.randn(256, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    f, p = D.radial_power_spectrum(x)
    assert f[0] == 0 and f[-1] == pytest.approx(0.5)
    p = p[1:]  # DC removed by centring
    assert np.all(np.abs(p / p.mean() - 1) < 0.1)      # every ring within 10 % of the mean power
    assert p.mean() == pytest.approx(1.0, rel=0.05)     # orthonormal FFT: unit-variance noise has unit power


def test_blurred_set_has_larger_top_band_error():
    g = torch.Generator().manual_seed(1)
    # "Data": random images with some spatial correlation; samples: a fresh draw, and a blurred fresh draw.
    def draw(n):
        return F.avg_pool2d(torch.randn(n, 1, 34, 34, generator=g), 3, stride=1)[..., :32, :32]
    data, fresh = draw(200), draw(200)
    blurred = F.avg_pool2d(F.pad(fresh, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
    e_fresh, e_blur = D.spectrum_top_error(fresh, data), D.spectrum_top_error(blurred, data)
    assert e_fresh < 0.1 < e_blur
    assert e_blur > 5 * e_fresh


def test_straightness_of_straight_and_curved_paths():
    x0, x1 = torch.randn(16, 1, 4, 4), torch.randn(16, 1, 4, 4)
    ts = torch.linspace(0, 1, 129)
    straight = [(1 - t) * x0 + t * x1 for t in ts]
    assert D.straightness(*D.path_lengths(straight)) == pytest.approx(1.0, abs=1e-9)
    # A quarter circle: arc length pi/2 over chord sqrt(2).
    arc = torch.stack([torch.stack([torch.cos(a), torch.sin(a)]) for a in ts * math.pi / 2])[:, None, :]
    assert D.straightness(*D.path_lengths(arc)) == pytest.approx((math.pi / 2) / math.sqrt(2), rel=1e-4)
    length, chord = D.path_lengths(straight)
    assert torch.allclose(length, chord)


def test_pairing_cost_and_sc_gap():
    x0 = torch.zeros(8, 1, 2, 2)
    x1 = torch.ones(8, 1, 2, 2) * 2
    assert D.pairing_cost(x0, x1) == pytest.approx(16.0)   # 4 pixels x 2^2
    assert D.sc_gap(x1, x1) == 0.0
    assert D.sc_gap(x0, x1) == pytest.approx(4.0)


def test_row_shape():
    r = D.row("straightness", 1.25, steps=128)
    assert r == {"steps": 128, "guidance": None, "metric": "straightness", "value": 1.25}
