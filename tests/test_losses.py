"""Loss premetrics: pseudo-Huber on pixels and on the wavelet loss's weighted norm, its c, and the config rules."""
import math

import pytest
import torch

from ism.config import ConfigError, resolve
from ism.objective.losses import row_loss


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
