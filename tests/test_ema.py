"""EMA copies move with their own decays (hand-computed), twin off shares one object, half-life conversion."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ism.conf.config import ema_decay, from_dict
from ism.training.objective.ema import EMA, build_emas

torch.set_num_threads(1)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def _set(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
        model[1].running_mean.fill_(value)


def test_half_life_conversion():
    assert ema_decay(0.95, 13.5) == pytest.approx(0.95, abs=1e-3)
    assert ema_decay(0.999, 0.0) == 0.999
    assert ema_decay(0.0, 150.0) ** 150 == pytest.approx(0.5)  # a weight's share halves every half-life


def test_each_copy_moves_with_its_own_decay():
    model = _net()
    _set(model, 1.0)
    cfg = from_dict({"ema": {"twin": True, "target_decay": 0.5, "infer_decay": 0.9}})
    emas = build_emas(model, cfg)
    assert emas["target"] is not emas["infer"]
    assert emas["target"].decay == 0.5 and emas["infer"].decay == 0.9
    for e in emas.values():
        assert not e.module.training and not any(p.requires_grad for p in e.module.parameters())
    # params go 1 -> 3 (one update), then 5, 7; by hand: target (0.5) 2 -> 3.5 -> 5.25, infer (0.9) 1.2 -> 1.58 -> 2.122
    by_hand = {"target": [2.0, 3.5, 5.25], "infer": [1.2, 1.58, 2.122]}
    for i, v in enumerate([3.0, 5.0, 7.0]):
        _set(model, v)
        for name, e in emas.items():
            e.update(model)
            for p in e.module.parameters():
                torch.testing.assert_close(p, torch.full_like(p, by_hand[name][i]))
    for name, e in emas.items():
        # buffers are copied, not averaged
        torch.testing.assert_close(e.module[1].running_mean, torch.full((4,), 7.0))
        assert e.num_updates == 3
    assert all(p.item() == 7.0 for p in model[0].bias)  # the live model is untouched


def test_twin_off_shares_one_object_and_half_life():
    model = _net()
    emas = build_emas(model, from_dict({"ema": {"twin": False, "half_life_steps": 13.5}}))
    assert emas["target"] is emas["infer"]
    assert emas["target"].decay == pytest.approx(0.95, abs=1e-3)
    twin = build_emas(model, from_dict({"ema": {"twin": True, "target_half_life_steps": 5.0,
                                                 "infer_half_life_steps": 150.0}}))
    assert twin["target"].decay ** 5 == pytest.approx(0.5) and twin["infer"].decay ** 150 == pytest.approx(0.5)


def test_state_dict_roundtrip():
    model = _net()
    e = EMA(model, 0.8)
    _set(model, 2.0)
    e.update(model)
    other = EMA(_net(), 0.8)
    other.load_state_dict(e.state_dict())
    for a, b in zip(e.module.state_dict().values(), other.module.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert other.num_updates == 1
    with pytest.raises(ValueError, match="decay"):
        EMA(_net(), 0.9).load_state_dict(e.state_dict())
    with pytest.raises(ValueError, match="decay"):
        EMA(model, 1.0)
