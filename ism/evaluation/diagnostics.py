"""Diagnostics for the five problems iSM names, as functions on plain tensors (evaluate.py wires them to runs).

- compounding guidance: `guidance_sweep` (a metric across w); the effective guidance scale is ism.evaluation.ruler's;
- frequency bias: `radial_power_spectrum`, `spectrum_top_error` (log-spectral error in the top frequency bands);
- straightness: `straightness` (path length / chord; 1 for an exactly straight flow), `pairing_cost`;
- self-consistency: `sc_gap` (distance between few-step and many-step samples from the same noise);
- 2-D distributions: `energy_distance`, `sliced_wasserstein`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from scipy.stats import wasserstein_distance

from ism.training.objective.coupling import pairing_cost  # noqa: F401  (training logs it too; defined there)

Tensor = torch.Tensor


def row(metric: str, value: float, steps: int | None = None, guidance: float | None = None, **extra) -> dict:
    """One tidy-table row (train_step, n, extractor and ref_hash are filled in by the evaluator)."""
    return {"steps": steps, "guidance": guidance, "metric": metric, "value": float(value), **extra}


# ----------------------------------------------------------------------------------------------- 2-D distances
def energy_distance(x: Tensor, y: Tensor) -> float:
    """Multivariate energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| (V-statistic; 0 iff the samples coincide).

    Written here because scipy.stats.energy_distance is 1-D only and dcor is not part of the stack; it is three
    torch.cdist means.
    """
    x, y = x.double().flatten(1), y.double().flatten(1)
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def sliced_wasserstein(x: Tensor, y: Tensor, num_projections: int = 128, seed: int = 0) -> float:
    """Mean 1-D Wasserstein-1 distance (scipy) over random unit directions (fixed seed, so values compare)."""
    x, y = x.double().flatten(1), y.double().flatten(1)
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(num_projections, x.shape[1], generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    px, py = (x @ dirs.T).numpy(), (y @ dirs.T).numpy()
    return float(np.mean([wasserstein_distance(px[:, i], py[:, i]) for i in range(num_projections)]))


# ----------------------------------------------------------------------------------------------- guidance
def guidance_sweep(sample_fn: Callable[[float, int], Tensor], score_fn: Callable[[Tensor], float],
                   ws: Sequence[float], steps: Sequence[int], metric: str) -> list[dict]:
    """score_fn(sample_fn(w, steps)) for every (w, steps): tidy rows with the guidance column set."""
    return [row(metric, score_fn(sample_fn(float(w), int(s))), steps=int(s), guidance=float(w))
            for w in ws for s in steps]


def rms_displacement(a: Tensor, b: Tensor) -> float:
    """sqrt(mean_i ||a_i - b_i||^2): how far a guidance value moves samples drawn from the same noise and labels."""
    return float((a.double() - b.double()).flatten(1).pow(2).sum(1).mean().sqrt())


def select_best(sweep_rows: list[dict], steps: int) -> float:
    """The guidance value with the lowest metric among the sweep rows at `steps` (ties: the smaller value)."""
    rows = [r for r in sweep_rows if r["steps"] == steps]
    return min(rows, key=lambda r: (r["value"], r["guidance"]))["guidance"]


# ----------------------------------------------------------------------------------------------- frequency bias
def radial_power_spectrum(x: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum of images [N, C, H, W]: (radius in cycles/pixel, mean power per ring).

    The ring binning is done here (numpy bincount over integer radii): scipy/torch give the 2-D FFT but no
    radial average. Images are mean-centred per channel so the DC term does not swamp the lowest ring.
    """
    if x.dim() != 4:
        raise ValueError(f"radial_power_spectrum expects [N, C, H, W] images, got {tuple(x.shape)}")
    x = x.double()
    x = x - x.mean(dim=(2, 3), keepdim=True)
    h, w = x.shape[-2:]
    power = (torch.fft.fft2(x, norm="ortho").abs() ** 2).mean(dim=(0, 1)).numpy()  # [H, W]
    fy, fx = np.fft.fftfreq(h), np.fft.fftfreq(w)
    r = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    # One ring per 1/max(H, W) cycles/pixel, up to the Nyquist radius 0.5 (corners beyond it are dropped).
    step = 1.0 / max(h, w)
    idx = np.rint(r / step).astype(int)
    nbins = int(round(0.5 / step)) + 1
    keep = idx < nbins
    sums = np.bincount(idx[keep], weights=power[keep], minlength=nbins)
    counts = np.bincount(idx[keep], minlength=nbins)
    ok = counts > 0
    return (np.arange(nbins) * step)[ok], sums[ok] / counts[ok]


def spectrum_top_error(samples: Tensor, data: Tensor, top_fraction: float = 0.25) -> float:
    """Mean |log P_samples - log P_data| over the rings in the top `top_fraction` of frequencies (DC excluded)."""
    f1, p1 = radial_power_spectrum(samples)
    f2, p2 = radial_power_spectrum(data)
    if len(f1) != len(f2):
        raise ValueError("spectrum_top_error: samples and data must have the same image size")
    p1, p2 = p1[1:], p2[1:]  # the DC ring is ~0 after centring
    k = max(1, int(round(len(p1) * top_fraction)))
    eps = 1e-12
    return float(np.mean(np.abs(np.log(p1[-k:] + eps) - np.log(p2[-k:] + eps))))


# ----------------------------------------------------------------------------------------------- transport
def path_lengths(path: Sequence[Tensor] | Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample (polyline length, chord length) of trajectories [T+1, N, ...] (or a list of T+1 states)."""
    p = torch.stack(list(path)) if not torch.is_tensor(path) else path
    p = p.double().flatten(2)  # [T+1, N, D]
    length = (p[1:] - p[:-1]).norm(dim=2).sum(dim=0)
    chord = (p[-1] - p[0]).norm(dim=1)
    return length, chord


def straightness(length: Tensor, chord: Tensor) -> float:
    """Mean path length / chord over samples (path_lengths): 1 for exactly straight trajectories, larger when they
    bend."""
    return float((length / chord.clamp_min(1e-12)).mean())


def sc_gap(a: Tensor, b: Tensor) -> float:
    """Self-consistency gap: mean squared per-coordinate distance between two samples from the same noise."""
    return float((a.double() - b.double()).pow(2).mean())
