"""Feature premetrics for loss.distance=feature_huber / lpips_huber: a function (a, b) -> squared feature distance
per row, differentiable in a (the network's extrapolated images) and frozen in its weights.

- feature_huber: the evaluation's domain CNN (ism.training.extractors, trained once per dataset and cached under the
  evaluation cache root), squared distance of its 128 standardised penultimate features. A stand-in for LPIPS on the
  embedded profile, where no ImageNet network is available offline; it is a digit classifier's feature space, not a
  perceptual one.
- lpips_huber: a TorchScript LPIPS network from loss.lpips_weights (nothing is downloaded), called as net(a, b) on
  images in [-1, 1] (1-channel images are repeated to RGB); LPIPS is already a weighted squared feature distance.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import torch

from ism.conf.config import Config, ConfigError

FeatureDistance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _rgb(x: torch.Tensor) -> torch.Tensor:
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x


def feature_distance(cfg: Config, data, cache_root: str | Path | None, device: torch.device) -> FeatureDistance | None:
    """The premetric's feature distance for cfg.loss.distance, None when the loss needs none."""
    kind = cfg.loss.distance
    if kind == "lpips_huber":
        try:
            net = torch.jit.load(cfg.loss.lpips_weights, map_location=device).eval()
        except (RuntimeError, ValueError, OSError) as e:
            raise ConfigError(f"loss.lpips_weights: {cfg.loss.lpips_weights!r} is not a TorchScript LPIPS network "
                              f"({str(e).splitlines()[0]})") from None
        for p in net.parameters():
            p.requires_grad_(False)
        return lambda a, b: net(_rgb(a), _rgb(b)).reshape(a.shape[0], -1).sum(1)
    if kind == "feature_huber":
        if cache_root is None:
            raise ConfigError("loss.distance: feature_huber needs the evaluation cache root (where the domain CNN is "
                              "cached); pass cache_root to train()")
        from ism.training import extractors  # torch_fidelity: only runs with this loss pay its import
        info = extractors.ensure_domain_cnn(data, cache_root)
        cnn = copy.deepcopy(extractors._load_cnn(str(info.path), info.path.stat().st_mtime)).to(device)
        return lambda a, b: (cnn(a)[0] - cnn(b)[0]).square().sum(1)
    return None
