"""The guidance ruler, validated on samples whose guidance is known before it is believed:

- 2-D: the exact CFG-guided ODE of overlap3's known Gaussian densities, integrated finely (RK4, 128 steps: 512 evaluations) at scales
  1, 2, 4 and 8, is read back off a ruler calibrated on 128-step Euler CFG samples of the same densities from other
  noise; and rulers that cannot see guidance (one that ignores the class, one that saturates) fail the same check.
- MNIST: the exact CFG ODE of a Gaussian kernel density of real digits (the density is known, no network is trained)
  at 4x is separated from 1x by the domain classifier's logit margin, and not by a margin that ignores the class.
"""
import math

import numpy as np
import pytest
import torch

from ism.evaluation import ruler as R
from ism.training import toys
from ism.conf.config import resolve
from ism.training.data import load_dataset

TOLERANCE = 0.10          # relative error allowed on a recovered scale (measured: 0.966, 1.929, 3.882, 7.818)
KNOWN = (1.0, 2.0, 4.0, 8.0)
GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0)


def _noise(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=torch.float64), torch.arange(n) % 3


@pytest.fixture(scope="module")
def exact():
    """overlap3, calibration samples (128-step Euler CFG, noise seed 1), known-scale samples (RK4, noise seed 2)."""
    mix = toys.overlap3()
    x0, y = _noise(256, 1)
    calib = {w: mix.cfg_ode(x0, y, w, 128, "euler") for w in GRID}
    z0, yz = _noise(256, 2)
    known = {w: mix.cfg_ode(z0, yz, w, 128, "rk4") for w in KNOWN}
    return mix, (calib, y), (known, yz)


def _read_back(stat, exact) -> dict[float, float]:
    """{known scale: the scale a ruler on `stat` (per-point statistic of (mix, x, y)) reads}."""
    mix, (calib, y), (known, yz) = exact
    ruler = R.calibrate(list(calib), [float(stat(mix, x, y).mean()) for x in calib.values()])
    return {w: ruler.read(float(stat(mix, x, yz).mean())).scale for w, x in known.items()}


def _recovers(read: dict[float, float]) -> bool:
    return all(abs(r / w - 1) <= TOLERANCE for w, r in read.items())


def test_the_ruler_recovers_known_cfg_scales_of_the_exact_ode(exact):
    read = _read_back(R.class_llr, exact)
    assert _recovers(read), read


def _class_blind(mix, x, y):
    """A broken ruler: the unconditional log-density, which ignores the intended class."""
    return torch.logsumexp(mix.class_logp(x), 1)


def _wrong_class(mix, x, y):
    """A broken ruler: the right statistic read against the wrong class."""
    return R.class_llr(mix, x, (y + 1) % 3)


def _against_mixture(mix, x, y):
    """log p(x|c) - log p(x): bounded by log 3 on three equal classes, so it saturates."""
    lp = mix.class_logp(x)
    return lp.gather(1, y[:, None])[:, 0] - (torch.logsumexp(lp, 1) - math.log(3))


@pytest.mark.parametrize("broken", [_class_blind, _wrong_class])
def test_rulers_that_cannot_see_guidance_fail_the_same_check(exact, broken):
    assert not _recovers(_read_back(broken, exact))


def test_the_ratio_against_the_rest_keeps_rising_where_the_mixture_ratio_saturates(exact):
    mix, (calib, y), _ = exact
    rest = [float(R.class_llr(mix, calib[w], y).mean()) for w in (2.0, 4.0, 8.0, 16.0)]
    whole = [float(_against_mixture(mix, calib[w], y).mean()) for w in (2.0, 4.0, 8.0, 16.0)]
    assert all(b - a > 1.0 for a, b in zip(rest, rest[1:])), rest
    assert max(whole) - min(whole) < 0.05 and max(whole) <= math.log(3) + 1e-9, whole


def test_calibrate_reads_bounds_ties_and_a_non_monotone_curve():
    r = R.calibrate([4.0, 0.0, 1.0, 2.0], [3.0, 0.0, 1.0, 1.0])   # unsorted input; a tie at 1..2
    assert r.read(-1.0) == R.Reading(0.0, -1) and r.read(5.0) == R.Reading(4.0, 1)
    assert r.read(0.0) == R.Reading(0.0, 0)
    assert r.read(1.0).scale == pytest.approx(math.sinh((math.asinh(1) + math.asinh(2)) / 2))
    assert 2.0 < r.read(2.0).scale < 4.0
    noisy = R.calibrate([0.0, 1.0, 2.0, 3.0], [0.0, 2.0, 1.8, 3.0])  # isotonic fit pools the dip
    assert np.all(np.diff(noisy.stats) >= 0) and noisy.raw[2] == 1.8
    with pytest.raises(ValueError):
        R.calibrate([1.0, 1.0], [0.0, 1.0])


def test_calibration_grid_reaches_the_compounded_scale():
    for w in (1.5, 2.0, 3.0):
        grid = R.calibration_grid(w, 7)
        assert grid[-1] >= 2 * w ** 7 and grid[0] == 0.0 and list(grid) == sorted(grid)
        assert grid[-2] < 2 * w ** 7 or grid[-1] == 8.0, "no doubling beyond the first that reaches 2 w^7"
        # the fixed part 0 ... 8 (9 scales), then the fewest doublings of 8 that reach 2 w^7
        assert len(grid) == 9 + max(0, math.ceil(math.log2(2 * w ** 7 / 8.0)))


def test_exact_velocity_matches_a_monte_carlo_regression():
    """The closed-form E[v | x_t] against a nearest-neighbour average of sampled (x_t, v) pairs."""
    mix = toys.overlap3()
    g = torch.Generator().manual_seed(0)
    x1, y = mix.sample(200_000, g)
    x0 = torch.randn(x1.shape, generator=g, dtype=torch.float64)
    t = 0.6
    xt = (1 - (1 - toys.SIGMA_MIN) * t) * x0 + t * x1
    v = x1 - (1 - toys.SIGMA_MIN) * x0
    probe = torch.tensor([[0.3, -0.2], [-0.5, 0.4]], dtype=torch.float64)
    near = torch.cdist(probe, xt).argsort(1)[:, :2000]
    mc = v[near].mean(1)
    assert torch.allclose(mix.velocity(probe, t), mc, atol=0.06)
    cls = torch.tensor([0, 2])
    mc_c = torch.stack([v[(y == c) & (torch.cdist(probe[i:i + 1], xt)[0] < 0.1)].mean(0) for i, c in enumerate(cls)])
    assert torch.allclose(mix.velocity(probe, t, cls), mc_c, atol=0.08)


def _separation(a: torch.Tensor, b: torch.Tensor) -> float:
    """(mean b - mean a) in units of its standard error (Welch)."""
    return float((b.mean() - a.mean()) / (a.var() / len(a) + b.var() / len(b)).sqrt())


@pytest.mark.e2e
def test_the_domain_classifier_separates_4x_from_1x_guided_mnist(shared_cache):
    """Guided sets from a known density, no network trained: a Gaussian kernel density of 500 real digits (std 0.3
    around each), sampled by its exact CFG ODE (64 Euler steps) at scales 1 and 4 from the same noise. Measured:
    logit margin -1.0 +- 0.6 at 1x and 3.3 +- 0.5 at 4x (about 6 standard errors apart); read against the wrong
    class (a ruler blind to the intended class) -12.7 and -13.2, no rise."""
    from ism.training import extractors as E
    data = load_dataset(resolve("mnist-cpu").data)
    clf = E.domain_classifier(E.setup("mnist-cnn", data, root=shared_cache))
    idx = torch.cat([torch.nonzero(data.train_y == c).flatten()[:50] for c in range(10)])
    mix = toys.isotropic(data.train_x[idx].flatten(1), 0.3, data.train_y[idx], 10)
    n = 200
    x0 = torch.randn(n, mix.means.shape[1], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.arange(n) % 10
    logits = {w: R.classifier_logits(clf, mix.cfg_ode(x0, y, w, 64).float().view(n, *data.shape)) for w in (1.0, 4.0)}
    right = {w: R.logit_margin(lg, y) for w, lg in logits.items()}
    wrong = {w: R.logit_margin(lg, (y + 1) % 10) for w, lg in logits.items()}
    assert _separation(right[1.0], right[4.0]) > 3.0
    assert _separation(wrong[1.0], wrong[4.0]) < 3.0


class ExactNet(torch.nn.Module):
    """A 'network' whose velocity is a mixture's exact one: conditional, unconditional for the null class."""

    def __init__(self, mix):
        super().__init__()
        self.mix = mix
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # generate() reads the device off the parameters

    def forward(self, x, t, k, y, w):
        null = y == self.mix.num_classes
        vc = self.mix.velocity(x, float(t[0]), torch.where(null, torch.zeros_like(y), y))
        return torch.where(null[:, None], self.mix.velocity(x, float(t[0])), vc).float()


@pytest.mark.parametrize("mode, guidance, expected", [("cfg_finest", 2.0, 2.0), ("intrinsic", 1.0, 1.0)])
def test_the_evaluator_reads_an_exact_models_scale_in_cfg_units(mode, guidance, expected):
    """End to end through the evaluator's sampling, noise, labels and units: the exact model sampled with 128-step
    CFG 2 reads 2; an intrinsic 'model' that ignores its w input is unguided at any w and reads 1 (not 1 + w)."""
    from ism.evaluation import evaluate as EV
    key = "eval.cfg_scale" if mode != "intrinsic" else "eval.w"
    cfg = resolve("toy2d", overrides={"data.toy": "overlap3", "guidance.mode": mode, key: guidance,
                                      "guidance.t_interval": 0.0, "eval.num_samples": 256})
    data = load_dataset(cfg.data)
    net = ExactNet(toys.overlap3())
    samples = {s: EV.generate(net, cfg, data, 256, s, None)[1] for s in (1, 128)}
    rows = EV.effective_guidance_rows(net, cfg, data, samples, {}, None)
    read = {r["steps"]: r["value"] for r in rows if r["metric"] == "effective_guidance"}
    assert read[128] == pytest.approx(expected, rel=0.02)
    calib = [r["guidance"] for r in rows if r["metric"] == "guidance_ruler"]
    assert calib == list(R.calibration_grid(2.0, 7))  # the grid follows the nominal CFG-equivalent scale 2


def test_overlap3_points_follow_their_exact_mixture():
    cfg = resolve("toy2d", overrides={"data.toy": "overlap3"})
    data = load_dataset(cfg.data)
    mix = toys.overlap3()
    assert data.num_classes == 3 and data.shape == (2,)
    x = torch.cat([data.train_x, data.test_x]).double()
    y = torch.cat([data.train_y, data.test_y])
    for c in range(3):
        assert torch.allclose(x[y == c].mean(0), mix.means[c], atol=0.03)
        assert x[y == c].std(0).sub(toys.OVERLAP3_STD).abs().max() < 0.02
    # the classes overlap: the exact posterior's accuracy is well below 1 (0.875)
    acc = float((mix.class_logp(x).argmax(1) == y).double().mean())
    assert 0.84 < acc < 0.91


class _Recorder(torch.nn.Module):
    """v = 1 for the null class, 3 for a class, plus 100 w: records the w inputs it is given."""

    def __init__(self, null):
        super().__init__()
        self.null, self.ws = null, []

    def forward(self, x, t, k, y, w):
        self.ws.append(w.clone())
        v = torch.where(y == self.null, 1.0, 3.0) + 100 * w
        return v[:, None].expand_as(x)


def test_cfg_calibration_samples_plain_cfg_with_w_zero_and_the_interval():
    """sample(cfg_calibration=True) on an intrinsic run: two passes with w = 0 inputs, scale s above t_interval and 1
    below it (the run's own interval guidance), so its samples are true CFG in the CFG-equivalent unit."""
    from ism.training.sample import sample
    cfg = resolve("toy2d", overrides={"guidance.mode": "intrinsic", "guidance.t_interval": 0.5,
                                      "shortcut.max_steps_log2": 2, "eval.steps": [1, 4], "eval.sweep_steps": [4]})
    net = _Recorder(8)
    x = sample(net, torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), 4, cfg, 2.0, null=8, cfg_calibration=True)
    # steps at t = 0 and 0.25 lie wholly below 0.5: v = 1 + 1 (3 - 1) = 3; at 0.5 and 0.75: v = 1 + 2 (3 - 1) = 5
    assert torch.allclose(x, torch.full((4, 2), (3 + 3 + 5 + 5) / 4))
    assert all(float(w.abs().max()) == 0 for w in net.ws) and all(len(w) == 8 for w in net.ws)
    with pytest.raises(ValueError, match="cfg_calibration"):
        sample(net, torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), 2, cfg, 2.0, null=8, cfg_calibration=True)
