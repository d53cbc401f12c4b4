"""Exponential moving averages of the weights: a single EMA (SM) or twin EMAs (iSM, docs/method.md#twin-ema).

Twin EMA: a fast copy ("target") makes the self-consistency targets and a slow copy ("infer") samples. Without twin
EMA one object serves both roles; build_emas returns it under both keys, so updating it once per step is enough.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ism.conf.config import Config, ema_decay


class EMA:
    """ema = decay * ema + (1 - decay) * param after every update; buffers are copied."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA: decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.num_updates = 0
        self._own = None  # the copy's tensor lists, built on first update

    @staticmethod
    def _tensors(model: nn.Module) -> tuple[list[str], list[torch.Tensor], list[str], list[torch.Tensor]]:
        """Parameter names, parameters, buffer names, buffers (in registration order)."""
        params, buffers = list(model.named_parameters()), list(model.named_buffers())
        return [n for n, _ in params], [t for _, t in params], [n for n, _ in buffers], [t for _, t in buffers]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards model's current weights."""
        if self._own is None:
            self._own = self._tensors(self.module)  # listed once: a per-step walk of the copy is wasted work
        en, ep, ebn, eb = self._own
        mn, mp, mbn, mb = self._tensors(model)
        if en != mn or ebn != mbn:
            raise ValueError("EMA.update: the model's parameters/buffers do not match the averaged copy's")
        if ep:
            # lerp(ema, p, 1 - decay) = decay * ema + (1 - decay) * p, fused over the whole tensor list.
            torch._foreach_lerp_(ep, [p.detach() for p in mp], 1.0 - self.decay)
        if eb:
            torch._foreach_copy_(eb, mb)
        self.num_updates += 1

    def state_dict(self) -> dict:
        """Averaged weights plus the decay and update count."""
        return {"decay": self.decay, "num_updates": self.num_updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore from state_dict(); a different decay means the run's EMA settings changed, which is an error."""
        if abs(float(state["decay"]) - self.decay) > 1e-12:
            raise ValueError(f"EMA.load_state_dict: checkpoint decay {state['decay']} differs from the configured "
                             f"{self.decay} (ema.* settings changed since the checkpoint)")
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])


def build_emas(model: nn.Module, cfg: Config) -> dict[str, EMA]:
    """{"target": EMA, "infer": EMA}: one shared object when twin EMA is off, two with their own decays when on."""
    e = cfg.ema
    if not e.twin:
        single = EMA(model, ema_decay(e.decay, e.half_life_steps))
        return {"target": single, "infer": single}
    return {"target": EMA(model, ema_decay(e.target_decay, e.target_half_life_steps)),
            "infer": EMA(model, ema_decay(e.infer_decay, e.infer_half_life_steps))}
