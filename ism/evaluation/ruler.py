"""A ruler for guidance strength: a statistic that rises with the CFG scale, calibrated on many-step CFG samples and
read backwards, so any sample's guidance is given as the CFG scale that produces the same statistic.

Statistics (one number per sample set, higher = more strongly guided toward the intended class):
- 2-D toys with a known generating mixture (ism.training.toys): the mean log-likelihood ratio of the intended class against
  the other classes, log p(x|c) - log p(x|not c). The ratio against the whole mixture, log p(x|c) - log p(x), is
  bounded by log(1/p(c)) and saturates early: on overlap3's exact CFG ODE it reads 1.08 at scale 2 and 1.098 from
  scale 4 on (the bound is log 3 = 1.0986), while the ratio against the rest goes 5.8 / 8.1 / 15.1 / 37.1 at scales
  2 / 4 / 17 / 128 (tests/test_ruler.py measures it).
- images: the domain classifier's mean logit margin of the intended class (its logit minus the largest other
  one); log p(c|x) saturates at 0 the same way.

Calibration: the statistic of CFG samples at a grid of scales, up to its peak, is made non-decreasing (isotonic
regression, scikit-learn) and inverted by piecewise-linear interpolation of asinh(scale); a statistic beyond the grid reads as the grid's end
with its bound flag set (the true scale is at least / at most that).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ism.training.extractors import _as_float, to_uint8
from ism.training.toys import Mixture


@dataclass(frozen=True)
class Reading:
    """A scale read off the ruler; bound +1: the statistic lies above the calibrated range (scale >= value),
    -1: below it (scale <= value), 0: inside."""
    scale: float
    bound: int


@dataclass(frozen=True)
class Ruler:
    """Calibration scales (ascending) and their statistic, made non-decreasing."""
    scales: np.ndarray
    stats: np.ndarray
    raw: np.ndarray       # the measured statistic before the isotonic fit (up to its peak)

    def read(self, stat: float) -> Reading:
        """The scale whose calibrated statistic equals `stat` (interpolated linearly between grid points)."""
        s, w = self.stats, self.scales
        if stat > s[-1]:
            return Reading(float(w[-1]), 1)
        if stat < s[0]:
            return Reading(float(w[0]), -1)
        # Flat stretches (isotonic ties) read as their midpoint scale: one point per distinct statistic value.
        uniq, first = np.unique(s, return_index=True)
        last = len(s) - 1 - np.unique(s[::-1], return_index=True)[1]
        # Interpolate asinh(scale): ~linear below 1, ~log above, so the doubling steps of the grid's top are read
        # geometrically (the statistic grows ~ sqrt(scale) there on overlap3's exact CFG ODE).
        mids = (np.arcsinh(w[first]) + np.arcsinh(w[last])) / 2
        return Reading(float(np.sinh(np.interp(stat, uniq, mids))), 0)


def calibrate(scales: Sequence[float], stats: Sequence[float]) -> Ruler:
    """A ruler from the statistic measured at each calibration scale (at least two scales)."""
    from sklearn.isotonic import IsotonicRegression  # scikit-learn is part of the stack (two_moons, this fit)
    order = np.argsort(np.asarray(scales, dtype=float))
    w = np.asarray(scales, dtype=float)[order]
    s = np.asarray(stats, dtype=float)[order]
    if len(w) < 2 or len(np.unique(w)) != len(w):
        raise ValueError(f"calibrate: need at least two distinct scales, got {list(scales)}")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"calibrate: non-finite statistic in {list(s)}")
    # Only the rising part measures guidance: past the statistic's peak, samples stop looking more guided (a
    # network's CFG far outside its training range degrades: one overlap3 model peaked at scale 8 and fell below
    # its scale-1 value by 2,048), so the grid ends there and stronger readings are bounds.
    keep = int(np.argmax(s)) + 1
    w, s = w[:max(keep, 2)], s[:max(keep, 2)]
    fit = IsotonicRegression(increasing=True).fit_transform(w, s)
    return Ruler(w, np.asarray(fit, dtype=float), s)


def calibration_grid(nominal: float, max_steps_log2: int, factor: float = 2.0) -> tuple[float, ...]:
    """CFG scales for calibration: 0, 0.5, 1, 1.5, 2, 3, 4, 6, 8 (where uncompounded modes read), then doublings up
    to at least `factor` x nominal^K, the compounded scale Prop. 1 predicts for the 1-step model (K =
    max_steps_log2): 12 scales for nominal 1.5 and K = 7 (up to 64), 19 for nominal 3 (up to 8,192)."""
    top = factor * max(nominal, 1.0) ** max_steps_log2
    grid = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0]
    while grid[-1] < top:
        grid.append(grid[-1] * 2)
    return tuple(grid)


# ----------------------------------------------------------------------------------------------- statistics
def class_llr(mix: Mixture, x: Tensor, y: Tensor) -> Tensor:
    """Per point: log p(x|y) - log p(x|not y) under the mixture (the other classes weighted by their prior)."""
    lp = mix.class_logp(x.double())
    prior = torch.stack([mix.weights[mix.labels == c].sum() for c in range(mix.num_classes)])
    own = lp.gather(1, y.long()[:, None])[:, 0]
    mask = torch.nn.functional.one_hot(y.long(), mix.num_classes).bool()
    rest = torch.logsumexp((lp + prior.log()).masked_fill(mask, -math.inf), 1) - torch.log(1 - prior[y.long()])
    return own - rest


def logit_margin(logits: Tensor, y: Tensor) -> Tensor:
    """Per sample: the logit of class y minus the largest other logit."""
    own = logits.gather(1, y.long()[:, None])[:, 0]
    others = logits.masked_fill(torch.nn.functional.one_hot(y.long(), logits.shape[1]).bool(), -math.inf)
    return own - others.max(1).values


@torch.no_grad()
def classifier_logits(net: torch.nn.Module, x: Tensor, batch: int = 500) -> Tensor:
    """Logits of a domain classifier (ism.training.extractors.DomainCNN: forward -> (features, logits)) on images in [-1, 1]
    quantised as the FID features see them (uint8), in eval mode."""
    net.eval()
    return torch.cat([net(_as_float(to_uint8(x[i:i + batch])))[1].float() for i in range(0, len(x), batch)])
