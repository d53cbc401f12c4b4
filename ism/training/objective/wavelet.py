"""Differentiable multi-level 2-D DWT in torch (pywavelets filters, periodization) and the iSM wavelet loss.

Written by hand because pywavelets works on numpy arrays only (no torch tensors, no autograd), and the loss must
backpropagate into the network. The filters come from `pywt.Wavelet`, and the output matches
`pywt.wavedec2(x, wavelet, mode="periodization", level=L, axes=(-2, -1))` coefficient for coefficient (tested).

Periodization keeps every band exactly half the size of its parent and, for an orthogonal wavelet, makes the
transform orthonormal, so the summed squared coefficients equal the summed squared pixels (Parseval): a summed l2
with all band weights 1 is exactly MSE, so the loss acts only through its band weights (docs/method.md#multi-level-wavelet-loss). The
default (reduction=sum, weights ramping from wavelet.finest_weight on the finest level to 1 on the coarsest, LL 1)
keeps every coefficient at or above MSE's weight and puts the most on the finest details, the loss's stated purpose.
The per-band mean (reduction=band_mean) is kept as an option; it is coarse-heavy: a band's mean weights each of its
coefficients by 1/size, so the small coarse bands dominate (docs/results.md#wavelet-loss).

Band names: pywt's (cH, cV, cD) are called LH, HL, HH here (cH = low-pass along the width, high-pass along the
height), and the coarsest approximation is LL. Levels count from 1 = finest.
"""
from __future__ import annotations

import functools

import pywt
import torch
import torch.nn.functional as F
from torch import Tensor

from ism.conf.config import ConfigError, WaveletConfig, dwt_levels

DETAIL_BANDS = ("LH", "HL", "HH")  # pywt's cH, cV, cD
CHARBONNIER_EPS = 1e-3


@functools.lru_cache(maxsize=None)
def _filters(name: str) -> tuple[tuple[float, ...], ...]:
    """(dec_lo, dec_hi, rec_lo, rec_hi) of an orthogonal pywavelets wavelet."""
    try:
        w = pywt.Wavelet(name)
    except ValueError as e:
        raise ConfigError(f"wavelet.wavelet: '{name}' is not a pywavelets discrete wavelet ({e})") from None
    if not w.orthogonal:
        raise ConfigError(f"wavelet.wavelet: '{name}' is not orthogonal; use haar, dbN, symN or coifN")
    return tuple(w.dec_lo), tuple(w.dec_hi), tuple(w.rec_lo), tuple(w.rec_hi)


def _kernels(filters: tuple[tuple[float, ...], tuple[float, ...]], like: Tensor) -> Tensor:
    """Four separable 2-D kernels [LL, LH, HL, HH] as a [4, 1, F, F] weight (first factor along the height)."""
    lo = torch.tensor(filters[0], dtype=like.dtype, device=like.device)
    hi = torch.tensor(filters[1], dtype=like.dtype, device=like.device)
    pairs = ((lo, lo), (hi, lo), (lo, hi), (hi, hi))  # (height, width): cA, cH, cV, cD
    return torch.stack([a[:, None] * b[None, :] for a, b in pairs])[:, None]


def _wrap_index(n: int, flen: int, device) -> Tensor:
    """Circular indices so a stride-2 cross-correlation reproduces pywt's periodized convolution.

    pywt computes out[o] = sum_j h[j] x[(2o + F/2 - j) mod n]; correlating with the reversed filter over a signal
    padded circularly by F-1-F/2 on the left and F/2-1 on the right gives the same sum. Indexing (not F.pad)
    allows pads longer than the signal, which happens for long filters at the coarsest levels.
    """
    left, right = flen - 1 - flen // 2, flen // 2 - 1
    return torch.arange(-left, n + right, device=device) % n


def _check_size(h: int, w: int, what: str) -> None:
    if h % 2 or w % 2:
        raise ValueError(f"{what}: a periodized DWT level needs even sizes, got {h}x{w}; "
                         "use fewer levels (wavelet.levels) or an image side divisible by 2^levels")


def _dwt_level(x: Tensor, name: str) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """One analysis level on [N, 1, H, W] -> cA, (cH, cV, cD), each [N, 1, H/2, W/2]."""
    dec_lo, dec_hi, _, _ = _filters(name)
    flen = len(dec_lo)
    h, w = x.shape[-2:]
    _check_size(h, w, "dwt2")
    xp = x[..., _wrap_index(h, flen, x.device), :][..., _wrap_index(w, flen, x.device)]
    # Cross-correlation with the reversed decomposition filters = pywt's convolution.
    weight = _kernels((dec_lo[::-1], dec_hi[::-1]), x)
    out = F.conv2d(xp, weight, stride=2)
    return out[:, :1], (out[:, 1:2], out[:, 2:3], out[:, 3:4])


def _idwt_level(ca: Tensor, details: tuple[Tensor, Tensor, Tensor], name: str) -> Tensor:
    """One synthesis level: the adjoint (= inverse, the transform being orthonormal) of `_dwt_level`."""
    _, _, rec_lo, rec_hi = _filters(name)
    flen = len(rec_lo)
    h, w = 2 * ca.shape[-2], 2 * ca.shape[-1]
    # For an orthogonal wavelet rec_* is dec_* reversed, i.e. exactly the analysis correlation weights, so the
    # transposed convolution with rec_* is the adjoint; folding the circular padding back with index_add closes it.
    weight = _kernels((rec_lo, rec_hi), ca)
    y = F.conv_transpose2d(torch.cat([ca, *details], dim=1), weight, stride=2)
    ih, iw = _wrap_index(h, flen, ca.device), _wrap_index(w, flen, ca.device)
    y = y.new_zeros(*y.shape[:-2], y.shape[-2], w).index_add(-1, iw, y)
    return y.new_zeros(*y.shape[:-2], h, w).index_add(-2, ih, y)


def max_levels(size: int | tuple[int, int], wavelet: str = "haar") -> int:
    """Deepest periodized DWT for this image side: the number of exact halvings that leave every band >= 1 pixel.

    This is the count of factors of two in the (smaller) side: 16 -> 4, 32 -> 5, 28 -> 2. It is the same for every
    wavelet, because periodization wraps long filters around small bands instead of running out of samples
    (pywt.dwt_max_level is stricter for long filters, e.g. 2 for db2 on 16 pixels, as it avoids boundary effects
    of the padding modes; with periodization there are none, and the transform stays orthonormal).
    """
    _filters(wavelet)  # validates the name
    sides = (size, size) if isinstance(size, int) else tuple(size)
    return min(dwt_levels(int(s)) for s in sides)


def _resolve_levels(h: int, w: int, wavelet: str, levels: int) -> int:
    """levels=0 means the maximum; more than the maximum is a config error naming the key."""
    top = max_levels((h, w), wavelet)
    if levels == 0:
        return top
    if levels > top:
        raise ConfigError(f"wavelet.levels: {levels} is too many for {h}x{w} images; allowed 1..{top} (or 0 = {top})")
    return levels


def dwt2(x: Tensor, wavelet: str = "haar", levels: int = 0) -> list:
    """Multi-level 2-D DWT over the last two axes, per channel: [cA_L, (cH_L, cV_L, cD_L), ..., (cH_1, cV_1, cD_1)].

    Same structure, order and values as pywt.wavedec2(..., mode="periodization", level=levels, axes=(-2, -1));
    levels=0 means max_levels. Differentiable.
    """
    if x.dim() < 2:
        raise ValueError(f"dwt2: expected [..., H, W], got shape {tuple(x.shape)}")
    lead, (h, w) = x.shape[:-2], x.shape[-2:]
    levels = _resolve_levels(h, w, wavelet, levels)
    ca = x.reshape(-1, 1, h, w)
    details = []
    for _ in range(levels):
        ca, d = _dwt_level(ca, wavelet)
        details.append(d)

    def back(t: Tensor) -> Tensor:
        return t.reshape(*lead, *t.shape[-2:])

    return [back(ca)] + [tuple(back(t) for t in d) for d in reversed(details)]


def idwt2(coeffs: list, wavelet: str = "haar") -> Tensor:
    """Inverse of dwt2 (perfect reconstruction, differentiable)."""
    ca = coeffs[0]
    lead = ca.shape[:-2]
    ca = ca.reshape(-1, 1, *ca.shape[-2:])
    for d in coeffs[1:]:
        ca = _idwt_level(ca, tuple(t.reshape(-1, 1, *t.shape[-2:]) for t in d), wavelet)
    return ca.reshape(*lead, *ca.shape[-2:])


def _distance(e: Tensor, kind: str) -> Tensor:
    """Per-coefficient distance of an error e."""
    if kind == "l2":
        return e.square()
    if kind == "l1":
        return e.abs()
    if kind == "charbonnier":
        return torch.sqrt(e.square() + CHARBONNIER_EPS ** 2) - CHARBONNIER_EPS
    raise ConfigError(f"wavelet.distance: {kind!r} is not allowed; choose one of l2, l1, charbonnier")


def default_level_weights(levels: int, finest_weight: float) -> list[float]:
    """The default ramp, finest first: finest_weight at level 1 falling linearly to 1 at the coarsest level.

    Why a ramp under reduction=sum: every coefficient keeps at least MSE's weight (the LL band and the coarsest
    details exactly MSE's) and the finest details, which MSE under-trains relative to their perceptual share, get
    the most. It beat MSE and the per-band mean on MNIST (docs/results.md#wavelet-loss). One level gets
    finest_weight alone.
    """
    if levels == 1:
        return [float(finest_weight)]
    return [finest_weight + (1.0 - finest_weight) * i / (levels - 1) for i in range(levels)]


def _band_weights(cfg: WaveletConfig, levels: int) -> list[float]:
    """Weight per detail level, finest first."""
    if not cfg.level_weights:
        return default_level_weights(levels, cfg.finest_weight)
    if len(cfg.level_weights) != levels:
        raise ConfigError(f"wavelet.level_weights: {len(cfg.level_weights)} values given but the DWT has {levels} "
                          "levels; give one weight per level (finest first) or leave it empty for the default ramp")
    if any(v < 0 for v in cfg.level_weights):
        raise ConfigError(f"wavelet.level_weights: {list(cfg.level_weights)} has a negative weight; allowed >= 0")
    return [float(v) for v in cfg.level_weights]


# The DWT is linear: for small images one dense [H*W, H*W] matrix applies every level in a single matmul, which on a
# CPU step is several times cheaper (forward and backward) than ~4 small strided convolutions per level. Larger
# images keep the convolutional transform (the matrix grows as (H*W)^2).
DENSE_MAX_PIXELS = 1024


@functools.lru_cache(maxsize=64)
def _band_layout(h: int, w: int, wavelet: str, levels: int) -> tuple[tuple[str, int, int], ...]:
    """(name, level, size) of every band in flattening order: LL_L (level 0 here), then LH/HL/HH from level L to 1."""
    c = dwt2(torch.zeros(1, h, w), wavelet, levels)
    out = [(f"L{levels}_LL", 0, c[0].numel())]
    for i, det in enumerate(c[1:]):
        out += [(f"L{levels - i}_{n}", levels - i, t.numel()) for n, t in zip(DETAIL_BANDS, det)]
    return tuple(out)


def _flat_coeffs(x: Tensor, wavelet: str, levels: int) -> Tensor:
    """dwt2 of [N, H, W], every band flattened and concatenated in _band_layout order: [N, H*W]."""
    c = dwt2(x, wavelet, levels)
    parts = [c[0]] + [t for det in c[1:] for t in det]
    return torch.cat([t.reshape(x.shape[0], -1) for t in parts], dim=1)


@functools.lru_cache(maxsize=16)
def _dense_operator(wavelet: str, levels: int, h: int, w: int, device: str, dtype: torch.dtype) -> Tensor:
    """M with x.flatten() @ M == _flat_coeffs(x): the transform of each basis image, one per row."""
    eye = torch.eye(h * w, dtype=torch.float64).reshape(h * w, h, w)
    return _flat_coeffs(eye, wavelet, levels).to(device=device, dtype=dtype)


def _flat_error_coeffs(e: Tensor, wavelet: str, levels: int) -> Tensor:
    """Flattened coefficients [B, C, H*W] of an error [B, ..., H, W] (dense matmul when small, else convolutions)."""
    b, (h, w) = e.shape[0], e.shape[-2:]
    flat = e.reshape(-1, h, w)
    if h * w <= DENSE_MAX_PIXELS:
        m = _dense_operator(wavelet, levels, h, w, str(e.device), e.dtype)
        coef = flat.reshape(-1, h * w) @ m
    else:
        coef = _flat_coeffs(flat, wavelet, levels)
    return coef.reshape(b, -1, h * w)


@functools.lru_cache(maxsize=16)  # the same few shapes every training step
def _coefficient_weights(cfg: WaveletConfig, layout: tuple[tuple[str, int, int], ...], channels: int, numel: int,
                         device: str) -> Tensor:
    """Weight of every flattened coefficient so that sum(D * weight) is the configured reduction of one row."""
    lw = _band_weights(cfg, max(level for _, level, _ in layout))  # the deepest level is L
    lam = [cfg.ll_weight if level == 0 else lw[level - 1] for _, level, _ in layout]
    if cfg.reduction == "band_mean":
        total_w = sum(lam)
        if total_w <= 0:
            raise ConfigError("wavelet.level_weights / wavelet.ll_weight: all band weights are 0; at least one must be > 0")
        per_band = [wt / (size * channels * total_w) for wt, (_, _, size) in zip(lam, layout)]
    elif cfg.reduction == "sum":
        per_band = [wt / numel for wt in lam]
    else:
        raise ConfigError(f"wavelet.reduction: {cfg.reduction!r} is not allowed; choose one of band_mean, sum")
    sizes = torch.tensor([size for _, _, size in layout])
    return torch.repeat_interleave(torch.tensor(per_band, dtype=torch.float32), sizes).to(device)


def wavelet_loss(pred: Tensor, target: Tensor, cfg: WaveletConfig) -> tuple[Tensor, dict[str, float]]:
    """Per-row multi-level wavelet loss [B] and per-band diagnostics (batch means).

    sum (default): sum of lambda_b * D over all coefficients / pixel count, which for l2 and all weights 1 is exactly
    the MSE (Parseval control). band_mean: sum_b lambda_b * mean_b(D) / sum_b lambda_b over the LL band and every
    LH/HL/HH band (coarse-heavy: the few coarse coefficients dominate).
    Plus mse_weight * MSE. The DWT is linear, so it is taken once, of pred - target.
    """
    if pred.shape != target.shape or pred.dim() < 3:
        raise ValueError(f"wavelet_loss: pred and target must be equal-shaped [B, ..., H, W], got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    b, (h, w) = pred.shape[0], pred.shape[-2:]
    levels = _resolve_levels(h, w, cfg.wavelet, cfg.levels)
    layout = _band_layout(h, w, cfg.wavelet, levels)
    err = pred - target
    d = _distance(_flat_error_coeffs(err, cfg.wavelet, levels), cfg.distance)  # [B, C, H*W]
    weights = _coefficient_weights(cfg, layout, d.shape[1], pred[0].numel(), str(d.device))
    per_row = (d * weights).sum(dim=(1, 2))
    if cfg.mse_weight > 0:
        per_row = per_row + cfg.mse_weight * err.square().reshape(b, -1).mean(dim=1)

    with torch.no_grad():
        means = d.mean(dim=(0, 1)).split([size for _, _, size in layout])
        diag = {f"wavelet/{name}": float(m.mean()) for (name, _, _), m in zip(layout, means)}
    return per_row, diag
