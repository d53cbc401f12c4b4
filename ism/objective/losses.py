"""Per-row regression loss: plain MSE or the multi-level wavelet loss, with one signature."""
from __future__ import annotations

import torch

from ism.config import Config


def mse_loss(pred: torch.Tensor, target: torch.Tensor, cfg: Config) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean squared error per row."""
    return (pred.float() - target.float()).pow(2).flatten(1).mean(1), {}


def row_loss(pred: torch.Tensor, target: torch.Tensor, cfg: Config) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss per row [B] and its diagnostics; the wavelet loss when wavelet.enabled (images only)."""
    if cfg.wavelet.enabled and pred.dim() == 4:
        from ism.objective.wavelet import wavelet_loss
        return wavelet_loss(pred.float(), target.float(), cfg.wavelet)
    return mse_loss(pred, target, cfg)
