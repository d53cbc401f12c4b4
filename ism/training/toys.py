"""Class-conditional isotropic Gaussian mixtures with exact densities and exact flow-matching velocities.

The 2-D toys `gaussians8` and `overlap3` are such mixtures (their points are drawn here), so the evaluator can read
guidance strength off the exact class log-likelihoods (ism.evaluation.ruler), and tests can integrate the exact CFG-guided ODE
of a known density to make samples whose guidance scale is known. Any dimension works (a kernel density of real
images is one), so the same code serves the image-side validation.

Path and target follow the SM code (docs/method.md#conventions): x_t = a_t x0 + t x1 with a_t = 1 - (1 - 1e-5) t,
v = x1 - (1 - 1e-5) x0. For one component N(mu, s^2 I), x_t ~ N(t mu, (t^2 s^2 + a_t^2) I) and the regression
E[v | x_t] = mu + (t s^2 - a_t b) / (t^2 s^2 + a_t^2) (x_t - t mu), b = 1 - 1e-5; a class's (or the whole
mixture's) velocity is the posterior-weighted mean over its components.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

SIGMA_MIN = 1e-5  # the SM code's path offset (targets.SIGMA_MIN; repeated so this layer imports no objective code)


@dataclass(frozen=True)
class Mixture:
    """Components N(means[j], stds[j]^2 I) with weights (summing to 1) and the class of each component."""
    means: Tensor    # float64 [J, D]
    stds: Tensor     # float64 [J]
    weights: Tensor  # float64 [J]
    labels: Tensor   # int64 [J]
    num_classes: int

    def sample(self, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """(points float64 [n, D], labels [n]) with components taken in turn (balanced when weights are equal)."""
        j = torch.arange(n) % len(self.means)
        x = self.means[j] + self.stds[j, None] * torch.randn(n, self.means.shape[1], generator=g, dtype=torch.float64)
        return x, self.labels[j]

    def _component_logp(self, x: Tensor, t: float) -> tuple[Tensor, Tensor]:
        """log (w_j N(x; t mu_j, var_j I)) [N, J] of x_t at time t, and var_j [J]."""
        a = 1.0 - (1.0 - SIGMA_MIN) * t
        var = t * t * self.stds ** 2 + a * a
        d2 = torch.cdist(x.double(), t * self.means).pow(2)
        dim = x.shape[1]
        return self.weights.log() - d2 / (2 * var) - 0.5 * dim * torch.log(2 * math.pi * var), var

    def class_logp(self, x: Tensor, t: float = 1.0) -> Tensor:
        """log p_t(x | c) for every class c: float64 [N, C] (t = 1: the data density itself, up to the 1e-5 offset)."""
        lp, _ = self._component_logp(x, t)
        out = torch.full((x.shape[0], self.num_classes), -math.inf, dtype=torch.float64)
        for c in range(self.num_classes):
            m = self.labels == c
            out[:, c] = torch.logsumexp(lp[:, m], 1) - self.weights[m].sum().log()
        return out

    def _velocities(self, x: Tensor, t: float, ys: tuple[Tensor | None, ...]) -> list[Tensor]:
        """E[v | x_t = x] given each entry of ys (a class per row, or None = unconditional), sharing one density
        evaluation."""
        x = x.double()
        lp, var = self._component_logp(x, t)
        a, b = 1.0 - (1.0 - SIGMA_MIN) * t, 1.0 - SIGMA_MIN
        gain = (t * self.stds ** 2 - a * b) / var                            # [J]
        shifted = self.means * (1 - t * gain)[:, None]
        out = []
        for y in ys:
            lpy = lp if y is None else lp.masked_fill(self.labels[None, :] != y[:, None], -math.inf)
            post = torch.softmax(lpy, 1)                                     # [N, J]
            # sum_j post_j (mu_j + gain_j (x - t mu_j)) = post @ (mu (1 - t gain)) + (post @ gain) x
            out.append(post @ shifted + (post @ gain)[:, None] * x)
        return out

    def velocity(self, x: Tensor, t: float, y: Tensor | None = None) -> Tensor:
        """The exact flow-matching velocity E[v | x_t = x (, class y)] as float64 [N, D]; y None = unconditional."""
        return self._velocities(x, t, (y,))[0]

    def cfg_velocity(self, x: Tensor, t: float, y: Tensor, scale: float) -> Tensor:
        """CFG: v_null + scale (v_c - v_null) from the exact conditional and unconditional velocities."""
        vu, vc = self._velocities(x, t, (None, y))
        return vu + scale * (vc - vu)

    def cfg_ode(self, x0: Tensor, y: Tensor, scale: float, steps: int = 128, method: str = "euler") -> Tensor:
        """Integrate the exact CFG-guided ODE from noise x0 (t = 0) to t = 1: Euler (as the sampler) or RK4."""
        x, h = x0.double(), 1.0 / steps
        for i in range(steps):
            t = i * h
            if method == "euler":
                x = x + h * self.cfg_velocity(x, t, y, scale)
            elif method == "rk4":
                k1 = self.cfg_velocity(x, t, y, scale)
                k2 = self.cfg_velocity(x + h / 2 * k1, t + h / 2, y, scale)
                k3 = self.cfg_velocity(x + h / 2 * k2, t + h / 2, y, scale)
                k4 = self.cfg_velocity(x + h * k3, t + h, y, scale)
                x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            else:
                raise ValueError(f"cfg_ode: method {method!r}; use euler or rk4")
        return x


def isotropic(means: Tensor, std: float | Tensor, labels: Tensor, num_classes: int) -> Mixture:
    """An equal-weight mixture of N(means[j], std^2 I)."""
    means = means.double()
    j = len(means)
    stds = torch.as_tensor(std, dtype=torch.float64).expand(j).clone()
    return Mixture(means, stds, torch.full((j,), 1.0 / j, dtype=torch.float64), labels.long(), num_classes)


def gaussians8() -> Mixture:
    """Eight well-separated classes on a circle of radius sqrt(2), std 0.1: guidance barely changes a class."""
    angle = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    return isotropic(torch.stack([angle.cos(), angle.sin()], 1) * 2 ** 0.5, 0.1, torch.arange(8), 8)


# overlap3: three classes at the corners of a triangle (radius 1, so 1.73 between means), std 0.6. The classes
# overlap (Bayes accuracy 0.875 by the exact posterior on the 20,000 toy points), so CFG visibly moves each class
# away from the others, and the exact CFG ODE's mean class log-likelihood ratio (ism.evaluation.ruler.class_llr) keeps rising
# with the scale: 3.6 / 8.1 / 15 / 37 / 214 at scales 1 / 4 / 17 / 128 / 4,096 (128 Euler steps, 512 points).
OVERLAP3_RADIUS, OVERLAP3_STD = 1.0, 0.6


def overlap3() -> Mixture:
    """Three overlapping isotropic Gaussian classes (see OVERLAP3_*)."""
    angle = torch.arange(3, dtype=torch.float64) * (2 * math.pi / 3) + math.pi / 2
    return isotropic(torch.stack([angle.cos(), angle.sin()], 1) * OVERLAP3_RADIUS, OVERLAP3_STD, torch.arange(3), 3)


MIXTURES = {"gaussians8": gaussians8, "overlap3": overlap3}


def mixture(toy: str) -> Mixture | None:
    """The exact generating mixture of a 2-D toy (data.toy), None for toys without a closed-form density."""
    make = MIXTURES.get(toy)
    return make() if make else None
