"""Loss premetrics: pseudo-Huber on pixels and on the wavelet loss's weighted norm, its c, and the config rules."""
import math

import pytest
import torch

from ism.conf.config import ConfigError, resolve
from ism.training.objective.losses import row_loss


def cfg_of(*over):
    return resolve("smoke", [], list(over))


def _pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 1, 16, 16, generator=g), torch.randn(6, 1, 16, 16, generator=g)


def test_pseudo_huber_is_rfpp_formula_with_default_c():
    pred, target = _pair()
    got, _ = row_loss(pred, target, cfg_of("loss.distance=pseudo_huber"))
    c = 0.00054 * math.sqrt(256)
    want = torch.sqrt((pred - target).square().flatten(1).sum(1) + c * c) - c
    torch.testing.assert_close(got, want)
    mse, _ = row_loss(pred, target, cfg_of())
    assert not torch.allclose(got, mse)   # the option is not ignored
    # a given c is used
    got2, _ = row_loss(pred, target, cfg_of("loss.distance=pseudo_huber", "loss.huber_c=3.0"))
    torch.testing.assert_close(got2, torch.sqrt((pred - target).square().flatten(1).sum(1) + 9.0) - 3.0)


def test_pseudo_huber_is_quadratic_near_zero_and_linear_far():
    pred = torch.zeros(2, 1, 16, 16)
    target = torch.zeros(2, 1, 16, 16)
    target[0, 0, 0, 0], target[1, 0, 0, 0] = 1e-4, 100.0
    got, _ = row_loss(pred, target, cfg_of("loss.distance=pseudo_huber"))
    c = 0.00054 * 16
    assert math.isclose(float(got[0]), 1e-8 / (2 * c), rel_tol=1e-3)   # e^2 / 2c
    assert math.isclose(float(got[1]), 100.0 - c, rel_tol=1e-4)          # |e| - c


def test_pseudo_huber_composes_with_the_wavelet_loss():
    pred, target = _pair(1)
    flat = ["wavelet.enabled=true", "wavelet.level_weights=[1,1,1,1]", "wavelet.ll_weight=1"]
    ph = "loss.distance=pseudo_huber"
    pix, _ = row_loss(pred, target, cfg_of(ph))
    wav_flat, _ = row_loss(pred, target, cfg_of(ph, *flat))
    torch.testing.assert_close(wav_flat, pix, rtol=1e-5, atol=1e-5)      # Parseval: flat weights = pixel norm
    wav_ramp, _ = row_loss(pred, target, cfg_of(ph, "wavelet.enabled=true", "wavelet.finest_weight=4"))
    sq, _ = row_loss(pred, target, cfg_of("wavelet.enabled=true", "wavelet.finest_weight=4"))
    c = 0.00054 * 16
    torch.testing.assert_close(wav_ramp, torch.sqrt(sq * 256 + c * c) - c)
    assert not torch.allclose(wav_ramp, pix)


def test_loss_distance_config_rules():
    with pytest.raises(ConfigError, match="wavelet.reduction=sum"):
        cfg_of("loss.distance=pseudo_huber", "wavelet.enabled=true", "wavelet.reduction=band_mean")
    with pytest.raises(ConfigError, match="loss.lpips_weights: not set.*TorchScript"):
        cfg_of("loss.distance=lpips_huber")
    with pytest.raises(ConfigError, match="is not a file"):
        cfg_of("loss.distance=lpips_huber", "loss.lpips_weights=/nonexistent/lpips.pt")
    with pytest.raises(ConfigError, match="loss.distance"):
        cfg_of("loss.distance=huber")


# ----------------------------------------------------------------------------------------------- feature premetrics
class TinyLPIPS(torch.nn.Module):
    """A stand-in LPIPS with the real calling convention: net(a, b) -> [B, 1, 1, 1] on RGB images."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, a, b):
        return (self.conv(a) - self.conv(b)).square().mean(dim=(1, 2, 3), keepdim=True)


def _rows(pred):
    from ism.training.objective.targets import Rows
    n = pred.shape[0]
    g = torch.Generator().manual_seed(3)
    return Rows(torch.randn(pred.shape, generator=g), torch.rand(n, generator=g), torch.zeros(n, dtype=torch.long),
                torch.zeros(n, dtype=torch.long), torch.zeros(n), torch.zeros_like(pred), torch.zeros(n))


def test_lpips_huber_loads_a_local_torchscript_network_and_uses_it(tmp_path):
    from ism.training.premetric import feature_distance
    path = tmp_path / "lpips.pt"
    torch.jit.script(TinyLPIPS()).save(str(path))
    cfg = cfg_of("loss.distance=lpips_huber", f"loss.lpips_weights={path}")
    fn = feature_distance(cfg, None, None, torch.device("cpu"))
    pred, target = _pair(2)
    rows = _rows(pred)
    got, diag = row_loss(pred, target, cfg, rows, fn)
    ref = TinyLPIPS()
    rest = (1 - rows.t).view(-1, 1, 1, 1)
    a, b = rows.xt + rest * pred, rows.xt + rest * target
    lp = ref(a.repeat(1, 3, 1, 1), b.repeat(1, 3, 1, 1)).flatten()
    c = 0.00054 * 16
    want = torch.sqrt((pred - target).square().flatten(1).sum(1) + lp + c * c) - c
    torch.testing.assert_close(got, want)
    assert diag["loss/feature_sq"] > 0
    ph, _ = row_loss(pred, target, cfg_of("loss.distance=pseudo_huber"))
    assert torch.all(got > ph)  # the feature term is not ignored
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a network")
    with pytest.raises(ConfigError, match="not a TorchScript LPIPS network"):
        feature_distance(cfg_of("loss.distance=lpips_huber", f"loss.lpips_weights={bad}"), None, None,
                         torch.device("cpu"))


def test_feature_huber_adds_the_domain_cnn_feature_distance_and_its_gradient(shared_cache):
    from ism.training.data import load_dataset
    from ism.training.premetric import feature_distance
    cfg = cfg_of("loss.distance=feature_huber")
    fn = feature_distance(cfg, load_dataset(cfg.data), shared_cache, torch.device("cpu"))
    pred, target = _pair(4)
    pred.requires_grad_(True)
    rows = _rows(pred)
    got, diag = row_loss(pred, target, cfg, rows, fn)
    ph, _ = row_loss(pred, target, cfg_of("loss.distance=pseudo_huber"))
    assert diag["loss/feature_sq"] > 0 and torch.all(got > ph)
    g_feat = torch.autograd.grad(got.sum(), pred)[0]
    g_ph = torch.autograd.grad(ph.sum(), pred)[0]
    assert not torch.allclose(g_feat, g_ph)          # the CNN shapes the gradient
    with pytest.raises(ConfigError, match="cache root"):
        feature_distance(cfg, load_dataset(cfg.data), None, torch.device("cpu"))
    with pytest.raises(ValueError, match="needs the rows"):
        row_loss(pred, target, cfg)


def test_training_with_feature_huber_logs_the_feature_term(shared_cache, tmp_path):
    import json

    from ism.training.train import train
    cfg = cfg_of("loss.distance=feature_huber", f"run.out_dir={tmp_path}", "run.progress=false", "eval.at_end=false",
                 "run.steps=2", "run.log_every=1")
    train(cfg, tmp_path / "r", cache_root=shared_cache)
    stats = [json.loads(ln) for ln in (tmp_path / "r" / "stats.jsonl").read_text().splitlines()]
    assert all(s["loss/feature_sq"] > 0 and math.isfinite(s["loss"]) for s in stats)


# ----------------------------------------------------------------------------------------------- kind weighting
def test_kind_weighting_row_share_is_the_plain_mean_and_per_kind_the_paper_sum():
    from ism.conf.config import resolve
    from ism.training.objective.losses import batch_loss
    per_row = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 10.0, 4.0])
    kind = torch.tensor([0, 0, 0, 0, 0, 0, 1, 2])   # six velocity rows, one consistency row, one guidance row
    share = batch_loss(per_row, kind, resolve("toy2d", [], []))
    paper = batch_loss(per_row, kind, resolve("toy2d", [], ["loss.kind_weighting=per_kind"]))
    assert share.item() == pytest.approx(20.0 / 8)
    assert paper.item() == pytest.approx(1.0 + 10.0 + 4.0)   # L_FM + L_SC + L_guidance, each a mean


def test_per_kind_weighting_gives_a_rare_kind_the_weight_of_a_common_one():
    from ism.conf.config import resolve
    from ism.training.objective.losses import batch_loss
    per_row = torch.ones(10, requires_grad=True)
    kind = torch.tensor([0] * 9 + [1])
    batch_loss(per_row, kind, resolve("toy2d", [], ["loss.kind_weighting=per_kind"])).backward()
    g = per_row.grad
    assert g[9].item() == pytest.approx(9 * g[0].item())          # one row carries its kind's whole weight
    assert g[kind == 1].sum().item() == pytest.approx(g[kind == 0].sum().item())
