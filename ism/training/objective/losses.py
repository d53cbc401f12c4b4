"""Per-row regression loss: plain MSE or the multi-level wavelet loss, under the l2 or pseudo-Huber premetric.

pseudo-Huber (rfpp, Lee, Lin, Fanti 2024): sqrt(||e||^2 + c^2) - c of the row's whole error vector, c = 0.00054
sqrt(d): quadratic for tiny errors, linear (a norm) for the rest, so rows with large errors (early times, hard
self-consistency targets) pull less than under the squared error. With the wavelet loss it acts on the
lambda-weighted coefficient norm sum_b lambda_b ||E_b||^2 (reduction=sum, l2), which with all lambda = 1 is the
pixel norm by Parseval, so pseudo-Huber + flat wavelet weights equals pseudo-Huber on pixels exactly (tested).
A per-coefficient pseudo-Huber at this c (0.0086 on 16x16) would be plain L1 per coefficient, which
wavelet.distance=l1 / charbonnier already give.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ism.conf.config import Config


def mse_loss(pred: torch.Tensor, target: torch.Tensor, cfg: Config) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean squared error per row."""
    return (pred.float() - target.float()).pow(2).flatten(1).mean(1), {}


def huber_c(cfg: Config, d: int) -> float:
    """The pseudo-Huber c: loss.huber_c, or rfpp's 0.00054 sqrt(d) when 0."""
    return cfg.loss.huber_c if cfg.loss.huber_c > 0 else 0.00054 * math.sqrt(d)


def pseudo_huber(sq_norm: torch.Tensor, c: float) -> torch.Tensor:
    """sqrt(||e||^2 + c^2) - c from the squared norm per row."""
    return torch.sqrt(sq_norm + c * c) - c


def _squared_error(pred: torch.Tensor, target: torch.Tensor, cfg: Config) -> tuple[torch.Tensor, dict[str, float]]:
    """The configured squared error per row, as a mean over the row's numbers (MSE or the wavelet loss)."""
    if cfg.wavelet.enabled and pred.dim() == 4:
        from ism.training.objective.wavelet import wavelet_loss
        return wavelet_loss(pred.float(), target.float(), cfg.wavelet)
    return mse_loss(pred, target, cfg)


def row_loss(pred: torch.Tensor, target: torch.Tensor, cfg: Config, rows=None,
             features: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
             ) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss per row [B] and its diagnostics; the wavelet loss when wavelet.enabled (images only).

    feature_huber / lpips_huber need the rows (x_t, t) and `features` (ism.training.premetric): both velocities are
    extrapolated to images x_t + (1 - t) v, and the squared feature distance of the two joins the squared pixel
    norm under one pseudo-Huber, sqrt(||e||^2 + ||phi(x_hat) - phi(x_target)||^2 + c^2) - c."""
    per_row, diag = _squared_error(pred, target, cfg)
    dist = cfg.loss.distance
    if dist == "l2":
        return per_row, diag
    d = pred[0].numel()
    sq = per_row * d  # both the MSE and the wavelet loss (reduction=sum, l2) are a squared norm / d
    if dist in ("feature_huber", "lpips_huber"):
        if rows is None or features is None:
            raise ValueError(f"row_loss: loss.distance={dist} needs the rows and a feature distance (ism.training.premetric)")
        rest = (1 - rows.t.float()).view(-1, *([1] * (pred.dim() - 1)))
        xt = rows.xt.float()
        f = features(xt + rest * pred.float(), xt + rest * target.float())
        diag["loss/feature_sq"] = float(f.detach().mean())
        sq = sq + f
    return pseudo_huber(sq, huber_c(cfg, d)), diag


def batch_loss(per_row: torch.Tensor, kind: torch.Tensor, cfg: Config) -> torch.Tensor:
    """The scalar training loss from the per-row losses (loss.kind_weighting).

    row_share: the mean over rows, each kind weighted by its share of the batch (SM's code, one regression over a
    batch that mixes kinds). per_kind: sum over the kinds present of each kind's mean, the paper's
    L = L_FM + L_SC (+ L_guidance), so a kind with few rows is not outweighed by the velocity rows."""
    if cfg.loss.kind_weighting == "row_share":
        return per_row.mean()
    kinds = torch.unique(kind)
    return sum(per_row[kind == k].mean() for k in kinds)
